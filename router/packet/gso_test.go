package packet_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// super describes a super-packet for superPkt.
type super struct {
	v6       bool
	udp      bool
	payload  int
	mss      uint16
	flags    header.TCPFlags // TCP only; ACK when zero
	ipOpts   bool            // IPv4: a router alert option (IHL 6)
	ext      bool            // IPv6: a hop-by-hop header before the transport header
	complete bool            // a full L4 checksum instead of the partial (pseudo-header) one
}

// superPkt builds the super-packet and its GSO descriptor with gVisor, the
// way the kernel hands one over: the L4 checksum field holds the pseudo-header
// sum only (unless s.complete), IPv4 DF set, and HdrLen as unreliable as the
// kernel's (the linear length), which GSOSegment must ignore.
func superPkt(t testing.TB, s super) ([]byte, packet.GSO) {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(s.payload), uint64(s.mss)))
	payload := randBytes(r, s.payload)
	src, dst := src4, dst4
	if s.v6 {
		src, dst = src6, dst6
	}
	var l4 []byte
	proto := uint8(packet.ProtoTCP)
	g := packet.GSO{Size: s.mss, NeedsCsum: !s.complete, HdrLen: 1000}
	if s.udp {
		proto = packet.ProtoUDP
		l4 = udpSeg(src, dst, 4000, 53, payload)
		g.Type, g.CsumOffset = packet.GSOUDPL4, 6
	} else {
		if s.flags == 0 {
			s.flags = header.TCPFlagAck
		}
		l4 = tcpSeg(src, dst, 4000, 80, s.flags, payload)
		g.Type, g.CsumOffset = packet.GSOTCPv4, 16
		if s.v6 {
			g.Type = packet.GSOTCPv6
		}
	}
	if !s.complete {
		at := int(g.CsumOffset)
		binary.BigEndian.PutUint16(l4[at:], header.PseudoHeaderChecksum(gvProto(proto), gvAddr(src), gvAddr(dst), uint16(len(l4))))
	}
	var pkt []byte
	if s.v6 {
		var ext []extHdr
		if s.ext {
			ext = []extHdr{hopByHop()}
		}
		pkt = ip6(src, dst, 64, proto, ext, l4)
		g.CsumStart = uint16(len(pkt) - len(l4))
	} else {
		f := v4{src: src, dst: dst, proto: proto, flags: header.IPv4FlagDontFragment}
		if s.ipOpts {
			f.opts = header.IPv4OptionsSerializer{&header.IPv4SerializableRouterAlertOption{}}
		}
		pkt = ip4(f, l4)
		g.CsumStart = uint16(len(pkt) - len(l4))
	}
	return pkt, g
}

// segBufs returns n buffers of size bytes.
func segBufs(n, size int) ([][]byte, []int) {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
	}
	return out, make([]int, n)
}

// checkSegments checks segs, the packets GSOSegment cut orig into, with
// gVisor's header views: every header valid with a correct checksum, the
// fields that must change changed as Linux's GSO changes them and every other
// header byte equal to the original's, payload chunks of g.Size (the last one
// shorter or equal) that concatenate to the original payload.
func checkSegments(t *testing.T, orig []byte, g packet.GSO, segs [][]byte) {
	t.Helper()
	v6 := header.IPVersion(orig) == header.IPv6Version
	var l4, ipLen int
	if v6 {
		ipLen = header.IPv6MinimumSize + int(header.IPv6(orig).PayloadLength())
		l4 = header.IPv6MinimumSize
		if g.NeedsCsum {
			l4 = int(g.CsumStart)
		}
	} else {
		ipLen = int(header.IPv4(orig).TotalLength())
		l4 = int(header.IPv4(orig).HeaderLength())
	}
	udp := g.Type == packet.GSOUDPL4
	hdr := l4 + header.UDPMinimumSize
	if !udp {
		hdr = l4 + int(header.TCP(orig[l4:]).DataOffset())
	}
	want := orig[hdr:ipLen]
	if n := max(1, (len(want)+int(g.Size)-1)/int(g.Size)); len(segs) != n {
		t.Fatalf("%d segments, want %d", len(segs), n)
	}
	var got []byte
	for i, seg := range segs {
		last := i == len(segs)-1
		if len(seg) < hdr {
			t.Fatalf("segment %d: %d bytes, shorter than the %d header bytes", i, len(seg), hdr)
		}
		chunk := seg[hdr:]
		if len(chunk) > int(g.Size) || (!last && len(chunk) != int(g.Size)) {
			t.Fatalf("segment %d of %d: %d payload bytes, size %d", i, len(segs), len(chunk), g.Size)
		}
		got = append(got, chunk...)
		src, dst := header.IPv4(seg).SourceAddress(), header.IPv4(seg).DestinationAddress()
		if v6 {
			h := header.IPv6(seg)
			if !h.IsValid(len(seg)) || int(h.PayloadLength()) != len(seg)-header.IPv6MinimumSize {
				t.Fatalf("segment %d: bad IPv6 header %x", i, seg[:header.IPv6MinimumSize])
			}
			if !bytes.Equal(seg[:4], orig[:4]) || !bytes.Equal(seg[6:l4], orig[6:l4]) {
				t.Fatalf("segment %d: IPv6 header changed beyond the payload length", i)
			}
			src, dst = h.SourceAddress(), h.DestinationAddress()
		} else {
			h, o := header.IPv4(seg), header.IPv4(orig)
			if !h.IsValid(len(seg)) || !h.IsChecksumValid() || int(h.TotalLength()) != len(seg) {
				t.Fatalf("segment %d: bad IPv4 header %x", i, seg[:h.HeaderLength()])
			}
			if h.ID() != o.ID()+uint16(i) {
				t.Fatalf("segment %d: IPv4 ID %#x, want %#x", i, h.ID(), o.ID()+uint16(i))
			}
			if !bytes.Equal(seg[6:10], orig[6:10]) || !bytes.Equal(seg[12:l4], orig[12:l4]) || seg[0] != orig[0] || seg[1] != orig[1] {
				t.Fatalf("segment %d: IPv4 header changed beyond length, ID and checksum", i)
			}
		}
		payloadSum := checksum.Checksum(chunk, 0)
		if udp {
			u := header.UDP(seg[l4:])
			if int(u.Length()) != len(seg)-l4 || !u.IsChecksumValid(src, dst, payloadSum) || u.Checksum() == 0 {
				t.Fatalf("segment %d: UDP length %d (want %d) or checksum %#x invalid", i, u.Length(), len(seg)-l4, u.Checksum())
			}
			if !bytes.Equal(seg[l4:l4+4], orig[l4:l4+4]) {
				t.Fatalf("segment %d: UDP ports changed", i)
			}
			continue
		}
		tc, o := header.TCP(seg[l4:]), header.TCP(orig[l4:])
		if !tc.IsChecksumValid(src, dst, payloadSum, uint16(len(chunk))) {
			t.Fatalf("segment %d: TCP checksum %#x invalid", i, tc.Checksum())
		}
		if tc.SequenceNumber() != o.SequenceNumber()+uint32(i)*uint32(g.Size) {
			t.Fatalf("segment %d: seq %d, want %d", i, tc.SequenceNumber(), o.SequenceNumber()+uint32(i)*uint32(g.Size))
		}
		flags := o.Flags()
		if !last {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i > 0 {
			flags &^= header.TCPFlagCwr
		}
		if tc.Flags() != flags {
			t.Fatalf("segment %d: flags %v, want %v", i, tc.Flags(), flags)
		}
		// Everything else of the TCP header, options included, is the original's.
		if !bytes.Equal(seg[l4:l4+4], orig[l4:l4+4]) || !bytes.Equal(seg[l4+8:l4+13], orig[l4+8:l4+13]) ||
			!bytes.Equal(seg[l4+14:l4+16], orig[l4+14:l4+16]) || !bytes.Equal(seg[l4+18:hdr], orig[l4+18:hdr]) {
			t.Fatalf("segment %d: TCP header changed beyond seq, flags and checksum", i)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("concatenated payload differs from the original (%d vs %d bytes)", len(got), len(want))
	}
}

func TestGSOSegment(t *testing.T) {
	tests := []struct {
		name string
		s    super
	}{
		{"tcp4/last-shorter", super{payload: 10000, mss: 1448}},
		{"tcp4/exact-multiple", super{payload: 4 * 1448, mss: 1448}},
		{"tcp4/one-segment", super{payload: 100, mss: 1448}},
		{"tcp4/header-only", super{payload: 0, mss: 1448}},
		{"tcp4/64k", super{payload: 65535 - 20 - 24, mss: 1448}},
		{"tcp4/fin-psh-cwr", super{payload: 5000, mss: 1000, flags: header.TCPFlagAck | header.TCPFlagFin | header.TCPFlagPsh | header.TCPFlagCwr | header.TCPFlagEce}},
		{"tcp4/ip-options", super{payload: 3000, mss: 1400, ipOpts: true}},
		{"tcp4/complete-checksum", super{payload: 3000, mss: 1400, complete: true}},
		{"tcp4/mss-1", super{payload: 7, mss: 1}},
		{"tcp6/last-shorter", super{v6: true, payload: 10000, mss: 1428}},
		{"tcp6/fin-psh", super{v6: true, payload: 3000, mss: 1428, flags: header.TCPFlagAck | header.TCPFlagFin | header.TCPFlagPsh}},
		{"tcp6/hop-by-hop", super{v6: true, ext: true, payload: 3000, mss: 1400}},
		{"tcp6/64k", super{v6: true, payload: 65535 - 24, mss: 1428}},
		{"udp4/last-shorter", super{udp: true, payload: 5000, mss: 1472}},
		{"udp4/exact-multiple", super{udp: true, payload: 3 * 1000, mss: 1000}},
		{"udp4/complete-checksum", super{udp: true, payload: 3000, mss: 1000, complete: true}},
		{"udp6/last-shorter", super{udp: true, v6: true, payload: 5000, mss: 1452}},
		{"udp6/hop-by-hop", super{udp: true, v6: true, ext: true, payload: 5000, mss: 1452}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkt, g := superPkt(t, tc.s)
			orig := bytes.Clone(pkt)
			n, err := packet.GSOSegments(pkt, g)
			if err != nil {
				t.Fatalf("GSOSegments: %v", err)
			}
			const off = 30
			out, sizes := segBufs(n+3, off+1600)
			for i := range out {
				for j := range off {
					out[i][j] = 0xee
				}
			}
			got, err := packet.GSOSegment(pkt, g, out, sizes, off)
			if err != nil || got != n {
				t.Fatalf("GSOSegment = %d, %v; want %d segments", got, err, n)
			}
			if !bytes.Equal(pkt, orig) {
				t.Fatal("GSOSegment changed its input")
			}
			segs := make([][]byte, n)
			for i := range segs {
				segs[i] = out[i][off : off+sizes[i]]
				if !bytes.Equal(out[i][:off], bytes.Repeat([]byte{0xee}, off)) {
					t.Fatalf("segment %d: the bytes before the offset were written", i)
				}
			}
			checkSegments(t, pkt, g, segs)
			// The engine's parser takes every segment.
			for i, s := range segs {
				if st := packet.Parse(s, false, new(packet.Parsed)); st != packet.OK {
					t.Fatalf("segment %d: Parse = %v", i, st)
				}
			}
		})
	}
}

// TestGSOSegmentFrom cuts a super-packet a few segments at a time and checks
// the result equals one GSOSegment call's.
func TestGSOSegmentFrom(t *testing.T) {
	pkt, g := superPkt(t, super{payload: 20000, mss: 1448, flags: header.TCPFlagAck | header.TCPFlagPsh})
	out, sizes := segBufs(32, 1600)
	n, err := packet.GSOSegment(pkt, g, out, sizes, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, window := range []int{1, 3, 7, n} {
		part, psizes := segBufs(window, 1600)
		for next := 0; next < n; {
			k, total, err := packet.GSOSegmentFrom(pkt, g, next, part, psizes, 0)
			if err != nil || total != n || k != min(window, n-next) {
				t.Fatalf("window %d at %d: GSOSegmentFrom = %d, %d, %v; want %d of %d", window, next, k, total, err, min(window, n-next), n)
			}
			for i := range k {
				if !bytes.Equal(part[i][:psizes[i]], out[next+i][:sizes[next+i]]) {
					t.Fatalf("window %d: segment %d differs", window, next+i)
				}
			}
			next += k
		}
	}
	if k, total, err := packet.GSOSegmentFrom(pkt, g, n, out, sizes, 0); k != 0 || total != n || err != nil {
		t.Fatalf("past the end: %d, %d, %v", k, total, err)
	}
}

func TestGSOSegmentNone(t *testing.T) {
	// A plain packet is copied whole; its partial checksum is finished.
	pkt, g := superPkt(t, super{udp: true, payload: 300, mss: 1000})
	g.Type = packet.GSONone
	pkt = append(pkt, 0, 0, 0) // link padding, not part of the packet
	out, sizes := segBufs(1, 400)
	n, err := packet.GSOSegment(pkt, g, out, sizes, 4)
	if err != nil || n != 1 || sizes[0] != len(pkt)-3 {
		t.Fatalf("GSOSegment = %d, %v, size %d", n, err, sizes[0])
	}
	seg := out[0][4 : 4+sizes[0]]
	u := header.UDP(seg[20:])
	if !u.IsChecksumValid(header.IPv4(seg).SourceAddress(), header.IPv4(seg).DestinationAddress(), checksum.Checksum(seg[28:], 0)) {
		t.Fatal("checksum not finished")
	}
}

func TestGSOSegmentErrors(t *testing.T) {
	tcp4, g4 := superPkt(t, super{payload: 5000, mss: 1000})
	tcp6, g6 := superPkt(t, super{v6: true, payload: 5000, mss: 1000})
	udp4, gu := superPkt(t, super{udp: true, payload: 5000, mss: 1000})
	with := func(g packet.GSO, f func(*packet.GSO)) packet.GSO { f(&g); return g }
	mutate := func(b []byte, f func([]byte)) []byte { b = bytes.Clone(b); f(b); return b }
	tests := []struct {
		name  string
		pkt   []byte
		g     packet.GSO
		nbufs int
		size  int
		want  error
	}{
		{"too-few-buffers", tcp4, g4, 4, 1500, packet.ErrSegmentBuffers},
		{"buffer-too-small", tcp4, g4, 5, 1000, packet.ErrSegmentBuffers},
		{"tcp4-on-v6", tcp6, with(g6, func(g *packet.GSO) { g.Type = packet.GSOTCPv4 }), 8, 1500, packet.ErrGSO},
		{"tcp6-on-v4", tcp4, with(g4, func(g *packet.GSO) { g.Type = packet.GSOTCPv6 }), 8, 1500, packet.ErrGSO},
		{"udp-type-on-tcp", tcp4, with(g4, func(g *packet.GSO) { g.Type = packet.GSOUDPL4 }), 8, 1500, packet.ErrGSO},
		{"tcp-type-on-udp", udp4, with(gu, func(g *packet.GSO) { g.Type = packet.GSOTCPv4 }), 8, 1500, packet.ErrGSO},
		{"unknown-type", tcp4, with(g4, func(g *packet.GSO) { g.Type = 3 }), 8, 1500, packet.ErrGSO},
		{"size-0", tcp4, with(g4, func(g *packet.GSO) { g.Size = 0 }), 8, 1500, packet.ErrGSO},
		{"csum-start-not-ihl", tcp4, with(g4, func(g *packet.GSO) { g.CsumStart = 24 }), 8, 1500, packet.ErrGSO},
		{"v6-csum-start-in-header", tcp6, with(g6, func(g *packet.GSO) { g.CsumStart = 20 }), 8, 1500, packet.ErrGSO},
		{"v6-csum-start-past-end", tcp6, with(g6, func(g *packet.GSO) { g.CsumStart = 6000 }), 8, 1500, packet.ErrGSO},
		{"truncated", tcp4[:3000], g4, 8, 1500, packet.ErrGSO},
		{"tcp-data-offset-small", mutate(tcp4, func(b []byte) { b[20+12] = 4 << 4 }), g4, 8, 1500, packet.ErrGSO},
		{"v4-fragment", mutate(tcp4, func(b []byte) { b[6] |= 0x20 }), g4, 8, 1500, packet.ErrGSO},
		{"bad-version", mutate(tcp4, func(b []byte) { b[0] = 0x55 }), g4, 8, 1500, packet.ErrGSO},
		{"empty", nil, g4, 8, 1500, packet.ErrGSO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, sizes := segBufs(tc.nbufs, tc.size)
			if _, err := packet.GSOSegment(tc.pkt, tc.g, out, sizes, 0); !errors.Is(err, tc.want) {
				t.Fatalf("GSOSegment error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestFinishChecksum(t *testing.T) {
	for _, s := range []super{
		{payload: 1000, mss: 2000},
		{v6: true, payload: 1001, mss: 2000},
		{udp: true, payload: 999, mss: 2000},
		{udp: true, v6: true, ext: true, payload: 10, mss: 2000},
	} {
		pkt, g := superPkt(t, s)
		g.Type = packet.GSONone
		if err := packet.FinishChecksum(pkt, g); err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		out, sizes := segBufs(1, 1500)
		// The result is the packet with its checksum complete: segmenting
		// it as a one-segment super-packet must verify.
		g.Type, g.Size = packet.GSOTCPv4, 2000
		if s.v6 {
			g.Type = packet.GSOTCPv6
		}
		if s.udp {
			g.Type = packet.GSOUDPL4
		}
		if _, err := packet.GSOSegment(pkt, g, out, sizes, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out[0][:sizes[0]], pkt) {
			t.Fatalf("%+v: finished packet differs from its full-checksum segment", s)
		}
		checkSegments(t, pkt, g, [][]byte{pkt})
	}

	pkt, g := superPkt(t, super{payload: 100, mss: 2000})
	orig := bytes.Clone(pkt)
	if err := packet.FinishChecksum(pkt, packet.GSO{}); err != nil || !bytes.Equal(pkt, orig) {
		t.Fatalf("without NeedsCsum: %v, changed %v", err, !bytes.Equal(pkt, orig))
	}
	if err := packet.FinishChecksum(pkt, g); !errors.Is(err, packet.ErrGSO) {
		t.Fatalf("on a super-packet: %v, want ErrGSO", err)
	}
	g.Type, g.CsumOffset = packet.GSONone, uint16(len(pkt))
	if err := packet.FinishChecksum(pkt, g); !errors.Is(err, packet.ErrGSO) {
		t.Fatalf("checksum past the end: %v, want ErrGSO", err)
	}
}

func TestGSONoAllocs(t *testing.T) {
	tcp4, g4 := superPkt(t, super{payload: 60000, mss: 1448})
	udp6, g6 := superPkt(t, super{udp: true, v6: true, payload: 30000, mss: 1452})
	plain, gp := superPkt(t, super{udp: true, payload: 1000, mss: 2000})
	gp.Type = packet.GSONone
	out, sizes := segBufs(64, 1600)
	tests := []struct {
		name string
		fn   func()
	}{
		{"GSOSegment/tcp4", func() { _, _ = packet.GSOSegment(tcp4, g4, out, sizes, 14) }},
		{"GSOSegment/udp6", func() { _, _ = packet.GSOSegment(udp6, g6, out, sizes, 14) }},
		{"GSOSegmentFrom", func() { _, _, _ = packet.GSOSegmentFrom(tcp4, g4, 10, out[:5], sizes, 0) }},
		{"GSOSegments", func() { _, _ = packet.GSOSegments(tcp4, g4) }},
		{"FinishChecksum", func() { _ = packet.FinishChecksum(plain, gp) }},
	}
	for _, tc := range tests {
		if n := testing.AllocsPerRun(100, tc.fn); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, n)
		}
	}
}

// FuzzGSOSegment cuts arbitrary packets with arbitrary descriptors: never a
// panic or an out-of-range write; an error is ErrGSO or ErrSegmentBuffers;
// whatever it accepts, gVisor's views verify segment by segment
// (checkSegments); and a well-formed super-packet is always accepted.
// Seeds: testdata/fuzz/FuzzGSOSegment.
func FuzzGSOSegment(f *testing.F) {
	// Small seeds: the fuzzer minimizes what it finds by rerunning, byte by byte.
	for _, s := range []super{
		{payload: 300, mss: 100, flags: header.TCPFlagAck | header.TCPFlagFin},
		{v6: true, ext: true, payload: 300, mss: 100},
		{udp: true, payload: 250, mss: 100},
	} {
		pkt, g := superPkt(f, s)
		f.Add(pkt, uint8(g.Type), g.Size, g.CsumStart, g.NeedsCsum)
	}
	const window, off = 8, 3
	out, sizes := segBufs(window, off+65536+64)
	f.Fuzz(func(t *testing.T, pkt []byte, typ uint8, size, csumStart uint16, needsCsum bool) {
		g := packet.GSO{Type: packet.GSOType(typ), Size: size, CsumStart: csumStart, NeedsCsum: needsCsum, CsumOffset: 6}
		if g.Type == packet.GSOTCPv4 || g.Type == packet.GSOTCPv6 {
			g.CsumOffset = 16
		}
		orig := bytes.Clone(pkt)
		if n, err := packet.GSOSegments(pkt, g); err == nil && n > 256 {
			// Keep each run quick (the fuzzer minimizes by rerunning): a
			// packet of many tiny segments only has to be refused whole
			// by too few buffers.
			if _, err := packet.GSOSegment(pkt, g, out, sizes, off); !errors.Is(err, packet.ErrSegmentBuffers) {
				t.Fatalf("%d segments into %d buffers: %v", n, len(out), err)
			}
			return
		}
		var segs [][]byte
		var err error
		for next, total := 0, 1; next < total && err == nil; {
			var k int
			k, total, err = packet.GSOSegmentFrom(pkt, g, next, out, sizes, off)
			for i := range k {
				segs = append(segs, bytes.Clone(out[i][off:off+sizes[i]]))
			}
			next += k
			if k == 0 && err == nil && next < total {
				t.Fatalf("no progress at segment %d of %d", next, total)
			}
		}
		if !bytes.Equal(pkt, orig) {
			t.Fatal("input changed")
		}
		if err != nil {
			if !errors.Is(err, packet.ErrGSO) && !errors.Is(err, packet.ErrSegmentBuffers) {
				t.Fatalf("unexpected error %v", err)
			}
			if wellFormedSuper(pkt, g) {
				t.Fatalf("rejected a well-formed super-packet: %v", err)
			}
			return
		}
		if g.Type == packet.GSONone {
			return
		}
		checkSegments(t, pkt, g, segs)
	})
}

// wellFormedSuper reports, with gVisor's views, whether pkt is a packet that
// g plainly describes: a valid unfragmented IPv4 or an IPv6 packet with the
// transport header right after the fixed header, of g's protocol, with a
// complete transport header, and a nonzero segment size.
func wellFormedSuper(pkt []byte, g packet.GSO) bool {
	if len(pkt) == 0 || g.Size == 0 {
		return false
	}
	var proto uint8
	switch g.Type {
	case packet.GSOTCPv4, packet.GSOTCPv6:
		proto = packet.ProtoTCP
	case packet.GSOUDPL4:
		proto = packet.ProtoUDP
	default:
		return false
	}
	var l4, end int
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		h := header.IPv4(pkt)
		if g.Type == packet.GSOTCPv6 || !h.IsValid(len(pkt)) || h.Protocol() != proto || h.More() || h.FragmentOffset() != 0 {
			return false
		}
		l4, end = int(h.HeaderLength()), int(h.TotalLength())
		if g.NeedsCsum && int(g.CsumStart) != l4 {
			return false
		}
	case header.IPv6Version:
		h := header.IPv6(pkt)
		if g.Type == packet.GSOTCPv4 || !h.IsValid(len(pkt)) || h.NextHeader() != proto || (g.NeedsCsum && g.CsumStart != header.IPv6MinimumSize) {
			return false
		}
		l4, end = header.IPv6MinimumSize, header.IPv6MinimumSize+int(h.PayloadLength())
	default:
		return false
	}
	if proto == packet.ProtoUDP {
		return l4+header.UDPMinimumSize <= end
	}
	return l4+header.TCPMinimumSize <= end && int(header.TCP(pkt[l4:]).DataOffset()) >= header.TCPMinimumSize &&
		l4+int(header.TCP(pkt[l4:]).DataOffset()) <= end
}

func BenchmarkGSOSegment(b *testing.B) {
	for _, s := range []struct {
		name string
		s    super
	}{
		{"tcp4-64k", super{payload: 65535 - 44, mss: 1448}},
		{"udp6-16k", super{udp: true, v6: true, payload: 16000, mss: 1452}},
	} {
		b.Run(s.name, func(b *testing.B) {
			pkt, g := superPkt(b, s.s)
			n, _ := packet.GSOSegments(pkt, g)
			out, sizes := segBufs(n, 1600)
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				if _, err := packet.GSOSegment(pkt, g, out, sizes, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "pkt/s")
		})
	}
}
