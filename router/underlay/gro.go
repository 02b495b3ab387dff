package underlay

// Receive coalescing (GRO in userspace): consecutive TCP segments of one
// flow that arrive together (typically one UDP GRO super-datagram: up to 64
// segments a peer's TSO cut) are merged into one TCP super-packet, described
// by a packet.GSO, so that the engine routes it once and a TAP port hands it
// to the pod's kernel whole, as Linux's own vxlan GRO would. Consecutive
// UDP datagrams of one flow and of one size (the last may be shorter) are
// merged the same way into a UDP super-packet (USO), which a TAP takes
// whole and the pod's kernel cuts back into the same datagrams: one write
// instead of one per datagram.
//
//	segment ─► TCP without SYN/FIN/RST/URG, or UDP; no IP options or fragments?
//	   ─► same addresses, ports, IP fields (TCP: ACK, window, options, the
//	      next sequence number) as the open super-packet, not longer than its
//	      first segment, room left?  ─► checksums verified ─► payload appended
//	   ─► else: the open one is closed (lengths, IP header checksum, partial
//	      L4 checksum) and the segment starts a new one
//
// Design notes: merging only with the packet written just before keeps this
// to one comparison per segment; segments of a flow arrive together because
// the sender's kernel or engine sent them as one GSO batch. Each merged
// segment's TCP (and IPv4 header) checksum is verified here, since the
// super-packet leaves with a partial checksum (NeedsCsum) that no one checks
// again; a segment that fails is passed on alone, for its receiver to drop.
// The rules follow Linux's tcp_gro_receive, which also merges across the
// PSH that ends each sender's write.

import (
	"encoding/binary"
	"net/netip"

	"github.com/podrouter/podrouter/router/packet"
)

const tcpFlagsMerge = packet.TCPFlagACK | packet.TCPFlagPSH

// tcpSeg describes a segment that may be merged: its transport protocol,
// header lengths and payload length.
type tcpSeg struct {
	v6      bool
	proto   uint8 // packet.ProtoTCP or packet.ProtoUDP
	hl, thl int   // IP and transport header lengths
	payload int
}

// mergeable checks a segment's structure (not its checksums).
func mergeable(ip []byte) (s tcpSeg, ok bool) {
	if len(ip) < 1 {
		return s, false
	}
	switch ip[0] >> 4 {
	case 4:
		if len(ip) < packet.IPv4MinLen+packet.UDPLen || ip[0] != 0x45 {
			return s, false
		}
		if binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 || int(binary.BigEndian.Uint16(ip[2:4])) != len(ip) {
			return s, false // a fragment, or padding
		}
		s.hl, s.proto = packet.IPv4MinLen, ip[9]
	case 6:
		if len(ip) < packet.IPv6Len+packet.UDPLen || packet.IPv6Len+int(binary.BigEndian.Uint16(ip[4:6])) != len(ip) {
			return s, false
		}
		s.v6, s.hl, s.proto = true, packet.IPv6Len, ip[6]
	default:
		return s, false
	}
	l4 := ip[s.hl:]
	switch s.proto {
	case packet.ProtoTCP:
		if len(l4) < packet.TCPMinLen {
			return s, false
		}
		s.thl = int(l4[12]>>4) * 4
		if s.thl < packet.TCPMinLen || s.thl >= len(l4) || l4[13]&^tcpFlagsMerge != 0 || l4[13]&packet.TCPFlagACK == 0 {
			return s, false // no payload, SYN/FIN/RST/URG/ECE/CWR, or no ACK
		}
	case packet.ProtoUDP:
		s.thl = packet.UDPLen
		if int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) || len(l4) == packet.UDPLen {
			return s, false // a length that lies, or no payload
		}
	default:
		return s, false
	}
	s.payload = len(ip) - s.hl - s.thl
	return s, true
}

// checksumsOK verifies a candidate's TCP or UDP checksum (and IPv4 header
// checksum). A UDP checksum of zero over IPv4 means none.
func checksumsOK(ip []byte, s tcpSeg) bool {
	var src, dst netip.Addr
	if s.v6 {
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	} else {
		if packet.Checksum(ip[:packet.IPv4MinLen], 0) != 0xffff {
			return false
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	}
	l4 := ip[s.hl:]
	if s.proto == packet.ProtoUDP && !s.v6 && l4[6] == 0 && l4[7] == 0 {
		return true
	}
	return packet.Checksum(l4, packet.PseudoHeaderSum(src, dst, s.proto, len(l4))) == 0xffff
}

// sameFlow reports whether segment b continues super-packet a's flow with
// identical headers but for the IP length, ID and checksum, the sequence
// number, the L4 checksum and PSH (UDP: the length).
func sameFlow(a, b []byte, s tcpSeg) bool {
	if s.v6 {
		if binary.BigEndian.Uint32(a[0:4]) != binary.BigEndian.Uint32(b[0:4]) || a[7] != b[7] || string(a[8:40]) != string(b[8:40]) {
			return false
		}
	} else if a[1] != b[1] || a[6] != b[6] || a[8] != b[8] || string(a[12:20]) != string(b[12:20]) {
		return false
	}
	ta, tb := a[s.hl:s.hl+s.thl], b[s.hl:s.hl+s.thl]
	if s.proto == packet.ProtoUDP {
		return string(ta[0:4]) == string(tb[0:4]) // ports
	}
	return tb[12]>>4 == ta[12]>>4 && // same TCP header length
		string(ta[0:4]) == string(tb[0:4]) && // ports
		string(ta[8:12]) == string(tb[8:12]) && // ACK
		string(ta[14:16]) == string(tb[14:16]) && // window
		string(ta[18:]) == string(tb[18:]) // urgent pointer, options
}

// coalescer is the open super-packet of one drain.
type coalescer struct {
	open     bool
	k        int // index in the caller's bufs
	total    int // IP length so far
	seg      tcpSeg
	mss      int    // payload of the first segment: the segment size
	next     uint32 // sequence number the next segment must have
	segs     int
	ended    bool // a shorter segment came: nothing more may follow
	verified bool // the first segment's checksums were verified
}

// maxSegs bounds a super-packet's segments (UDP_MAX_SEGMENTS of older
// kernels, a limit some USO paths still apply).
const maxSegs = 64

// start opens a super-packet on the segment just written at bufs[k].
func (c *coalescer) start(k int, ip []byte, s tcpSeg) {
	*c = coalescer{open: true, k: k, total: len(ip), seg: s, mss: s.payload, segs: 1}
	if s.proto == packet.ProtoTCP {
		c.next = binary.BigEndian.Uint32(ip[s.hl+4:]) + uint32(s.payload)
	}
}

// tryAppend appends segment ip to the open super-packet in buf (at
// offset) when it continues it; it reports whether it did.
func (c *coalescer) tryAppend(buf []byte, offset int, ip []byte) bool {
	if !c.open || c.ended {
		return false
	}
	s, ok := mergeable(ip)
	if !ok || s.v6 != c.seg.v6 || s.proto != c.seg.proto || s.thl != c.seg.thl || s.payload > c.mss || c.segs == maxSegs {
		return false
	}
	first := buf[offset : offset+c.total]
	maxLen := 65535
	if s.v6 {
		maxLen += packet.IPv6Len
	}
	if c.total+s.payload > min(maxLen, len(buf)-offset) || !sameFlow(first, ip, s) {
		return false
	}
	tcp := s.proto == packet.ProtoTCP
	if tcp && binary.BigEndian.Uint32(ip[s.hl+4:]) != c.next {
		return false
	}
	if !c.verified {
		if !checksumsOK(first, c.seg) {
			c.open = false // leaves as it came, for its receiver to judge
			return false
		}
		c.verified = true
	}
	if !checksumsOK(ip, s) {
		return false
	}
	copy(buf[offset+c.total:], ip[s.hl+s.thl:])
	c.total += s.payload
	c.next += uint32(s.payload)
	c.segs++
	if tcp {
		first[c.seg.hl+13] |= ip[s.hl+13] & packet.TCPFlagPSH
	}
	c.ended = s.payload < c.mss
	return true
}

// finish closes the super-packet: it sets its lengths, IPv4 header
// checksum and partial TCP checksum and returns its size and GSO
// descriptor. A single segment is left as it came (GSONone).
func (c *coalescer) finish(buf []byte, offset int) (int, packet.GSO) {
	c.open = false
	if c.segs < 2 {
		return c.total, packet.GSO{}
	}
	ip := buf[offset : offset+c.total]
	s := c.seg
	var src, dst netip.Addr
	g := packet.GSO{
		Type: packet.GSOTCPv4, NeedsCsum: true, HdrLen: uint16(s.hl + s.thl), Size: uint16(c.mss),
		CsumStart: uint16(s.hl), CsumOffset: 16,
	}
	csum := s.hl + 16
	switch {
	case s.proto == packet.ProtoUDP:
		g.Type, g.CsumOffset, csum = packet.GSOUDPL4, 6, s.hl+6
		binary.BigEndian.PutUint16(ip[s.hl+4:], uint16(c.total-s.hl))
	case s.v6:
		g.Type = packet.GSOTCPv6
	}
	if s.v6 {
		binary.BigEndian.PutUint16(ip[4:6], uint16(c.total-packet.IPv6Len))
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	} else {
		binary.BigEndian.PutUint16(ip[2:4], uint16(c.total))
		packet.IPv4(ip).SetChecksum()
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	}
	// The partial checksum: the pseudo-header sum over the whole L4
	// length, folded, not complemented (as CHECKSUM_PARTIAL has it).
	sum := packet.PseudoHeaderSum(src, dst, s.proto, c.total-s.hl)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[csum:], uint16(sum))
	return c.total, g
}
