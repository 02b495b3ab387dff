package underlay

// Two underlays over loopback: what one's peer device sends, the other's
// RX device delivers, byte for byte; what comes from elsewhere does not.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	lo4 = netip.MustParseAddrPort("127.0.0.1:0")
	lo6 = netip.MustParseAddrPort("[::1]:0")
)

// checkLeaks fails the test if goroutines it started outlive its cleanups.
func checkLeaks(t *testing.T) { t.Helper(); leaktest.Check(t, 2*time.Second) }

func newUnderlay(t testing.TB, cfg Config) *Underlay {
	t.Helper()
	if !cfg.Listen.IsValid() {
		cfg.Listen = lo4
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if tt, ok := t.(*testing.T); ok && cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(tt)
	}
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	return u
}

// Pod addresses of the nodes a and b: the tests' packets come from a's.
var (
	podCIDRsA = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	podCIDRsB = []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")}
)

// introduce puts each underlay in the other's table, named "a" and "b",
// with podCIDRs podCIDRsA and podCIDRsB.
func introduce(t testing.TB, a, b *Underlay) {
	t.Helper()
	if err := a.UpsertPeer(Peer{Name: "b", Addr: b.LocalAddr(), VTEPMAC: b.VTEPMAC(), PodCIDRs: podCIDRsB}); err != nil {
		t.Fatal(err)
	}
	if err := b.UpsertPeer(Peer{Name: "a", Addr: a.LocalAddr(), VTEPMAC: a.VTEPMAC(), PodCIDRs: podCIDRsA}); err != nil {
		t.Fatal(err)
	}
}

// newPair returns two underlays with cfg that know each other as peers
// "a" and "b".
func newPair(t testing.TB, cfg Config) (a, b *Underlay) {
	t.Helper()
	a, b = newUnderlay(t, cfg), newUnderlay(t, cfg)
	introduce(t, a, b)
	return a, b
}

// collect reads dev until it closes and passes copies of the packets on.
// The reader stops in cleanup.
func collect(t testing.TB, dev link.Device) <-chan []byte {
	ch := make(chan []byte, 4096)
	done, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		bufs := make([][]byte, dev.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, link.Headroom+9000)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := dev.Read(bufs, sizes, link.Headroom)
			for i := range n {
				select {
				case ch <- bytes.Clone(bufs[i][link.Headroom : link.Headroom+sizes[i]]):
				case <-stop:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		_ = dev.Close()
		<-done
	})
	return ch
}

func receive(t testing.TB, ch <-chan []byte, n int) [][]byte {
	t.Helper()
	var got [][]byte
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case p := <-ch:
			got = append(got, p)
		case <-timeout:
			t.Fatalf("received %d packets of %d", len(got), n)
		}
	}
	return got
}

func expectNothing(t testing.TB, ch <-chan []byte) {
	t.Helper()
	select {
	case p := <-ch:
		t.Fatalf("unexpected packet %x", p)
	case <-time.After(50 * time.Millisecond):
	}
}

// sendPackets writes pkts (copied behind headroom) to dev in one batch.
func sendPackets(t testing.TB, dev link.Device, pkts [][]byte) {
	t.Helper()
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = withHeadroom(p)
	}
	if n, err := dev.Write(bufs, link.Headroom); err != nil || n != len(pkts) {
		t.Fatalf("Write = %d, %v; want %d", n, err, len(pkts))
	}
}

func TestLoopback(t *testing.T) {
	for _, encap := range []Encap{EncapUDP, EncapVXLAN} {
		for _, listen := range []netip.AddrPort{lo4, lo6} {
			for _, noOffload := range []bool{false, true} {
				name := fmt.Sprintf("%v/%v/offload=%v", encap, listen.Addr(), !noOffload)
				t.Run(name, func(t *testing.T) {
					checkLeaks(t)
					cfg := Config{Encap: encap, Listen: listen, NoOffload: noOffload}
					a, b := newPair(t, cfg)
					rx := collect(t, b.RxDevice())
					dev := a.PeerDevice("b")
					// A burst of equal-sized packets (one GSO message when
					// offloads are on), a shorter one ending it, and mixed
					// sizes; IPv6 too.
					var pkts [][]byte
					for i := range 100 {
						pkts = append(pkts, ipv4Packet("10.244.1.2", "10.244.2.2", 1000, byte(i)))
					}
					pkts = append(pkts, ipv4Packet("10.244.1.2", "10.244.2.2", 10, 0xee))
					for i := range 20 {
						pkts = append(pkts, ipv4Packet("10.244.1.2", "10.244.2.2", 1+i*70, byte(i)))
					}
					pkts = append(pkts, ipv6Packet(500), ipv4Packet("10.244.1.2", "10.244.2.2", a.MTU()-28, 7))
					sendPackets(t, dev, pkts)
					got := receive(t, rx, len(pkts))
					for i := range pkts {
						if !bytes.Equal(got[i], pkts[i]) {
							t.Fatalf("packet %d differs:\n got %x\nwant %x", i, got[i], pkts[i])
						}
					}
					expectNothing(t, rx)
					sa, sb := a.Stats(), b.Stats()
					if sa.TxPackets != uint64(len(pkts)) || sb.RxPackets != uint64(len(pkts)) || sa.TxBytes != sb.RxBytes {
						t.Errorf("tx %d pkts %d B, rx %d pkts %d B; want %d pkts each", sa.TxPackets, sa.TxBytes, sb.RxPackets, sb.RxBytes, len(pkts))
					}
					if sa.TotalDrops() != 0 || sb.TotalDrops() != 0 {
						t.Errorf("drops: a %v, b %v", sa.Drops, sb.Drops)
					}
					gso, gro := a.Offloads()
					if noOffload && (gso || gro || sa.TxGSO != 0 || sb.RxGRO != 0) {
						t.Errorf("offloads used although disabled: %+v %+v", sa, sb)
					}
					if gso && sa.TxGSO == 0 {
						t.Errorf("GSO on, but no GSO send: %+v", sa)
					}
					if gso && sa.TxCalls > 3 {
						t.Errorf("%d sendmmsg calls for one batch", sa.TxCalls)
					}
					if gso && gro && sb.RxGRO == 0 {
						t.Errorf("GSO and GRO on over loopback, but no GRO receive: %+v", sb)
					}
					ps, ok := a.PeerStats("b")
					if !ok || ps.TxPackets != uint64(len(pkts)) {
						t.Errorf("peer b stats %+v, %v", ps, ok)
					}
					ps, ok = b.PeerStats("a")
					if !ok || ps.RxPackets != uint64(len(pkts)) || ps.RxBytes != sb.RxBytes {
						t.Errorf("peer a stats %+v, %v", ps, ok)
					}
				})
			}
		}
	}
}

// TestLargeBatch sends more than one sendmmsg batch in one Write.
func TestLargeBatch(t *testing.T) {
	checkLeaks(t)
	a, b := newPair(t, Config{Encap: EncapVXLAN})
	rx := collect(t, b.RxDevice())
	var pkts [][]byte
	for i := range 3*batchSize + 5 {
		pkts = append(pkts, ipv4Packet("10.244.1.2", "10.244.2.2", 1400, byte(i)))
	}
	sendPackets(t, a.PeerDevice("b"), pkts)
	got := receive(t, rx, len(pkts))
	for i := range pkts {
		if !bytes.Equal(got[i], pkts[i]) {
			t.Fatalf("packet %d differs", i)
		}
	}
}

// inject sends raw UDP payloads to u from a socket bound to from.
func inject(t testing.TB, from netip.AddrPort, to *Underlay, payloads ...[]byte) {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(from))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range payloads {
		if _, err := c.WriteToUDPAddrPort(p, to.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
}

// waitDrops waits until u has counted want drops for reason r.
func waitDrops(t testing.TB, u *Underlay, r DropReason, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for u.Stats().Drops[r] != want {
		if time.Now().After(deadline) {
			t.Fatalf("drops %v = %d, want %d (all: %v)", r, u.Stats().Drops[r], want, u.Stats().Drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReceiveChecks(t *testing.T) {
	checkLeaks(t)
	ip := ipv4Packet("10.244.2.2", "10.244.1.2", 32, 0x42)
	vx := func(vni uint32, dst packet.MAC) []byte {
		tm := newTemplate(vni, dst, macB)
		return append(tm[:], ip...)
	}

	t.Run("udp: source address and port must be a peer's", func(t *testing.T) {
		b := newUnderlay(t, Config{Encap: EncapUDP})
		rx := collect(t, b.RxDevice())
		known, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer known.Close()
		kap := known.LocalAddr().(*net.UDPAddr).AddrPort()
		if err := b.SetPeers([]Peer{{Name: "a", Addr: kap, PodCIDRs: podCIDRsB}}); err != nil {
			t.Fatal(err)
		}
		// Same address, another port: not the peer.
		inject(t, lo4, b, ip)
		inject(t, netip.MustParseAddrPort("127.0.0.2:0"), b, ip)
		waitDrops(t, b, DropUnknownSender, 2)
		expectNothing(t, rx)
		// The peer itself is delivered (so the drops above were decisions).
		if _, err := known.WriteToUDPAddrPort(ip, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, rx, 1); !bytes.Equal(got[0], ip) {
			t.Fatalf("got %x", got[0])
		}
	})

	t.Run("vxlan: source address, VNI and inner MAC", func(t *testing.T) {
		b := newUnderlay(t, Config{Encap: EncapVXLAN, VTEPMAC: macA})
		rx := collect(t, b.RxDevice())
		// A Linux vxlan peer hashes the flow into the source port, so
		// any port of 127.0.0.1 is that peer.
		if err := b.SetPeers([]Peer{{Name: "k", Addr: netip.MustParseAddrPort("127.0.0.1:8472"), AnySourcePort: true, VTEPMAC: macB, PodCIDRs: podCIDRsB}}); err != nil {
			t.Fatal(err)
		}
		inject(t, netip.MustParseAddrPort("127.0.0.2:0"), b, vx(1, macA))
		waitDrops(t, b, DropUnknownSender, 1)
		inject(t, lo4, b, vx(2, macA), vx(1, macB), vx(1, packet.Broadcast), []byte{8, 0, 0})
		waitDrops(t, b, DropWrongVNI, 1)
		waitDrops(t, b, DropWrongMAC, 2)
		waitDrops(t, b, DropShort, 1)
		expectNothing(t, rx)
		inject(t, lo4, b, vx(1, macA))
		if got := receive(t, rx, 1); !bytes.Equal(got[0], ip) {
			t.Fatalf("got %x", got[0])
		}
	})
}

func TestPeerTable(t *testing.T) {
	checkLeaks(t)
	u := newUnderlay(t, Config{Encap: EncapVXLAN})
	p1 := Peer{Name: "n1", Addr: netip.MustParseAddrPort("127.0.0.1:1001"), VTEPMAC: macA, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	p2 := Peer{Name: "n2", Addr: netip.MustParseAddrPort("127.0.0.1:1002"), VTEPMAC: macB}
	bad := []struct {
		name  string
		peers []Peer
	}{
		{"no name", []Peer{{Addr: p1.Addr, VTEPMAC: macA}}},
		{"no address", []Peer{{Name: "x", VTEPMAC: macA}}},
		{"no port", []Peer{{Name: "x", Addr: netip.MustParseAddrPort("127.0.0.1:0"), VTEPMAC: macA}}},
		{"ipv6 peer on an ipv4 underlay", []Peer{{Name: "x", Addr: netip.MustParseAddrPort("[::1]:1"), VTEPMAC: macA}}},
		{"vxlan without MAC", []Peer{{Name: "x", Addr: p1.Addr}}},
		{"multicast MAC", []Peer{{Name: "x", Addr: p1.Addr, VTEPMAC: packet.Broadcast}}},
		{"duplicate name", []Peer{p1, {Name: "n1", Addr: p2.Addr, VTEPMAC: macB}}},
		{"duplicate address", []Peer{p1, {Name: "n3", Addr: p1.Addr, VTEPMAC: macB}}},
		{"our own address", []Peer{{Name: "me", Addr: u.LocalAddr(), VTEPMAC: macA}}},
		{"unmasked podCIDR", []Peer{{Name: "x", Addr: p1.Addr, VTEPMAC: macA, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24")}}}},
		{"mapped podCIDR", []Peer{{Name: "x", Addr: p1.Addr, VTEPMAC: macA, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.244.1.0/120")}}}},
		{"unspecified node address", []Peer{{Name: "x", Addr: p1.Addr, VTEPMAC: macA, NodeAddrs: []netip.Addr{netip.IPv4Unspecified()}}}},
		{"invalid node address", []Peer{{Name: "x", Addr: p1.Addr, VTEPMAC: macA, NodeAddrs: []netip.Addr{{}}}}},
	}
	for _, tc := range bad {
		if err := u.SetPeers(tc.peers); !errors.Is(err, ErrBadPeer) {
			t.Errorf("%s: SetPeers: %v, want ErrBadPeer", tc.name, err)
		}
	}
	if err := u.SetPeers([]Peer{p2, p1}); err != nil {
		t.Fatal(err)
	}
	got := u.Peers()
	if len(got) != 2 || got[0].Name != "n1" || got[1].Name != "n2" || got[0].PodCIDRs[0] != p1.PodCIDRs[0] {
		t.Fatalf("Peers() = %+v", got)
	}
	// A failed update leaves the table as it was.
	if err := u.UpsertPeer(Peer{Name: "n3", Addr: p1.Addr, VTEPMAC: macA}); err == nil {
		t.Fatal("UpsertPeer with a taken address succeeded")
	}
	if len(u.Peers()) != 2 {
		t.Fatal("a failed update changed the table")
	}
	if !u.RemovePeer("n1") || u.RemovePeer("n1") {
		t.Fatal("RemovePeer: want true, then false")
	}
	if got := u.Peers(); len(got) != 1 || got[0].Name != "n2" {
		t.Fatalf("Peers() = %+v", got)
	}
	// Two peers behind one address (the loopback lab) are told apart by
	// port even over vxlan.
	t1 := u.peers.Load()
	if err := u.SetPeers([]Peer{p1, p2}); err != nil {
		t.Fatal(err)
	}
	t2 := u.peers.Load()
	if t1 == t2 {
		t.Fatal("SetPeers did not publish a new snapshot")
	}
	if p := lookupSource(t2, p2.Addr); p == nil || p.Name != "n2" {
		t.Fatalf("lookup %s = %+v", p2.Addr, p)
	}
	if p := lookupSource(t2, netip.MustParseAddrPort("127.0.0.1:9")); p != nil {
		t.Fatalf("another port matched %s", p.Name)
	}
	// Peers that send from any port: one alone at its address matches any
	// port; two at one address match only their own.
	p1.AnySourcePort = true
	if err := u.SetPeers([]Peer{p1, p2}); err != nil {
		t.Fatal(err)
	}
	if p := lookupSource(u.peers.Load(), netip.MustParseAddrPort("127.0.0.1:9")); p == nil || p.Name != "n1" {
		t.Fatalf("any-port peer: lookup = %+v", p)
	}
	p2.AnySourcePort = true
	if err := u.SetPeers([]Peer{p1, p2}); err != nil {
		t.Fatal(err)
	}
	t3 := u.peers.Load()
	if p := lookupSource(t3, netip.MustParseAddrPort("127.0.0.1:9")); p != nil {
		t.Fatalf("ambiguous address matched %s", p.Name)
	}
	if p := lookupSource(t3, p2.Addr); p == nil || p.Name != "n2" {
		t.Fatalf("lookup %s = %+v", p2.Addr, p)
	}
}

// TestPeerChangesWhileSending swaps the table under a sender (run it with
// -race): a packet goes out under one snapshot or the other, and the peer
// counters survive updates.
func TestPeerChangesWhileSending(t *testing.T) {
	checkLeaks(t)
	a, b := newPair(t, Config{Encap: EncapUDP})
	rx := collect(t, b.RxDevice())
	dev := a.PeerDevice("b")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bufs := [][]byte{withHeadroom(ipv4Packet("10.244.1.2", "10.244.2.2", 100, 1))}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := dev.Write(bufs, link.Headroom); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	other := Peer{Name: "c", Addr: netip.MustParseAddrPort("127.0.0.1:9")}
	for i := range 300 {
		var err error
		switch i % 3 {
		case 0:
			err = a.SetPeers([]Peer{{Name: "b", Addr: b.LocalAddr()}, other})
		case 1:
			a.RemovePeer("b")
		case 2:
			err = a.UpsertPeer(Peer{Name: "b", Addr: b.LocalAddr()})
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Microsecond)
	}
	close(stop)
	wg.Wait()
	st := a.Stats()
	if st.Drops[DropNoPeer] == 0 || st.TxPackets == 0 {
		t.Errorf("want packets both sent and dropped for lack of a peer: %+v", st)
	}
	receive(t, rx, 1)

	// Counters stay with a peer across updates that keep it.
	if err := a.SetPeers([]Peer{{Name: "b", Addr: b.LocalAddr()}}); err != nil {
		t.Fatal(err)
	}
	base, _ := a.PeerStats("b")
	sendPackets(t, dev, [][]byte{ipv4Packet("10.0.0.1", "10.0.0.2", 1, 1)})
	if err := a.UpsertPeer(Peer{Name: "b", Addr: b.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeers([]Peer{{Name: "b", Addr: b.LocalAddr()}, other}); err != nil {
		t.Fatal(err)
	}
	if ps, _ := a.PeerStats("b"); ps.TxPackets != base.TxPackets+1 {
		t.Errorf("peer b sent %d after updates, want %d", ps.TxPackets, base.TxPackets+1)
	}
}

func TestClose(t *testing.T) {
	checkLeaks(t)
	u := newUnderlay(t, Config{Encap: EncapUDP})
	if err := u.UpsertPeer(Peer{Name: "p", Addr: netip.MustParseAddrPort("127.0.0.1:9")}); err != nil {
		t.Fatal(err)
	}
	peer, rx := u.PeerDevice("p"), u.RxDevice()
	errc := make(chan error, 2)
	for _, d := range []link.Device{peer, rx} {
		go func() {
			bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
			_, err := d.Read(bufs, sizes, link.Headroom)
			errc <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := rx.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, link.ErrClosed) {
		t.Fatalf("rx Read after Close: %v", err)
	}
	// The socket still sends for the peers.
	if n, err := peer.Write([][]byte{withHeadroom(ipv4Packet("10.0.0.1", "10.0.0.2", 1, 1))}, link.Headroom); n != 1 || err != nil {
		t.Fatalf("peer Write after rx Close = %d, %v", n, err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, link.ErrClosed) {
		t.Fatalf("peer Read after underlay Close: %v", err)
	}
	if _, err := peer.Write([][]byte{withHeadroom(ipv4Packet("10.0.0.1", "10.0.0.2", 1, 1))}, link.Headroom); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("peer Write after underlay Close: %v", err)
	}
	if err := u.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_ = peer.Close()
	_ = peer.Close()
}

func TestConfig(t *testing.T) {
	checkLeaks(t)
	bad := []struct {
		name string
		cfg  Config
		want error
	}{
		{"no encap", Config{Listen: lo4}, ErrBadEncap},
		{"no listen", Config{Encap: EncapUDP}, ErrBadConfig},
		{"multicast listen", Config{Encap: EncapUDP, Listen: netip.MustParseAddrPort("224.0.0.1:0")}, ErrBadConfig},
		{"VNI too large", Config{Encap: EncapVXLAN, Listen: lo4, VNI: 1 << 24}, ErrBadConfig},
		{"multicast VTEP MAC", Config{Encap: EncapVXLAN, Listen: lo4, VTEPMAC: packet.Broadcast}, ErrBadConfig},
		{"MTU too small", Config{Encap: EncapUDP, Listen: lo4, MTU: 500}, ErrBadConfig},
		{"MTU too large", Config{Encap: EncapUDP, Listen: lo4, MTU: 70000}, ErrBadConfig},
		{"no such interface", Config{Encap: EncapUDP, Listen: lo4, Interface: "prt-nonexistent0"}, ErrBadConfig},
	}
	for _, tc := range bad {
		if u, err := New(tc.cfg); !errors.Is(err, tc.want) {
			if u != nil {
				_ = u.Close()
			}
			t.Errorf("%s: New: %v, want %v", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct {
		cfg       Config
		mtu, umtu int
	}{
		{Config{Encap: EncapUDP, Listen: lo4, MTU: 1500}, 1472, 1500},
		{Config{Encap: EncapVXLAN, Listen: lo4, MTU: 1500}, 1450, 1500},
		{Config{Encap: EncapVXLAN, Listen: lo6, MTU: 1500}, 1430, 1500},
		// Derived from the interface holding the address (lo: 65536,
		// capped to the largest IP packet).
		{Config{Encap: EncapUDP, Listen: lo4}, 65535 - 28, 65535},
		{Config{Encap: EncapUDP, Listen: lo4, Interface: "lo"}, 65535 - 28, 65535},
	} {
		u, err := New(tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if u.MTU() != tc.mtu || u.UnderlayMTU() != tc.umtu {
			t.Errorf("%v %v: MTU %d / %d, want %d / %d", tc.cfg.Encap, tc.cfg.Listen, u.MTU(), u.UnderlayMTU(), tc.mtu, tc.umtu)
		}
	}
	u := newUnderlay(t, Config{Encap: EncapVXLAN})
	if u.VNI() != DefaultVNI || u.VTEPMAC() == (packet.MAC{}) || u.VTEPMAC().IsMulticast() || u.VTEPMAC()[0]&2 == 0 {
		t.Errorf("defaults: VNI %d, VTEP MAC %s (want locally administered unicast)", u.VNI(), u.VTEPMAC())
	}
	if u.LocalAddr().Port() == 0 {
		t.Error("LocalAddr has no port")
	}
	if m, err := MTUFromInterface("lo"); err != nil || m != 65536 {
		t.Errorf("MTUFromInterface(lo) = %d, %v", m, err)
	}
}

func TestNotIPDropped(t *testing.T) {
	checkLeaks(t)
	a, b := newPair(t, Config{Encap: EncapVXLAN})
	rx := collect(t, b.RxDevice())
	sendPackets(t, a.PeerDevice("b"), [][]byte{{0x00, 1, 2, 3}, ipv4Packet("10.244.1.2", "10.244.2.2", 8, 3)})
	if got := receive(t, rx, 1); len(got[0]) != 36 {
		t.Fatalf("got %x", got[0])
	}
	if d := a.Stats().Drops[DropNotIP]; d != 1 {
		t.Fatalf("not-ip drops %d, want 1", d)
	}
	// The RX device is nobody's next hop: what it is given is dropped.
	if n, err := b.RxDevice().Write([][]byte{withHeadroom(ipv4Packet("10.0.0.1", "10.0.0.2", 8, 3))}, link.Headroom); n != 1 || err != nil {
		t.Fatalf("rx Write = %d, %v", n, err)
	}
}

// TestZeroAllocs: the encapsulation and send path, and the receive and
// decapsulation path, allocate nothing per batch.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("skipped under -race: sync.Pool drops items at random there, by design")
	}
	for _, encap := range []Encap{EncapUDP, EncapVXLAN} {
		t.Run(encap.String(), func(t *testing.T) {
			a, b := newPair(t, Config{Encap: encap})
			dev, rx := a.PeerDevice("b"), b.RxDevice()
			const batch = 32
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = withHeadroom(ipv4Packet("10.244.1.2", "10.244.2.2", 1200, byte(i)))
			}
			rbufs := make([][]byte, batchSize)
			for i := range rbufs {
				rbufs[i] = make([]byte, link.Headroom+2048)
			}
			sizes := make([]int, batchSize)
			round := func() {
				if _, err := dev.Write(bufs, link.Headroom); err != nil {
					t.Fatal(err)
				}
				for got := 0; got < batch; {
					n, err := rx.Read(rbufs, sizes, link.Headroom)
					if err != nil {
						t.Fatal(err)
					}
					got += n
				}
			}
			round()
			if n := testing.AllocsPerRun(100, round); n != 0 {
				t.Fatalf("%v allocations per batch of %d, want 0", n, batch)
			}
		})
	}
}
