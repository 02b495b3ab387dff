package underlay

// The underlay's trust boundary: a datagram is delivered only when it comes
// from a peer's endpoint (address and port, unless the peer sends from any
// port) and carries an inner packet whose source is the peer's (a podCIDR
// or a node address); every other datagram is dropped and counted by
// reason, on the peer when there is one.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/packet"
)

// ipv6From builds an IPv6/UDP packet from src (gVisor's header package).
func ipv6From(src string, payload int) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize+payload)
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(header.UDPMinimumSize + payload), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(netip.MustParseAddr(src).As16()),
		DstAddr: tcpip.AddrFrom16(netip.MustParseAddr("fd00:10:244:1::2").As16()),
	})
	header.UDP(b[header.IPv6MinimumSize:]).Encode(&header.UDPFields{SrcPort: 1, DstPort: 2, Length: uint16(header.UDPMinimumSize + payload)})
	return b
}

// wrap encapsulates ip as a peer sending to mac over vni would.
func wrap(e Encap, vni uint32, mac packet.MAC, ip []byte) []byte {
	if e == EncapUDP {
		return append([]byte{}, ip...)
	}
	tm := newTemplate(vni, mac, macB)
	d := append(tm[:], ip...)
	if t := etherType(ip); t != 0 {
		binary.BigEndian.PutUint16(d[vxlanEncapLen-2:], t)
	}
	return d
}

// udpSocket opens a UDP socket on addr (port 0: any) and closes it in
// cleanup.
func udpSocket(t *testing.T, addr string) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestPeerTrust(t *testing.T) {
	checkLeaks(t)
	good := ipv4Packet("10.244.2.2", "10.244.1.2", 16, 0x11)
	cutHeader := good[:19]
	cutPayload := good[:len(good)-1] // total length says one byte more
	badSum := append([]byte{}, good...)
	badSum[10] ^= 0xff
	badIHL := append([]byte{}, good...)
	badIHL[0] = 0x44
	cut6 := ipv6From("fd00:10:244:2::2", 16)
	cut6 = cut6[:len(cut6)-1]

	// The sockets the test sends from: the peer's endpoint, the peer's
	// address on another port, a stranger, a Linux-vxlan-like peer.
	const (
		fromPeer      = iota // 127.0.0.1:P, peer "a"
		fromOtherPort        // 127.0.0.1:Q
		fromStranger         // 127.0.0.2
		fromAnyPort          // 127.0.0.3:R, peer "f" (AnySourcePort, Addr port 8472)
	)
	cases := []struct {
		name    string
		encaps  []Encap // nil: both
		from    int
		payload func(e Encap, mac packet.MAC) []byte
		deliver bool
		why     DropReason // when not delivered
		peer    string     // the peer the drop is counted on ("": none)
	}{
		{name: "pod source", from: fromPeer, deliver: true,
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, good) }},
		{name: "pod source ipv6", from: fromPeer, deliver: true,
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, ipv6From("fd00:10:244:2::7", 8)) }},
		{name: "node address (the underlay address)", from: fromPeer, deliver: true,
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("127.0.0.1", "10.244.1.2", 8, 1))
			}},
		{name: "further node address", from: fromPeer, deliver: true,
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv6From("fd00:192::7", 8))
			}},
		{name: "foreign source", from: fromPeer, why: DropForeignSource, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("10.244.9.2", "10.244.1.2", 8, 1))
			}},
		{name: "another peer's pod source", from: fromPeer, why: DropForeignSource, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("10.244.3.2", "10.244.1.2", 8, 1))
			}},
		{name: "our own pod source", from: fromPeer, why: DropForeignSource, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("10.244.1.9", "10.244.1.2", 8, 1))
			}},
		{name: "foreign source ipv6", from: fromPeer, why: DropForeignSource, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, ipv6From("fd00:10:244:3::2", 8)) }},
		{name: "another peer's node address", from: fromPeer, why: DropForeignSource, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("127.0.0.3", "10.244.1.2", 8, 1))
			}},
		{name: "unknown sender", from: fromStranger, why: DropUnknownSender,
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, good) }},
		{name: "peer's address, another port", from: fromOtherPort, why: DropUnknownSender,
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, good) }},
		{name: "any-port peer from any port", from: fromAnyPort, deliver: true,
			payload: func(e Encap, m packet.MAC) []byte {
				return wrap(e, 1, m, ipv4Packet("10.244.3.2", "10.244.1.2", 8, 1))
			}},
		{name: "any-port peer, foreign source", from: fromAnyPort, why: DropForeignSource, peer: "f",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, good) }},
		{name: "wrong VNI", encaps: []Encap{EncapVXLAN}, from: fromPeer, why: DropWrongVNI, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 2, m, good) }},
		{name: "short vxlan header", encaps: []Encap{EncapVXLAN}, from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, nil)[:vxlanEncapLen-1] }},
		{name: "empty datagram", from: fromPeer, why: DropShort, peer: "a",
			payload: func(Encap, packet.MAC) []byte { return nil }},
		{name: "inner IPv4 header cut short", from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, cutHeader) }},
		{name: "inner IPv4 IHL below 5", from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, badIHL) }},
		{name: "inner IPv4 shorter than its total length", from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, cutPayload) }},
		{name: "inner IPv6 shorter than its payload length", from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, cut6) }},
		{name: "inner IPv4 one byte", from: fromPeer, why: DropShort, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, []byte{0x45}) }},
		{name: "bad inner checksum", from: fromPeer, why: DropBadChecksum, peer: "a",
			payload: func(e Encap, m packet.MAC) []byte { return wrap(e, 1, m, badSum) }},
	}
	for _, e := range []Encap{EncapUDP, EncapVXLAN} {
		for _, tc := range cases {
			if tc.encaps != nil && tc.encaps[0] != e {
				continue
			}
			t.Run(fmt.Sprintf("%v/%s", e, tc.name), func(t *testing.T) {
				u := newUnderlay(t, Config{Encap: e, VTEPMAC: macA})
				rx := collect(t, u.RxDevice())
				peerSock, peerAddr := udpSocket(t, "127.0.0.1:0")
				otherSock, _ := udpSocket(t, "127.0.0.1:0")
				strangerSock, _ := udpSocket(t, "127.0.0.2:0")
				anySock, _ := udpSocket(t, "127.0.0.3:0")
				peers := []Peer{
					{Name: "a", Addr: peerAddr, VTEPMAC: macB,
						PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")},
						NodeAddrs: []netip.Addr{netip.MustParseAddr("fd00:192::7")}},
					{Name: "f", Addr: netip.MustParseAddrPort("127.0.0.3:8472"), AnySourcePort: true, VTEPMAC: macB,
						PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}},
				}
				if err := u.SetPeers(peers); err != nil {
					t.Fatal(err)
				}
				sock := []*net.UDPConn{peerSock, otherSock, strangerSock, anySock}[tc.from]
				d := tc.payload(e, u.VTEPMAC())
				if _, err := sock.WriteToUDPAddrPort(d, u.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				if tc.deliver {
					got := receive(t, rx, 1)
					if want := d[e.HeaderLen():]; !bytes.Equal(got[0], want) {
						t.Fatalf("delivered %x, want %x", got[0], want)
					}
					if s := u.Stats(); s.TotalDrops() != 0 {
						t.Fatalf("drops %v", s.Drops)
					}
					return
				}
				waitDrops(t, u, tc.why, 1)
				// Then a good datagram from the peer comes through first:
				// the dropped one was not delivered.
				if _, err := peerSock.WriteToUDPAddrPort(wrap(e, 1, u.VTEPMAC(), good), u.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				if got := receive(t, rx, 1); !bytes.Equal(got[0], good) {
					t.Fatalf("delivered %x, want the good packet %x", got[0], good)
				}
				expectNothing(t, rx)
				s := u.Stats()
				if s.TotalDrops() != 1 {
					t.Errorf("drops %v, want only %v", s.Drops, tc.why)
				}
				for _, p := range peers {
					ps, ok := u.PeerStats(p.Name)
					if !ok {
						t.Fatalf("no stats of peer %s", p.Name)
					}
					want := uint64(0)
					if p.Name == tc.peer {
						want = 1
					}
					if ps.Drops[tc.why] != want || ps.TotalDrops() != want {
						t.Errorf("peer %s drops %v, want %d %v", p.Name, ps.Drops, want, tc.why)
					}
				}
				if ps, _ := u.PeerStats("a"); ps.RxPackets != 1 {
					t.Errorf("peer a delivered %d packets, want 1 (the good one)", ps.RxPackets)
				}
			})
		}
	}
}

// TestPeerTrustGRO: a peer's run of segments (one GRO super-datagram when
// the kernel coalesces them) with foreign sources in its middle loses just
// those, and the rest is delivered.
func TestPeerTrustGRO(t *testing.T) {
	checkLeaks(t)
	for _, e := range []Encap{EncapUDP, EncapVXLAN} {
		t.Run(e.String(), func(t *testing.T) {
			a := newUnderlay(t, Config{Encap: e})
			b := newUnderlay(t, Config{Encap: e})
			introduce(t, a, b)
			rx := collect(t, b.RxDevice())
			var pkts, want [][]byte
			for i := range 40 {
				src := "10.244.1.2"
				if i%10 == 5 {
					src = "10.244.7.2"
				}
				p := ipv4Packet(src, "10.244.2.2", 1000, byte(i))
				pkts = append(pkts, p)
				if i%10 != 5 {
					want = append(want, p)
				}
			}
			sendPackets(t, a.PeerDevice("b"), pkts)
			got := receive(t, rx, len(want))
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("packet %d differs", i)
				}
			}
			waitDrops(t, b, DropForeignSource, 4)
			if ps, _ := b.PeerStats("a"); ps.Drops[DropForeignSource] != 4 || ps.RxPackets != uint64(len(want)) {
				t.Fatalf("peer a stats %+v", ps)
			}
		})
	}
}

// TestPeerStatsTx: drops on the send side are counted on the peer too.
func TestPeerStatsTx(t *testing.T) {
	checkLeaks(t)
	a, _ := newPair(t, Config{Encap: EncapUDP})
	sendPackets(t, a.PeerDevice("b"), [][]byte{{0x00, 1, 2, 3}})
	sendPackets(t, a.PeerDevice("nobody"), [][]byte{ipv4Packet("10.244.1.2", "10.244.2.2", 8, 1)})
	ps, _ := a.PeerStats("b")
	if ps.Drops[DropNotIP] != 1 || ps.TotalDrops() != 1 {
		t.Fatalf("peer b drops %v, want one not-ip", ps.Drops)
	}
	if s := a.Stats(); s.Drops[DropNotIP] != 1 || s.Drops[DropNoPeer] != 1 || s.TotalDrops() != 2 {
		t.Fatalf("drops %v, want one not-ip and one no-peer", s.Drops)
	}
}

// TestPeerSources: the precomputed source set against netip.Prefix as the
// reference, on random prefixes and addresses (seeded).
func TestPeerSources(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var p Peer
		for range rnd.IntN(4) {
			p.PodCIDRs = append(p.PodCIDRs, rndPrefix(rnd, rnd.IntN(2) == 0))
		}
		for range rnd.IntN(3) {
			p.NodeAddrs = append(p.NodeAddrs, rndAddr(rnd, rnd.IntN(2) == 0))
		}
		p.Addr = netip.AddrPortFrom(rndAddr(rnd, rnd.IntN(2) == 0), 1)
		var s sources
		s.build(&p)
		for range 200 {
			var a netip.Addr
			if len(p.PodCIDRs) > 0 && rnd.IntN(2) == 0 {
				// An address near one of the prefixes.
				c := p.PodCIDRs[rnd.IntN(len(p.PodCIDRs))]
				b := c.Addr().AsSlice()
				b[len(b)-1-rnd.IntN(len(b))] ^= byte(1 << rnd.IntN(8))
				a, _ = netip.AddrFromSlice(b)
			} else {
				a = rndAddr(rnd, rnd.IntN(2) == 0)
			}
			want := a == p.Addr.Addr()
			for _, c := range p.PodCIDRs {
				want = want || c.Contains(a)
			}
			for _, n := range p.NodeAddrs {
				want = want || n == a
			}
			if got := s.containsAddr(a); got != want {
				t.Fatalf("peer %+v: contains(%s) = %v, want %v", p, a, got, want)
			}
		}
	}
}

func rndAddr(rnd *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		var b [16]byte
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return netip.AddrFrom16(b)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], rnd.Uint32())
	return netip.AddrFrom4(b)
}

func rndPrefix(rnd *rand.Rand, v6 bool) netip.Prefix {
	a := rndAddr(rnd, v6)
	return netip.PrefixFrom(a, rnd.IntN(a.BitLen()+1)).Masked()
}

// containsAddr is the per-packet check on a netip.Addr.
func (s *sources) containsAddr(a netip.Addr) bool {
	if a.Is4() {
		b := a.As4()
		return s.contains4(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	return s.contains6(binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]))
}
