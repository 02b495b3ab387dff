package packet_test

import (
	"bytes"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestICMPErrorAllowed(t *testing.T) {
	mc4 := netip.MustParseAddr("224.0.0.5")
	bc4 := netip.MustParseAddr("255.255.255.255")
	mc6 := netip.MustParseAddr("ff02::1")
	udp := func(s, d netip.Addr) []byte { return udpSeg(s, d, 1, 2, nil) }
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"v4/echo-request", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4Echo, 0, 1, nil)), true},
		{"v4/echo-reply", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4EchoReply, 0, 1, nil)), true},
		{"v4/tcp", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP}, tcpSeg(src4, dst4, 1, 2, header.TCPFlagSyn, nil)), true},
		{"v4/udp-first-fragment", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, flags: header.IPv4FlagMoreFragments}, udp(src4, dst4)), true},
		{"v4/non-first-fragment", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, fragOff: 8}, payload32), false},
		{"v4/about-time-exceeded", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4TimeExceeded, 0, 0, payload32)), false},
		{"v4/about-dst-unreachable", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4DstUnreachable, 4, 1400, payload32)), false},
		{"v4/about-redirect", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4Redirect, 0, 0, payload32)), false},
		{"v4/about-param-problem", ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4}, icmp4(packet.ICMPv4ParamProblem, 0, 0, payload32)), false},
		{"v4/src-multicast", ip4(v4{src: mc4, dst: dst4, proto: packet.ProtoUDP}, udp(mc4, dst4)), false},
		{"v4/src-broadcast", ip4(v4{src: bc4, dst: dst4, proto: packet.ProtoUDP}, udp(bc4, dst4)), false},
		{"v4/src-unspecified", ip4(v4{src: netip.IPv4Unspecified(), dst: dst4, proto: packet.ProtoUDP}, udp(netip.IPv4Unspecified(), dst4)), false},
		{"v4/src-loopback", ip4(v4{src: netip.MustParseAddr("127.0.0.1"), dst: dst4, proto: packet.ProtoUDP}, udp(src4, dst4)), false},
		{"v4/dst-multicast", ip4(v4{src: src4, dst: mc4, proto: packet.ProtoUDP}, udp(src4, mc4)), false},
		{"v4/dst-broadcast", ip4(v4{src: src4, dst: bc4, proto: packet.ProtoUDP}, udp(src4, bc4)), false},

		{"v6/echo-request", ip6(src6, dst6, 64, packet.ProtoICMPv6, nil, icmp6(src6, dst6, packet.ICMPv6EchoRequest, 0, 1, nil)), true},
		{"v6/tcp", ip6(src6, dst6, 64, packet.ProtoTCP, nil, tcpSeg(src6, dst6, 1, 2, header.TCPFlagSyn, nil)), true},
		{"v6/tcp-after-hbh", ip6(src6, dst6, 64, packet.ProtoTCP, []extHdr{hopByHop()}, tcpSeg(src6, dst6, 1, 2, header.TCPFlagSyn, nil)), true},
		{"v6/udp-first-fragment", ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{fragHdr(0, true)}, udp(src6, dst6)), true},
		{"v6/non-first-fragment", ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{fragHdr(8, true)}, payload32), false},
		{"v6/about-dst-unreachable", ip6(src6, dst6, 64, packet.ProtoICMPv6, nil, icmp6(src6, dst6, packet.ICMPv6DstUnreachable, 0, 0, payload32)), false},
		{"v6/about-packet-too-big", ip6(src6, dst6, 64, packet.ProtoICMPv6, nil, icmp6(src6, dst6, packet.ICMPv6PacketTooBig, 0, 1280, payload32)), false},
		{"v6/about-time-exceeded-after-dstopts", ip6(src6, dst6, 64, packet.ProtoICMPv6, []extHdr{optsHdr(protoDstOpts, 0)},
			icmp6(src6, dst6, packet.ICMPv6TimeExceeded, 0, 0, payload32)), false},
		{"v6/src-unspecified", ip6(netip.IPv6Unspecified(), dst6, 64, packet.ProtoUDP, nil, udp(netip.IPv6Unspecified(), dst6)), false},
		{"v6/src-multicast", ip6(mc6, dst6, 64, packet.ProtoUDP, nil, udp(mc6, dst6)), false},
		{"v6/src-loopback", ip6(netip.IPv6Loopback(), dst6, 64, packet.ProtoUDP, nil, udp(netip.IPv6Loopback(), dst6)), false},
		{"v6/dst-multicast", ip6(src6, mc6, 64, packet.ProtoUDP, nil, udp(src6, mc6)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.pkt, false)
			if got := packet.ICMPErrorAllowed(&p); got != tc.want {
				t.Errorf("ICMPErrorAllowed = %v, want %v (%+v)", got, tc.want, p)
			}
		})
	}
}

// bigV4 is an MTU-sized IPv4 TCP packet.
func bigV4() []byte {
	return ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP, flags: header.IPv4FlagDontFragment},
		tcpSeg(src4, dst4, 1234, 80, header.TCPFlagAck, bytes.Repeat([]byte{0xa5}, 1500-20-24)))
}

// icmpErrorCase is an ICMP error built about orig into a dstLen-byte
// buffer, with the length and the number of quoted bytes it must have.
type icmpErrorCase struct {
	name       string
	orig       []byte
	dstLen     int
	typ, code  uint8
	rest       uint32
	wantLen    int
	wantQuoted int
}

// runICMPErrorCases builds each case's error from rtr and checks its length,
// its headers (checkHeaders, per family, returns the ICMP message's quote),
// the quote itself, and that it is not a packet that may trigger another
// error.
func runICMPErrorCases(t *testing.T, rtr netip.Addr, tests []icmpErrorCase, checkHeaders func(t *testing.T, tc icmpErrorCase, pkt []byte) (quote []byte)) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.orig, false)
			dst := make([]byte, tc.dstLen)
			n := packet.BuildICMPError(dst, tc.orig[p.IPOff:p.IPEnd], &p, rtr, tc.typ, tc.code, tc.rest)
			if n != tc.wantLen {
				t.Fatalf("BuildICMPError = %d bytes, want %d", n, tc.wantLen)
			}
			if quote := checkHeaders(t, tc, dst[:n]); !bytes.Equal(quote, tc.orig[:tc.wantQuoted]) {
				t.Errorf("quoted %d bytes, want the first %d of the original", len(quote), tc.wantQuoted)
			}
			// The error is itself a packet the engine parses, and never
			// one that may trigger another error.
			q := mustParse(t, dst[:n], false)
			if packet.ICMPErrorAllowed(&q) {
				t.Errorf("an ICMP error about our ICMP error is allowed")
			}
		})
	}
}

func TestBuildICMPErrorV4(t *testing.T) {
	small := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, ttl: 1}, udpSeg(src4, dst4, 40000, 33434, payload32))
	runICMPErrorCases(t, rtr4, []icmpErrorCase{
		{"time-exceeded", small, 1500, packet.ICMPv4TimeExceeded, 0, 0, 28 + len(small), len(small)},
		{"net-unreachable-capped-576", bigV4(), 1500, packet.ICMPv4DstUnreachable, packet.ICMPv4NetUnreachable, 0, 576, 548},
		{"frag-needed-mtu", bigV4(), 2048, packet.ICMPv4DstUnreachable, packet.ICMPv4FragNeeded, 1400, 576, 548},
		{"dst-buffer-limits", bigV4(), 100, packet.ICMPv4DstUnreachable, packet.ICMPv4HostUnreachable, 0, 100, 72},
		{"dst-buffer-headers-only", small, 28, packet.ICMPv4TimeExceeded, 0, 0, 28, 0},
	}, func(t *testing.T, tc icmpErrorCase, pkt []byte) []byte {
		n := len(pkt)
		ip := header.IPv4(pkt)
		if !ip.IsValid(n) || !ip.IsChecksumValid() || int(ip.TotalLength()) != n || ip.Protocol() != packet.ProtoICMPv4 ||
			ip.TTL() == 0 || ip.More() || ip.FragmentOffset() != 0 ||
			fromGV(ip.SourceAddress()) != rtr4 || fromGV(ip.DestinationAddress()) != src4 {
			t.Fatalf("bad IPv4 header: % x", pkt[:20])
		}
		c := header.ICMPv4(ip.Payload())
		if c.Type() != header.ICMPv4Type(tc.typ) || c.Code() != header.ICMPv4Code(tc.code) {
			t.Errorf("type/code = %d/%d", c.Type(), c.Code())
		}
		if checksum.Checksum(c, 0) != 0xffff || header.ICMPv4Checksum(c[:8], checksum.Checksum(c.Payload(), 0)) != c.Checksum() {
			t.Errorf("ICMPv4 checksum invalid")
		}
		if tc.code == packet.ICMPv4FragNeeded && c.MTU() != uint16(tc.rest) {
			t.Errorf("MTU = %d, want %d", c.MTU(), tc.rest)
		}
		return c.Payload()
	})
	if n := packet.BuildICMPError(make([]byte, 27), small, ptr(mustParse(t, small, false)), rtr4, 11, 0, 0); n != 0 {
		t.Errorf("BuildICMPError into 27 bytes = %d, want 0", n)
	}
}

func ptr[T any](v T) *T { return &v }

func TestBuildICMPErrorV6(t *testing.T) {
	small := ip6(src6, dst6, 1, packet.ProtoUDP, []extHdr{hopByHop()}, udpSeg(src6, dst6, 40000, 33434, payload32))
	big := ip6(src6, dst6, 64, packet.ProtoTCP, nil, tcpSeg(src6, dst6, 1234, 80, header.TCPFlagAck, bytes.Repeat([]byte{0x5a}, 1500-40-24)))
	runICMPErrorCases(t, rtr6, []icmpErrorCase{
		{"time-exceeded", small, 1500, packet.ICMPv6TimeExceeded, packet.ICMPv6HopLimitExceeded, 0, 48 + len(small), len(small)},
		{"packet-too-big-capped-1280", big, 1600, packet.ICMPv6PacketTooBig, 0, 1280, 1280, 1232},
		{"no-route", big, 1500, packet.ICMPv6DstUnreachable, packet.ICMPv6NoRoute, 0, 1280, 1232},
		{"dst-buffer-limits", big, 200, packet.ICMPv6DstUnreachable, packet.ICMPv6AddrUnreachable, 0, 200, 152},
	}, func(t *testing.T, tc icmpErrorCase, pkt []byte) []byte {
		n := len(pkt)
		ip := header.IPv6(pkt)
		if !ip.IsValid(n) || int(ip.PayloadLength()) != n-40 || ip.NextHeader() != packet.ProtoICMPv6 || ip.HopLimit() == 0 ||
			fromGV(ip.SourceAddress()) != rtr6 || fromGV(ip.DestinationAddress()) != src6 {
			t.Fatalf("bad IPv6 header: % x", pkt[:40])
		}
		c := header.ICMPv6(ip.Payload())
		if c.Type() != header.ICMPv6Type(tc.typ) || c.Code() != header.ICMPv6Code(tc.code) {
			t.Errorf("type/code = %d/%d", c.Type(), c.Code())
		}
		want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: c, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()})
		if c.Checksum() != want {
			t.Errorf("ICMPv6 checksum %#04x, gVisor computes %#04x", c.Checksum(), want)
		}
		if tc.typ == packet.ICMPv6PacketTooBig && c.MTU() != tc.rest {
			t.Errorf("MTU = %d, want %d", c.MTU(), tc.rest)
		}
		return c.Payload()
	})
	if n := packet.BuildICMPError(make([]byte, 47), small, ptr(mustParse(t, small, false)), rtr6, 3, 0, 0); n != 0 {
		t.Errorf("BuildICMPError into 47 bytes = %d, want 0", n)
	}
}

func TestBuildARPReply(t *testing.T) {
	req := eth(packet.EtherTypeARP, arpPkt(header.ARPRequest, macA, src4, packet.MAC{}, rtr4), 0)
	var p packet.Parsed
	if st := packet.Parse(req, true, &p); st != packet.IsARP {
		t.Fatalf("Parse(request) = %v", st)
	}
	a := packet.ARP(req[p.IPOff:p.IPEnd])
	if a.Op() != packet.ARPRequest || a.SenderMAC() != macA || a.SenderIP() != src4 || a.TargetIP() != rtr4 || a.TargetMAC() != (packet.MAC{}) {
		t.Fatalf("ARP view of the request is wrong")
	}
	frame := make([]byte, 64)
	for i := range frame {
		frame[i] = 0xee // no stale byte may survive in the reply
	}
	n := packet.BuildARPReply(frame, a, macB, rtr4)
	if n != 42 {
		t.Fatalf("BuildARPReply = %d, want 42", n)
	}
	e := header.Ethernet(frame[:n])
	if e.DestinationAddress() != gvMAC(macA) || e.SourceAddress() != gvMAC(macB) || e.Type() != header.ARPProtocolNumber {
		t.Errorf("Ethernet header: % x", frame[:14])
	}
	r := header.ARP(frame[14:n])
	if !r.IsValid() || r.Op() != header.ARPReply ||
		!bytes.Equal(r.HardwareAddressSender(), macB[:]) || !bytes.Equal(r.ProtocolAddressSender(), rtr4.AsSlice()) ||
		!bytes.Equal(r.HardwareAddressTarget(), macA[:]) || !bytes.Equal(r.ProtocolAddressTarget(), src4.AsSlice()) {
		t.Errorf("ARP reply: % x", frame[14:n])
	}
	if st := packet.Parse(frame[:n], true, &p); st != packet.IsARP {
		t.Errorf("Parse(reply) = %v", st)
	}
}

// ns builds an ICMPv6 neighbour solicitation with gVisor.
func ns(target netip.Addr, opts header.NDPOptionsSerializer) []byte {
	b := make([]byte, header.ICMPv6NeighborSolicitMinimumSize+opts.Length())
	c := header.ICMPv6(b)
	c.SetType(header.ICMPv6NeighborSolicit)
	m := header.NDPNeighborSolicit(c.MessageBody())
	m.SetTargetAddress(gvAddr(target))
	m.Options().Serialize(opts)
	c.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: c, Src: gvAddr(src6), Dst: gvAddr(rtr6)}))
	return b
}

func TestParseNeighborSolicit(t *testing.T) {
	sll := header.NDPOptionsSerializer{header.NDPSourceLinkLayerAddressOption(gvMAC(macA))}
	withSLL := ns(rtr6, sll)
	tests := []struct {
		name   string
		icmp   []byte
		hop    uint8
		ok     bool
		wantLL bool
	}{
		{"with-source-ll", withSLL, 255, true, true},
		{"no-options", ns(rtr6, nil), 255, true, false},
		{"nonce-then-source-ll", ns(rtr6, header.NDPOptionsSerializer{header.NDPNonceOption([]byte{1, 2, 3, 4, 5, 6}), sll[0]}), 255, true, true},
		{"hop-limit-254", withSLL, 254, false, false},
		{"hop-limit-64", withSLL, 64, false, false},
		{"code-1", corrupt(withSLL, func(b []byte) { b[1] = 1 }), 255, false, false},
		{"type-advert", corrupt(withSLL, func(b []byte) { b[0] = packet.ICMPv6NeighborAdvert }), 255, false, false},
		{"multicast-target", ns(netip.MustParseAddr("ff02::1:ff00:1"), sll), 255, false, false},
		{"short-23", withSLL[:23], 255, false, false},
		{"truncated-option", withSLL[:len(withSLL)-1], 255, false, false},
		{"option-length-past-end", corrupt(withSLL, func(b []byte) { b[25] = 2 }), 255, false, false},
		{"one-byte-option", append(append([]byte(nil), withSLL...), 1), 255, false, false},
		{"zero-length-option", corrupt(withSLL, func(b []byte) { b[25] = 0 }), 255, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := packet.ParseNeighborSolicit(tc.icmp, tc.hop)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if got.Target != rtr6 || got.HasLL != tc.wantLL {
				t.Errorf("got %+v", got)
			}
			if tc.wantLL && got.SrcLL != macA {
				t.Errorf("SrcLL = %v, want %v", got.SrcLL, macA)
			}
		})
	}
}

func TestBuildNeighborAdvert(t *testing.T) {
	for _, router := range []bool{false, true} {
		frame := bytes.Repeat([]byte{0xee}, packet.NeighborAdvertLen+10)
		n := packet.BuildNeighborAdvert(frame, macA, macB, rtr6, src6, router)
		if n != packet.NeighborAdvertLen || len(frame[:n]) != 14+40+32 {
			t.Fatalf("BuildNeighborAdvert = %d", n)
		}
		e := header.Ethernet(frame)
		if e.DestinationAddress() != gvMAC(macA) || e.SourceAddress() != gvMAC(macB) || e.Type() != header.IPv6ProtocolNumber {
			t.Errorf("Ethernet header: % x", frame[:14])
		}
		ip := header.IPv6(frame[14:n])
		if !ip.IsValid(n-14) || ip.HopLimit() != 255 || ip.NextHeader() != packet.ProtoICMPv6 ||
			fromGV(ip.SourceAddress()) != rtr6 || fromGV(ip.DestinationAddress()) != src6 {
			t.Errorf("IPv6 header: % x", frame[14:54])
		}
		c := header.ICMPv6(ip.Payload())
		want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: c, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()})
		if c.Type() != header.ICMPv6NeighborAdvert || c.Code() != 0 || c.Checksum() != want {
			t.Errorf("ICMPv6 type %d code %d checksum %#04x (gVisor %#04x)", c.Type(), c.Code(), c.Checksum(), want)
		}
		na := header.NDPNeighborAdvert(c.MessageBody())
		if na.RouterFlag() != router || !na.SolicitedFlag() || !na.OverrideFlag() || fromGV(na.TargetAddress()) != rtr6 {
			t.Errorf("router=%v: R=%v S=%v O=%v target %v", router, na.RouterFlag(), na.SolicitedFlag(), na.OverrideFlag(), na.TargetAddress())
		}
		it, err := na.Options().Iter(true)
		if err != nil {
			t.Fatalf("options: %v", err)
		}
		var tll []header.NDPOption
		for {
			o, done, err := it.Next()
			if err != nil {
				t.Fatalf("options: %v", err)
			}
			if done {
				break
			}
			tll = append(tll, o)
		}
		if len(tll) != 1 {
			t.Fatalf("options: %v", tll)
		}
		if o, ok := tll[0].(header.NDPTargetLinkLayerAddressOption); !ok || o.EthernetAddress() != gvMAC(macB) {
			t.Errorf("option %v, want target link-layer address %v", tll[0], macB)
		}
		p := mustParse(t, frame[:n], true)
		if p.ICMPType() != packet.ICMPv6NeighborAdvert || p.IPEnd != n {
			t.Errorf("Parse: %+v", p)
		}
	}
}

// clock is a manual clock for RateLimiter.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestRateLimiter(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	r := packet.NewRateLimiter(10, 3, c.now) // a token every 100ms, burst 3
	allow := func(want int, what string) {
		t.Helper()
		got := 0
		for range 10 {
			if r.Allow() {
				got++
			}
		}
		if got != want {
			t.Errorf("%s: %d allowed, want %d", what, got, want)
		}
	}
	allow(3, "initial burst")
	c.advance(100 * time.Millisecond)
	allow(1, "after 100ms")
	c.advance(50 * time.Millisecond)
	allow(0, "after 50ms (half a token)")
	c.advance(50 * time.Millisecond)
	allow(1, "after another 50ms")
	c.advance(time.Hour)
	allow(3, "after an hour (capped at burst)")

	// A clock that steps backwards refills nothing, and the time before
	// it catches up with the last reading earns nothing either.
	c.advance(-10 * time.Second)
	allow(0, "clock stepped back 10s")
	c.advance(10*time.Second - time.Millisecond)
	allow(0, "clock back to just before the last reading")
	c.advance(101 * time.Millisecond)
	allow(1, "100ms after the last reading")
}

func TestRateLimiterConcurrent(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	r := packet.NewRateLimiter(1000, 50, c.now)
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if r.Allow() {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n.Load() != 50 {
		t.Errorf("%d allowed by 8 goroutines on a stopped clock, want the burst of 50", n.Load())
	}
}

func TestRateLimiterRealClock(t *testing.T) {
	r := packet.NewRateLimiter(1, 2, nil)
	if !r.Allow() || !r.Allow() || r.Allow() {
		t.Errorf("burst of 2 on the real clock not honoured")
	}
}
