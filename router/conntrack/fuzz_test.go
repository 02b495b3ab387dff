package conntrack_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

// l4Sum reports whether the transport checksum of the whole IP packet ip
// (src, dst its addresses, proto its transport) is right; check is false
// when there is nothing to check (UDP over IPv4 without checksum, an
// unknown transport, ICMP of the other family, a truncated header).
func l4Sum(ip []byte, l4Off int, v6 bool, proto uint8) (ok, check bool) {
	l4 := ip[l4Off:]
	var src, dst netip.Addr
	if v6 {
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	} else {
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	}
	var init uint32
	switch proto {
	case packet.ProtoTCP:
		if len(l4) < packet.TCPMinLen {
			return false, false
		}
		init = packet.PseudoHeaderSum(src, dst, proto, len(l4))
	case packet.ProtoUDP:
		if len(l4) < packet.UDPLen || (!v6 && binary.BigEndian.Uint16(l4[6:8]) == 0) {
			return false, false
		}
		init = packet.PseudoHeaderSum(src, dst, proto, len(l4))
	case packet.ProtoICMPv4:
		if v6 || len(l4) < packet.ICMPLen {
			return false, false
		}
	case packet.ProtoICMPv6:
		if !v6 || len(l4) < packet.ICMPLen {
			return false, false
		}
		init = packet.PseudoHeaderSum(src, dst, proto, len(l4))
	default:
		return false, false
	}
	return packet.Checksum(l4, init) == 0xffff, true
}

// quote returns the packet an ICMP error ip (parsed as pp) quotes, where its
// transport header starts in it, its version and transport, and whether
// it is quoted whole (its own length fields match the quote).
func quote(ip []byte, pp *packet.Parsed) (q []byte, l4Off int, proto uint8, whole, ok bool) {
	q = ip[pp.L4Off-pp.IPOff+packet.ICMPLen:]
	if pp.Version == 4 {
		if len(q) < packet.IPv4MinLen {
			return nil, 0, 0, false, false
		}
		hl := int(q[0]&0xf) * 4
		if hl < packet.IPv4MinLen || hl > len(q) {
			return nil, 0, 0, false, false
		}
		whole = int(binary.BigEndian.Uint16(q[2:4])) == len(q) && binary.BigEndian.Uint16(q[6:8])&0x3fff == 0
		return q, hl, q[9], whole, true
	}
	if len(q) < packet.IPv6Len {
		return nil, 0, 0, false, false
	}
	return q, packet.IPv6Len, q[6], packet.IPv6Len+int(binary.BigEndian.Uint16(q[4:6])) == len(q), true
}

// FuzzRewrite runs QuotedTuple, RewriteRelated and Rewrite on arbitrary IP
// packets and translations and checks: no panic; a refused rewrite leaves
// the packet as it was; an accepted one keeps every length, leaves the
// packet parsing to the same offsets with the new address (and port) in
// place, keeps every checksum that was right right (outer IPv4 header and
// transport; for an ICMP error also its own checksum, and the quoted IPv4
// header and transport checksums when the quote is whole). QuotedTuple's
// tuple is the quoted packet's addresses. Seeds: f.Add below and
// testdata/fuzz/FuzzRewrite.
func FuzzRewrite(f *testing.F) {
	payload := bytes.Repeat([]byte{0xab}, 40)
	router4, router6 := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8:ff::1")
	for _, s := range []spec{
		{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(remote, 80), payload: payload},
		{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(remote, 53), payload: payload},
		{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(remote, 53), noCsum: true},
		{proto: packet.ProtoICMPv4, src: ap(pod1, 0x1234), dst: ap(remote, 0), echo: true, payload: payload},
		{proto: packet.ProtoTCP, src: ap(pod6, 40000), dst: ap(remote6, 443), payload: payload},
		{proto: packet.ProtoICMPv6, src: ap(pod6, 0x1234), dst: ap(remote6, 0), echo: true, payload: payload},
	} {
		b := s.build()
		nat, router := node, router4
		if s.src.Addr().Is6() {
			nat, router = node6, router6
		}
		n := nat.AsSlice()
		f.Add(b, n, uint16(61000), false)
		f.Add(icmpError(router, nat, b, 28), n, uint16(61000), true)
		f.Add(icmpError(router, nat, b, len(b)), n, uint16(61000), true)
	}
	f.Fuzz(func(t *testing.T, b, natB []byte, port uint16, reply bool) {
		var pp packet.Parsed
		if packet.Parse(b, false, &pp) != packet.OK {
			return
		}
		ip := b[pp.IPOff:pp.IPEnd]
		v6 := pp.Version == 6
		var nat netip.Addr
		if v6 && len(natB) >= 16 {
			nat = netip.AddrFrom16([16]byte(natB[:16]))
		} else if len(natB) >= 4 {
			nat = netip.AddrFrom4([4]byte(natB[:4]))
		} else {
			return
		}
		r := conntrack.Result{NATAddr: nat, NATPort: port, Dir: conntrack.Original}
		if reply {
			r.Dir = conntrack.Reply
		}
		orig := bytes.Clone(b)
		l4Rel := pp.L4Off - pp.IPOff
		outerOK, outerCheck := l4Sum(ip, l4Rel, v6, pp.Proto)

		tup, related := conntrack.QuotedTuple(b, &pp)
		var q []byte
		var qL4 int
		var qProto uint8
		var whole bool
		if related {
			var ok bool
			q, qL4, qProto, whole, ok = quote(ip, &pp)
			if !ok {
				t.Fatal("QuotedTuple accepted a quote too short for its header")
			}
			var qs, qd netip.Addr
			if v6 {
				qs, qd = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40]))
			} else {
				qs, qd = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))
			}
			if tup.Src().Addr() != qs || tup.Dst().Addr() != qd || tup.Proto() != qProto {
				t.Fatalf("QuotedTuple %v, quote %s -> %s proto %d", tup, qs, qd, qProto)
			}
		}
		var qHdrOK, qL4OK, qL4Check bool
		if related {
			qHdrOK = !v6 && packet.Checksum(q[:qL4], 0) == 0xffff
			if whole {
				qL4OK, qL4Check = l4Sum(q, qL4, v6, qProto)
			}
		}

		var err error
		if related {
			err = conntrack.RewriteRelated(b, &pp, &r)
		} else {
			err = conntrack.Rewrite(b, &pp, &r)
		}
		if err != nil || (nat.Is4() == v6) {
			if err == nil {
				t.Fatal("rewrote a packet with an address of the other family")
			}
			if !bytes.Equal(b, orig) {
				t.Fatalf("refused (%v) but changed the packet", err)
			}
			return
		}
		var pp2 packet.Parsed
		if st := packet.Parse(b, false, &pp2); st != packet.OK || pp2.IPOff != pp.IPOff || pp2.IPEnd != pp.IPEnd || pp2.L4Off != pp.L4Off {
			t.Fatalf("after the rewrite: %v, %+v, was %+v", st, pp2, pp)
		}
		if len(b) != len(orig) {
			t.Fatal("length changed")
		}
		outerDst := reply
		if got := pp2.Dst; outerDst && got != nat {
			t.Fatalf("destination %s, want %s", got, nat)
		}
		if got := pp2.Src; !outerDst && got != nat {
			t.Fatalf("source %s, want %s", got, nat)
		}
		if related {
			// The ICMP checksum is recomputed over the message.
			if ok, check := l4Sum(ip, l4Rel, v6, pp.Proto); check && !ok {
				t.Fatal("ICMP error checksum wrong after the rewrite")
			}
			if qHdrOK && packet.Checksum(q[:qL4], 0) != 0xffff {
				t.Fatal("quoted IPv4 header checksum broken by the rewrite")
			}
			if qL4Check && qL4OK {
				if ok, _ := l4Sum(q, qL4, v6, qProto); !ok {
					t.Fatal("quoted transport checksum broken by the rewrite")
				}
			}
			return
		}
		if !pp.Frag && outerCheck && outerOK {
			if ok, _ := l4Sum(ip, l4Rel, v6, pp.Proto); !ok {
				t.Fatal("transport checksum broken by the rewrite")
			}
		}
	})
}
