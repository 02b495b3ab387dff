package packet

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Checksum returns the 16-bit ones' complement sum (not complemented) of b,
// folded together with initial (a partial sum from an earlier call, e.g. a
// pseudo-header). A packet whose checksum field is correct sums to 0xffff,
// so callers check `^Checksum(...) == 0` -- or, for an IPv4 header,
// Checksum(h, 0) == 0xffff; IPv4.IsValid does that.
func Checksum(b []byte, initial uint32) uint16 {
	// The ones' complement sum does not depend on byte order (RFC 1071
	// 1.2(B)): b is added as little-endian 64-bit words with end-around
	// carries (1.2(C)), and the folded sum's two bytes are swapped once at
	// the end; initial (big-endian) joins the sum byte-swapped. About twice
	// as fast as summing big-endian 32-bit words.
	var sum, c, carries uint64
	for len(b) >= 64 {
		w := b[:64:64]
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[0:8]), 0)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[8:16]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[16:24]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[24:32]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[32:40]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[40:48]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[48:56]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(w[56:64]), c)
		carries += c // each carry out is 2^64, which is 1 in ones' complement
		b = b[64:]
	}
	sum, c = bits.Add64(sum, carries, 0)
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 {
		sum, c = bits.Add64(sum, uint64(b[0]), c) // the low byte of its 16-bit word
	}
	in := uint64(bits.ReverseBytes16(uint16(initial>>16))) + uint64(bits.ReverseBytes16(uint16(initial)))
	sum, c = bits.Add64(sum, in, c)
	sum += c // no overflow: with a carry out, sum is at most the 17-bit addend
	sum = (sum >> 32) + (sum & 0xffffffff)
	sum = (sum >> 32) + (sum & 0xffffffff)
	sum = (sum >> 16) + (sum & 0xffff)
	sum = (sum >> 16) + (sum & 0xffff)
	return bits.ReverseBytes16(uint16(sum))
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
