package packet_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzParse checks Parse against gVisor's header package on arbitrary
// frames: never a panic; an accepted frame has ordered offsets inside the
// frame and exactly the fields the oracle reads; a frame gVisor fully
// accepts is accepted; an ICMP error built about an accepted packet parses.
// Seeds: testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(eth(packet.EtherTypeIPv4, ip4(v4{src: src4, dst: dst4, proto: packet.ProtoUDP}, udpSeg(src4, dst4, 1, 2, nil)), 18), true)
	f.Add(ip6(src6, dst6, 64, packet.ProtoUDP, []extHdr{hopByHop(), fragHdr(0, true)}, udpSeg(src6, dst6, 1, 2, nil)), false)
	f.Fuzz(func(t *testing.T, frame []byte, l2 bool) {
		var p packet.Parsed
		st := packet.Parse(frame, l2, &p)
		want, ok, skip := oracle(frame, l2)

		if st == packet.IsARP {
			if !l2 || p.IPOff != 14 || p.IPEnd != 42 || len(frame) < 42 || !header.ARP(frame[14:]).IsValid() {
				t.Fatalf("IsARP for a frame gVisor rejects: %+v", p)
			}
			return
		}
		if st != packet.OK {
			if ok && !skip {
				t.Fatalf("Parse = %v for a frame gVisor accepts: %+v", st, want)
			}
			return
		}

		if !(0 <= p.IPOff && p.IPOff <= p.L4Off && p.L4Off <= p.IPEnd && p.IPEnd <= len(frame)) {
			t.Fatalf("offsets out of order: %+v, len %d", p, len(frame))
		}
		if (l2 && p.IPOff != 14) || (!l2 && p.IPOff != 0) {
			t.Fatalf("IPOff = %d with l2=%v", p.IPOff, l2)
		}
		switch p.Version {
		case 4:
			ip := frame[p.IPOff:]
			if !header.IPv4(ip).IsValid(len(ip)) || !header.IPv4(ip).IsChecksumValid() || !packet.IPv4(ip).IsValid() ||
				!p.Src.Is4() || !p.Dst.Is4() || p.EthType != packet.EtherTypeIPv4 {
				t.Fatalf("accepted an IPv4 packet gVisor rejects: %+v", p)
			}
		case 6:
			ip := frame[p.IPOff:]
			if !header.IPv6(ip).IsValid(len(ip)) || !packet.IPv6(ip).IsValid() ||
				!p.Src.Is6() || !p.Dst.Is6() || p.EthType != packet.EtherTypeIPv6 || !p.DF {
				t.Fatalf("accepted an IPv6 packet gVisor rejects: %+v", p)
			}
		default:
			t.Fatalf("OK with version %d", p.Version)
		}
		if !skip {
			if !ok {
				t.Fatalf("Parse accepted a frame gVisor rejects: %+v", p)
			}
			if p != want {
				t.Fatalf("Parse =\n  %+v\noracle says\n  %+v", p, want)
			}
		}

		// The consumers of an accepted packet must not panic either, and
		// an ICMP error about it is itself a well-formed packet.
		allowed := packet.ICMPErrorAllowed(&p)
		_ = p.ICMPType()
		if !allowed {
			return
		}
		from := rtr4
		if p.Version == 6 {
			from = rtr6
		}
		var buf [1500]byte
		n := packet.BuildICMPError(buf[:], frame[p.IPOff:p.IPEnd], &p, from, 3, 0, 0)
		var q packet.Parsed
		if st := packet.Parse(buf[:n], false, &q); st != packet.OK || q.Dst != p.Src || q.Src != from || packet.ICMPErrorAllowed(&q) {
			t.Fatalf("ICMP error about %+v: Parse = %v %+v", p, st, q)
		}
		if limit := map[uint8]int{4: 576, 6: 1280}[p.Version]; n > limit {
			t.Fatalf("ICMP error of %d bytes", n)
		}
	})
}

// FuzzParseNeighborSolicit checks ParseNeighborSolicit on arbitrary ICMPv6
// messages: never a panic, only RFC 4861 7.1.1-valid messages accepted,
// gVisor's option parser agreeing where it has an opinion.
// Seeds: testdata/fuzz/FuzzParseNeighborSolicit.
func FuzzParseNeighborSolicit(f *testing.F) {
	f.Add(ns(rtr6, header.NDPOptionsSerializer{header.NDPSourceLinkLayerAddressOption(gvMAC(macA))}), uint8(255))
	f.Fuzz(func(t *testing.T, icmp []byte, hop uint8) {
		got, ok := packet.ParseNeighborSolicit(icmp, hop)
		if !ok {
			// gVisor's option parser is stricter (it checks the bodies of
			// options it knows); if it accepts, so must we.
			if hop == 255 && len(icmp) >= header.ICMPv6NeighborSolicitMinimumSize && icmp[0] == packet.ICMPv6NeighborSolicit && icmp[1] == 0 {
				m := header.NDPNeighborSolicit(icmp[4:])
				if !fromGV(m.TargetAddress()).IsMulticast() {
					if _, err := m.Options().Iter(true); err == nil {
						t.Fatalf("rejected a solicitation gVisor accepts: % x", icmp)
					}
				}
			}
			return
		}
		if hop != 255 || len(icmp) < 24 || icmp[0] != packet.ICMPv6NeighborSolicit || icmp[1] != 0 {
			t.Fatalf("accepted hop %d % x", hop, icmp)
		}
		if got.Target != netip.AddrFrom16([16]byte(icmp[8:24])) || got.Target.IsMulticast() {
			t.Fatalf("target %v from % x", got.Target, icmp[8:24])
		}
		// Walk the options by hand: they must tile the rest exactly, and
		// the link-layer address is that of the last source LL option.
		var ll packet.MAC
		hasLL := false
		for o := icmp[24:]; len(o) > 0; {
			if len(o) < 8 || o[1] == 0 || int(o[1])*8 > len(o) {
				t.Fatalf("accepted malformed options % x", icmp[24:])
			}
			if o[0] == 1 {
				ll, hasLL = packet.MAC(o[2:8]), true
			}
			o = o[int(o[1])*8:]
		}
		if got.HasLL != hasLL || got.SrcLL != ll {
			t.Fatalf("got %+v, options say %v %v", got, hasLL, ll)
		}
	})
}

// FuzzChecksumUpdate changes a 16-bit word, or an even run of bytes at an
// even offset, of arbitrary data and compares the incremental checksum with
// a full recomputation. Seeds: testdata/fuzz/FuzzChecksumUpdate.
func FuzzChecksumUpdate(f *testing.F) {
	f.Add(ip4(v4{src: src4, dst: dst4, proto: packet.ProtoTCP}, nil), uint16(6), []byte{10, 9, 8, 7})
	f.Fuzz(func(t *testing.T, data []byte, off uint16, repl []byte) {
		data = data[:len(data)&^1]
		if len(data) == 0 || len(data) > 1<<16 {
			return
		}
		repl = repl[:min(len(repl)&^1, len(data), 1024)]
		field := ^packet.Checksum(data, 0)
		o := int(off) * 2 % len(data)

		// One word.
		old := binary.BigEndian.Uint16(data[o:])
		nw := old ^ 0x5a5a + off
		d1 := bytes.Clone(data)
		binary.BigEndian.PutUint16(d1[o:], nw)
		sameChecksum(t, "UpdateChecksum", packet.UpdateChecksum(field, old, nw), d1)

		// A run of bytes.
		if o+len(repl) > len(data) {
			o = len(data) - len(repl)
		}
		d2 := bytes.Clone(data)
		copy(d2[o:], repl)
		sameChecksum(t, "UpdateChecksumBytes", packet.UpdateChecksumBytes(field, data[o:o+len(repl)], repl), d2)
	})
}

// sameChecksum checks an incrementally updated checksum field against a full
// recomputation over data. RFC 1624's eqn. 3 yields the same representation
// as a full computation, except that data of all zeros sums to 0, whose
// complement 0xffff the incremental update may also write as 0x0000.
func sameChecksum(t *testing.T, what string, got uint16, data []byte) {
	t.Helper()
	want := ^packet.Checksum(data, 0)
	if got == want {
		return
	}
	if want == 0xffff && got == 0 && allZero(data) {
		return
	}
	t.Fatalf("%s: incremental %#04x, full %#04x over % x", what, got, want, data)
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
