package conntrack_test

// NAT rewrites checked against gVisor's header package: every packet here
// is built by gVisor (checksums included), translated by Rewrite, and must
// equal, byte for byte, the packet gVisor builds with the translated
// addresses from scratch -- and gVisor must find its checksums valid.

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

func gvAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// spec describes a packet for build.
type spec struct {
	proto    uint8 // TCP, UDP, ICMPv4 or ICMPv6
	src, dst netip.AddrPort
	flags    header.TCPFlags
	echo     bool // ICMP: echo request (ident = src port) or reply (ident = dst port)
	noCsum   bool // UDP over IPv4 without checksum
	payload  []byte
}

// l4 builds the transport part with a valid checksum.
func (s spec) l4() []byte {
	src, dst := gvAddr(s.src.Addr()), gvAddr(s.dst.Addr())
	var b []byte
	switch s.proto {
	case packet.ProtoTCP:
		b = make([]byte, header.TCPMinimumSize+len(s.payload))
		copy(b[header.TCPMinimumSize:], s.payload)
		h := header.TCP(b)
		h.Encode(&header.TCPFields{SrcPort: s.src.Port(), DstPort: s.dst.Port(), SeqNum: 0x01020304, AckNum: 0x0a0b0c0d,
			DataOffset: header.TCPMinimumSize, Flags: s.flags, WindowSize: 29200})
		x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(b)))
		h.SetChecksum(^h.CalculateChecksum(checksum.Checksum(s.payload, x)))
	case packet.ProtoUDP:
		b = make([]byte, header.UDPMinimumSize+len(s.payload))
		copy(b[header.UDPMinimumSize:], s.payload)
		h := header.UDP(b)
		h.Encode(&header.UDPFields{SrcPort: s.src.Port(), DstPort: s.dst.Port(), Length: uint16(len(b))})
		if !s.noCsum {
			x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(b)))
			h.SetChecksum(^h.CalculateChecksum(checksum.Checksum(s.payload, x)))
		}
	case packet.ProtoICMPv4:
		b = make([]byte, header.ICMPv4MinimumSize+len(s.payload))
		copy(b[header.ICMPv4MinimumSize:], s.payload)
		h := header.ICMPv4(b)
		h.SetType(header.ICMPv4Echo)
		h.SetIdent(s.src.Port())
		if !s.echo {
			h.SetType(header.ICMPv4EchoReply)
			h.SetIdent(s.dst.Port())
		}
		h.SetSequence(7)
		h.SetChecksum(header.ICMPv4Checksum(h[:header.ICMPv4MinimumSize], checksum.Checksum(s.payload, 0)))
	case packet.ProtoICMPv6:
		b = make([]byte, header.ICMPv6EchoMinimumSize+len(s.payload))
		copy(b[header.ICMPv6EchoMinimumSize:], s.payload)
		h := header.ICMPv6(b)
		h.SetType(header.ICMPv6EchoRequest)
		h.SetIdent(s.src.Port())
		if !s.echo {
			h.SetType(header.ICMPv6EchoReply)
			h.SetIdent(s.dst.Port())
		}
		h.SetSequence(7)
		h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: h[:header.ICMPv6EchoMinimumSize], Src: src, Dst: dst,
			PayloadCsum: checksum.Checksum(s.payload, 0), PayloadLen: len(s.payload)}))
	}
	return b
}

// ipPacket wraps l4 in an IP header from src to dst.
func ipPacket(proto uint8, src, dst netip.Addr, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		h := header.IPv4(b)
		h.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), ID: 0x4242, Flags: header.IPv4FlagDontFragment, TTL: 63,
			Protocol: proto, SrcAddr: gvAddr(src), DstAddr: gvAddr(dst)})
		h.SetChecksum(^h.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 63, SrcAddr: gvAddr(src), DstAddr: gvAddr(dst)})
	copy(b[header.IPv6MinimumSize:], l4)
	return b
}

func (s spec) build() []byte { return ipPacket(s.proto, s.src.Addr(), s.dst.Addr(), s.l4()) }

// checkValid has gVisor verify every checksum of the IP packet b.
func checkValid(t *testing.T, b []byte) {
	t.Helper()
	var src, dst tcpip.Address
	var proto tcpip.TransportProtocolNumber
	var l4 []byte
	if b[0]>>4 == 4 {
		h := header.IPv4(b)
		if !h.IsChecksumValid() {
			t.Fatal("gVisor: IPv4 header checksum invalid")
		}
		src, dst, proto, l4 = h.SourceAddress(), h.DestinationAddress(), h.TransportProtocol(), h.Payload()
	} else {
		h := header.IPv6(b)
		src, dst, proto, l4 = h.SourceAddress(), h.DestinationAddress(), h.TransportProtocol(), h.Payload()
	}
	switch proto {
	case header.TCPProtocolNumber:
		h := header.TCP(l4)
		p := h.Payload()
		if !h.IsChecksumValid(src, dst, checksum.Checksum(p, 0), uint16(len(p))) {
			t.Fatal("gVisor: TCP checksum invalid")
		}
	case header.UDPProtocolNumber:
		h := header.UDP(l4)
		if h.Checksum() != 0 && !h.IsChecksumValid(src, dst, checksum.Checksum(h.Payload(), 0)) {
			t.Fatal("gVisor: UDP checksum invalid")
		}
	case header.ICMPv4ProtocolNumber:
		if checksum.Checksum(l4, 0) != 0xffff {
			t.Fatal("gVisor: ICMPv4 checksum invalid")
		}
	case header.ICMPv6ProtocolNumber:
		h := header.ICMPv6(l4)
		want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: h, Src: src, Dst: dst})
		if h.Checksum() != want {
			t.Fatalf("gVisor: ICMPv6 checksum %#04x, want %#04x", h.Checksum(), want)
		}
	}
}

func parse(t *testing.T, b []byte) *packet.Parsed {
	t.Helper()
	var pp packet.Parsed
	if st := packet.Parse(b, false, &pp); st != packet.OK {
		t.Fatalf("Parse: %v", st)
	}
	return &pp
}

func ap(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }

func TestRewriteOracle(t *testing.T) {
	payload := []byte("hello, outside world: an odd-length payload")
	cases := []struct {
		name       string
		out, reply spec // as the pod sends and receives, untranslated
		snat       netip.Addr
	}{
		{"tcp4", spec{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(remote, 80), flags: header.TCPFlagSyn, payload: payload},
			spec{proto: packet.ProtoTCP, src: ap(remote, 80), dst: ap(pod1, 40000), flags: header.TCPFlagSyn | header.TCPFlagAck, payload: payload}, node},
		{"udp4", spec{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(remote, 53), payload: payload},
			spec{proto: packet.ProtoUDP, src: ap(remote, 53), dst: ap(pod1, 5353), payload: payload[:7]}, node},
		{"udp4 without checksum", spec{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(remote, 53), noCsum: true, payload: payload},
			spec{proto: packet.ProtoUDP, src: ap(remote, 53), dst: ap(pod1, 5353), noCsum: true}, node},
		{"icmp4 echo", spec{proto: packet.ProtoICMPv4, src: ap(pod1, 0x1234), dst: ap(remote, 0), echo: true, payload: payload},
			spec{proto: packet.ProtoICMPv4, src: ap(remote, 0), dst: ap(pod1, 0x1234), payload: payload}, node},
		{"tcp6", spec{proto: packet.ProtoTCP, src: ap(pod6, 40000), dst: ap(remote6, 443), flags: header.TCPFlagSyn},
			spec{proto: packet.ProtoTCP, src: ap(remote6, 443), dst: ap(pod6, 40000), flags: header.TCPFlagSyn | header.TCPFlagAck, payload: payload}, node6},
		{"udp6", spec{proto: packet.ProtoUDP, src: ap(pod6, 5353), dst: ap(remote6, 53), payload: payload},
			spec{proto: packet.ProtoUDP, src: ap(remote6, 53), dst: ap(pod6, 5353), payload: payload[:1]}, node6},
		{"icmp6 echo", spec{proto: packet.ProtoICMPv6, src: ap(pod6, 0xbeef), dst: ap(remote6, 0), echo: true, payload: payload},
			spec{proto: packet.ProtoICMPv6, src: ap(remote6, 0), dst: ap(pod6, 0xbeef), payload: payload}, node6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			// A one-port range forces a port different from the pod's.
			tb := newTable(t, c, func(cfg *conntrack.Config) {
				cfg.SNAT = []conntrack.SNATAddr{{Addr: node, PortMin: 61000, PortMax: 61000}, {Addr: node6, PortMin: 61000, PortMax: 61000}}
			})
			const natPort = 61000

			// Outbound: the source becomes node:61000.
			b := tc.out.build()
			pp := parse(t, b)
			k, ok := conntrack.FromParsed(pp)
			if !ok || k != conntrack.MakeTuple(tc.out.proto, tc.out.src, tc.out.dst) {
				t.Fatalf("FromParsed = %v, %v", k, ok)
			}
			res, err := tb.Track(k, uint8(tc.out.flags), tc.snat, tb.Now())
			if err != nil || !res.NAT() || res.NATPort != natPort {
				t.Fatalf("Track: %+v, %v", res, err)
			}
			if err := conntrack.Rewrite(b, pp, &res); err != nil {
				t.Fatal(err)
			}
			want := tc.out
			want.src = ap(tc.snat, natPort)
			if w := want.build(); !bytes.Equal(b, w) {
				t.Fatalf("translated packet:\n%s\nwant (gVisor):\n%s", hex.Dump(b), hex.Dump(w))
			}
			checkValid(t, b)
			if pp.Src != tc.snat || (tc.out.proto == packet.ProtoTCP || tc.out.proto == packet.ProtoUDP) && pp.SrcPort != natPort {
				t.Fatalf("Parsed not updated: %+v", pp)
			}

			// The reply comes to node:61000 and goes back to the pod.
			in := tc.reply
			in.dst = ap(tc.snat, natPort)
			b = in.build()
			pp = parse(t, b)
			k, ok = conntrack.FromParsed(pp)
			if !ok {
				t.Fatal("FromParsed(reply) failed")
			}
			res, err = tb.Track(k, uint8(in.flags), netip.Addr{}, tb.Now())
			if err != nil || res.Dir != conntrack.Reply || !res.NAT() {
				t.Fatalf("Track(reply): %+v, %v", res, err)
			}
			if err := conntrack.Rewrite(b, pp, &res); err != nil {
				t.Fatal(err)
			}
			if w := tc.reply.build(); !bytes.Equal(b, w) {
				t.Fatalf("translated reply:\n%s\nwant (gVisor):\n%s", hex.Dump(b), hex.Dump(w))
			}
			checkValid(t, b)
		})
	}
}

// icmpError builds an ICMP error from router to dst quoting the first
// quoteLen bytes of the IP packet orig.
func icmpError(router, dst netip.Addr, orig []byte, quoteLen int) []byte {
	quote := orig[:min(quoteLen, len(orig))]
	if router.Is4() {
		b := make([]byte, header.ICMPv4MinimumSize+len(quote))
		h := header.ICMPv4(b)
		h.SetType(header.ICMPv4DstUnreachable)
		h.SetCode(header.ICMPv4FragmentationNeeded)
		h.SetMTU(1400)
		copy(b[header.ICMPv4MinimumSize:], quote)
		h.SetChecksum(header.ICMPv4Checksum(h[:header.ICMPv4MinimumSize], checksum.Checksum(quote, 0)))
		return ipPacket(packet.ProtoICMPv4, router, dst, b)
	}
	b := make([]byte, header.ICMPv6MinimumSize+len(quote))
	h := header.ICMPv6(b)
	h.SetType(header.ICMPv6PacketTooBig)
	h.SetMTU(1280)
	copy(b[header.ICMPv6MinimumSize:], quote)
	h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: h[:header.ICMPv6MinimumSize], Src: gvAddr(router), Dst: gvAddr(dst),
		PayloadCsum: checksum.Checksum(quote, 0), PayloadLen: len(quote)}))
	return ipPacket(packet.ProtoICMPv6, router, dst, b)
}

func TestRewriteRelatedOracle(t *testing.T) {
	router4, router6 := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8:ff::1")
	payload := bytes.Repeat([]byte{0xab}, 100)
	cases := []struct {
		name   string
		out    spec
		snat   netip.Addr
		router netip.Addr
		quote  int
	}{
		{"tcp4, 28-byte quote", spec{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(remote, 80), flags: header.TCPFlagSyn, payload: payload}, node, router4, 28},
		{"tcp4, whole header quoted", spec{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(remote, 80), flags: header.TCPFlagSyn, payload: payload}, node, router4, 60},
		{"udp4", spec{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(remote, 53), payload: payload}, node, router4, 576},
		{"icmp4 echo", spec{proto: packet.ProtoICMPv4, src: ap(pod1, 0x1234), dst: ap(remote, 0), echo: true, payload: payload}, node, router4, 576},
		{"udp6", spec{proto: packet.ProtoUDP, src: ap(pod6, 5353), dst: ap(remote6, 53), payload: payload}, node6, router6, 1232},
		{"tcp6", spec{proto: packet.ProtoTCP, src: ap(pod6, 40000), dst: ap(remote6, 443), flags: header.TCPFlagSyn, payload: payload}, node6, router6, 48},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			tb := newTable(t, c, func(cfg *conntrack.Config) {
				cfg.SNAT = []conntrack.SNATAddr{{Addr: node, PortMin: 61000, PortMax: 61000}, {Addr: node6, PortMin: 61000, PortMax: 61000}}
			})
			orig := tc.out.build()
			pp := parse(t, orig)
			k, _ := conntrack.FromParsed(pp)
			res, err := tb.Track(k, uint8(tc.out.flags), tc.snat, tb.Now())
			if err != nil {
				t.Fatal(err)
			}
			sent := bytes.Clone(orig)
			if err := conntrack.Rewrite(sent, pp, &res); err != nil {
				t.Fatal(err)
			}
			// A router on the way answers the translated packet.
			b := icmpError(tc.router, tc.snat, sent, tc.quote)
			pp = parse(t, b)
			if _, ok := conntrack.FromParsed(pp); ok {
				t.Fatal("an ICMP error has a tuple of its own")
			}
			rel, ok := tb.TrackRelated(b, pp, tb.Now())
			if !ok || rel.Dir != conntrack.Reply || rel.NATAddr != tc.out.src.Addr() {
				t.Fatalf("TrackRelated = %+v, %v", rel, ok)
			}
			if err := conntrack.RewriteRelated(b, pp, &rel); err != nil {
				t.Fatal(err)
			}
			want := icmpError(tc.router, tc.out.src.Addr(), orig, tc.quote)
			if !bytes.Equal(b, want) {
				t.Fatalf("translated error:\n%s\nwant (gVisor):\n%s", hex.Dump(b), hex.Dump(want))
			}
			checkValid(t, b)
		})
	}
	t.Run("unrelated", func(t *testing.T) {
		tb := newTable(t, newClock(), nil)
		sent := spec{proto: packet.ProtoUDP, src: ap(node, 7), dst: ap(remote, 53)}.build()
		b := icmpError(router4, node, sent, 576)
		if _, ok := tb.TrackRelated(b, parse(t, b), tb.Now()); ok {
			t.Fatal("an error about no tracked flow was related")
		}
	})
}

func TestRewriteErrors(t *testing.T) {
	b := spec{proto: packet.ProtoUDP, src: ap(pod1, 1), dst: ap(remote, 2)}.build()
	pp := parse(t, b)
	r := conntrack.Result{NATAddr: node6, NATPort: 9}
	if err := conntrack.Rewrite(b, pp, &r); err == nil {
		t.Fatal("IPv6 address into an IPv4 packet: no error")
	}
	orig := bytes.Clone(b)
	r = conntrack.Result{} // no NAT: nothing to do
	if err := conntrack.Rewrite(b, pp, &r); err != nil || !bytes.Equal(b, orig) {
		t.Fatalf("no-NAT rewrite changed the packet or failed: %v", err)
	}
}

func TestRewriteAllocs(t *testing.T) {
	tb := newTable(t, newClock(), nil)
	s := spec{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(remote, 80), flags: header.TCPFlagSyn, payload: []byte("x")}
	orig := s.build()
	b := bytes.Clone(orig)
	var pp packet.Parsed
	now := tb.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		copy(b, orig)
		packet.Parse(b, false, &pp)
		k, _ := conntrack.FromParsed(&pp)
		res, _ := tb.Track(k, uint8(header.TCPFlagSyn), node, now)
		_ = conntrack.Rewrite(b, &pp, &res)
	})
	if allocs != 0 {
		t.Fatalf("parse + track + rewrite: %v allocs per packet, want 0", allocs)
	}
}
