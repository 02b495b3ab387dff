package packet

// Software offloads: what the kernel or a NIC would do with a packet that a
// GSO describes, for the ports that cannot take it as it is.
//
//	super-packet: IP hdr | L4 hdr | payload (N*Size bytes, the last chunk shorter)
//	  ─► GSOSegment ─► N packets: IP hdr' | L4 hdr' | chunk i
//	     (IP length; IPv4 ID + i and header checksum; TCP seq + i*Size, FIN and
//	     PSH on the last segment only, CWR on the first only; UDP length; the
//	     L4 checksum of each segment computed in full)
//	partial checksum (NeedsCsum, GSONone) ─► FinishChecksum, in place
//
// Design notes: segmentation follows Linux's tcp_gso_segment and
// __udp_gso_segment (the IPv4 ID is incremented per segment, as without
// SKB_GSO_TCP_FIXEDID). The transport header length is taken from the packet,
// never from GSO.HdrLen: on a TAP read the kernel fills hdr_len with the
// length of the skb's linear part, which can be far more than the headers.
// Checksums are computed from scratch rather than patched from the partial
// sum, so a wrong partial sum cannot leak into the segments.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Errors of the software offloads.
var (
	// ErrGSO means the GSO descriptor does not fit the packet: wrong IP
	// version for the type, transport header out of bounds, zero segment
	// size, or an IP header whose lengths are inconsistent.
	ErrGSO = errors.New("packet: GSO descriptor does not fit the packet")
	// ErrSegmentBuffers means the output buffers are too few (GSOSegment) or
	// one of them is too small for its segment.
	ErrSegmentBuffers = errors.New("packet: too few or too small buffers for the segments")
)

// TCP flags GSO treats specially (beyond FIN and PSH).
const tcpFlagCWR = 0x80

// gsoLayout is where the parts of a packet lie, as GSOSegment needs them.
type gsoLayout struct {
	v6      bool
	proto   uint8
	ipLen   int    // IP packet length from its header (trailing bytes excluded)
	l4      int    // start of the transport header
	hdr     int    // IP + transport header length
	size    int    // payload bytes per segment
	nseg    int    // number of segments
	addrSum uint32 // ones' complement sum of the source and destination address
}

// ipLength returns the length of the IP packet pkt from its header, or an
// error when the header is malformed or claims more than len(pkt).
func ipLength(pkt []byte) (n int, v6 bool, err error) {
	if len(pkt) < 1 {
		return 0, false, fmt.Errorf("%w: empty packet", ErrGSO)
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < IPv4MinLen {
			return 0, false, fmt.Errorf("%w: IPv4 header truncated", ErrGSO)
		}
		h := IPv4(pkt)
		n = int(h.TotalLen())
		if hl := h.HeaderLen(); hl < IPv4MinLen || hl > n || n > len(pkt) {
			return 0, false, fmt.Errorf("%w: IPv4 header length %d, total length %d, %d bytes", ErrGSO, hl, n, len(pkt))
		}
		return n, false, nil
	case 6:
		if len(pkt) < IPv6Len {
			return 0, true, fmt.Errorf("%w: IPv6 header truncated", ErrGSO)
		}
		n = IPv6Len + int(IPv6(pkt).PayloadLen())
		if n > len(pkt) {
			return 0, true, fmt.Errorf("%w: IPv6 payload length %d, %d bytes", ErrGSO, n-IPv6Len, len(pkt))
		}
		return n, true, nil
	}
	return 0, false, fmt.Errorf("%w: IP version %d", ErrGSO, pkt[0]>>4)
}

// layout checks g against pkt (a super-packet, g.Type != GSONone) and
// returns where its parts lie.
func layout(pkt []byte, g GSO) (gsoLayout, error) {
	var l gsoLayout
	ipLen, v6, err := ipLength(pkt)
	if err != nil {
		return l, err
	}
	l.ipLen, l.v6 = ipLen, v6
	switch g.Type {
	case GSOTCPv4:
		if v6 {
			return l, fmt.Errorf("%w: %v on an IPv6 packet", ErrGSO, g.Type)
		}
		l.proto = ProtoTCP
	case GSOTCPv6:
		if !v6 {
			return l, fmt.Errorf("%w: %v on an IPv4 packet", ErrGSO, g.Type)
		}
		l.proto = ProtoTCP
	case GSOUDPL4:
		l.proto = ProtoUDP
	default:
		return l, fmt.Errorf("%w: GSO type %d", ErrGSO, g.Type)
	}
	if g.Size == 0 {
		return l, fmt.Errorf("%w: segment size 0", ErrGSO)
	}
	l.size = int(g.Size)

	// The transport header: after the IPv4 header, or where the descriptor
	// says for IPv6 (extension headers may come before it).
	if v6 {
		switch {
		case g.NeedsCsum:
			l.l4 = int(g.CsumStart)
			if l.l4 < IPv6Len {
				return l, fmt.Errorf("%w: transport header at %d, inside the IPv6 header", ErrGSO, l.l4)
			}
		case IPv6(pkt).NextHeader() == l.proto:
			l.l4 = IPv6Len
		default:
			return l, fmt.Errorf("%w: no checksum start and IPv6 next header %d", ErrGSO, IPv6(pkt).NextHeader())
		}
		if l.l4 == IPv6Len && IPv6(pkt).NextHeader() != l.proto {
			return l, fmt.Errorf("%w: IPv6 next header %d for %v", ErrGSO, IPv6(pkt).NextHeader(), g.Type)
		}
		l.addrSum = uint32(Checksum(pkt[8:40], 0))
	} else {
		l.l4 = IPv4(pkt).HeaderLen()
		if g.NeedsCsum && int(g.CsumStart) != l.l4 {
			return l, fmt.Errorf("%w: checksum start %d, IPv4 header length %d", ErrGSO, g.CsumStart, l.l4)
		}
		if p := IPv4(pkt).Protocol(); p != l.proto {
			return l, fmt.Errorf("%w: IPv4 protocol %d for %v", ErrGSO, p, g.Type)
		}
		if IPv4(pkt).FlagsFrag()&(IPv4FlagMF|IPv4FragOffMask) != 0 {
			return l, fmt.Errorf("%w: IPv4 fragment", ErrGSO)
		}
		l.addrSum = uint32(Checksum(pkt[12:20], 0))
	}
	if l.proto == ProtoTCP {
		if l.l4+TCPMinLen > ipLen {
			return l, fmt.Errorf("%w: TCP header truncated", ErrGSO)
		}
		doff := TCP(pkt[l.l4:]).DataOffset()
		if doff < TCPMinLen || l.l4+doff > ipLen {
			return l, fmt.Errorf("%w: TCP data offset %d", ErrGSO, doff)
		}
		l.hdr = l.l4 + doff
	} else {
		if l.l4+UDPLen > ipLen {
			return l, fmt.Errorf("%w: UDP header truncated", ErrGSO)
		}
		l.hdr = l.l4 + UDPLen
	}
	l.nseg = max(1, (ipLen-l.hdr+l.size-1)/l.size)
	return l, nil
}

// GSOSegments returns the number of packets GSOSegment cuts pkt into: 1 for
// a packet with g.Type == GSONone.
func GSOSegments(pkt []byte, g GSO) (int, error) {
	if g.Type == GSONone {
		if _, _, err := ipLength(pkt); err != nil {
			return 0, err
		}
		return 1, nil
	}
	l, err := layout(pkt, g)
	return l.nseg, err
}

// GSOSegment cuts the IP super-packet pkt (IPv4 or IPv6, TCP or UDP), as g
// describes it, into packets of at most g.Size payload bytes each. Segment i
// is written, complete and checksummed, to out[i][outOffset:] and its length
// (from the IP header on) to sizes[i]; out[i][:outOffset] is left untouched.
// It returns the number of segments. A packet with g.Type == GSONone is
// copied as one segment, its checksum finished when g.NeedsCsum.
//
// pkt is only read; it must not overlap the output buffers. Bytes after the
// IP packet's own length (link padding) are ignored. g.HdrLen is not used:
// the header length comes from the packet. It returns an error wrapping
// ErrSegmentBuffers when out or sizes has fewer than the segments' number of
// elements or a buffer is too small (some segments may then have been
// written), and one wrapping ErrGSO when g does not fit pkt. It allocates
// nothing unless it fails.
func GSOSegment(pkt []byte, g GSO, out [][]byte, sizes []int, outOffset int) (int, error) {
	n, total, err := GSOSegmentFrom(pkt, g, 0, out, sizes, outOffset)
	if err == nil && n < total {
		return n, fmt.Errorf("%w: %d segments, %d buffers", ErrSegmentBuffers, total, min(len(out), len(sizes)))
	}
	return n, err
}

// GSOSegmentFrom is GSOSegment resumed at segment first: it writes segments
// first, first+1, ... to out[0], out[1], ... until either runs out, and
// returns how many it wrote and the number of segments pkt has in all (so a
// caller with few buffers continues at first+n while first+n < total).
func GSOSegmentFrom(pkt []byte, g GSO, first int, out [][]byte, sizes []int, outOffset int) (n, total int, err error) {
	room := min(len(out), len(sizes))
	if outOffset < 0 {
		return 0, 0, fmt.Errorf("%w: negative offset %d", ErrSegmentBuffers, outOffset)
	}
	if g.Type == GSONone {
		ipLen, _, err := ipLength(pkt)
		if err != nil || first >= 1 || room == 0 {
			return 0, 1, err
		}
		if len(out[0]) < outOffset+ipLen {
			return 0, 1, fmt.Errorf("%w: buffer of %d bytes for a %d-byte packet at offset %d", ErrSegmentBuffers, len(out[0]), ipLen, outOffset)
		}
		dst := out[0][outOffset : outOffset+ipLen]
		copy(dst, pkt[:ipLen])
		if err := FinishChecksum(dst, g); err != nil {
			return 0, 1, err
		}
		sizes[0] = ipLen
		return 1, 1, nil
	}
	l, err := layout(pkt, g)
	if err != nil {
		return 0, 0, err
	}
	if first < 0 {
		first = 0
	}
	for i := first; i < l.nseg && n < room; i++ {
		start := l.hdr + i*l.size
		end := min(start+l.size, l.ipLen)
		segLen := l.hdr + end - start
		if len(out[n]) < outOffset+segLen {
			return n, l.nseg, fmt.Errorf("%w: buffer of %d bytes for a %d-byte segment at offset %d", ErrSegmentBuffers, len(out[n]), segLen, outOffset)
		}
		l.write(out[n][outOffset:outOffset+segLen], pkt, i, start, end)
		sizes[n] = segLen
		n++
	}
	return n, l.nseg, nil
}

// write builds segment i, carrying pkt[start:end], into dst (of exactly its
// length).
func (l *gsoLayout) write(dst, pkt []byte, i, start, end int) {
	copy(dst, pkt[:l.hdr])
	copy(dst[l.hdr:], pkt[start:end])
	segLen := len(dst)
	if l.v6 {
		binary.BigEndian.PutUint16(dst[4:6], uint16(segLen-IPv6Len))
	} else {
		binary.BigEndian.PutUint16(dst[2:4], uint16(segLen))
		binary.BigEndian.PutUint16(dst[4:6], IPv4(pkt).ID()+uint16(i))
		IPv4(dst).SetChecksum()
	}
	l4 := dst[l.l4:]
	var at int
	if l.proto == ProtoTCP {
		at = 16
		binary.BigEndian.PutUint32(l4[4:8], TCP(pkt[l.l4:]).Seq()+uint32(i*l.size))
		if i+1 < l.nseg {
			l4[13] &^= TCPFlagFIN | TCPFlagPSH
		}
		if i > 0 {
			l4[13] &^= tcpFlagCWR
		}
	} else {
		at = 6
		binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)))
	}
	l4[at], l4[at+1] = 0, 0
	sum := ^Checksum(l4, l.addrSum+uint32(l.proto)+uint32(len(l4)))
	if sum == 0 && l.proto == ProtoUDP {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(l4[at:], sum)
}

// FinishChecksum completes the partial checksum of a packet that is not a
// super-packet (g.Type == GSONone) and has g.NeedsCsum: the field at
// g.CsumStart+g.CsumOffset holds the pseudo-header sum, and the ones'
// complement of the sum from g.CsumStart to the end of the IP packet is
// written there, in place (as the kernel's skb_checksum_help). It does
// nothing when g.NeedsCsum is false. pkt is the IP packet; bytes after its
// own length are ignored. It returns an error wrapping ErrGSO when g is a
// super-packet's or its offsets fall outside the packet.
func FinishChecksum(pkt []byte, g GSO) error {
	if !g.NeedsCsum {
		return nil
	}
	if g.Type != GSONone {
		return fmt.Errorf("%w: FinishChecksum on a %v super-packet", ErrGSO, g.Type)
	}
	end, _, err := ipLength(pkt)
	if err != nil {
		return err
	}
	start, at := int(g.CsumStart), int(g.CsumStart)+int(g.CsumOffset)
	if at+2 > end {
		return fmt.Errorf("%w: checksum at %d+%d, packet of %d bytes", ErrGSO, g.CsumStart, g.CsumOffset, end)
	}
	sum := ^Checksum(pkt[start:end], 0)
	if sum == 0 {
		sum = 0xffff // as the kernel does (CSUM_MANGLED_0): UDP reserves 0
	}
	binary.BigEndian.PutUint16(pkt[at:], sum)
	return nil
}
