package underlay

import (
	"encoding/binary"
	"fmt"

	"github.com/podrouter/podrouter/router/packet"
)

// Encap is how an inner IP packet travels between nodes.
type Encap uint8

// Encapsulations.
const (
	// EncapUDP carries the inner IP packet as the whole UDP payload, as
	// flannel's UDP backend does (port 8285 by default).
	EncapUDP Encap = iota + 1
	// EncapVXLAN carries an Ethernet frame behind an RFC 7348 VXLAN header
	// (port 8472, VNI 1 by default), wire-compatible with a Linux vxlan
	// device configured as flannel's vxlan backend configures it.
	EncapVXLAN
)

// Default ports and VNI, as flannel uses them.
const (
	DefaultUDPPort   = 8285
	DefaultVXLANPort = 8472
	DefaultVNI       = 1
)

// Header lengths and overheads.
const (
	// VXLANLen is the VXLAN header: flags, reserved, 24-bit VNI, reserved.
	VXLANLen = 8
	// vxlanEncapLen is what a VXLAN datagram carries in front of the
	// inner IP packet: the VXLAN header and the inner Ethernet header.
	vxlanEncapLen = VXLANLen + packet.EthernetLen
	// vxlanFlagI is the "VNI valid" flag of the VXLAN header's first byte.
	vxlanFlagI = 0x08
	// maxVNI is the largest 24-bit VNI.
	maxVNI = 1<<24 - 1
	// ipv4UDPLen and ipv6UDPLen are the outer headers the kernel adds.
	ipv4UDPLen = packet.IPv4MinLen + packet.UDPLen
	ipv6UDPLen = packet.IPv6Len + packet.UDPLen
)

// String returns "udp" or "vxlan".
func (e Encap) String() string {
	switch e {
	case EncapUDP:
		return "udp"
	case EncapVXLAN:
		return "vxlan"
	}
	return fmt.Sprintf("Encap(%d)", uint8(e))
}

// ParseEncap parses "udp" or "vxlan".
func ParseEncap(s string) (Encap, error) {
	switch s {
	case "udp":
		return EncapUDP, nil
	case "vxlan":
		return EncapVXLAN, nil
	}
	return 0, fmt.Errorf("%w: %q (want udp or vxlan)", ErrBadEncap, s)
}

// DefaultPort returns the encapsulation's well-known UDP port.
func (e Encap) DefaultPort() uint16 {
	if e == EncapVXLAN {
		return DefaultVXLANPort
	}
	return DefaultUDPPort
}

// HeaderLen returns how many bytes the encapsulation writes in front of
// the inner IP packet inside the UDP payload (0 for udp, 22 for vxlan).
func (e Encap) HeaderLen() int {
	if e == EncapVXLAN {
		return vxlanEncapLen
	}
	return 0
}

// Overhead returns the bytes an encapsulated packet adds on the underlay
// link: outer IP and UDP headers plus HeaderLen. Over IPv4 that is 28 for
// udp and 50 for vxlan; over IPv6, 20 more.
func (e Encap) Overhead(ipv6 bool) int {
	n := ipv4UDPLen
	if ipv6 {
		n = ipv6UDPLen
	}
	return n + e.HeaderLen()
}

func (e Encap) valid() bool { return e == EncapUDP || e == EncapVXLAN }

// PutVXLAN writes a VXLAN header with the I flag and vni into b[:8].
func PutVXLAN(b []byte, vni uint32) {
	_ = b[VXLANLen-1]
	b[0], b[1], b[2], b[3] = vxlanFlagI, 0, 0, 0
	binary.BigEndian.PutUint32(b[4:8], vni<<8)
}

// VXLAN is a view of a VXLAN header.
type VXLAN []byte

// IsValid reports whether v holds a whole header with the I flag set.
func (v VXLAN) IsValid() bool { return len(v) >= VXLANLen && v[0]&vxlanFlagI != 0 }

// VNI returns the 24-bit network identifier.
func (v VXLAN) VNI() uint32 { return binary.BigEndian.Uint32(v[4:8]) >> 8 }

// encapTemplate is the VXLAN header and inner Ethernet header of one peer,
// built once when the peer table is: only the EtherType varies per packet.
type encapTemplate [vxlanEncapLen]byte

func newTemplate(vni uint32, dst, src packet.MAC) (t encapTemplate) {
	PutVXLAN(t[:], vni)
	packet.Ethernet(t[VXLANLen:]).Encode(dst, src, packet.EtherTypeIPv4)
	return t
}

// etherType returns the EtherType of an IP packet by its version nibble,
// or 0 when it is neither IPv4 nor IPv6.
func etherType(ip []byte) uint16 {
	if len(ip) == 0 {
		return 0
	}
	switch ip[0] >> 4 {
	case 4:
		return packet.EtherTypeIPv4
	case 6:
		return packet.EtherTypeIPv6
	}
	return 0
}

// encapsulate writes the encapsulation in front of the IP packet at
// buf[offset:] (in the headroom) and returns the UDP payload, a sub-slice
// of buf: nothing is copied but the header. tmpl is nil for udp. It
// returns nil for a packet that is not IP, or headroom too small.
func encapsulate(buf []byte, offset int, tmpl *encapTemplate) []byte {
	ip := buf[offset:]
	typ := etherType(ip)
	if typ == 0 {
		return nil
	}
	if tmpl == nil {
		return ip
	}
	s := offset - vxlanEncapLen
	if s < 0 {
		return nil
	}
	h := buf[s:offset]
	copy(h, tmpl[:])
	binary.BigEndian.PutUint16(h[vxlanEncapLen-2:], typ)
	return buf[s:]
}

// decapsulate returns the inner IP packet of one UDP payload, a sub-slice
// of it, or the reason to drop it.
func decapsulate(d []byte, e Encap, vni uint32, mac packet.MAC) ([]byte, DropReason) {
	if e == EncapUDP {
		if etherType(d) == 0 {
			return nil, DropNotIP
		}
		return d, dropNone
	}
	if len(d) < vxlanEncapLen {
		return nil, DropShort
	}
	v := VXLAN(d)
	if !v.IsValid() {
		return nil, DropBadHeader
	}
	if v.VNI() != vni {
		return nil, DropWrongVNI
	}
	eth := packet.Ethernet(d[VXLANLen:])
	if eth.Dst() != mac {
		return nil, DropWrongMAC
	}
	ip := d[vxlanEncapLen:]
	if t := eth.Type(); t != etherType(ip) || t == 0 {
		return nil, DropNotIP
	}
	return ip, dropNone
}
