package netstackx

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
)

var (
	testGW4 = netip.MustParseAddr("10.244.1.1")
	testGW6 = netip.MustParseAddr("fd00:10:244:1::1")
)

// hookFn inspects a packet crossing the test router. It may return an
// ICMP error to send back to the packet's source, and says whether to
// forward the packet.
type hookFn func(pkt []byte) (reply []byte, forward bool)

// routeThrough joins two L3 pods' devices through hook, in both directions:
// a stand-in for the engine, which gets to drop packets and answer ICMP.
func routeThrough(t *testing.T, a, b *Pod, hook hookFn) {
	t.Helper()
	var wg sync.WaitGroup
	pump := func(src, dst link.Device) {
		defer wg.Done()
		bufs, sizes := makeBufs(16, link.Headroom+65535)
		for {
			n, err := src.Read(bufs, sizes, link.Headroom)
			if err != nil {
				return
			}
			for i := range n {
				b := bufs[i][:link.Headroom+sizes[i]]
				reply, forward := hook(b[link.Headroom:])
				if reply != nil {
					out := append(make([]byte, link.Headroom), reply...)
					_, _ = src.Write([][]byte{out}, link.Headroom)
				}
				if forward {
					_, _ = dst.Write([][]byte{b}, link.Headroom)
				}
			}
		}
	}
	wg.Add(2)
	go pump(a.Device(), b.Device())
	go pump(b.Device(), a.Device())
	t.Cleanup(func() {
		_ = a.Device().Close()
		_ = b.Device().Close()
		wg.Wait()
	})
}

func l3PodPair(t *testing.T) (a, b *Pod) {
	t.Helper()
	mk := func(host byte) *Pod {
		p, err := NewPod(PodConfig{
			Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 1, host}), 24),
			Gateway:  testGW4,
			Addr6:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 15: host}), 64),
			Gateway6: testGW6,
			L3:       true,
		})
		if err != nil {
			t.Fatalf("NewPod: %v", err)
		}
		t.Cleanup(func() { _ = p.Close() })
		return p
	}
	return mk(5), mk(6)
}

// icmpError builds the ICMP error (from the gateway) that quotes pkt.
func icmpError(pkt []byte, typ, code uint8, mtu uint32) []byte {
	if pkt[0]>>4 == 4 {
		orig := header.IPv4(pkt)
		quote := pkt[:min(len(pkt), int(orig.HeaderLength())+8)]
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(testGW4.As4()),
			DstAddr:     orig.SourceAddress(),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		msg := header.ICMPv4(b[header.IPv4MinimumSize:])
		msg.SetType(header.ICMPv4Type(typ))
		msg.SetCode(header.ICMPv4Code(code))
		msg.SetMTU(uint16(mtu))
		copy(msg[header.ICMPv4MinimumSize:], quote)
		msg.SetChecksum(header.ICMPv4Checksum(msg[:header.ICMPv4MinimumSize], checksum.Checksum(quote, 0)))
		return b
	}
	orig := header.IPv6(pkt)
	quote := pkt[:min(len(pkt), 1280-header.IPv6MinimumSize-header.ICMPv6ErrorHeaderSize)]
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6ErrorHeaderSize+len(quote))
	src := tcpip.AddrFrom16(testGW6.As16())
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           src,
		DstAddr:           orig.SourceAddress(),
	})
	msg := header.ICMPv6(b[header.IPv6MinimumSize:])
	msg.SetType(header.ICMPv6Type(typ))
	msg.SetCode(header.ICMPv6Code(code))
	msg.SetMTU(mtu)
	copy(msg[header.ICMPv6ErrorHeaderSize:], quote)
	msg.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header:      msg[:header.ICMPv6ErrorHeaderSize],
		Src:         src,
		Dst:         orig.SourceAddress(),
		PayloadCsum: checksum.Checksum(quote, 0),
		PayloadLen:  len(quote),
	}))
	return b
}

func TestPingICMPError(t *testing.T) {
	tests := []struct {
		name string
		v6   bool
		typ  uint8
		code uint8
		mtu  int
	}{
		{"v4 time exceeded", false, uint8(header.ICMPv4TimeExceeded), 0, 0},
		{"v4 host unreachable", false, uint8(header.ICMPv4DstUnreachable), uint8(header.ICMPv4HostUnreachable), 0},
		{"v4 fragmentation needed", false, uint8(header.ICMPv4DstUnreachable), uint8(header.ICMPv4FragmentationNeeded), 1000},
		{"v6 time exceeded", true, uint8(header.ICMPv6TimeExceeded), 0, 0},
		{"v6 packet too big", true, uint8(header.ICMPv6PacketTooBig), 0, 1280},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			a, b := l3PodPair(t)
			routeThrough(t, a, b, func(pkt []byte) ([]byte, bool) {
				return icmpError(pkt, tt.typ, tt.code, uint32(tt.mtu)), false
			})
			dst, from := b.Addr(), testGW4
			if tt.v6 {
				dst, from = b.Addr6(), testGW6
			}
			_, err := a.Ping(testContext(t), dst, 64)
			var ie *ICMPError
			if !errors.As(err, &ie) {
				t.Fatalf("Ping = %v, want an *ICMPError", err)
			}
			want := ICMPError{From: from, IPv6: tt.v6, Type: tt.typ, Code: tt.code, MTU: tt.mtu}
			if *ie != want {
				t.Fatalf("Ping error = %+v, want %+v", *ie, want)
			}
		})
	}
}

func TestSendUDPWithTTL(t *testing.T) {
	checkGoroutines(t)
	a, b := l3PodPair(t)
	routeThrough(t, a, b, func([]byte) ([]byte, bool) { return nil, true })
	got := make(chan uint8, 4)
	stop := b.Sniff(func(pkt []byte) {
		switch {
		case pkt[0]>>4 == 4 && header.IPv4(pkt).TransportProtocol() == header.UDPProtocolNumber:
			got <- header.IPv4(pkt).TTL()
		case pkt[0]>>4 == 6 && header.IPv6(pkt).TransportProtocol() == header.UDPProtocolNumber:
			got <- header.IPv6(pkt).HopLimit()
		}
	})
	defer stop()
	for _, tc := range []struct {
		dst netip.Addr
		ttl uint8
	}{{b.Addr(), 1}, {b.Addr(), 3}, {b.Addr6(), 2}} {
		if err := a.SendUDPWithTTL(netip.AddrPortFrom(tc.dst, 33434), tc.ttl, []byte("probe")); err != nil {
			t.Fatalf("SendUDPWithTTL(%s, %d): %v", tc.dst, tc.ttl, err)
		}
		select {
		case ttl := <-got:
			if ttl != tc.ttl {
				t.Errorf("%s: packet arrived with TTL %d, want %d", tc.dst, ttl, tc.ttl)
			}
		case <-testContext(t).Done():
			t.Fatalf("%s: no UDP packet arrived", tc.dst)
		}
	}
	if err := a.SendUDPWithTTL(netip.AddrPortFrom(b.Addr(), 1), 0, nil); err == nil {
		t.Error("SendUDPWithTTL with TTL 0 succeeded")
	}
}

// TestTCPPathMTUDiscovery puts a 1000-byte link between two 1500-MTU pods:
// the router drops bigger packets and answers ICMP fragmentation-needed /
// packet-too-big. TCP must set DF, lower its MSS and finish the transfer.
func TestTCPPathMTUDiscovery(t *testing.T) {
	for _, fam := range []string{"v4", "v6"} {
		t.Run(fam, func(t *testing.T) {
			checkGoroutines(t)
			const pathMTU = 1280 // IPv6's minimum: the same bottleneck for both
			a, b := l3PodPair(t)
			var tooBig, noDF, tcpSegs atomic.Int64
			routeThrough(t, a, b, func(pkt []byte) ([]byte, bool) {
				if pkt[0]>>4 == 4 {
					ip := header.IPv4(pkt)
					// A RST for a connection already gone comes from the stack,
					// not the connection (whose path MTU logic sets DF); gVisor
					// sends those without DF, rarely, when a segment arrives
					// after the close.
					if ip.TransportProtocol() == header.TCPProtocolNumber && header.TCP(ip.Payload()).Flags()&header.TCPFlagRst == 0 {
						tcpSegs.Add(1)
						if ip.Flags()&header.IPv4FlagDontFragment == 0 {
							noDF.Add(1)
						}
					}
					if len(pkt) > pathMTU {
						tooBig.Add(1)
						if ip.Flags()&header.IPv4FlagDontFragment == 0 {
							return nil, false // would fragment; not this test's business
						}
						return icmpError(pkt, uint8(header.ICMPv4DstUnreachable), uint8(header.ICMPv4FragmentationNeeded), pathMTU), false
					}
					return nil, true
				}
				if len(pkt) > pathMTU {
					tooBig.Add(1)
					return icmpError(pkt, uint8(header.ICMPv6PacketTooBig), 0, pathMTU), false
				}
				return nil, true
			})
			dst := b.Addr()
			if fam == "v6" {
				dst = b.Addr6()
			}
			tcpEcho(t, a, b, netip.AddrPortFrom(dst, 9000), 1<<20)
			if tooBig.Load() == 0 {
				t.Error("no packet exceeded the path MTU: the test tested nothing")
			}
			if fam == "v4" && (tcpSegs.Load() == 0 || noDF.Load() != 0) {
				t.Errorf("%d of %d TCP segments without DF", noDF.Load(), tcpSegs.Load())
			}
			t.Logf("%s: %d packets over the path MTU, %d retransmits", fam, tooBig.Load(), a.Stats().TCPRetransmits+b.Stats().TCPRetransmits)
		})
	}
}
