package packet_test

import (
	"fmt"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
)

// udpFrame returns an Ethernet/IPv4/UDP frame of exactly size bytes.
func udpFrame(size int) []byte {
	const hdrs = 14 + 20 + 8
	return eth(packet.EtherTypeIPv4, ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP},
		udpSeg(src4, dst4, 40000, 4789, make([]byte, size-hdrs))), 0)
}

func BenchmarkParse(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			frame := udpFrame(size)
			var p packet.Parsed
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				if packet.Parse(frame, true, &p) != packet.OK {
					b.Fatal("Parse failed")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkt/s")
		})
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{20, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			buf := udpFrame(max(size, 64))[:size]
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				packet.Checksum(buf, 0)
			}
		})
	}
}

// TestNoAllocs proves the per-packet functions allocate nothing.
func TestNoAllocs(t *testing.T) {
	v4frame := udpFrame(1500)
	v6frame := eth(packet.EtherTypeIPv6, ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{hopByHop(), optsHdr(protoDstOpts, 1), fragHdr(0, true)},
		udpSeg(src6, dst6, 1, 2, payload32)), 0)
	ip := append([]byte(nil), v4frame[14:34]...)
	old, nw := src4.AsSlice(), dst4.AsSlice()
	var p packet.Parsed
	errBuf := make([]byte, 1500)
	tests := []struct {
		name string
		fn   func()
	}{
		{"Parse/v4", func() { packet.Parse(v4frame, true, &p) }},
		{"Parse/v6-ext", func() { packet.Parse(v6frame, true, &p) }},
		{"Checksum", func() { packet.Checksum(v4frame, 0) }},
		{"PseudoHeaderSum", func() { packet.PseudoHeaderSum(src6, dst6, packet.ProtoUDP, 1000) }},
		{"UpdateChecksum", func() { packet.UpdateChecksum(0x1234, 0x4000, 0x3f00) }},
		{"UpdateChecksumBytes", func() { packet.UpdateChecksumBytes(0x1234, old, nw) }},
		{"DecTTL", func() { ip[8] = 64; packet.IPv4(ip).DecTTL() }},
		{"ICMPErrorAllowed", func() { packet.Parse(v4frame, true, &p); packet.ICMPErrorAllowed(&p) }},
		{"BuildICMPError", func() {
			packet.Parse(v4frame, true, &p)
			packet.BuildICMPError(errBuf, v4frame[p.IPOff:p.IPEnd], &p, rtr4, packet.ICMPv4TimeExceeded, 0, 0)
		}},
	}
	for _, tc := range tests {
		if n := testing.AllocsPerRun(100, tc.fn); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, n)
		}
	}
}
