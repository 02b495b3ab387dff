package underlay

// TCP super-packets across the underlay: cut without copying on send
// (checked against packet.GSOSegment as the reference), merged again on
// receive (checked by cutting the result with the same reference).

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	src4, dst4 = netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.2.2")
	src6, dst6 = netip.MustParseAddr("fd00:10:244:1::2"), netip.MustParseAddr("fd00:10:244:2::2")
)

type tcpOpts struct {
	v6      bool
	payload int
	seq     uint32
	flags   header.TCPFlags
	options []byte // TCP options (a multiple of 4 bytes)
	id      uint16
	sport   uint16
}

// tcpPacket builds a TCP packet with gVisor's header package. With partial
// set, the checksum field holds the pseudo-header sum (CHECKSUM_PARTIAL);
// otherwise the full checksum.
func tcpPacket(o tcpOpts, partial bool) []byte {
	thl := header.TCPMinimumSize + len(o.options)
	hl := header.IPv4MinimumSize
	if o.v6 {
		hl = header.IPv6MinimumSize
	}
	b := make([]byte, hl+thl+o.payload)
	var s, d tcpip.Address
	if o.v6 {
		s, d = tcpip.AddrFrom16(src6.As16()), tcpip.AddrFrom16(dst6.As16())
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(thl + o.payload), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	} else {
		s, d = tcpip.AddrFrom4(src4.As4()), tcpip.AddrFrom4(dst4.As4())
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), ID: o.id, Flags: header.IPv4FlagDontFragment, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: s, DstAddr: d})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	sport := o.sport
	if sport == 0 {
		sport = 40000
	}
	t := header.TCP(b[hl:])
	t.Encode(&header.TCPFields{SrcPort: sport, DstPort: 5201, SeqNum: o.seq, AckNum: 777, DataOffset: uint8(thl), Flags: o.flags | header.TCPFlagAck, WindowSize: 512})
	copy(t[header.TCPMinimumSize:], o.options)
	for i := range o.payload {
		b[hl+thl+i] = byte(int(o.seq) + i)
	}
	pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, uint16(thl+o.payload))
	if partial {
		t.SetChecksum(pseudo)
	} else {
		t.SetChecksum(^checksum.Checksum(b[hl:], pseudo))
	}
	return b
}

func tsoDescriptor(pkt []byte, v6 bool, mss int) packet.GSO {
	hl := header.IPv4MinimumSize
	typ := packet.GSOTCPv4
	if v6 {
		hl, typ = header.IPv6MinimumSize, packet.GSOTCPv6
	}
	thl := int(header.TCP(pkt[hl:]).DataOffset())
	return packet.GSO{Type: typ, NeedsCsum: true, HdrLen: uint16(hl + thl), Size: uint16(mss), CsumStart: uint16(hl), CsumOffset: 16}
}

// reference cuts pkt with packet.GSOSegment.
func reference(t *testing.T, pkt []byte, g packet.GSO) [][]byte {
	t.Helper()
	n, err := packet.GSOSegments(pkt, g)
	if err != nil {
		t.Fatal(err)
	}
	out, sizes := make([][]byte, n), make([]int, n)
	for i := range out {
		out[i] = make([]byte, len(pkt))
	}
	if _, err := packet.GSOSegment(pkt, g, out, sizes, 0); err != nil {
		t.Fatal(err)
	}
	for i := range out {
		out[i] = out[i][:sizes[i]]
	}
	return out
}

func validTCP(t *testing.T, seg []byte) {
	t.Helper()
	var tcp header.TCP
	var s, d tcpip.Address
	if seg[0]>>4 == 6 {
		ip := header.IPv6(seg)
		tcp, s, d = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv4(seg)
		if !ip.IsChecksumValid() {
			t.Fatalf("bad IPv4 header checksum: %x", seg[:20])
		}
		tcp, s, d = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
	}
	if !tcp.IsChecksumValid(s, d, checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
		t.Fatalf("bad TCP checksum in %x", seg[:60])
	}
}

func TestTSOSend(t *testing.T) {
	checkLeaks(t)
	for _, encap := range []Encap{EncapUDP, EncapVXLAN} {
		for _, noOffload := range []bool{false, true} {
			for _, v6 := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v/offload=%v/v6=%v", encap, !noOffload, v6), func(t *testing.T) {
					cfg := Config{Encap: encap, NoOffload: noOffload}
					a, b := newPair(t, cfg)
					rx := collect(t, b.RxDevice())
					dev := a.PeerDevice("b").(link.GSODevice)
					mss := 1400
					if v6 {
						mss = 1380
					}
					cases := []tcpOpts{
						{v6: v6, payload: 10*mss + 123, seq: 1000, flags: header.TCPFlagPsh | header.TCPFlagFin, id: 100},
						{v6: v6, payload: 4 * mss, seq: 0xfffff000, flags: header.TCPFlagCwr, options: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}},
						{v6: v6, payload: 50, seq: 5, flags: header.TCPFlagPsh}, // one segment
					}
					var bufs [][]byte
					var gso []packet.GSO
					var want [][]byte
					for _, c := range cases {
						pkt := tcpPacket(c, true)
						g := tsoDescriptor(pkt, v6, mss)
						bufs = append(bufs, withHeadroom(pkt))
						gso = append(gso, g)
						want = append(want, reference(t, pkt, g)...)
					}
					// A plain packet with a partial checksum, between them.
					plain := tcpPacket(tcpOpts{v6: v6, payload: 99, seq: 9}, true)
					pg := tsoDescriptor(plain, v6, mss)
					pg.Type = packet.GSONone
					bufs = append(bufs[:1], append([][]byte{withHeadroom(plain)}, bufs[1:]...)...)
					gso = append(gso[:1], append([]packet.GSO{pg}, gso[1:]...)...)
					wantPlain := reference(t, plain, pg)
					want = append(want[:11], append(wantPlain, want[11:]...)...)

					if n, err := dev.WriteGSO(bufs, gso, link.Headroom); err != nil || n != len(bufs) {
						t.Fatalf("WriteGSO = %d, %v", n, err)
					}
					got := receive(t, rx, len(want))
					for i := range want {
						if !bytes.Equal(got[i], want[i]) {
							t.Fatalf("segment %d differs from packet.GSOSegment's:\n got %x\nwant %x", i, got[i], want[i])
						}
						validTCP(t, got[i])
					}
					expectNothing(t, rx)
					if st := a.Stats(); st.TxPackets != uint64(len(want)) || st.TotalDrops() != 0 {
						t.Errorf("stats %+v, want %d packets, no drops", st, len(want))
					}
					if gso, _ := a.Offloads(); gso && a.Stats().TxGSO == 0 {
						t.Error("no GSO send for the super-packets")
					}
				})
			}
		}
	}
}

// readGSO reads one batch with ReadGSO into 64 KiB buffers.
func readGSO(t *testing.T, dev link.GSODevice, want int) ([][]byte, []packet.GSO) {
	t.Helper()
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, link.Headroom+65535+100)
	}
	sizes, gso := make([]int, len(bufs)), make([]packet.GSO, len(bufs))
	var out [][]byte
	var outG []packet.GSO
	for len(out) < want {
		n, err := dev.ReadGSO(bufs, sizes, gso, link.Headroom)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			out = append(out, bytes.Clone(bufs[i][link.Headroom:link.Headroom+sizes[i]]))
			outG = append(outG, gso[i])
		}
	}
	return out, outG
}

func TestGROReceive(t *testing.T) {
	checkLeaks(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			a, b := newPair(t, Config{Encap: EncapVXLAN})
			dev, rx := a.PeerDevice("b"), b.RxDevice().(link.GSODevice)
			const mss = 1000
			// Segments as a sender's TSO cuts them: ID + i, PSH on the last.
			seg := func(i, payload int, flags header.TCPFlags) []byte {
				return tcpPacket(tcpOpts{v6: v6, payload: payload, seq: uint32(5000 + i*mss), id: uint16(10 + i), flags: flags}, false)
			}
			var run [][]byte
			for i := range 20 {
				run = append(run, seg(i, mss, 0))
			}
			run = append(run, seg(20, 300, header.TCPFlagPsh))
			other := tcpPacket(tcpOpts{v6: v6, payload: mss, seq: 1, sport: 40001}, false)
			corrupt := seg(21, mss, 0)
			corrupt[len(corrupt)-1] ^= 0xff
			pkts := append(append([][]byte{}, run...), other, seg(30, mss, 0), corrupt, seg(40, mss, header.TCPFlagSyn))
			sendPackets(t, dev, pkts)
			got, gs := readGSO(t, rx, 5)
			if len(got) != 5 {
				t.Fatalf("%d packets, want 5: %v", len(got), gs)
			}
			// The run arrives as one super-packet that cuts back into it.
			if gs[0].Type == packet.GSONone || int(gs[0].Size) != mss || !gs[0].NeedsCsum {
				t.Fatalf("first packet's descriptor %+v", gs[0])
			}
			back := reference(t, got[0], gs[0])
			if len(back) != len(run) {
				t.Fatalf("super-packet cuts into %d segments, want %d", len(back), len(run))
			}
			for i := range run {
				if !bytes.Equal(back[i], run[i]) {
					t.Fatalf("segment %d after merge and cut:\n got %x\nwant %x", i, back[i], run[i])
				}
			}
			// The rest pass alone and unchanged.
			for i, want := range [][]byte{other, seg(30, mss, 0), corrupt, seg(40, mss, header.TCPFlagSyn)} {
				if gs[1+i] != (packet.GSO{}) || !bytes.Equal(got[1+i], want) {
					t.Errorf("packet %d: %+v %x, want it as sent", 1+i, gs[1+i], got[1+i][:48])
				}
			}
			if st := b.Stats(); st.RxPackets != uint64(len(pkts)) {
				t.Errorf("rx packets %d, want %d (segments)", st.RxPackets, len(pkts))
			}
		})
	}
}

// TestTSOEndToEnd: a super-packet written to one underlay comes out of
// the other as the same super-packet (same payload and descriptor).
func TestTSOEndToEnd(t *testing.T) {
	checkLeaks(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, encap := range []Encap{EncapUDP, EncapVXLAN} {
		a, b := newPair(t, Config{Encap: encap})
		dev, rx := a.PeerDevice("b").(link.GSODevice), b.RxDevice().(link.GSODevice)
		for range 20 {
			v6 := rng.IntN(2) == 0
			mss := 500 + rng.IntN(900)
			o := tcpOpts{v6: v6, payload: 1 + rng.IntN(60000), seq: rng.Uint32(), id: uint16(rng.Uint32())}
			pkt := tcpPacket(o, true)
			g := tsoDescriptor(pkt, v6, mss)
			if _, err := dev.WriteGSO([][]byte{withHeadroom(pkt)}, []packet.GSO{g}, link.Headroom); err != nil {
				t.Fatal(err)
			}
			nseg, _ := packet.GSOSegments(pkt, g)
			var segs [][]byte
			for len(segs) < nseg {
				got, gs := readGSO(t, rx, 1)
				for i := range got {
					segs = append(segs, reference(t, got[i], gs[i])...)
				}
			}
			want := reference(t, pkt, g)
			for i := range want {
				if !bytes.Equal(segs[i], want[i]) {
					t.Fatalf("%v mss %d: segment %d differs", encap, mss, i)
				}
			}
		}
	}
}

func TestGSOZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("skipped under -race: sync.Pool drops items at random there, by design")
	}
	a, b := newPair(t, Config{Encap: EncapVXLAN})
	dev, rx := a.PeerDevice("b").(link.GSODevice), b.RxDevice().(link.GSODevice)
	pkt := tcpPacket(tcpOpts{payload: 40 * 1400, seq: 1}, true)
	g := tsoDescriptor(pkt, false, 1400)
	bufs, gso := [][]byte{withHeadroom(pkt)}, []packet.GSO{g}
	rbufs := make([][]byte, 32)
	for i := range rbufs {
		rbufs[i] = make([]byte, link.Headroom+65535+100)
	}
	sizes, rg := make([]int, 32), make([]packet.GSO, 32)
	round := func() {
		// WriteGSO cuts in place (it rewrites nothing of the packet but
		// its headroom), so the same buffer is sent every round.
		if _, err := dev.WriteGSO(bufs, gso, link.Headroom); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(pkt)-40; {
			n, err := rx.ReadGSO(rbufs, sizes, rg, link.Headroom)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				got += sizes[i] - 40
			}
		}
	}
	round()
	if n := testing.AllocsPerRun(50, round); n != 0 {
		t.Fatalf("%v allocations per super-packet sent and received, want 0", n)
	}
}

// udpPacket builds a UDP datagram with a full checksum (gVisor's header
// package) and IPv4 ID id.
func udpPacket(v6 bool, payload int, id uint16, sport uint16, fill byte) []byte {
	hl := header.IPv4MinimumSize
	if v6 {
		hl = header.IPv6MinimumSize
	}
	b := make([]byte, hl+header.UDPMinimumSize+payload)
	var s, d tcpip.Address
	if v6 {
		s, d = tcpip.AddrFrom16(src6.As16()), tcpip.AddrFrom16(dst6.As16())
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(header.UDPMinimumSize + payload), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	} else {
		s, d = tcpip.AddrFrom4(src4.As4()), tcpip.AddrFrom4(dst4.As4())
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), ID: id, TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: s, DstAddr: d})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	u := header.UDP(b[hl:])
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: 5201, Length: uint16(header.UDPMinimumSize + payload)})
	for i := range payload {
		b[hl+header.UDPMinimumSize+i] = fill + byte(i)
	}
	u.SetChecksum(^checksum.Checksum(u, header.PseudoHeaderChecksum(header.UDPProtocolNumber, s, d, uint16(len(u)))))
	return b
}

func TestGROReceiveUDP(t *testing.T) {
	checkLeaks(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			a, b := newPair(t, Config{Encap: EncapUDP})
			dev, rx := a.PeerDevice("b"), b.RxDevice().(link.GSODevice)
			var run [][]byte
			for i := range 30 {
				run = append(run, udpPacket(v6, 64, uint16(100+i), 4000, byte(i)))
			}
			run = append(run, udpPacket(v6, 20, 130, 4000, 9))
			other := udpPacket(v6, 64, 7, 4001, 1)
			corrupt := udpPacket(v6, 64, 131, 4000, 2)
			corrupt[len(corrupt)-1] ^= 0x55
			pkts := append(append([][]byte{}, run...), other, corrupt)
			sendPackets(t, dev, pkts)
			got, gs := readGSO(t, rx, 3)
			if len(got) != 3 || gs[0].Type != packet.GSOUDPL4 || gs[0].Size != 64 {
				t.Fatalf("%d packets, first %+v", len(got), gs[0])
			}
			back := reference(t, got[0], gs[0])
			if len(back) != len(run) {
				t.Fatalf("%d datagrams back, want %d", len(back), len(run))
			}
			for i := range run {
				if !bytes.Equal(back[i], run[i]) {
					t.Fatalf("datagram %d after merge and cut:\n got %x\nwant %x", i, back[i], run[i])
				}
			}
			for i, want := range [][]byte{other, corrupt} {
				if gs[1+i] != (packet.GSO{}) || !bytes.Equal(got[1+i], want) {
					t.Errorf("packet %d: %+v, want it alone as sent", 1+i, gs[1+i])
				}
			}
		})
	}
}

// FuzzCoalesce: whatever two packets arrive, merging never panics, and a
// super-packet it makes is one packet.GSOSegment accepts, cutting back into
// the two packets' payloads.
func FuzzCoalesce(f *testing.F) {
	f.Add(tcpPacket(tcpOpts{payload: 100, seq: 1}, false), tcpPacket(tcpOpts{payload: 100, seq: 101}, false))
	f.Add(tcpPacket(tcpOpts{v6: true, payload: 10, seq: 1}, false), tcpPacket(tcpOpts{v6: true, payload: 5, seq: 11, flags: header.TCPFlagPsh}, false))
	f.Add(udpPacket(false, 64, 1, 9, 0), udpPacket(false, 64, 2, 9, 1))
	f.Add(udpPacket(true, 8, 1, 9, 0), udpPacket(true, 3, 2, 9, 1))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		const off = 64
		buf := make([]byte, off+len(a)+len(b)+16)
		copy(buf[off:], a)
		var c coalescer
		s, ok := mergeable(a)
		if !ok {
			return
		}
		c.start(0, a, s)
		merged := c.tryAppend(buf, off, b)
		n, g := c.finish(buf, off)
		if !merged {
			if g.Type != packet.GSONone || n != len(a) {
				t.Fatalf("nothing merged, but %d bytes, %+v", n, g)
			}
			return
		}
		sb, _ := mergeable(b)
		if n != len(a)+sb.payload || g.Type == packet.GSONone {
			t.Fatalf("merged into %d bytes (%+v) from %d and %d", n, g, len(a), len(b))
		}
		segs := reference(t, buf[off:off+n], g)
		if len(segs) != 2 || !bytes.Equal(segs[0][s.hl+s.thl:], a[s.hl+s.thl:]) || !bytes.Equal(segs[1][sb.hl+sb.thl:], b[sb.hl+sb.thl:]) {
			t.Fatalf("cut into %d segments that do not carry the payloads", len(segs))
		}
	})
}
