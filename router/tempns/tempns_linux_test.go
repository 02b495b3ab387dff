package tempns

// Privileged: namespaces are created, entered, swept and deleted.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces); CI runs as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is missing; run .ci/deps as root")
	}
}

func exists(name string) bool {
	_, err := os.Stat(runDir + name)
	return err == nil
}

// threadNamespaces returns the network namespace of every thread of this
// process that differs from want.
func threadNamespaces(t *testing.T, want string) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var wrong []string
	for _, p := range tasks {
		got, err := os.Readlink(p)
		if err != nil {
			continue // the thread exited
		}
		if got != want {
			wrong = append(wrong, p+" -> "+got)
		}
	}
	return wrong
}

// startIn starts sleep in the namespace called name and returns a channel
// that is closed when the process has exited.
func startIn(t *testing.T, name string) <-chan struct{} {
	t.Helper()
	c := exec.Command("ip", "netns", "exec", name, "sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	t.Cleanup(func() { _ = c.Process.Kill(); <-done })
	// Wait until the process is in the namespace (ip netns exec has setns'd).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		if strings.TrimSpace(string(out)) != "" {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep did not enter %s", name)
		}
	}
}

func killed(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Errorf("%s still runs", what)
	}
}

func TestLifecycle(t *testing.T) {
	requireRoot(t)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := New("life", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	if want := fmt.Sprintf("%s%d-life-", Prefix, os.Getpid()); !strings.HasPrefix(ns.Name(), want) {
		t.Errorf("name %q, want prefix %q", ns.Name(), want)
	}
	if ns.Path() != "/run/netns/"+ns.Name() || !exists(ns.Name()) {
		t.Fatalf("namespace %s not at %s", ns.Name(), ns.Path())
	}

	// Run: only lo, and it is up.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ns.Run(ctx, "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
		t.Errorf("links in a new namespace:\n%s(want lo alone, up)", out)
	}
	if _, err := ns.Run(ctx, "false"); err == nil || !strings.Contains(err.Error(), ns.Name()) {
		t.Errorf("Run(false) = %v, want an error naming the namespace", err)
	}

	// Do: fn runs in the namespace; every thread is back home afterwards.
	for range 20 {
		if err := ns.Do(func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			want, err := netns.GetFromName(ns.Name())
			if err != nil {
				return err
			}
			defer want.Close()
			if !cur.Equal(want) {
				return fmt.Errorf("in %s, want %s", cur, want)
			}
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			if len(links) != 1 || links[0].Attrs().Name != "lo" {
				return fmt.Errorf("links %v, want lo alone", links)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	errBoom := errors.New("boom")
	if err := ns.Do(func() error { return errBoom }); !errors.Is(err, errBoom) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if wrong := threadNamespaces(t, host); len(wrong) > 0 {
		t.Errorf("threads left in another netns after Do: %v", wrong)
	}

	// Delete kills what runs inside, removes the namespace, and is
	// idempotent; Do afterwards fails.
	done := startIn(t, ns.Name())
	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	killed(t, done, "a process in the deleted namespace")
	if exists(ns.Name()) {
		t.Errorf("namespace %s left behind", ns.Name())
	}
	if err := ns.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if err := ns.Do(func() error { return nil }); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Do after Delete: %v, want os.ErrClosed", err)
	}
}

// TestSetupFails: a failed setup leaves no namespace and nothing running.
func TestSetupFails(t *testing.T) {
	requireRoot(t)
	errBoom := errors.New("boom")
	var name string
	var done <-chan struct{}
	ns, err := New("fail", func(ns *NS) error {
		name = ns.Name()
		t.Cleanup(func() { _ = remove(name) })
		done = startIn(t, name)
		return errBoom
	})
	if !errors.Is(err, errBoom) || ns != nil {
		t.Fatalf("New = %v, %v; want setup's error", ns, err)
	}
	if !strings.Contains(err.Error(), name) {
		t.Errorf("error %q does not name the namespace %s", err, name)
	}
	if exists(name) {
		t.Errorf("namespace %s left behind", name)
	}
	killed(t, done, "a process started by the failed setup")
}

// TestSweep: a leftover of a dead process goes, with what runs inside; the
// namespaces of live processes and of this one stay.
func TestSweep(t *testing.T) {
	requireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })
	if syscall.Kill(dead.Process.Pid, 0) != syscall.ESRCH {
		t.Skipf("pid %d was reused already", dead.Process.Pid)
	}
	add := func(name string) string {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
		t.Cleanup(func() { _ = remove(name) })
		return name
	}
	leftover := add(fmt.Sprintf("%s%d-left-1", Prefix, dead.Process.Pid))
	inLeftover := startIn(t, leftover)
	kept := add(fmt.Sprintf("%s%d-live-1", Prefix, live.Process.Pid))
	notOurs := add(fmt.Sprintf("podrx%d-1", dead.Process.Pid))
	own, err := New("own", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = own.Delete() })

	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if exists(leftover) {
		t.Errorf("leftover %s of dead pid %d not swept", leftover, dead.Process.Pid)
	}
	killed(t, inLeftover, "a process in the swept leftover")
	for _, n := range []string{kept, notOurs, own.Name()} {
		if !exists(n) {
			t.Errorf("Sweep removed %s", n)
		}
	}
}

// TestDoIn: DoIn enters a namespace by its path, as Do does, and leaves
// every thread at home; a path that is no namespace is an error.
func TestDoIn(t *testing.T) {
	requireRoot(t)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := New("doin", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	var inside string
	if err := DoIn(ns.Path(), func() error {
		var err error
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", st.Ino); inside != want {
		t.Errorf("inside DoIn: %s, want %s", inside, want)
	}
	if wrong := threadNamespaces(t, host); len(wrong) != 0 {
		t.Errorf("threads left in another namespace: %v", wrong)
	}
	errBoom := errors.New("boom")
	if err := DoIn(ns.Path(), func() error { return errBoom }); !errors.Is(err, errBoom) {
		t.Errorf("DoIn returned %v, want fn's error", err)
	}
	if err := DoIn(filepath.Join(t.TempDir(), "none"), func() error { return nil }); err == nil {
		t.Error("DoIn of a missing path: no error")
	}
}
