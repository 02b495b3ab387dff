package engine

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/packet"
)

// offloadRig is an engine with two L2 pod ports on gsoDevs: a, whose worker
// the test drives itself (inject), and b, which takes no offloads, so that
// the engine finishes every checksum and cuts every super-packet it
// forwards there.
type offloadRig struct {
	e      *Engine
	w      *worker
	pa     *Port
	a, b   *gsoDev
	before PortStats
}

func newOffloadRig(t *testing.T) *offloadRig {
	t.Helper()
	e, err := New(Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	r := &offloadRig{e: e, a: newGSODev(packet.OffloadCsum | packet.OffloadTSO4 | packet.OffloadTSO6 | packet.OffloadUSO), b: newGSODev(0)}
	if r.pa, err = e.AddPort(r.a, PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(r.b, PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB, addrB6}}); err != nil {
		t.Fatal(err)
	}
	r.w = newWorker(e, r.pa)
	return r
}

// inject runs port a's forwarding path on one frame with descriptor g and
// returns the packets b received (IP, Ethernet header checked).
func (r *offloadRig) inject(t *testing.T, ip []byte, g packet.GSO) [][]byte {
	t.Helper()
	r.before = r.pa.Stats()
	f := eth(r.e, macA, ip)
	r.w.sizes[0] = copy(r.w.bufs[0][readOffset:], f)
	r.w.gso[0] = g
	r.w.process(1)
	r.b.mu.Lock()
	out := r.b.out
	r.b.out = nil
	r.b.mu.Unlock()
	var ips [][]byte
	for _, o := range out {
		if o.g != (packet.GSO{}) {
			t.Fatalf("wrote %+v to a port without offloads", o.g)
		}
		ips = append(ips, checkEth(t, r.e, o.b, macB))
	}
	return ips
}

// partial turns ip's transport checksum into a partial one (the pseudo-
// header sum, uncomplemented, as a kernel hands it over with
// CHECKSUM_PARTIAL) and returns the descriptor that says so.
func partial(ip []byte) packet.GSO {
	proto, src, dst, l4 := l4Of(ip)
	at := csumAt(proto)
	binary.BigEndian.PutUint16(l4[at:], header.PseudoHeaderChecksum(proto, taddr(src), taddr(dst), uint16(len(l4))))
	return packet.GSO{NeedsCsum: true, CsumStart: uint16(len(ip) - len(l4)), CsumOffset: uint16(at)}
}

// super makes ip (with a partial checksum) a super-packet of size-byte
// segments.
func super(ip []byte, typ packet.GSOType, size int) packet.GSO {
	g := partial(ip)
	g.Type, g.Size = typ, uint16(size)
	g.HdrLen = g.CsumStart + header.UDPMinimumSize
	if typ != packet.GSOUDPL4 {
		g.HdrLen = g.CsumStart + header.TCPMinimumSize
	}
	return g
}

func TestOffloadDescriptors(t *testing.T) {
	tcp4 := func() []byte {
		return ipPacket(addrA, addrB, header.TCPProtocolNumber, tcpSeg(40000, 80, header.TCPFlagAck, 1, 1, 3000))
	}
	udp4 := func() []byte { return ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(4000, 53, 3000)) }
	tcp6 := func() []byte {
		return ipPacket(addrA6, addrB6, header.TCPProtocolNumber, tcpSeg(40000, 80, header.TCPFlagAck, 1, 1, 3000))
	}
	udp6 := func() []byte { return ipPacket(addrA6, addrB6, header.UDPProtocolNumber, udpSeg(4000, 53, 3000)) }
	small := func(mk func() []byte) func() []byte {
		return func() []byte {
			// The same packet with 200 bytes of payload: no super-packet.
			ip := mk()
			v4 := ip[0]>>4 == 4
			proto, _, _, l4 := l4Of(ip)
			hl := len(ip) - len(l4)
			n := hl + len(l4) - 2800
			ip = ip[:n]
			if v4 {
				binary.BigEndian.PutUint16(ip[2:], uint16(n))
				header.IPv4(ip).SetChecksum(0)
				header.IPv4(ip).SetChecksum(^header.IPv4(ip).CalculateChecksum())
			} else {
				binary.BigEndian.PutUint16(ip[4:], uint16(n-hl))
			}
			if proto == header.UDPProtocolNumber {
				binary.BigEndian.PutUint16(ip[hl+4:], uint16(n-hl))
			}
			fillL4Checksum(ip)
			return ip
		}
	}
	icmp6 := func() []byte { return ipPacket(addrA6, addrB6, header.ICMPv6ProtocolNumber, echo(true, false, 7, 1)) }
	icmp4 := func() []byte { return ipPacket(addrA, addrB, header.ICMPv4ProtocolNumber, echo(false, false, 7, 1)) }
	frag4 := func() []byte {
		ip := small(udp4)()
		binary.BigEndian.PutUint16(ip[6:], header.IPv4FlagMoreFragments<<13)
		header.IPv4(ip).SetChecksum(0)
		header.IPv4(ip).SetChecksum(^header.IPv4(ip).CalculateChecksum())
		return ip
	}
	with := func(f func(*packet.GSO)) func([]byte) packet.GSO {
		return func(ip []byte) packet.GSO {
			g := partial(ip)
			f(&g)
			return g
		}
	}
	superWith := func(typ packet.GSOType, f func(*packet.GSO)) func([]byte) packet.GSO {
		return func(ip []byte) packet.GSO {
			g := super(ip, typ, 1000)
			f(&g)
			return g
		}
	}
	same := func(*packet.GSO) {}

	bad := []struct {
		name string
		ip   func() []byte
		g    func([]byte) packet.GSO
	}{
		// The attack: the checksum is "finished" inside the IPv6 source
		// address, after the source check.
		{"csum-in-ipv6-source", small(udp6), with(func(g *packet.GSO) { g.CsumStart, g.CsumOffset = 8, 14 })},
		{"csum-start-in-ipv6-header", small(udp6), with(func(g *packet.GSO) { g.CsumStart = 24 })},
		{"csum-start-in-ipv4-header", small(udp4), with(func(g *packet.GSO) { g.CsumStart, g.CsumOffset = 0, 12 })},
		{"csum-start-past-l4", small(tcp4), with(func(g *packet.GSO) { g.CsumStart += 4; g.CsumOffset -= 4 })},
		{"udp-csum-offset-of-tcp", small(udp4), with(func(g *packet.GSO) { g.CsumOffset = 16 })},
		{"tcp-csum-offset-of-udp", small(tcp6), with(func(g *packet.GSO) { g.CsumOffset = 6 })},
		{"tcp-csum-offset-in-payload", small(tcp4), with(func(g *packet.GSO) { g.CsumOffset = 100 })},
		{"icmpv6-csum-offset-wrong", icmp6, with(func(g *packet.GSO) { g.CsumOffset = 4 })},
		{"icmpv4-partial", icmp4, with(same)},
		{"partial-on-fragment", frag4, with(same)},
		{"csum-offset-past-end", small(udp4), with(func(g *packet.GSO) { g.CsumOffset = 60000 })},
		{"tso4-on-ipv6", tcp6, superWith(packet.GSOTCPv4, same)},
		{"tso4-on-udp", udp4, superWith(packet.GSOTCPv4, func(g *packet.GSO) { g.HdrLen += 12 })},
		{"tso6-on-ipv4", tcp4, superWith(packet.GSOTCPv6, same)},
		{"uso-on-tcp", tcp4, superWith(packet.GSOUDPL4, func(g *packet.GSO) { g.HdrLen += 12 })},
		{"gso-unknown-type", tcp4, superWith(3, same)},
		{"gso-size-zero", tcp4, superWith(packet.GSOTCPv4, func(g *packet.GSO) { g.Size = 0 })},
		{"gso-hdrlen-short", tcp4, superWith(packet.GSOTCPv4, func(g *packet.GSO) { g.HdrLen -= 10 })},
		{"gso-hdrlen-long", udp6, superWith(packet.GSOUDPL4, func(g *packet.GSO) { g.HdrLen += 100 })},
		{"gso-without-partial-csum", tcp6, superWith(packet.GSOTCPv6, func(g *packet.GSO) { g.NeedsCsum = false })},
		{"gso-csum-in-ipv6-source", udp6, superWith(packet.GSOUDPL4, func(g *packet.GSO) { g.CsumStart, g.CsumOffset = 8, 14 })},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			r := newOffloadRig(t)
			ip := c.ip()
			g := c.g(ip)
			if out := r.inject(t, ip, g); len(out) != 0 {
				t.Fatalf("forwarded %d packets (first from % x), want a drop", len(out), out[0][:40])
			}
			s := r.pa.Stats()
			if got := s.Drops[DropBadOffload] - r.before.Drops[DropBadOffload]; got != 1 || s.TotalDrops()-r.before.TotalDrops() != 1 {
				t.Fatalf("drops %v, want one %v", s.Drops, DropBadOffload)
			}
		})
	}

	good := []struct {
		name string
		ip   func() []byte
		g    func([]byte) packet.GSO
		segs int
	}{
		{"none", small(udp4), func([]byte) packet.GSO { return packet.GSO{} }, 1},
		{"tcp4-partial", small(tcp4), partial, 1},
		{"udp4-partial", small(udp4), partial, 1},
		{"tcp6-partial", small(tcp6), partial, 1},
		{"udp6-partial", small(udp6), partial, 1},
		{"icmpv6-partial", icmp6, partial, 1},
		{"tso4", tcp4, superWith(packet.GSOTCPv4, same), 3},
		{"tso6", tcp6, superWith(packet.GSOTCPv6, same), 3},
		{"uso4", udp4, superWith(packet.GSOUDPL4, same), 3},
		{"uso6", udp6, superWith(packet.GSOUDPL4, same), 3},
	}
	for _, c := range good {
		t.Run(c.name, func(t *testing.T) {
			r := newOffloadRig(t)
			ip := c.ip()
			_, src, _, _ := l4Of(ip)
			out := r.inject(t, ip, c.g(ip))
			if s := r.pa.Stats(); s.TotalDrops() != r.before.TotalDrops() {
				t.Fatalf("dropped: %v", s.Drops)
			}
			if len(out) != c.segs {
				t.Fatalf("%d packets forwarded, want %d", len(out), c.segs)
			}
			for _, o := range out {
				if _, s, _, _ := l4Of(o); s != src {
					t.Fatalf("source %s, want %s", s, src)
				}
				checkSums(t, o)
			}
		})
	}
}
