package packet

import (
	"encoding/binary"
	"net/netip"
)

// Checksum returns the 16-bit ones' complement sum (not complemented) of b,
// folded together with initial (a partial sum from an earlier call, e.g. a
// pseudo-header). A packet whose checksum field is correct sums to 0xffff,
// so callers check `^Checksum(...) == 0` -- or, for an IPv4 header,
// Checksum(h, 0) == 0xffff; IPv4.IsValid does that.
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 32 {
		sum += uint64(binary.BigEndian.Uint32(b[0:4]))
		sum += uint64(binary.BigEndian.Uint32(b[4:8]))
		sum += uint64(binary.BigEndian.Uint32(b[8:12]))
		sum += uint64(binary.BigEndian.Uint32(b[12:16]))
		sum += uint64(binary.BigEndian.Uint32(b[16:20]))
		sum += uint64(binary.BigEndian.Uint32(b[20:24]))
		sum += uint64(binary.BigEndian.Uint32(b[24:28]))
		sum += uint64(binary.BigEndian.Uint32(b[28:32]))
		b = b[32:]
	}
	for len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}

// PseudoHeaderSum returns the partial sum of the TCP/UDP/ICMPv6 pseudo-header
// for the given addresses, protocol and upper-layer length, to pass as
// Checksum's initial value.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		sum += uint32(binary.BigEndian.Uint16(s[0:2])) + uint32(binary.BigEndian.Uint16(s[2:4]))
		sum += uint32(binary.BigEndian.Uint16(d[0:2])) + uint32(binary.BigEndian.Uint16(d[2:4]))
	} else {
		s, d := src.As16(), dst.As16()
		for i := 0; i < 16; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(s[i:])) + uint32(binary.BigEndian.Uint16(d[i:]))
		}
	}
	sum += uint32(proto)
	sum += uint32(length>>16) + uint32(length&0xffff)
	return sum
}

// UpdateChecksum returns the checksum field that results from changing one
// 16-bit word of the covered data from old to new (RFC 1624, eqn. 3:
// HC' = ~(~HC + ~m + m')).
func UpdateChecksum(field, old, new uint16) uint16 {
	sum := uint32(^field) + uint32(^old) + uint32(new)
	sum = (sum >> 16) + (sum & 0xffff)
	sum = (sum >> 16) + (sum & 0xffff)
	return ^uint16(sum)
}

// UpdateChecksumBytes is UpdateChecksum for a change of an even-length run of
// bytes (an address): old and new have the same even length.
func UpdateChecksumBytes(field uint16, old, new []byte) uint16 {
	sum := uint32(^field)
	for i := 0; i+1 < len(old); i += 2 {
		sum += uint32(^binary.BigEndian.Uint16(old[i:])) & 0xffff
		sum += uint32(binary.BigEndian.Uint16(new[i:]))
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}
