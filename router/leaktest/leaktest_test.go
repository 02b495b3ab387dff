package leaktest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps the cleanups and errors of a test
// run by hand, so that a failing check can itself be checked.
type recorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

// finish runs the cleanups last-in first-out, as testing does.
func (r *recorder) finish() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestCheck(t *testing.T) {
	t.Run("leak", func(t *testing.T) {
		stop := make(chan struct{})
		defer close(stop)
		r := &recorder{TB: t}
		Check(r, 50*time.Millisecond)
		go func() { <-stop }()
		start := time.Now()
		r.finish()
		if len(r.errs) != 1 || !strings.Contains(r.errs[0], "goroutines leaked") || !strings.Contains(r.errs[0], "leaktest.TestCheck") {
			t.Fatalf("errors %q, want one leak report with the leaked goroutine's stack", r.errs)
		}
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Fatalf("reported the leak after %v, before the grace of 50ms", d)
		}
	})
	t.Run("stopped by a later cleanup", func(t *testing.T) {
		r := &recorder{TB: t}
		Check(r, 5*time.Second)
		stop := make(chan struct{})
		go func() { <-stop }()
		r.Cleanup(func() { close(stop) })
		r.finish()
		if len(r.errs) != 0 {
			t.Fatalf("errors %q for a goroutine its cleanup stops", r.errs)
		}
	})
	t.Run("slow to end", func(t *testing.T) {
		r := &recorder{TB: t}
		Check(r, 5*time.Second)
		go func() { time.Sleep(100 * time.Millisecond) }()
		r.finish()
		if len(r.errs) != 0 {
			t.Fatalf("errors %q for a goroutine that ends within the grace", r.errs)
		}
	})
}
