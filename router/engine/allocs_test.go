//go:build !race

package engine

// Allocation checks of the forwarding paths. They are left out under the
// race detector, whose instrumentation allocates on its own (as
// router/conntrack's mem_test.go).

import (
	"net/netip"
	"testing"
)

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

// TestGatewayAllocs: a pod's packets to the gateway, delivered to the
// gateway port.
func TestGatewayAllocs(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	pa, err := e.AddPort(newSink(), PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	gw := newSink()
	if _, err := e.AddPort(gw, PortConfig{Name: "gw", Kind: KindNetstack, MTU: 1500, Gateway: true}); err != nil {
		t.Fatal(err)
	}
	w := newWorker(e, pa)
	frame := eth(e, macA, ipv4(addrA, e.Gateway(), ipOpts{ttl: 64, payload: 32}))
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame)
		w.sizes[i] = len(frame)
	}
	n := len(w.bufs)
	w.process(n)
	allocs := testing.AllocsPerRun(100, func() {
		refill(w, frame)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := gw.n.Load(); got != uint64(102*n) {
		t.Errorf("%d packets to the gateway port, want %d", got, 102*n)
	}
}
