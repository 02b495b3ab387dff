// Package packet holds zero-copy header views and the one-pass parser of the
// engine's data path, checksum helpers, and builders for the packets a router
// originates itself (ICMP errors, ARP replies, NDP advertisements).
//
// Views are byte slices with accessors, in the manner of gVisor's header
// package: a view never copies and never allocates, and its accessors assume
// the caller has checked the length once (IsValid, or the parser).
package packet

import (
	"encoding/binary"
	"net/netip"
)

// EtherType values the engine knows.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers the engine knows.
const (
	ProtoICMPv4  = 1
	ProtoTCP     = 6
	ProtoUDP     = 17
	ProtoICMPv6  = 58
	protoHopOpts = 0
	protoRouting = 43
	protoFrag    = 44
	protoNoNext  = 59
	protoDstOpts = 60
)

// Header lengths.
const (
	EthernetLen = 14
	ARPLen      = 28 // Ethernet/IPv4 ARP
	IPv4MinLen  = 20
	IPv6Len     = 40
	UDPLen      = 8
	TCPMinLen   = 20
	ICMPLen     = 8 // ICMPv4 and ICMPv6 header incl. the 4-byte rest-of-header
)

// MAC is an Ethernet address as a comparable value.
type MAC [6]byte

// Broadcast is the Ethernet broadcast address.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether m is a group address (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, x := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[x>>4], hex[x&0xf])
	}
	return string(b)
}

// Ethernet is a view of an Ethernet II header (no VLAN tag).
type Ethernet []byte

// IsValid reports whether e is long enough to hold the header.
func (e Ethernet) IsValid() bool { return len(e) >= EthernetLen }

// Dst returns the destination address.
func (e Ethernet) Dst() (m MAC) { copy(m[:], e[0:6]); return }

// Src returns the source address.
func (e Ethernet) Src() (m MAC) { copy(m[:], e[6:12]); return }

// Type returns the EtherType.
func (e Ethernet) Type() uint16 { return binary.BigEndian.Uint16(e[12:14]) }

// Encode writes the header.
func (e Ethernet) Encode(dst, src MAC, typ uint16) {
	copy(e[0:6], dst[:])
	copy(e[6:12], src[:])
	binary.BigEndian.PutUint16(e[12:14], typ)
}

// ARP operations.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// ARP is a view of an Ethernet/IPv4 ARP packet.
type ARP []byte

// IsValid reports whether a is a complete Ethernet/IPv4 ARP packet.
func (a ARP) IsValid() bool {
	return len(a) >= ARPLen &&
		binary.BigEndian.Uint16(a[0:2]) == 1 && // hardware type Ethernet
		binary.BigEndian.Uint16(a[2:4]) == EtherTypeIPv4 &&
		a[4] == 6 && a[5] == 4
}

// Op returns the operation (ARPRequest, ARPReply).
func (a ARP) Op() uint16 { return binary.BigEndian.Uint16(a[6:8]) }

// SenderMAC returns the sender hardware address.
func (a ARP) SenderMAC() (m MAC) { copy(m[:], a[8:14]); return }

// SenderIP returns the sender protocol address.
func (a ARP) SenderIP() netip.Addr { return netip.AddrFrom4([4]byte(a[14:18])) }

// TargetMAC returns the target hardware address.
func (a ARP) TargetMAC() (m MAC) { copy(m[:], a[18:24]); return }

// TargetIP returns the target protocol address.
func (a ARP) TargetIP() netip.Addr { return netip.AddrFrom4([4]byte(a[24:28])) }

// Encode writes a complete Ethernet/IPv4 ARP packet.
func (a ARP) Encode(op uint16, sha MAC, spa netip.Addr, tha MAC, tpa netip.Addr) {
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], EtherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], op)
	copy(a[8:14], sha[:])
	s4 := spa.As4()
	copy(a[14:18], s4[:])
	copy(a[18:24], tha[:])
	t4 := tpa.As4()
	copy(a[24:28], t4[:])
}

// IPv4 flags and fragment offset masks.
const (
	IPv4FlagDF      = 0x4000
	IPv4FlagMF      = 0x2000
	IPv4FragOffMask = 0x1fff
)

// IPv4 is a view of an IPv4 header followed by its payload.
type IPv4 []byte

// IsValid checks version, header length, total length against len(h), and
// the header checksum.
func (h IPv4) IsValid() bool {
	if len(h) < IPv4MinLen || h[0]>>4 != 4 {
		return false
	}
	hl := h.HeaderLen()
	tl := int(h.TotalLen())
	return hl >= IPv4MinLen && hl <= tl && tl <= len(h) && Checksum(h[:hl], 0) == 0xffff
}

// HeaderLen returns the header length in bytes (IHL*4).
func (h IPv4) HeaderLen() int { return int(h[0]&0xf) * 4 }

// TotalLen returns the total length field.
func (h IPv4) TotalLen() uint16 { return binary.BigEndian.Uint16(h[2:4]) }

// ID returns the identification field.
func (h IPv4) ID() uint16 { return binary.BigEndian.Uint16(h[4:6]) }

// FlagsFrag returns the flags and fragment offset field.
func (h IPv4) FlagsFrag() uint16 { return binary.BigEndian.Uint16(h[6:8]) }

// TTL returns the time to live.
func (h IPv4) TTL() uint8 { return h[8] }

// Protocol returns the payload protocol.
func (h IPv4) Protocol() uint8 { return h[9] }

// HeaderChecksum returns the header checksum field.
func (h IPv4) HeaderChecksum() uint16 { return binary.BigEndian.Uint16(h[10:12]) }

// Src returns the source address.
func (h IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(h[12:16])) }

// Dst returns the destination address.
func (h IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(h[16:20])) }

// DecTTL decrements the TTL and updates the header checksum incrementally
// (RFC 1624). The caller has checked TTL > 1.
func (h IPv4) DecTTL() {
	old := binary.BigEndian.Uint16(h[8:10])
	h[8]--
	nw := binary.BigEndian.Uint16(h[8:10])
	binary.BigEndian.PutUint16(h[10:12], UpdateChecksum(h.HeaderChecksum(), old, nw))
}

// SetChecksum computes and writes the header checksum.
func (h IPv4) SetChecksum() {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:12], ^Checksum(h[:h.HeaderLen()], 0))
}

// IPv4Fields are the fields EncodeIPv4 writes.
type IPv4Fields struct {
	TotalLen  uint16
	ID        uint16
	FlagsFrag uint16
	TTL       uint8
	Protocol  uint8
	Src, Dst  netip.Addr
}

// Encode writes a 20-byte header without options and its checksum.
func (h IPv4) Encode(f IPv4Fields) {
	h[0] = 0x45
	h[1] = 0
	binary.BigEndian.PutUint16(h[2:4], f.TotalLen)
	binary.BigEndian.PutUint16(h[4:6], f.ID)
	binary.BigEndian.PutUint16(h[6:8], f.FlagsFrag)
	h[8] = f.TTL
	h[9] = f.Protocol
	s, d := f.Src.As4(), f.Dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	h.SetChecksum()
}

// IPv6 is a view of an IPv6 fixed header followed by its payload.
type IPv6 []byte

// IsValid checks the version and that the payload length fits in len(h).
func (h IPv6) IsValid() bool {
	return len(h) >= IPv6Len && h[0]>>4 == 6 && IPv6Len+int(h.PayloadLen()) <= len(h)
}

// PayloadLen returns the payload length field.
func (h IPv6) PayloadLen() uint16 { return binary.BigEndian.Uint16(h[4:6]) }

// NextHeader returns the next header field of the fixed header.
func (h IPv6) NextHeader() uint8 { return h[6] }

// HopLimit returns the hop limit.
func (h IPv6) HopLimit() uint8 { return h[7] }

// Src returns the source address.
func (h IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(h[8:24])) }

// Dst returns the destination address.
func (h IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(h[24:40])) }

// Encode writes a fixed header with traffic class and flow label zero.
func (h IPv6) Encode(payloadLen uint16, next, hopLimit uint8, src, dst netip.Addr) {
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], payloadLen)
	h[6] = next
	h[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
}

// UDP is a view of a UDP header.
type UDP []byte

// IsValid reports whether u holds a header.
func (u UDP) IsValid() bool { return len(u) >= UDPLen }

// SrcPort returns the source port.
func (u UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(u[0:2]) }

// DstPort returns the destination port.
func (u UDP) DstPort() uint16 { return binary.BigEndian.Uint16(u[2:4]) }

// Length returns the length field.
func (u UDP) Length() uint16 { return binary.BigEndian.Uint16(u[4:6]) }

// Checksum returns the checksum field.
func (u UDP) Checksum() uint16 { return binary.BigEndian.Uint16(u[6:8]) }

// TCP flags.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
	TCPFlagURG = 0x20
)

// TCP is a view of a TCP header.
type TCP []byte

// IsValid reports whether t holds a header whose data offset fits.
func (t TCP) IsValid() bool {
	return len(t) >= TCPMinLen && t.DataOffset() >= TCPMinLen && t.DataOffset() <= len(t)
}

// SrcPort returns the source port.
func (t TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(t[0:2]) }

// DstPort returns the destination port.
func (t TCP) DstPort() uint16 { return binary.BigEndian.Uint16(t[2:4]) }

// Seq returns the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[4:8]) }

// Ack returns the acknowledgement number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[8:12]) }

// DataOffset returns the header length in bytes.
func (t TCP) DataOffset() int { return int(t[12]>>4) * 4 }

// Flags returns the flag bits.
func (t TCP) Flags() uint8 { return t[13] }

// Window returns the window field.
func (t TCP) Window() uint16 { return binary.BigEndian.Uint16(t[14:16]) }

// Checksum returns the checksum field.
func (t TCP) Checksum() uint16 { return binary.BigEndian.Uint16(t[16:18]) }

// ICMP message types (v4).
const (
	ICMPv4EchoReply      = 0
	ICMPv4DstUnreachable = 3
	ICMPv4Redirect       = 5
	ICMPv4Echo           = 8
	ICMPv4TimeExceeded   = 11
	ICMPv4ParamProblem   = 12
)

// ICMPv4 destination-unreachable codes.
const (
	ICMPv4NetUnreachable  = 0
	ICMPv4HostUnreachable = 1
	ICMPv4FragNeeded      = 4
	ICMPv4AdminProhibited = 13
)

// ICMP message types (v6).
const (
	ICMPv6DstUnreachable   = 1
	ICMPv6PacketTooBig     = 2
	ICMPv6TimeExceeded     = 3
	ICMPv6ParamProblem     = 4
	ICMPv6EchoRequest      = 128
	ICMPv6EchoReply        = 129
	ICMPv6RouterSolicit    = 133
	ICMPv6RouterAdvert     = 134
	ICMPv6NeighborSolicit  = 135
	ICMPv6NeighborAdvert   = 136
	ICMPv6NoRoute          = 0 // destination unreachable code
	ICMPv6AddrUnreachable  = 3 // destination unreachable code
	ICMPv6HopLimitExceeded = 0 // time exceeded code
)

// ICMP is a view of an ICMPv4 or ICMPv6 header (type, code, checksum and the
// 4-byte rest of header), which share a layout.
type ICMP []byte

// IsValid reports whether c holds the 8-byte header.
func (c ICMP) IsValid() bool { return len(c) >= ICMPLen }

// Type returns the message type.
func (c ICMP) Type() uint8 { return c[0] }

// Code returns the message code.
func (c ICMP) Code() uint8 { return c[1] }

// Checksum returns the checksum field.
func (c ICMP) Checksum() uint16 { return binary.BigEndian.Uint16(c[2:4]) }

// Ident returns the echo identifier (echo request/reply only).
func (c ICMP) Ident() uint16 { return binary.BigEndian.Uint16(c[4:6]) }

// Seq returns the echo sequence number (echo request/reply only).
func (c ICMP) Seq() uint16 { return binary.BigEndian.Uint16(c[6:8]) }

// Rest returns the 4-byte rest-of-header field (MTU for fragmentation
// needed / packet too big).
func (c ICMP) Rest() uint32 { return binary.BigEndian.Uint32(c[4:8]) }

// IsICMPv4Error reports whether an ICMPv4 type is an error message.
func IsICMPv4Error(typ uint8) bool {
	switch typ {
	case ICMPv4DstUnreachable, ICMPv4Redirect, ICMPv4TimeExceeded, ICMPv4ParamProblem, 4 /* source quench */ :
		return true
	}
	return false
}

// IsICMPv6Error reports whether an ICMPv6 type is an error message.
func IsICMPv6Error(typ uint8) bool { return typ < 128 }
