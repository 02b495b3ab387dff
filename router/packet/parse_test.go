package packet_test

import (
	"fmt"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

type parseCase struct {
	name  string
	frame []byte
	l2    bool
	want  packet.Status
	// check, when set, asserts what the case is about by hand, on top of
	// the field-by-field comparison with the gVisor oracle.
	check func(t *testing.T, p *packet.Parsed, frame []byte)
}

var payload32 = []byte("0123456789abcdef0123456789abcdef")

// withL2 returns the case twice: as a bare IP packet and in an Ethernet frame.
func withL2(name string, ip []byte, want packet.Status, check func(*testing.T, *packet.Parsed, []byte)) []parseCase {
	typ := uint16(packet.EtherTypeIPv4)
	if len(ip) > 0 && ip[0]>>4 == 6 {
		typ = packet.EtherTypeIPv6
	}
	return []parseCase{
		{name: name + "/l3", frame: ip, want: want, check: check},
		{name: name + "/l2", frame: eth(typ, ip, 0), l2: true, want: want, check: check},
	}
}

func corrupt(b []byte, f func([]byte)) []byte {
	b = append([]byte(nil), b...)
	f(b)
	return b
}

func parseCases() []parseCase {
	var cs []parseCase
	add := func(c ...parseCase) { cs = append(cs, c...) }

	// IPv4 transports, with and without Ethernet.
	udp4 := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, ttl: 17}, udpSeg(src4, dst4, 40000, 53, payload32))
	tcp4 := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP, ttl: 128, flags: header.IPv4FlagDontFragment},
		tcpSeg(src4, dst4, 51515, 443, header.TCPFlagSyn, nil))
	echo4 := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoICMPv4, ttl: 1}, icmp4(packet.ICMPv4Echo, 0, 0x4242<<16|7, payload32))
	add(withL2("v4/udp", udp4, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.SrcPort != 40000 || p.DstPort != 53 || p.TTL != 17 || p.Proto != packet.ProtoUDP || p.DF || p.Frag {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v4/tcp-df", tcp4, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.SrcPort != 51515 || p.DstPort != 443 || !p.DF || p.Frag || p.L4Off-p.IPOff != 20 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v4/icmp-echo", echo4, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.SrcPort != 0x4242 || p.DstPort != packet.ICMPv4Echo<<8 || p.ICMPType() != packet.ICMPv4Echo {
			t.Errorf("fields: %+v", p)
		}
	})...)

	// Options: IHL 6 (router alert, serialized by gVisor) and IHL 15.
	ra := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, opts: header.IPv4OptionsSerializer{&header.IPv4SerializableRouterAlertOption{}}},
		udpSeg(src4, dst4, 1, 2, nil))
	add(withL2("v4/options-ihl6", ra, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.L4Off-p.IPOff != 24 || p.SrcPort != 1 || p.DstPort != 2 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	ihl15 := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP}, nil)
	ihl15 = append(ihl15[:20:20], append(make([]byte, 40), tcpSeg(src4, dst4, 7, 8, header.TCPFlagAck, nil)...)...)
	for i := 20; i < 59; i++ {
		ihl15[i] = 1 // NOP
	}
	ihl15[0] = 0x4f
	header.IPv4(ihl15).SetTotalLength(uint16(len(ihl15)))
	header.IPv4(ihl15).SetChecksum(0)
	header.IPv4(ihl15).SetChecksum(^header.IPv4(ihl15).CalculateChecksum())
	add(withL2("v4/options-ihl15", ihl15, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.L4Off-p.IPOff != 60 || p.SrcPort != 7 || p.DstPort != 8 {
			t.Errorf("fields: %+v", p)
		}
	})...)

	// Ethernet minimum-frame padding: 14+20+8 = 42 bytes padded to 60.
	small := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP}, udpSeg(src4, dst4, 9, 10, nil))
	add(parseCase{name: "v4/eth-padding", frame: eth(packet.EtherTypeIPv4, small, 18), l2: true, want: packet.OK,
		check: func(t *testing.T, p *packet.Parsed, frame []byte) {
			if len(frame) != 60 || p.IPEnd != 42 || p.IPLen() != 28 {
				t.Errorf("len(frame)=%d IPEnd=%d IPLen=%d, want 60, 42, 28", len(frame), p.IPEnd, p.IPLen())
			}
		}})
	add(parseCase{name: "v4/bare-trailing-bytes", frame: append(append([]byte(nil), small...), 0xde, 0xad), want: packet.OK,
		check: func(t *testing.T, p *packet.Parsed, _ []byte) {
			if p.IPEnd != 28 {
				t.Errorf("IPEnd = %d, want 28", p.IPEnd)
			}
		}})

	// Fragments.
	first := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, flags: header.IPv4FlagMoreFragments}, udpSeg(src4, dst4, 1111, 2222, payload32))
	middle := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP, flags: header.IPv4FlagMoreFragments, fragOff: 1480}, payload32)
	last := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP, fragOff: 2960}, payload32)
	add(withL2("v4/frag-first", first, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if !p.Frag || p.FragOff || p.SrcPort != 1111 || p.DstPort != 2222 || p.DF {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v4/frag-middle", middle, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if !p.Frag || !p.FragOff || p.SrcPort != 0 || p.DstPort != 0 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v4/frag-last", last, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if !p.Frag || !p.FragOff || p.SrcPort != 0 || p.DstPort != 0 {
			t.Errorf("fields: %+v", p)
		}
	})...)

	// Broken IPv4.
	add(withL2("v4/bad-checksum", corrupt(udp4, func(b []byte) { b[10] ^= 0x01 }), packet.BadChecksum, nil)...)
	add(withL2("v4/bad-checksum-ttl-changed", corrupt(udp4, func(b []byte) { b[8]-- }), packet.BadChecksum, nil)...)
	add(withL2("v4/ihl-4", corrupt(udp4, func(b []byte) { b[0] = 0x44 }), packet.BadHeader, nil)...)
	add(withL2("v4/totlen-below-ihl", corrupt(udp4, func(b []byte) { b[2], b[3] = 0, 19 }), packet.BadHeader, nil)...)
	add(withL2("v4/totlen-beyond-frame", corrupt(udp4, func(b []byte) { b[2], b[3] = 0xff, 0xff }), packet.TooShort, nil)...)
	add(withL2("v4/ihl-beyond-totlen", corrupt(small, func(b []byte) { b[0] = 0x48 }), packet.BadHeader, nil)...)
	add(parseCase{name: "v4/version-5", frame: corrupt(udp4, func(b []byte) { b[0] = 0x55 }), want: packet.BadVersion})
	add(parseCase{name: "v4/in-v6-ethertype", frame: eth(packet.EtherTypeIPv6, udp4, 0), l2: true, want: packet.BadVersion})
	add(parseCase{name: "v4/in-arp-ethertype", frame: eth(packet.EtherTypeARP, udp4, 0), l2: true, want: packet.BadARP})
	add(parseCase{name: "vlan-ethertype", frame: eth(0x8100, udp4, 0), l2: true, want: packet.BadEtherType})
	add(parseCase{name: "empty/l3", frame: nil, want: packet.TooShort})
	add(parseCase{name: "empty/l2", frame: nil, l2: true, want: packet.TooShort})
	add(parseCase{name: "eth-only", frame: eth(packet.EtherTypeIPv4, nil, 0), l2: true, want: packet.TooShort})

	// ARP (L2 only).
	req := arpPkt(header.ARPRequest, macA, src4, packet.MAC{}, rtr4)
	add(parseCase{name: "arp/request", frame: eth(packet.EtherTypeARP, req, 0), l2: true, want: packet.IsARP,
		check: func(t *testing.T, p *packet.Parsed, _ []byte) {
			if p.IPOff != 14 || p.IPEnd != 42 || p.EthType != packet.EtherTypeARP {
				t.Errorf("fields: %+v", p)
			}
		}})
	add(parseCase{name: "arp/padded-reply", frame: eth(packet.EtherTypeARP, arpPkt(header.ARPReply, macB, rtr4, macA, src4), 18), l2: true, want: packet.IsARP})
	add(parseCase{name: "arp/hw-type-6", frame: eth(packet.EtherTypeARP, corrupt(req, func(b []byte) { b[1] = 6 }), 0), l2: true, want: packet.BadARP})
	add(parseCase{name: "arp/proto-ipv6", frame: eth(packet.EtherTypeARP, corrupt(req, func(b []byte) { b[2], b[3] = 0x86, 0xdd }), 0), l2: true, want: packet.BadARP})
	add(parseCase{name: "arp/hlen-8", frame: eth(packet.EtherTypeARP, corrupt(req, func(b []byte) { b[4] = 8 }), 0), l2: true, want: packet.BadARP})
	add(parseCase{name: "arp/plen-16", frame: eth(packet.EtherTypeARP, corrupt(req, func(b []byte) { b[5] = 16 }), 0), l2: true, want: packet.BadARP})
	add(parseCase{name: "arp/short", frame: eth(packet.EtherTypeARP, req[:27], 0), l2: true, want: packet.TooShort})
	add(parseCase{name: "arp/l3", frame: req, want: packet.BadVersion})

	// IPv6 transports.
	udp6 := ip6(src6, dst6, 33, packet.ProtoUDP, nil, udpSeg(src6, dst6, 5353, 5354, payload32))
	tcp6 := ip6(src6, dst6, 64, packet.ProtoTCP, nil, tcpSeg(src6, dst6, 33000, 22, header.TCPFlagAck|header.TCPFlagPsh, payload32))
	echo6 := ip6(src6, dst6, 255, packet.ProtoICMPv6, nil, icmp6(src6, dst6, packet.ICMPv6EchoRequest, 0, 0x0102<<16|3, payload32))
	add(withL2("v6/udp", udp6, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.SrcPort != 5353 || p.DstPort != 5354 || p.TTL != 33 || !p.DF || p.Frag || p.L4Off-p.IPOff != 40 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v6/tcp", tcp6, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.SrcPort != 33000 || p.DstPort != 22 || p.Proto != packet.ProtoTCP {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v6/icmp-echo", echo6, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.ICMPType() != packet.ICMPv6EchoRequest || p.SrcPort != 0x0102 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(parseCase{name: "v6/eth-padding", frame: eth(packet.EtherTypeIPv6, ip6(src6, dst6, 1, protoNoNext, nil, nil), 6), l2: true, want: packet.OK,
		check: func(t *testing.T, p *packet.Parsed, frame []byte) {
			if p.IPEnd != 54 || len(frame) != 60 || p.L4Off != p.IPEnd || p.Proto != protoNoNext {
				t.Errorf("fields: %+v (len %d)", p, len(frame))
			}
		}})

	// IPv6 extension headers.
	chain := ip6(src6, dst6, 64, packet.ProtoUDP,
		[]extHdr{hopByHop(), optsHdr(protoDstOpts, 1), fragHdr(0, true)}, udpSeg(src6, dst6, 4000, 4001, payload32))
	add(withL2("v6/hbh-dstopts-frag-first", chain, packet.OK, func(t *testing.T, p *packet.Parsed, _ []byte) {
		if p.L4Off-p.IPOff != 40+8+16+8 || p.Proto != packet.ProtoUDP || !p.Frag || p.FragOff || p.SrcPort != 4000 || p.DstPort != 4001 {
			t.Errorf("fields: %+v", p)
		}
	})...)
	add(withL2("v6/routing-dstopts-tcp", ip6(src6, dst6, 64, packet.ProtoTCP,
		[]extHdr{optsHdr(protoRouting, 0), optsHdr(protoDstOpts, 2)}, tcpSeg(src6, dst6, 1, 2, header.TCPFlagSyn, nil)), packet.OK,
		func(t *testing.T, p *packet.Parsed, _ []byte) {
			if p.L4Off-p.IPOff != 40+8+24 || p.Proto != packet.ProtoTCP || p.SrcPort != 1 {
				t.Errorf("fields: %+v", p)
			}
		})...)
	add(withL2("v6/frag-nonfirst", ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{fragHdr(1448, true)}, payload32), packet.OK,
		func(t *testing.T, p *packet.Parsed, _ []byte) {
			if !p.Frag || !p.FragOff || p.Proto != packet.ProtoUDP || p.SrcPort != 0 || p.L4Off-p.IPOff != 48 {
				t.Errorf("fields: %+v", p)
			}
		})...)
	// A non-first fragment of a datagram whose fragmentable part starts with
	// destination options: the bytes after the fragment header are data,
	// here with a "length" byte that would run past the packet if read as
	// a header.
	add(withL2("v6/frag-nonfirst-next-dstopts", ip6(src6, dst6, 64, protoDstOpts, []extHdr{hopByHop(), fragHdr(8, false)},
		[]byte{17, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}), packet.OK,
		func(t *testing.T, p *packet.Parsed, _ []byte) {
			if !p.FragOff || p.Proto != protoDstOpts || p.L4Off-p.IPOff != 56 {
				t.Errorf("fields: %+v", p)
			}
		})...)
	add(withL2("v6/atomic-fragment", ip6(src6, dst6, 64, packet.ProtoTCP, []extHdr{fragHdr(0, false)}, tcpSeg(src6, dst6, 80, 81, 0, nil)), packet.OK,
		func(t *testing.T, p *packet.Parsed, _ []byte) {
			if !p.Frag || p.FragOff || p.SrcPort != 80 {
				t.Errorf("fields: %+v", p)
			}
		})...)
	add(withL2("v6/hbh-nonext", ip6(src6, dst6, 64, protoNoNext, []extHdr{hopByHop()}, []byte("ignored!")), packet.OK,
		func(t *testing.T, p *packet.Parsed, _ []byte) {
			if p.Proto != protoNoNext || p.L4Off != p.IPEnd {
				t.Errorf("fields: %+v", p)
			}
		})...)
	add(withL2("v6/unknown-next-header", ip6(src6, dst6, 64, 50 /* ESP */, nil, payload32), packet.OK, nil)...)

	// Broken extension chains.
	add(withL2("v6/hbh-len-past-end", corrupt(chain, func(b []byte) { b[41] = 200 }), packet.BadHeader, nil)...)
	add(withL2("v6/dstopts-len-past-end", corrupt(chain, func(b []byte) { b[49] = 30 }), packet.BadHeader, nil)...)
	add(withL2("v6/hbh-truncated", ip6(src6, dst6, 64, protoHopOpts, nil, []byte{protoNoNext, 0, 1, 2}), packet.BadHeader, nil)...)
	add(withL2("v6/frag-truncated", ip6(src6, dst6, 64, protoFrag, nil, []byte{17, 0, 0, 0, 0, 0}), packet.BadHeader, nil)...)
	add(withL2("v6/ext-only-no-payload", ip6(src6, dst6, 64, protoHopOpts, nil, nil), packet.BadHeader, nil)...)
	add(withL2("v6/dstopts-loop-to-end", ip6(src6, dst6, 64, protoDstOpts, nil,
		[]byte{protoDstOpts, 0, 1, 4, 0, 0, 0, 0, protoDstOpts, 0, 1, 4, 0, 0, 0, 0}), packet.BadHeader, nil)...)
	add(withL2("v6/payload-len-beyond-frame", corrupt(udp6, func(b []byte) { b[4], b[5] = 0x10, 0 }), packet.TooShort, nil)...)
	add(parseCase{name: "v6/in-v4-ethertype", frame: eth(packet.EtherTypeIPv4, udp6, 0), l2: true, want: packet.BadVersion})
	add(parseCase{name: "v6/short-header", frame: udp6[:39], want: packet.TooShort})
	return cs
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases() {
		t.Run(tc.name, func(t *testing.T) {
			var p packet.Parsed
			p.SrcPort = 0xffff // Parse overwrites every field
			st := packet.Parse(tc.frame, tc.l2, &p)
			if st != tc.want {
				t.Fatalf("Parse = %v, want %v", st, tc.want)
			}
			if st == packet.OK {
				want, ok, skip := oracle(tc.frame, tc.l2)
				if skip {
					t.Fatal("oracle cannot judge a table case")
				}
				if !ok {
					t.Fatal("Parse accepted a frame gVisor rejects")
				}
				if p != want {
					t.Errorf("Parse =\n  %+v\noracle says\n  %+v", p, want)
				}
				if !(p.IPOff <= p.L4Off && p.L4Off <= p.IPEnd && p.IPEnd <= len(tc.frame)) {
					t.Errorf("offsets out of order: %+v, len %d", p, len(tc.frame))
				}
			}
			if tc.check != nil {
				tc.check(t, &p, tc.frame)
			}
		})
	}
}

// TestParseTruncated cuts every accepted frame at every length: a cut into
// the IP packet (or ARP payload) is TooShort, never OK, and never panics; a
// cut into trailing link padding changes nothing.
func TestParseTruncated(t *testing.T) {
	for _, tc := range parseCases() {
		if tc.want != packet.OK && tc.want != packet.IsARP {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			var whole packet.Parsed
			packet.Parse(tc.frame, tc.l2, &whole)
			for n := range len(tc.frame) {
				// An exactly sized copy: reslicing past len(cut) within
				// the capacity would not panic, so a cut sharing the
				// original's capacity could hide a read past the cut.
				cut := append([]byte(nil), tc.frame[:n]...)
				var p packet.Parsed
				st := packet.Parse(cut, tc.l2, &p)
				switch {
				case n < whole.IPEnd && st != packet.TooShort:
					t.Fatalf("prefix %d of %d (IPEnd %d): Parse = %v, want too-short", n, len(tc.frame), whole.IPEnd, st)
				case n >= whole.IPEnd && (st != tc.want || p != whole):
					t.Fatalf("prefix %d cuts only padding: Parse = %v %+v, want %v %+v", n, st, p, tc.want, whole)
				}
			}
		})
	}
}

// TestParseIPv6FragmentBody is the regression test for the extension-header
// walk reading a non-first fragment's data as headers: whatever the data,
// the parse is the same.
func TestParseIPv6FragmentBody(t *testing.T) {
	for _, next := range []uint8{protoHopOpts, protoRouting, protoFrag, protoDstOpts, packet.ProtoUDP} {
		for _, lenByte := range []byte{0, 1, 0xff} {
			body := []byte{protoHopOpts, lenByte, 0, 0, 0, 0, 0, 0}
			pkt := ip6(src6, dst6, 64, next, []extHdr{fragHdr(64, true)}, body)
			t.Run(fmt.Sprintf("next=%d/len=%d", next, lenByte), func(t *testing.T) {
				p := mustParse(t, pkt, false)
				if !p.FragOff || p.Proto != next || p.L4Off != 48 || p.IPEnd != len(pkt) {
					t.Errorf("got %+v", p)
				}
			})
		}
	}
}

func TestStatusString(t *testing.T) {
	seen := map[string]bool{}
	for s := packet.OK; s <= packet.BadARP; s++ {
		name := s.String()
		if name == "unknown" || name == "" || seen[name] {
			t.Errorf("Status(%d).String() = %q", s, name)
		}
		seen[name] = true
	}
	if got := packet.Status(200).String(); got != "unknown" {
		t.Errorf("Status(200) = %q", got)
	}
}

// TestParseReuse checks that Parse overwrites every field: a parse of an
// IPv6 non-first fragment after an IPv4 TCP packet keeps nothing.
func TestParseReuse(t *testing.T) {
	var p packet.Parsed
	packet.Parse(ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP, flags: header.IPv4FlagDontFragment}, tcpSeg(src4, dst4, 1, 2, 0, nil)), false, &p)
	frag := ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{fragHdr(8, false)}, payload32)
	packet.Parse(frag, false, &p)
	want, _, _ := oracle(frag, false)
	if p != want {
		t.Errorf("reused Parsed = %+v, want %+v", p, want)
	}
	if st := packet.Parse([]byte{0x45}, false, &p); st != packet.TooShort || p.Src.IsValid() || p.SrcPort != 0 {
		t.Errorf("after failed parse: %v %+v", st, p)
	}
}

func TestHeaderViews(t *testing.T) {
	frame := eth(packet.EtherTypeIPv4, ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP, ttl: 9, flags: header.IPv4FlagDontFragment},
		tcpSeg(src4, dst4, 1000, 2000, header.TCPFlagSyn|header.TCPFlagAck, nil)), 0)
	e := packet.Ethernet(frame)
	ge := header.Ethernet(frame)
	if !e.IsValid() || e.Type() != uint16(ge.Type()) || gvMAC(e.Src()) != ge.SourceAddress() || gvMAC(e.Dst()) != ge.DestinationAddress() {
		t.Errorf("Ethernet view disagrees with gVisor")
	}
	ip := packet.IPv4(frame[14:])
	gip := header.IPv4(frame[14:])
	if !ip.IsValid() || !gip.IsChecksumValid() {
		t.Fatal("IPv4.IsValid rejects a valid header")
	}
	if ip.HeaderLen() != int(gip.HeaderLength()) || ip.TotalLen() != gip.TotalLength() || ip.ID() != gip.ID() ||
		ip.TTL() != gip.TTL() || ip.Protocol() != gip.Protocol() || ip.HeaderChecksum() != gip.Checksum() ||
		ip.Src() != fromGV(gip.SourceAddress()) || ip.Dst() != fromGV(gip.DestinationAddress()) ||
		ip.FlagsFrag() != be16(frame[20:]) || ip.FlagsFrag()&packet.IPv4FlagDF == 0 {
		t.Errorf("IPv4 view disagrees with gVisor")
	}
	tc := packet.TCP(frame[34:])
	gt := header.TCP(frame[34:])
	if !tc.IsValid() || tc.SrcPort() != gt.SourcePort() || tc.DstPort() != gt.DestinationPort() || tc.Seq() != gt.SequenceNumber() ||
		tc.Ack() != gt.AckNumber() || tc.DataOffset() != int(gt.DataOffset()) || tc.Flags() != uint8(gt.Flags()) ||
		tc.Window() != gt.WindowSize() || tc.Checksum() != gt.Checksum() || tc.Flags() != packet.TCPFlagSYN|packet.TCPFlagACK {
		t.Errorf("TCP view disagrees with gVisor")
	}
	if packet.TCP(frame[34:50]).IsValid() || packet.TCP(corrupt(frame[34:], func(b []byte) { b[12] = 0x40 })).IsValid() {
		t.Errorf("TCP.IsValid accepts a short header")
	}

	u := udpSeg(src4, dst4, 7, 9, payload32)
	gu := header.UDP(u)
	if !packet.UDP(u).IsValid() || packet.UDP(u).SrcPort() != 7 || packet.UDP(u).DstPort() != 9 ||
		packet.UDP(u).Length() != gu.Length() || packet.UDP(u).Checksum() != gu.Checksum() || packet.UDP(u[:7]).IsValid() {
		t.Errorf("UDP view disagrees with gVisor")
	}
	c := icmp4(packet.ICMPv4Echo, 0, 0xabcd<<16|0x1234, nil)
	if !packet.ICMP(c).IsValid() || packet.ICMP(c).Type() != packet.ICMPv4Echo || packet.ICMP(c).Code() != 0 ||
		packet.ICMP(c).Ident() != 0xabcd || packet.ICMP(c).Seq() != 0x1234 || packet.ICMP(c).Checksum() != header.ICMPv4(c).Checksum() ||
		packet.ICMP(c).Rest() != 0xabcd1234 || packet.ICMP(c[:7]).IsValid() {
		t.Errorf("ICMP view disagrees with gVisor")
	}

	v6 := ip6(src6, dst6, 99, packet.ProtoUDP, nil, u)
	h6 := packet.IPv6(v6)
	if !h6.IsValid() || h6.PayloadLen() != header.IPv6(v6).PayloadLength() || h6.NextHeader() != packet.ProtoUDP ||
		h6.HopLimit() != 99 || h6.Src() != src6 || h6.Dst() != dst6 || packet.IPv6(v6[:len(v6)-1]).IsValid() {
		t.Errorf("IPv6 view disagrees with gVisor")
	}
}

func TestIPv4IsValid(t *testing.T) {
	good := ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP}, udpSeg(src4, dst4, 1, 2, nil))
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"valid", good, true},
		{"valid-with-trailer", append(append([]byte(nil), good...), 0, 0), true},
		{"bad-checksum", corrupt(good, func(b []byte) { b[11]++ }), false},
		{"short", good[:19], false},
		{"truncated", good[:len(good)-1], false},
		{"version-6", corrupt(good, func(b []byte) { b[0] = 0x65 }), false},
		{"ihl-4", corrupt(good, func(b []byte) { b[0] = 0x44 }), false},
		{"totlen-below-ihl", corrupt(good, func(b []byte) { b[3] = 10 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := packet.IPv4(tc.b).IsValid(); got != tc.want {
				t.Errorf("IsValid = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIPv4Encode(t *testing.T) {
	b := make([]byte, 20)
	packet.IPv4(b).Encode(packet.IPv4Fields{TotalLen: 20, ID: 7, FlagsFrag: packet.IPv4FlagDF | 3, TTL: 5, Protocol: packet.ProtoUDP, Src: src4, Dst: dst4})
	h := header.IPv4(b)
	if !h.IsValid(20) || !h.IsChecksumValid() || h.ID() != 7 || h.Flags() != header.IPv4FlagDontFragment || h.FragmentOffset() != 24 ||
		h.TTL() != 5 || h.Protocol() != packet.ProtoUDP || fromGV(h.SourceAddress()) != src4 || fromGV(h.DestinationAddress()) != dst4 {
		t.Errorf("gVisor reads back %x", b)
	}
}

func TestMAC(t *testing.T) {
	m := packet.MAC{0x0a, 0x58, 0x0a, 0xf4, 0x00, 0xff}
	if got := m.String(); got != "0a:58:0a:f4:00:ff" {
		t.Errorf("String = %q", got)
	}
	if m.IsMulticast() || !packet.Broadcast.IsMulticast() || !(packet.MAC{0x33, 0x33, 0, 0, 0, 1}).IsMulticast() {
		t.Errorf("IsMulticast wrong")
	}
	if header.IsMulticastEthernetAddress(gvMAC(m)) != m.IsMulticast() {
		t.Errorf("IsMulticast disagrees with gVisor")
	}
}

func TestICMPErrorTypes(t *testing.T) {
	for typ := range 256 {
		if got, want := packet.IsICMPv6Error(uint8(typ)), header.ICMPv6Type(typ).IsErrorType(); got != want {
			t.Errorf("IsICMPv6Error(%d) = %v, gVisor says %v", typ, got, want)
		}
	}
	v4err := map[uint8]bool{3: true, 4: true, 5: true, 11: true, 12: true}
	for typ := range 256 {
		if got := packet.IsICMPv4Error(uint8(typ)); got != v4err[uint8(typ)] {
			t.Errorf("IsICMPv4Error(%d) = %v", typ, got)
		}
	}
}
