//go:build !race

package engine

// Allocation checks of the forwarding paths. They are left out under the
// race detector, whose instrumentation allocates on its own (as
// router/conntrack's mem_test.go).

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/service"
)

func TestForwardAllocs(t *testing.T) {
	for _, routed := range []bool{false, true} {
		w, out, done := benchRig(t, 64, routed)
		frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
		n := len(w.bufs)
		w.process(n) // warm up: staged slices grow once
		allocs, calls := allocsPerRun(func() {
			refill(w, frame)
			w.process(n)
		})
		if allocs != 0 {
			t.Errorf("routed=%v: %v allocs per batch, want 0", routed, allocs)
		}
		if got := out.n.Load(); got != uint64((1+calls)*n) {
			t.Errorf("routed=%v: %d packets forwarded, want %d", routed, got, (1+calls)*n)
		}
		done()
	}
}

func TestSNATAllocs(t *testing.T) {
	w, out, frame, done := snatBenchRig(t, 64)
	defer done()
	n := len(w.bufs)
	w.process(n) // warm up: the flow is created, staged slices grow once
	allocs, calls := allocsPerRun(func() {
		refillSNAT(w, frame)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := out.n.Load(); got != uint64((1+calls)*n) {
		t.Errorf("%d packets forwarded, want %d", got, (1+calls)*n)
	}
}

func TestServiceAllocs(t *testing.T) {
	w, out, done := svcBenchRig(t, 64)
	defer done()
	frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
	n := len(w.bufs)
	w.process(n) // warm up: the flow is created, staged slices grow once
	allocs, calls := allocsPerRun(func() {
		refillN(w, frame, 14+20+8)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := out.n.Load(); got != uint64((1+calls)*n) {
		t.Errorf("%d packets forwarded, want %d", got, (1+calls)*n)
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
	allocs, calls := allocsPerRun(func() {
		refill(w, frame)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got := gw.n.Load(); got != uint64((1+calls)*n) {
		t.Errorf("%d packets to the gateway port, want %d", got, (1+calls)*n)
	}
}

// TestServiceKeepSourceAllocs: the replies of a nodePort flow that kept
// its client's address (externalTrafficPolicy Local, from the gateway
// port), sent back to the gateway port.
func TestServiceKeepSourceAllocs(t *testing.T) {
	node := netip.MustParseAddr("172.29.0.2")
	cl := netip.MustParseAddr("203.0.113.7")
	e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}, HostAddrs: []netip.Addr{node}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	sb, sgw, sup := newSink(), newSink(), newSink()
	pb, err := e.AddPort(sb, PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB}})
	if err != nil {
		t.Fatal(err)
	}
	pgw, err := e.AddPort(sgw, PortConfig{Name: "ingress", Kind: KindNetstack, MTU: 1500, Gateway: true})
	if err != nil {
		t.Fatal(err)
	}
	pup, err := e.AddPort(sup, PortConfig{Name: "up", Kind: KindUplink, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(pup.idx)}}); err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.New(conntrack.Config{SNAT: []conntrack.SNATAddr{{Addr: e.Gateway(), PortMin: HairpinPortMin, PortMax: HairpinPortMax}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.EnableServices(ServicesConfig{CIDRs: []netip.Prefix{svcCIDR}, Table: ct}); err != nil {
		t.Fatal(err)
	}
	svcs := []service.Service{{Namespace: "ns", Name: "local", ClusterIPs: []netip.Addr{vip}, ExternalLocal: true,
		Ports: []service.Port{{Name: "udp", Proto: packet.ProtoUDP, Port: 80, NodePort: 30080,
			Backends: []service.Backend{{Addr: addrB, Port: 8080, Ready: true, Serving: true, Local: true}}}}}}
	if err := e.SetServices(service.NewTable(svcs, service.Options{NodeAddrs: []netip.Addr{node}})); err != nil {
		t.Fatal(err)
	}
	// The flow, from the gateway port.
	wg := newWorker(e, pgw)
	first := ipPacket(cl, node, header.UDPProtocolNumber, udpSeg(40000, 30080, 32))
	copy(wg.bufs[0][readOffset:], first)
	wg.sizes[0] = len(first)
	wg.process(1)
	if sb.n.Load() != 1 {
		t.Fatalf("the flow's first datagram did not reach the backend (drops %v)", pgw.Stats().Drops)
	}
	// Its replies.
	w := newWorker(e, pb)
	frame := eth(e, macB, ipPacket(addrB, cl, header.UDPProtocolNumber, udpSeg(8080, 40000, 32)))
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame)
		w.sizes[i] = len(frame)
	}
	n := len(w.bufs)
	w.process(n)
	allocs, calls := allocsPerRun(func() {
		refillN(w, frame, 14+20+8)
		w.process(n)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per batch, want 0", allocs)
	}
	if got, up := sgw.n.Load(), sup.n.Load(); got != uint64((1+calls)*n) || up != 0 {
		t.Errorf("%d replies to the gateway port, want %d; %d to the uplink", got, 102*n, up)
	}
}

// allocsPerRun is testing.AllocsPerRun(100, f), measured again up to
// twice while it is not 0: AllocsPerRun counts the whole process's
// allocations, and on a loaded machine a runtime or test goroutine may
// allocate during one measurement (a CI flake), while an allocation of
// the measured path shows in every one. calls is how often f ran (101
// per measurement: AllocsPerRun runs it once more to warm up).
func allocsPerRun(f func()) (allocs float64, calls int) {
	for range 3 {
		allocs = testing.AllocsPerRun(100, f)
		calls += 101
		if allocs == 0 {
			break
		}
	}
	return allocs, calls
}
