package packet_test

import (
	"bytes"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
)

// FuzzOffloadValid checks what OffloadValid promises on arbitrary packets
// and descriptors: a descriptor it accepts never makes the software
// offloads touch a byte before the transport header (the source address
// least of all): FinishChecksum writes only inside it, and a super-packet
// segments without error into packets with the original's IP addresses,
// none longer than HdrLen+Size. Seeds: testdata/fuzz/FuzzOffloadValid.
func FuzzOffloadValid(f *testing.F) {
	payload := bytes.Repeat([]byte{0x5a}, 300)
	for _, c := range []struct {
		ip []byte
		g  packet.GSO
	}{
		{ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP}, udpSeg(src4, dst4, 1, 2, payload)), packet.GSO{NeedsCsum: true, CsumStart: 20, CsumOffset: 6}},
		{ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP}, tcpSeg(src4, dst4, 1, 2, 0x10, payload)), packet.GSO{Type: packet.GSOTCPv4, NeedsCsum: true, CsumStart: 20, CsumOffset: 16, HdrLen: 44, Size: 100}},
		{ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{hopByHop()}, udpSeg(src6, dst6, 1, 2, payload)), packet.GSO{Type: packet.GSOUDPL4, NeedsCsum: true, CsumStart: 48, CsumOffset: 6, HdrLen: 56, Size: 64}},
		{ip6(src6, dst6, 64, packet.ProtoUDP, nil, udpSeg(src6, dst6, 1, 2, payload)), packet.GSO{NeedsCsum: true, CsumStart: 8, CsumOffset: 14}},
	} {
		f.Add(c.ip, uint8(c.g.Type), c.g.NeedsCsum, c.g.HdrLen, c.g.Size, c.g.CsumStart, c.g.CsumOffset)
	}
	f.Fuzz(func(t *testing.T, ip []byte, typ uint8, csum bool, hdrLen, size, start, off uint16) {
		var p packet.Parsed
		if packet.Parse(ip, false, &p) != packet.OK {
			return
		}
		g := packet.GSO{Type: packet.GSOType(typ), NeedsCsum: csum, HdrLen: hdrLen, Size: size, CsumStart: start, CsumOffset: off}
		if !p.OffloadValid(ip, g) {
			return
		}
		pkt := ip[:p.IPEnd]
		if g.Type == packet.GSONone {
			b := bytes.Clone(pkt)
			if err := packet.FinishChecksum(b, g); err != nil {
				t.Fatalf("valid %+v: FinishChecksum: %v", g, err)
			}
			if !bytes.Equal(b[:p.L4Off], pkt[:p.L4Off]) {
				t.Fatalf("valid %+v: FinishChecksum wrote before the transport header", g)
			}
			return
		}
		n, err := packet.GSOSegments(pkt, g)
		if err != nil {
			t.Fatalf("valid %+v: GSOSegments: %v", g, err)
		}
		if n > 4096 {
			return // too slow to check here
		}
		out, sizes := make([][]byte, n), make([]int, n)
		for i := range out {
			out[i] = make([]byte, len(pkt))
		}
		if _, err := packet.GSOSegment(pkt, g, out, sizes, 0); err != nil {
			t.Fatalf("valid %+v: GSOSegment: %v", g, err)
		}
		for i := range out {
			var sp packet.Parsed
			if st := packet.Parse(out[i][:sizes[i]], false, &sp); st != packet.OK {
				t.Fatalf("segment %d: %v", i, st)
			}
			if sp.Src != p.Src || sp.Dst != p.Dst || sizes[i] > int(g.HdrLen)+int(g.Size) {
				t.Fatalf("segment %d: %s -> %s, %d bytes; super-packet %s -> %s, %+v", i, sp.Src, sp.Dst, sizes[i], p.Src, p.Dst, g)
			}
		}
	})
}
