//go:build !race

package engine

// Allocation checks of the forwarding paths. They are left out under the
// race detector, whose instrumentation allocates on its own (as
// router/conntrack's mem_test.go).

import "testing"

func TestForwardAllocs(t *testing.T) {
	for _, routed := range []bool{false, true} {
		w, out, done := benchRig(t, 64, routed)
		frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
		n := len(w.bufs)
		w.process(n) // warm up: staged slices grow once
		allocs := testing.AllocsPerRun(100, func() {
			refill(w, frame)
			w.process(n)
		})
		if allocs != 0 {
			t.Errorf("routed=%v: %v allocs per batch, want 0", routed, allocs)
		}
		if got := out.n.Load(); got != uint64(102*n) {
			t.Errorf("routed=%v: %d packets forwarded, want %d", routed, got, 102*n)
		}
		done()
	}
}

func TestSNATAllocs(t *testing.T) {
	w, out, frame, done := snatBenchRig(t, 64)
	defer done()
	n := len(w.bufs)
	w.process(n) // warm up: the flow is created, staged slices grow once
	allocs := testing.AllocsPerRun(100, func() {
		refillSNAT(w, frame)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := out.n.Load(); got != uint64(102*n) {
		t.Errorf("%d packets forwarded, want %d", got, 102*n)
	}
}

func TestServiceAllocs(t *testing.T) {
	w, out, done := svcBenchRig(t, 64)
	defer done()
	frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
	n := len(w.bufs)
	w.process(n) // warm up: the flow is created, staged slices grow once
	allocs := testing.AllocsPerRun(100, func() {
		refillN(w, frame, 14+20+8)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := out.n.Load(); got != uint64(102*n) {
		t.Errorf("%d packets forwarded, want %d", got, 102*n)
	}
}
