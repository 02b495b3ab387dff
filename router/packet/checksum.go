package packet

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Checksum returns the 16-bit ones' complement sum (not complemented) of b,
// folded together with initial (a partial sum from an earlier call, e.g. a
// pseudo-header). A packet whose checksum field is correct sums to 0xffff,
// so callers check `^Checksum(...) == 0` -- or, for an IPv4 header,
// Checksum(h, 0) == 0xffff; IPv4.IsValid does that.
//
// The summing is gVisor's (64-bit words with end-around carries, RFC 1071
// 1.2), about twice as fast as a loop over big-endian 32-bit words.
func Checksum(b []byte, initial uint32) uint16 {
	initial = (initial >> 16) + (initial & 0xffff)
	initial = (initial >> 16) + (initial & 0xffff)
	return checksum.Checksum(b, uint16(initial))
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
