package conntrack

// Packet rewrites for source NAT, in place, with incremental checksum
// updates (RFC 1624): conntrack decides on the tuple from before the
// rewrite (tailscale's tstun does the same), then Rewrite changes the
// packet. ICMP errors about a translated flow are translated too, quoted
// packet included, so that path MTU discovery works through the NAT.

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/podrouter/podrouter/router/packet"
)

// ErrRewrite is returned by Rewrite and RewriteRelated for a packet they
// cannot translate: a non-first fragment, a transport header too short
// for the field to change, or an address of the other family.
var ErrRewrite = errors.New("conntrack: packet cannot be rewritten")

// Rewrite applies r's translation to the IP packet in frame, which pp
// describes (as Parse left it): for r.Dir == Original the source address
// and port become r.NATAddr:r.NATPort, for Reply the destination. For ICMP
// echo the identifier stands for the port. The IPv4 header checksum and
// the TCP, UDP (unless zero, IPv4) and ICMP checksums are updated
// incrementally, so they must be complete (not a partial offload
// checksum). pp's addresses and ports are updated to match. It does
// nothing when r.NAT() is false, and never allocates.
func Rewrite(frame []byte, pp *packet.Parsed, r *Result) error {
	if !r.NAT() {
		return nil
	}
	return rewrite(frame, pp, r.Dir == Original, r.NATAddr, r.NATPort)
}

// RewriteDNAT applies r's destination translation to the IP packet in
// frame as Rewrite applies its source translation: for r.Dir == Original
// the destination address and port become r.DNATAddr:r.DNATPort (the
// backend), for Reply the source (the Service). A hairpin flow has both
// translations: call Rewrite and RewriteDNAT. TCP and UDP only.
func RewriteDNAT(frame []byte, pp *packet.Parsed, r *Result) error {
	if !r.DNAT() {
		return nil
	}
	if pp.Proto != packet.ProtoTCP && pp.Proto != packet.ProtoUDP {
		return ErrRewrite
	}
	return rewrite(frame, pp, r.Dir == Reply, r.DNATAddr, r.DNATPort)
}

// rewrite sets the source (src) or destination address and port of the
// packet to addr:port, updating checksums incrementally.
func rewrite(frame []byte, pp *packet.Parsed, src bool, addr netip.Addr, port uint16) error {
	if pp.FragOff || addr.Is4() != (pp.Version == 4) {
		return ErrRewrite
	}
	ip := frame[pp.IPOff:pp.IPEnd]
	l4 := frame[pp.L4Off:pp.IPEnd]
	var newA [16]byte
	var oldA []byte
	addrLen := 4
	if pp.Version == 4 {
		a4 := addr.As4()
		copy(newA[:], a4[:])
		oldA = ip[16:20]
		if src {
			oldA = ip[12:16]
		}
	} else {
		addrLen = 16
		newA = addr.As16()
		oldA = ip[24:40]
		if src {
			oldA = ip[8:24]
		}
	}
	na := newA[:addrLen]
	// Transport first: its checksum update needs the old address.
	var csumOff, portOff int
	pseudo := true
	switch pp.Proto {
	case packet.ProtoTCP:
		csumOff, portOff = 16, 2
		if src {
			portOff = 0
		}
		if len(l4) < packet.TCPMinLen {
			return ErrRewrite
		}
	case packet.ProtoUDP:
		csumOff, portOff = 6, 2
		if src {
			portOff = 0
		}
		if len(l4) < packet.UDPLen {
			return ErrRewrite
		}
		if pp.Version == 4 && binary.BigEndian.Uint16(l4[6:8]) == 0 {
			csumOff = -1 // no checksum
		}
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		csumOff, portOff = 2, 4 // the echo identifier
		pseudo = pp.Proto == packet.ProtoICMPv6
		if len(l4) < packet.ICMPLen {
			return ErrRewrite
		}
	default:
		return ErrRewrite
	}
	oldPort := binary.BigEndian.Uint16(l4[portOff:])
	if csumOff >= 0 {
		c := binary.BigEndian.Uint16(l4[csumOff:])
		if pseudo {
			c = packet.UpdateChecksumBytes(c, oldA, na)
		}
		c = packet.UpdateChecksum(c, oldPort, port)
		if c == 0 && pp.Proto == packet.ProtoUDP {
			c = 0xffff // RFC 768: zero means "no checksum"
		}
		binary.BigEndian.PutUint16(l4[csumOff:], c)
	}
	binary.BigEndian.PutUint16(l4[portOff:], port)
	if pp.Version == 4 {
		h := packet.IPv4(ip)
		binary.BigEndian.PutUint16(ip[10:12], packet.UpdateChecksumBytes(h.HeaderChecksum(), oldA, na))
	}
	copy(oldA, na)
	isICMP := pp.Proto == packet.ProtoICMPv4 || pp.Proto == packet.ProtoICMPv6
	if src {
		pp.Src = addr
		if !isICMP {
			pp.SrcPort = port
		}
	} else {
		pp.Dst = addr
		if !isICMP {
			pp.DstPort = port
		}
	}
	if isICMP {
		pp.SrcPort = port // Parse keeps the identifier there
	}
	return nil
}

// quoted locates the packet quoted by the ICMP error in frame (pp
// describes it): the offset of the quoted IP header and of its transport
// header, and its version. ok is false when pp is not an ICMP error or the
// quote is too short to hold the addresses and 8 transport bytes.
func quoted(frame []byte, pp *packet.Parsed) (ipOff, l4Off int, ok bool) {
	typ := pp.ICMPType()
	if typ < 0 {
		return 0, 0, false
	}
	if pp.Version == 4 && !packet.IsICMPv4Error(uint8(typ)) || pp.Version == 6 && !packet.IsICMPv6Error(uint8(typ)) {
		return 0, 0, false
	}
	ipOff = pp.L4Off + packet.ICMPLen
	q := frame[ipOff:pp.IPEnd]
	if pp.Version == 4 {
		if len(q) < packet.IPv4MinLen || q[0]>>4 != 4 {
			return 0, 0, false
		}
		hl := int(q[0]&0xf) * 4
		if hl < packet.IPv4MinLen || len(q) < hl+8 || binary.BigEndian.Uint16(q[6:8])&packet.IPv4FragOffMask != 0 {
			return 0, 0, false
		}
		return ipOff, ipOff + hl, true
	}
	// IPv6: quotes without extension headers only.
	if len(q) < packet.IPv6Len+8 || q[0]>>4 != 6 {
		return 0, 0, false
	}
	return ipOff, ipOff + packet.IPv6Len, true
}

// QuotedTuple returns the tuple of the packet an ICMP error quotes, as
// that packet was sent, and false when pp is not an ICMP error with a
// usable quote (IPv4, or IPv6 without extension headers; TCP, UDP or ICMP
// echo). Look its Reply() up to find the flow the error belongs to.
func QuotedTuple(frame []byte, pp *packet.Parsed) (Tuple, bool) {
	ipOff, l4Off, ok := quoted(frame, pp)
	if !ok {
		return Tuple{}, false
	}
	q := frame[ipOff:]
	var src, dst netip.Addr
	var proto uint8
	if pp.Version == 4 {
		src, dst, proto = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), q[9]
	} else {
		src, dst, proto = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), q[6]
	}
	l4 := frame[l4Off:pp.IPEnd]
	var sp, dp uint16
	switch proto {
	case packet.ProtoTCP, packet.ProtoUDP:
		sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		if (proto == packet.ProtoICMPv4) != (pp.Version == 4) {
			return Tuple{}, false
		}
		id := binary.BigEndian.Uint16(l4[4:6])
		switch l4[0] {
		case packet.ICMPv4Echo, packet.ICMPv6EchoRequest:
			sp = id
		case packet.ICMPv4EchoReply, packet.ICMPv6EchoReply:
			dp = id
		default:
			return Tuple{}, false
		}
	default:
		return Tuple{}, false
	}
	return Tuple{src: words(src), dst: words(dst), meta: makeMeta(sp, dp, proto, pp.Version == 6)}, true
}

// TrackRelated finds the flow an ICMP error (frame, described by pp)
// belongs to, and returns the error's direction in it and the flow's NAT
// as Track does, for RewriteRelated. It changes no flow state. ok is false
// when the error quotes no tracked flow.
func (t *Table) TrackRelated(frame []byte, pp *packet.Parsed, now Time) (Result, bool) {
	q, ok := QuotedTuple(frame, pp)
	if !ok {
		return Result{}, false
	}
	// The quoted packet went the other way, as it was on the wire: the
	// error travels in the direction its Reply() tuple has in the flow.
	k := q.Reply()
	h := k.hash(t.seed)
	s := t.shardOf(h)
	s.mu.RLock()
	defer s.mu.RUnlock()
	ref, dir := t.find(s.tab.Load(), &k, uint32(h>>32))
	if ref == 0 {
		return Result{}, false
	}
	rec := t.rec(ref)
	w := rec.word.Load()
	if w&wDying != 0 || expired(w, now) {
		return Result{}, false
	}
	return t.result(ref, w, dir), true
}

// RewriteRelated translates an ICMP error of a NAT flow (r from
// TrackRelated): for Dir == Reply, the outer destination and the quoted
// packet's source become r.NATAddr:r.NATPort; for Original, the outer
// source and the quoted destination. The quoted IPv4 header checksum and
// the quoted UDP or ICMP checksum (when quoted whole enough) are updated
// incrementally; the ICMP checksum is recomputed (the message is small).
func RewriteRelated(frame []byte, pp *packet.Parsed, r *Result) error {
	if !r.NAT() {
		return nil
	}
	return rewriteRelated(frame, pp, r.Dir == Original, r.NATAddr, r.NATPort)
}

// RewriteRelatedDNAT translates an ICMP error of a DNAT flow (r from
// TrackRelated) as RewriteRelated does for SNAT, the other way round: for
// Dir == Reply (an error about a packet to the backend, on its way to the
// client) the outer source and the quoted destination become
// r.DNATAddr:r.DNATPort (the Service, as netfilter rewrites the outer
// header too); for Original, the outer destination and the quoted source
// become the backend.
func RewriteRelatedDNAT(frame []byte, pp *packet.Parsed, r *Result) error {
	if !r.DNAT() {
		return nil
	}
	return rewriteRelated(frame, pp, r.Dir == Reply, r.DNATAddr, r.DNATPort)
}

// rewriteRelated sets, in the ICMP error in frame, the outer source
// (outerSrc) or destination address and the quoted packet's other
// address and its port to addr:port.
func rewriteRelated(frame []byte, pp *packet.Parsed, outerSrc bool, addr netip.Addr, port uint16) error {
	ipOff, l4Off, ok := quoted(frame, pp)
	if !ok || addr.Is4() != (pp.Version == 4) {
		return ErrRewrite
	}
	ip := frame[pp.IPOff:pp.IPEnd]
	q := frame[ipOff:pp.IPEnd]
	ql4 := frame[l4Off:pp.IPEnd]
	var na []byte
	var outerA, innerA []byte
	if pp.Version == 4 {
		a := addr.As4()
		na = a[:]
		outerA, innerA = ip[16:20], q[12:16]
		if outerSrc {
			outerA, innerA = ip[12:16], q[16:20]
		}
	} else {
		a := addr.As16()
		na = a[:]
		outerA, innerA = ip[24:40], q[8:24]
		if outerSrc {
			outerA, innerA = ip[8:24], q[24:40]
		}
	}
	// The quoted packet: its port (or echo identifier) and checksums.
	innerProto := q[9]
	if pp.Version == 6 {
		innerProto = q[6]
	}
	portOff := 0 // the quoted source port
	if outerSrc {
		portOff = 2
	}
	csumOff, pseudo := -1, true
	switch innerProto {
	case packet.ProtoUDP:
		if len(ql4) >= packet.UDPLen && !(pp.Version == 4 && binary.BigEndian.Uint16(ql4[6:8]) == 0) {
			csumOff = 6
		}
	case packet.ProtoTCP:
		if len(ql4) >= 18 {
			csumOff = 16
		}
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		portOff, csumOff, pseudo = 4, 2, innerProto == packet.ProtoICMPv6
	}
	oldPort := binary.BigEndian.Uint16(ql4[portOff:])
	if csumOff >= 0 && len(ql4) >= csumOff+2 {
		c := binary.BigEndian.Uint16(ql4[csumOff:])
		if pseudo {
			c = packet.UpdateChecksumBytes(c, innerA, na)
		}
		c = packet.UpdateChecksum(c, oldPort, port)
		if c == 0 && innerProto == packet.ProtoUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(ql4[csumOff:], c)
	}
	binary.BigEndian.PutUint16(ql4[portOff:], port)
	if pp.Version == 4 {
		qc := binary.BigEndian.Uint16(q[10:12])
		binary.BigEndian.PutUint16(q[10:12], packet.UpdateChecksumBytes(qc, innerA, na))
		oc := packet.IPv4(ip).HeaderChecksum()
		binary.BigEndian.PutUint16(ip[10:12], packet.UpdateChecksumBytes(oc, outerA, na))
	}
	copy(innerA, na)
	copy(outerA, na)
	// The ICMP checksum covers the whole quote: recompute it.
	msg := frame[pp.L4Off:pp.IPEnd]
	msg[2], msg[3] = 0, 0
	var init uint32
	if pp.Version == 6 {
		s, d := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		init = packet.PseudoHeaderSum(s, d, packet.ProtoICMPv6, len(msg))
	}
	binary.BigEndian.PutUint16(msg[2:4], ^packet.Checksum(msg, init))
	if outerSrc {
		pp.Src = addr
	} else {
		pp.Dst = addr
	}
	return nil
}
