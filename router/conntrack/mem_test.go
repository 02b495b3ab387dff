//go:build !race

package conntrack_test

// The memory budget test inserts a million flows: seconds normally, a
// minute under the race detector, whose shadow memory also skews the heap
// numbers. It runs in the ordinary test run (make test runs both).

import "testing"

// TestBytesPerEntry holds the table to its memory budget: at most 160
// bytes per flow at 1M flows, with and without source NAT.
func TestBytesPerEntry(t *testing.T) {
	ks := flows(1_000_000, 4)
	for _, nat := range []bool{false, true} {
		per := bytesPerEntry(t, ks, nat)
		t.Logf("nat=%v: %.1f bytes per flow at 1M flows", nat, per)
		if per > 160 {
			t.Errorf("nat=%v: %.1f bytes per flow, budget 160", nat, per)
		}
	}
}
