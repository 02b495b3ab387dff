package engine

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/route"
)

// sink is a device that reads nothing (Read blocks until Close) and
// discards what is written to it, counting packets.
type sink struct {
	n      atomic.Uint64
	closed chan struct{}
}

func newSink() *sink { return &sink{closed: make(chan struct{})} }

func (s *sink) Read([][]byte, []int, int) (int, error) {
	<-s.closed
	return 0, link.ErrClosed
}

func (s *sink) Write(bufs [][]byte, _ int) (int, error) {
	s.n.Add(uint64(len(bufs)))
	return len(bufs), nil
}

func (s *sink) BatchSize() int { return 128 }

func (s *sink) Close() error {
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	return nil
}

// benchRig is an engine whose ports are sinks, with a worker for port a
// driven by the caller: process() runs the forwarding path on a batch with
// no device I/O around it.
func benchRig(tb testing.TB, size int, routed bool) (*worker, *sink, func()) {
	e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}})
	if err != nil {
		tb.Fatal(err)
	}
	sa, sb, so := newSink(), newSink(), newSink()
	pa, err := e.AddPort(sa, PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := e.AddPort(sb, PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		tb.Fatal(err)
	}
	po, err := e.AddPort(so, PortConfig{Name: "out", Kind: KindEgress, MTU: 1500})
	if err != nil {
		tb.Fatal(err)
	}
	pp, err := e.AddPort(newSink(), PortConfig{Name: "peer", Kind: KindPeer, MTU: 1500}) // the service case's 1500 B packets fit
	if err != nil {
		tb.Fatal(err)
	}
	// A realistic table: a default route and 1000 peer podCIDRs.
	rs := []route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(po.idx)}}
	for i := range 1000 {
		rs = append(rs, route.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + i/256), byte(i), 0}), 24), NextHop: route.ToPeer(pp.idx)})
	}
	if err := e.SetRoutes(rs); err != nil {
		tb.Fatal(err)
	}
	w := newWorker(e, pa)
	dst, out := addrB, sb
	if routed {
		dst, out = outside, so
	}
	frame := eth(e, macA, ipv4(addrA, dst, ipOpts{ttl: 64, payload: size - 14 - 28}))
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame)
		w.sizes[i] = len(frame)
	}
	return w, out, func() { e.Close() }
}

// refill restores the Ethernet and IP headers that forwarding rewrote in
// place (MACs, TTL, checksum), as a device's next Read would.
func refill(w *worker, frame []byte) {
	h := frame[:14+20]
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], h)
	}
}

// BenchmarkForward measures the engine's per-packet work (parse, checks,
// lookup, stage, batched Write to a discarding port) for a pod-to-pod
// (switched) and a pod-to-egress (routed, TTL rewrite) packet. One op is one
// packet. Each batch first restores the 34 header bytes the previous pass
// rewrote (the stand-in for a device read), and that copy is timed too.
func BenchmarkForward(b *testing.B) {
	for _, mode := range []string{"switched", "routed", "service"} {
		for _, size := range []int{64, 1500} {
			b.Run(fmt.Sprintf("%s/%dB", mode, size), func(b *testing.B) {
				var w *worker
				var out *sink
				var done func()
				hdr := 14 + 20
				if mode == "service" {
					w, out, done = svcBenchRig(b, size)
					hdr += 8 // DNAT rewrites the UDP header too
				} else {
					w, out, done = benchRig(b, size, mode == "routed")
				}
				defer done()
				frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
				n := len(w.bufs)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i += n {
					refillN(w, frame, hdr)
					w.process(min(n, b.N-i))
				}
				el := time.Since(start)
				b.ReportMetric(float64(b.N)/el.Seconds(), "pkt/s")
				if out.n.Load() != uint64(b.N) {
					b.Fatalf("forwarded %d of %d", out.n.Load(), b.N)
				}
			})
		}
	}
}

// refillN restores the first n bytes of every buffer from frame.
func refillN(w *worker, frame []byte, n int) {
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame[:n])
	}
}

// TestPeerDestinations: what a peer sends is forwarded only to this node's
// podCIDR and to its own addresses (HostAddrs: a peer's host or
// hostNetwork pod reaching this host); anything else is dropped as
// not-local, even with a route for it.
func TestPeerDestinations(t *testing.T) {
	host := netip.MustParseAddr("172.29.1.1")
	e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}, HostAddrs: []netip.Addr{host}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	pod, up := newSink(), newSink()
	if _, err := e.AddPort(pod, PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	pu, err := e.AddPort(up, PortConfig{Name: "uplink", Kind: KindEgress, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	pp, err := e.AddPort(newSink(), PortConfig{Name: "peer", Kind: KindPeer, MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(pu.idx)},
		{Prefix: netip.PrefixFrom(host, 32), NextHop: route.ToEgress(pu.idx)},
	}); err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddr("10.244.7.2") // a pod of the peer
	for _, tc := range []struct {
		dst       netip.Addr
		pod, host uint64
		notLocal  uint64
		desc      string
	}{
		{addrA, 1, 0, 0, "to a pod of this node"},
		{host, 1, 1, 0, "to this node's address"},
		{outside, 1, 1, 1, "to an address outside the node"},
	} {
		w := newWorker(e, pp)
		frame := ipv4(from, tc.dst, ipOpts{ttl: 64, payload: 32})
		copy(w.bufs[0][readOffset:], frame)
		w.sizes[0] = len(frame)
		w.process(1)
		if pod.n.Load() != tc.pod || up.n.Load() != tc.host || pp.Stats().Drops[DropNotLocal] != tc.notLocal {
			t.Errorf("%s: pod %d, uplink %d, not-local %d; want %d, %d, %d", tc.desc,
				pod.n.Load(), up.n.Load(), pp.Stats().Drops[DropNotLocal], tc.pod, tc.host, tc.notLocal)
		}
	}
}
