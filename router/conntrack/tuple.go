package conntrack

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"strconv"

	"github.com/podrouter/podrouter/router/packet"
)

// Tuple identifies one direction of a flow: protocol, source and
// destination address and port. For ICMP echo the identifier stands in for
// the ports: an echo request has SrcPort = identifier and DstPort = 0, an
// echo reply the other way round, so the reply's tuple is the request's
// Reply().
//
// It is a packed comparable value (tailscale's flowtrack.Tuple): the
// 16-byte addresses (IPv4 in IPv4-mapped form) as two words each, and one
// word for ports, protocol and family, so that comparing and hashing are a
// few word operations and an IPv4 flow never equals an IPv6 flow between
// ::ffff:a.b.c.d addresses. Its zero value is invalid.
type Tuple struct {
	src, dst [2]uint64 // address bytes, little-endian words
	meta     uint64    // srcPort | dstPort<<16 | proto<<32 | v6<<40
}

const (
	metaProtoShift = 32
	metaV6         = 1 << 40
	metaMask       = 1<<41 - 1 // the bits a Tuple uses (records keep the NAT port above)
)

func words(a netip.Addr) [2]uint64 {
	if a.Is4() { // as As16 would give: ::ffff:a.b.c.d
		b := a.As4()
		return [2]uint64{0, 0xffff0000 | uint64(binary.LittleEndian.Uint32(b[:]))<<32}
	}
	b := a.As16()
	return [2]uint64{binary.LittleEndian.Uint64(b[0:8]), binary.LittleEndian.Uint64(b[8:16])}
}

func makeMeta(sp, dp uint16, proto uint8, v6 bool) uint64 {
	m := uint64(sp) | uint64(dp)<<16 | uint64(proto)<<metaProtoShift
	if v6 {
		m |= metaV6
	}
	return m
}

// swapPorts returns meta with source and destination port exchanged.
func swapPorts(m uint64) uint64 {
	return m&^0xffffffff | (m&0xffff)<<16 | (m>>16)&0xffff
}

// MakeTuple returns the tuple of a flow of protocol proto from src to dst.
// Both addresses must be of the same family (an IPv4-mapped IPv6 address
// counts as IPv6).
func MakeTuple(proto uint8, src, dst netip.AddrPort) Tuple {
	return Tuple{src: words(src.Addr()), dst: words(dst.Addr()), meta: makeMeta(src.Port(), dst.Port(), proto, src.Addr().Is6())}
}

// FromParsed returns the tuple of the packet pp describes, and false when
// it has none: a non-first fragment (no transport header), a protocol
// other than TCP, UDP and ICMP echo, or a truncated transport header.
// ICMP errors are not flows of their own (see QuotedTuple).
func FromParsed(pp *packet.Parsed) (Tuple, bool) {
	if pp.FragOff {
		return Tuple{}, false
	}
	var sp, dp uint16
	switch pp.Proto {
	case packet.ProtoTCP, packet.ProtoUDP:
		if pp.L4Off+4 > pp.IPEnd {
			return Tuple{}, false
		}
		sp, dp = pp.SrcPort, pp.DstPort
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		// ICMPType is -1 unless the protocol matches the IP version.
		typ, v4 := pp.ICMPType(), pp.Proto == packet.ProtoICMPv4
		switch {
		case v4 && typ == packet.ICMPv4Echo, !v4 && typ == packet.ICMPv6EchoRequest:
			sp = pp.SrcPort
		case v4 && typ == packet.ICMPv4EchoReply, !v4 && typ == packet.ICMPv6EchoReply:
			dp = pp.SrcPort
		default:
			return Tuple{}, false
		}
	default:
		return Tuple{}, false
	}
	return Tuple{src: words(pp.Src), dst: words(pp.Dst), meta: makeMeta(sp, dp, pp.Proto, pp.Version == 6)}, true
}

// IsValid reports whether t was made by MakeTuple or FromParsed.
func (t Tuple) IsValid() bool { return t.Proto() != 0 }

// Proto returns the IP protocol number.
func (t Tuple) Proto() uint8 { return uint8(t.meta >> metaProtoShift) }

func (t Tuple) v6() bool        { return t.meta&metaV6 != 0 }
func (t Tuple) srcPort() uint16 { return uint16(t.meta) }
func (t Tuple) dstPort() uint16 { return uint16(t.meta >> 16) }

// Src returns the source address and port.
func (t Tuple) Src() netip.AddrPort { return netip.AddrPortFrom(t.addr(t.src), t.srcPort()) }

// Dst returns the destination address and port.
func (t Tuple) Dst() netip.AddrPort { return netip.AddrPortFrom(t.addr(t.dst), t.dstPort()) }

func (t Tuple) addr(w [2]uint64) netip.Addr { return addrOf(w, t.v6()) }

// addrOf returns the address a Tuple holds as w.
func addrOf(w [2]uint64, v6 bool) netip.Addr {
	if !v6 {
		a := uint32(w[1] >> 32)
		return netip.AddrFrom4([4]byte{byte(a), byte(a >> 8), byte(a >> 16), byte(a >> 24)})
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:8], w[0])
	binary.LittleEndian.PutUint64(b[8:16], w[1])
	return netip.AddrFrom16(b)
}

// Reply returns the tuple of the other direction of the same flow, as it
// looks without NAT: addresses and ports swapped.
func (t Tuple) Reply() Tuple { return Tuple{src: t.dst, dst: t.src, meta: swapPorts(t.meta)} }

// String formats t as "tcp 10.0.0.1:1234 -> 192.0.2.1:80".
func (t Tuple) String() string {
	return ProtoName(t.Proto()) + " " + t.Src().String() + " -> " + t.Dst().String()
}

// ProtoName names an IP protocol number as flows print it: "tcp", "udp",
// "icmp", "icmpv6", else "proto-N".
func ProtoName(p uint8) string {
	switch p {
	case packet.ProtoTCP:
		return "tcp"
	case packet.ProtoUDP:
		return "udp"
	case packet.ProtoICMPv4:
		return "icmp"
	case packet.ProtoICMPv6:
		return "icmpv6"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// Hashing. The index keeps a flow without NAT under one key for both
// directions, so the hash is symmetric: hash(t) == hash(t.Reply()). Each
// end (address, port) is mixed on its own and the two are added, which
// commutes. The seed is random per table, so a pod cannot aim its tuples at
// one probe chain.

const (
	m1 = 0xa0761d6478bd642f
	m2 = 0xe7037ed1a0b428db
	m3 = 0x8ebc6af09c88c6e3
)

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func endHash(a *[2]uint64, port uint64, seed uint64) uint64 {
	return mix(a[0]^seed^m1, a[1]^port<<1^m2)
}

// hash returns the symmetric hash of t.
func (t *Tuple) hash(seed uint64) uint64 {
	h := endHash(&t.src, t.meta&0xffff, seed) + endHash(&t.dst, t.meta>>16&0xffff, seed)
	return mix(h^m3, t.meta>>metaProtoShift^seed)
}
