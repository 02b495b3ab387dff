// Package leaktest checks that a test leaves no goroutine running: the
// engine, underlay, netstack and lab tests all start workers that must stop
// when the test's cleanups close what they serve.
//
// The check counts goroutines (runtime.NumGoroutine) when it is called and
// again after the test's other cleanups, so call it first in a test: cleanups
// run last-in first-out, and its own then runs after every Close.
package leaktest

import (
	"runtime"
	"testing"
	"time"
)

// Check fails t if, once t's other cleanups have run, more goroutines are
// alive than when Check was called. Goroutines that are still ending get up
// to grace to do so (polled every 10ms); after that the test fails with the
// counts and every goroutine's stack.
func Check(t testing.TB, grace time.Duration) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(grace)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines leaked: %d before, %d after\n%s", before, n, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
