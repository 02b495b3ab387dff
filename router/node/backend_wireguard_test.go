package node

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/link/pktq"
	"github.com/podrouter/podrouter/router/underlay"
)

// wgNode is a node on the wireguard backend over loopback with one pod.
type wgNode struct {
	*Node
	key  Key
	pod  netip.Addr
	host *linktest.End // the pod's side of its port
	rx   chan []byte   // what the pod receives (nil: count only)
	got  atomic.Uint64 // packets the pod received
}

func newWGNode(t *testing.T, podCIDR string) *wgNode {
	t.Helper()
	return newBackendNode(t, BackendWireGuard, podCIDR)
}

// newBackendNode is newWGNode on any backend.
func newBackendNode(t testing.TB, backend, podCIDR string) *wgNode {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{
		PodCIDR:      netip.MustParsePrefix(podCIDR),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Underlay: UnderlayConfig{Backend: backend, Listen: netip.MustParseAddrPort("127.0.0.1:0"),
			MTU: 1500, PrivateKey: key},
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	w := &wgNode{Node: n, key: key, pod: netip.MustParsePrefix(podCIDR).Addr().Next().Next()}
	if _, ok := t.(*testing.T); ok {
		w.rx = make(chan []byte, 16)
	}
	port, host := linktest.Pipe(1024, 2048, 64)
	w.host = host
	if _, err := n.Engine().AddPort(port, engine.PortConfig{Name: "pod", Kind: engine.KindPod, MTU: n.MTU(),
		Addrs: []netip.Addr{w.pod}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		bufs, sizes := make([][]byte, 64), make([]int, 64)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		for {
			n, err := host.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			w.got.Add(uint64(n))
			for i := range n {
				if w.rx != nil {
					w.rx <- bytes.Clone(bufs[i][:sizes[i]])
				}
			}
		}
	}()
	return w
}

// peer returns w as a peer of another node.
func (w *wgNode) peer(name string) Peer {
	return Peer{Name: name, Addr: w.Backend().LocalAddr(), PublicKey: PublicKey(w.key), PodCIDRs: w.Config().PodCIDRs()}
}

// send writes a UDP packet from w's pod to dst.
func (w *wgNode) send(t *testing.T, dst netip.Addr, payload string) []byte {
	t.Helper()
	b := w.udp(dst, payload)
	if _, err := w.host.Write([][]byte{append(make([]byte, link.Headroom), b...)}, link.Headroom); err != nil {
		t.Fatal(err)
	}
	return b
}

// udp builds a UDP packet from w's pod to dst with gVisor's header package.
func (w *wgNode) udp(dst netip.Addr, payload string) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(w.pod.As4()), DstAddr: tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.UDP(b[header.IPv4MinimumSize:]).Encode(&header.UDPFields{SrcPort: 1000, DstPort: 2000,
		Length: uint16(header.UDPMinimumSize + len(payload))})
	copy(b[header.IPv4MinimumSize+header.UDPMinimumSize:], payload)
	return b
}

// expect waits for the UDP packet sent as want (its TTL two less: each engine forwards it once) at w's pod.
func (w *wgNode) expect(t *testing.T, want []byte) {
	t.Helper()
	select {
	case got := <-w.rx:
		ip := header.IPv4(got)
		if !ip.IsValid(len(got)) || ip.CalculateChecksum() != 0xffff || ip.TTL() != 62 {
			t.Fatalf("got an invalid IPv4 packet (ttl %d) % x", ip.TTL(), got)
		}
		if ip.SourceAddress() != header.IPv4(want).SourceAddress() || ip.DestinationAddress() != header.IPv4(want).DestinationAddress() ||
			!bytes.Equal(ip.Payload(), header.IPv4(want).Payload()) {
			t.Fatalf("got % x, want % x", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived")
	}
}

// expectNothing checks that nothing arrives at w's pod for a while.
func (w *wgNode) expectNothing(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case got := <-w.rx:
		t.Fatalf("got % x, want nothing", got)
	case <-time.After(d):
	}
}

func TestWireGuard(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	n1, n2 := newWGNode(t, "10.244.1.0/24"), newWGNode(t, "10.244.2.0/24")
	if n1.MTU() != 1440 {
		t.Errorf("pod MTU %d on a 1500 underlay, want 1440", n1.MTU())
	}
	if a := n1.Backend().Announce(); a.Backend != BackendWireGuard || a.PublicKey != PublicKey(n1.key) || a.Endpoint != n1.Backend().LocalAddr() {
		t.Errorf("announce %+v", a)
	}
	if err := n1.SetPeers([]Peer{n2.peer("n2")}); err != nil {
		t.Fatal(err)
	}
	if err := n2.SetPeers([]Peer{n1.peer("n1")}); err != nil {
		t.Fatal(err)
	}
	want := n1.send(t, n2.pod, "hello over wireguard")
	n2.expect(t, want)
	n1.expect(t, n2.send(t, n1.pod, "and back"))

	if s := n2.Backend().Stats(); s.RxPackets != 1 || s.TxPackets != 1 || s.TotalDrops() != 0 {
		t.Errorf("n2 stats %+v", s)
	}
	ps, ok := n1.Backend().PeerStats("n2")
	if !ok || ps.TxPackets != 1 || ps.TxBytes != uint64(len(want)) || ps.RxPackets != 1 {
		t.Errorf("n1's stats of n2: %+v, %v", ps, ok)
	}
	if _, ok := n1.Backend().PeerStats("n9"); ok {
		t.Error("stats of a peer not in the table")
	}

	// n2 forgets n1: n1's packets no longer get through, n1's port on n2
	// is closed, and a device of a peer not in the table drops.
	oldDev := n2.Backend().PeerDevice("n1")
	if err := n2.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	n1.send(t, n2.pod, "after removal")
	n2.expectNothing(t, time.Second)
	pkt := [][]byte{append(make([]byte, link.Headroom), want...)}
	if _, err := oldDev.Write(pkt, link.Headroom); !errors.Is(err, link.ErrClosed) {
		t.Errorf("write to the removed peer's closed device: %v", err)
	}
	if _, err := n2.Backend().PeerDevice("n1").Write(pkt, link.Headroom); err != nil {
		t.Fatal(err)
	}
	if d := n2.Backend().Stats().Drops[underlay.DropNoPeer]; d != 1 {
		t.Errorf("no-peer drops %d, want 1", d)
	}
}

// TestWireGuardWrongKey: a peer listed under another public key completes
// no handshake, and none of its packets get through.
func TestWireGuardWrongKey(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	n1, n2 := newWGNode(t, "10.244.1.0/24"), newWGNode(t, "10.244.2.0/24")
	other, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	wrong := n1.peer("n1")
	wrong.PublicKey = PublicKey(other)
	if err := n1.SetPeers([]Peer{n2.peer("n2")}); err != nil {
		t.Fatal(err)
	}
	if err := n2.SetPeers([]Peer{wrong}); err != nil {
		t.Fatal(err)
	}
	n1.send(t, n2.pod, "forged")
	n2.expectNothing(t, 1500*time.Millisecond)
	if s := n2.Backend().Stats(); s.RxPackets != 0 {
		t.Errorf("n2 delivered %d packets", s.RxPackets)
	}
}

func TestWireGuardConfig(t *testing.T) {
	_, err := New(Config{
		PodCIDR:  netip.MustParsePrefix("10.244.1.0/24"),
		Underlay: UnderlayConfig{Backend: BackendWireGuard, Listen: netip.MustParseAddrPort("127.0.0.1:0")},
	})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "private key") {
		t.Fatalf("without a key: %v", err)
	}
	k, _ := LookupBackend(BackendWireGuard)
	if m4, m6 := PodMTU(1500, k, false), PodMTU(1500, k, true); m4 != 1440 || m6 != 1420 {
		t.Errorf("pod MTU on 1500: %d over IPv4, %d over IPv6; want 1440, 1420", m4, m6)
	}
	n := newWGNode(t, "10.244.1.0/24")
	k1, _ := GenerateKey()
	p := Peer{Name: "a", Addr: netip.MustParseAddrPort("127.0.0.2:51820"), PublicKey: PublicKey(k1),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	if err := n.SetPeers([]Peer{p}); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]Peer{
		"no key":     {{Name: "b", Addr: netip.MustParseAddrPort("127.0.0.3:51820")}},
		"own key":    {{Name: "b", Addr: netip.MustParseAddrPort("127.0.0.3:51820"), PublicKey: PublicKey(n.key)}},
		"shared key": {p, {Name: "b", Addr: netip.MustParseAddrPort("127.0.0.3:51820"), PublicKey: p.PublicKey}},
	} {
		// The node passes usable peers on; the backend refuses, the old table stays.
		if err := n.SetPeers(bad); !errors.Is(err, underlay.ErrBadPeer) {
			t.Errorf("%s: %v, want ErrBadPeer", name, err)
		}
		if got := n.Backend().Peers(); len(got) != 1 || got[0].Name != "a" {
			t.Errorf("%s: peers %v after a refused set", name, got)
		}
	}
	if pk, err := underlay.ParseKey(p.PublicKey.String()); err != nil || pk != p.PublicKey {
		t.Errorf("ParseKey(String()) = %v, %v", pk, err)
	}
	if _, err := underlay.ParseKey("AAAA"); err == nil {
		t.Error("ParseKey of 3 bytes: no error")
	}
}

// TestWireGuardQueuesNoAlloc: a packet through a peer device, wireguard-go's
// side of the TUN both ways and the RX device allocates nothing.
func TestWireGuardQueuesNoAlloc(t *testing.T) {
	b := &wgBackend{mtu: 1440}
	b.tun = &wgTUN{b: b, q: pktq.New(4, b.mtu)}
	b.rx = &wgRxDevice{q: pktq.New(4, b.mtu)}
	b.peers.Store(newWGTable([]Peer{{Name: "a", Addr: netip.MustParseAddrPort("192.0.2.1:51820"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}}, &wgTable{}))
	d := &wgPeerDevice{b: b, name: "a", done: make(chan struct{})}
	pkt := make([]byte, link.Headroom+1400)
	pkt[link.Headroom] = 0x45
	copy(pkt[link.Headroom+12:], []byte{10, 244, 1, 2}) // from a's pod
	bufs, sizes := [][]byte{make([]byte, 2048)}, make([]int, 1)
	in, out := [][]byte{pkt}, make([][]byte, 1)
	step := func() {
		if _, err := d.Write(in, link.Headroom); err != nil {
			t.Fatal(err)
		}
		if n, err := b.tun.Read(bufs, sizes, 16); n != 1 || err != nil {
			t.Fatal(n, err)
		}
		out[0] = bufs[0][:16+sizes[0]] // as wireguard-go hands it over
		if _, err := b.tun.Write(out, 16); err != nil {
			t.Fatal(err)
		}
		if n, err := b.rx.Read(bufs, sizes, link.Headroom); n != 1 || err != nil || sizes[0] != 1400 {
			t.Fatal(n, err, sizes[0])
		}
	}
	if a := testing.AllocsPerRun(100, step); a != 0 {
		t.Fatalf("%v allocations per packet", a)
	}
	// A full queue drops and counts; a packet over the MTU too.
	for range 5 {
		_, _ = d.Write(in, link.Headroom)
	}
	_, _ = d.Write([][]byte{make([]byte, link.Headroom+1441)}, link.Headroom)
	s := b.Stats()
	if s.Drops[underlay.DropQueueFull] != 1 || s.Drops[underlay.DropTooBig] != 1 {
		t.Fatalf("drops %v, want one queue-full and one too-big", s.Drops)
	}
	ps, _ := b.PeerStats("a")
	if ps.Drops[underlay.DropQueueFull] != 1 || ps.RxPackets != 101 || ps.RxBytes != 101*1400 || ps.TxPackets != 105 {
		// AllocsPerRun(100) runs step 101 times; then 4 more queued.
		t.Fatalf("a's stats %+v: want one queue-full drop, 101 packets received, 105 sent", ps)
	}
}

// BenchmarkBackendStream measures a windowed stream of 1400-byte IPv4
// packets (TCP-like: at most a window in flight, no retransmission) from a
// pod on one node to a pod on another, over udp and wireguard in the same
// run: pod port -> engine -> backend -> loopback -> backend -> engine ->
// pod port. Lost packets free their window slot after a short wait.
func BenchmarkBackendStream(b *testing.B) {
	for _, backend := range []string{"udp", BackendWireGuard} {
		b.Run(backend, func(b *testing.B) {
			n1, n2 := newBackendNode(b, backend, "10.244.1.0/24"), newBackendNode(b, backend, "10.244.2.0/24")
			if err := n1.SetPeers([]Peer{n2.peer("n2")}); err != nil {
				b.Fatal(err)
			}
			if err := n2.SetPeers([]Peer{n1.peer("n1")}); err != nil {
				b.Fatal(err)
			}
			pkt := n1.udp(n2.pod, strings.Repeat("x", 1400-header.IPv4MinimumSize-header.UDPMinimumSize))
			const batch, window = 32, 512
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = append(make([]byte, link.Headroom), pkt...)
			}
			// Warm up: the handshake.
			deadline := time.Now().Add(5 * time.Second)
			for n2.got.Load() == 0 {
				if time.Now().After(deadline) {
					b.Fatal("no packet through")
				}
				_, _ = n1.host.Write(bufs[:1], link.Headroom)
				time.Sleep(10 * time.Millisecond)
			}
			b.SetBytes(int64(len(pkt)))
			b.ReportAllocs()
			base := n2.got.Load()
			sent := uint64(0)
			b.ResetTimer()
			start := time.Now()
			for n2.got.Load()-base < uint64(b.N) {
				wait := time.Now()
				for sent-(n2.got.Load()-base) >= window && time.Since(wait) < 2*time.Millisecond {
					time.Sleep(20 * time.Microsecond)
				}
				if sent-(n2.got.Load()-base) >= window { // the rest of the window was lost
					sent = n2.got.Load() - base
				}
				if _, err := n1.host.Write(bufs, link.Headroom); err != nil {
					b.Fatal(err)
				}
				sent += batch
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)*float64(len(pkt))*8/el.Seconds()/1e9, "Gbit/s")
			b.ReportMetric(float64(b.N)/el.Seconds(), "pkt/s")
		})
	}
}
