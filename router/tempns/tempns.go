// Package tempns makes throwaway network namespaces: the pods of the lab
// (podrouter lab --pod-mode netns), the namespaces of privileged tests
// (through router/nstest) and the nodes and pods of the end-to-end
// benchmarks all come from here.
//
//	New: ip netns add podr-<pid>-<tag>-<n> ─► open a handle ─► lo up ─► setup
//	     (any failure deletes the namespace again and returns the error)
//	Do / Command / Run: work inside it        Delete: kill what runs inside, remove it
//	DoIn: Do in a namespace made elsewhere (a cluster node's)
//	Sweep (once per process, from New): remove namespaces of processes that are gone
//
// Design notes. Everything podrouter creates is named with one prefix,
// Prefix, followed by the creating process's pid: a namespace whose owner
// process no longer exists (kill(pid, 0) says ESRCH) is a leftover of a
// crashed or killed run, and Sweep removes it. A live owner's namespaces,
// and this process's own, are never touched; a namespace whose pid has
// been reused by an unrelated process stays until that process is gone.
// The names are those of ip netns (/run/netns/NAME), so that `ip netns
// exec` (podrouter lab exec) reaches them from another shell.
//
// The package is called tempns, not netns, because its users (and the
// package itself) also import github.com/vishvananda/netns, the handle and
// setns wrapper it is built on.
package tempns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace podrouter creates.
const Prefix = "podr-"

// runDir is where ip netns keeps its named namespaces.
const runDir = "/run/netns/"

// ErrBadTag means a tag has characters other than letters, digits, '.',
// '_' and '-', or more than 64 of them.
var ErrBadTag = errors.New("tempns: bad tag")

var (
	seq       atomic.Uint32
	sweepOnce sync.Once
)

// NS is a named network namespace created by New. Do, Command and Run may
// run concurrently; Delete must not run concurrently with them.
type NS struct {
	name string
	h    netns.NsHandle
}

// New creates the namespace Prefix<pid>-<tag>-<n> (Prefix<pid>-<n> for an
// empty tag), with lo up, and runs setup (when not nil) on it. When any
// step fails, setup included, the namespace is deleted with everything
// running inside, and the error is returned. The first New of a process
// sweeps leftovers (see Sweep).
func New(tag string, setup func(*NS) error) (*NS, error) {
	if !validTag(tag) {
		return nil, fmt.Errorf("%w %q", ErrBadTag, tag)
	}
	sweepOnce.Do(func() { _ = Sweep() })
	name := fmt.Sprintf("%s%d-%s-%d", Prefix, os.Getpid(), tag, seq.Add(1))
	if tag == "" {
		name = fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), seq.Add(1))
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tempns: ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	n := &NS{name: name, h: netns.None()}
	success := false
	defer func() {
		if !success {
			_ = n.Delete()
		}
	}()
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("tempns: open %s: %w", name, err)
	}
	n.h = h
	if err := n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		return nil, fmt.Errorf("tempns: %s: lo up: %w", name, err)
	}
	if setup != nil {
		if err := setup(n); err != nil {
			return nil, fmt.Errorf("tempns: %s: setup: %w", name, err)
		}
	}
	success = true
	return n, nil
}

func validTag(tag string) bool {
	if len(tag) > 64 {
		return false
	}
	for _, c := range tag {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Name is the namespace's name (ip netns).
func (n *NS) Name() string { return n.name }

// Path is the namespace's bind mount, /run/netns/NAME: what CNI, pasta and
// slirp4netns take.
func (n *NS) Path() string { return runDir + n.name }

// Do runs fn on a locked OS thread switched into the namespace, then
// switches the thread back: sockets and devices fn creates live in the
// namespace. Goroutines fn starts do not inherit it. After Delete, Do
// returns an error matching os.ErrClosed.
func (n *NS) Do(fn func() error) error {
	if !n.h.IsOpen() {
		return fmt.Errorf("tempns: %s: %w", n.name, os.ErrClosed)
	}
	return doIn(n.h, n.name, fn)
}

// DoIn is Do for a network namespace this package did not make, named by
// its path (/run/netns/NAME, /proc/PID/ns/net): a cluster node's, say.
func DoIn(path string, fn func() error) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("tempns: open %s: %w", path, err)
	}
	defer h.Close()
	return doIn(h, path, fn)
}

// doIn runs fn on a locked OS thread switched into h (named name in
// errors), then switches the thread back.
func doIn(h netns.NsHandle, name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not unlocked when switching back fails: it dies
		// with the goroutine rather than serve others in the wrong netns.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("tempns: enter %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("tempns: return to the original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs name args... inside the namespace
// (through ip netns exec, which also gives it the namespace's /sys).
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// Run runs name args... inside the namespace and returns its output
// (stdout and stderr); the error carries the output too.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %s: %w: %s", n.name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Delete kills every process inside the namespace and removes it. It is
// idempotent: deleting a namespace that is gone returns nil.
func (n *NS) Delete() error {
	if n.h.IsOpen() {
		_ = n.h.Close()
		n.h = netns.None()
	}
	return remove(n.name)
}

// Remove kills what runs in the namespace /run/netns/name and removes it,
// retrying while the kernel still holds it busy: for namespaces named
// outside New (deploy/cluster's nodes). A missing namespace is no error.
func Remove(name string) error { return remove(name) }

// remove kills what runs in the named namespace and removes it, retrying
// while the kernel still holds it busy.
func remove(name string) error {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	var err error
	for range 50 {
		out, derr := exec.Command("ip", "netns", "del", name).CombinedOutput()
		if derr == nil {
			return nil
		}
		err = fmt.Errorf("%w: %s", derr, bytes.TrimSpace(out))
		if _, serr := os.Stat(runDir + name); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("tempns: ip netns del %s: %w", name, err)
}

// owner returns the pid in a name Prefix<pid>-..., and false for a name
// that is not ours.
func owner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// Sweep removes the leftovers of processes that are gone: every namespace
// named Prefix<pid>-... whose pid no longer exists, with whatever still
// runs inside. Namespaces of this process and of live processes stay.
// Errors of single removals are joined; a missing /run/netns is no error.
func Sweep() error {
	ents, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tempns: sweep: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pid, ok := owner(e.Name())
		if !ok || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			errs = append(errs, remove(e.Name()))
		}
	}
	return errors.Join(errs...)
}
