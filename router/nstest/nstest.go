// Package nstest gives privileged tests throwaway network namespaces: named
// "prt-<pid>-<n>" so that a later run removes what a crashed run left
// behind, with lo up, deleted (with every process inside killed) in
// t.Cleanup. Tests that need it call RequireRoot first, which skips with
// the reason when the process lacks the privileges.
package nstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const prefix = "prt-"

var (
	seq       atomic.Uint32
	sweepOnce sync.Once
)

// RequireRoot skips the test unless it runs as root with /dev/net/tun and
// the ip command available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, TAP devices); CI runs as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: /dev/net/tun unavailable: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is missing; run .ci/deps as root")
	}
}

// RequireCommand skips the test unless every named command is on PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("skipped: %s is not installed; run .ci/deps as root", n)
		}
	}
}

// NS is a throwaway network namespace.
type NS struct {
	Name   string
	Handle netns.NsHandle
}

// New creates a namespace with lo up. It is deleted when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	sweepOnce.Do(sweep)
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("open netns %s: %v", name, err)
	}
	n := &NS{Name: name, Handle: h}
	t.Cleanup(func() { n.Delete() })
	if err := n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("netns %s: lo up: %v", name, err)
	}
	return n
}

// Delete kills every process in the namespace and removes it. It is
// idempotent.
func (n *NS) Delete() {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if n.Handle.IsOpen() {
		_ = n.Handle.Close()
	}
	for i := 0; i < 50; i++ {
		err := exec.Command("ip", "netns", "del", n.Name).Run()
		if err == nil || !exists(n.Name) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Do runs fn on a locked OS thread switched into the namespace, and
// switches back. Goroutines fn starts do not inherit the namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not unlocked: if switching back fails it must die
		// with the goroutine rather than serve others in the wrong netns.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.Handle); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("return to the original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its output, failing
// the test when it fails.
func (n *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	c := n.Command(ctx, name, args...)
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		t.Fatalf("netns %s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func exists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// sweep removes namespaces left by test processes that are gone.
func sweep() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			(&NS{Name: e.Name()}).Delete()
		}
	}
}
