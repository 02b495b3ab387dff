package packet

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// ICMP error size limits: RFC 1812 4.3.2.3 (the whole ICMPv4 error at most
// 576 bytes) and RFC 4443 2.4(c) (the whole ICMPv6 error at most the IPv6
// minimum MTU, 1280 bytes).
const (
	maxICMPv4Error = 576
	maxICMPv6Error = 1280
	icmpErrorTTL   = 64
)

// ICMPErrorAllowed reports whether RFC 1812 4.3.2.7 / RFC 4443 2.4(e) allow
// an ICMP error about the parsed packet: never about an ICMP error, a
// non-first fragment, or a packet whose source is not a unicast address.
func ICMPErrorAllowed(p *Parsed) bool {
	if p.FragOff {
		return false
	}
	src := p.Src
	if !src.IsValid() || src.IsUnspecified() || src.IsMulticast() || src.IsLoopback() {
		return false
	}
	if p.Version == 4 {
		if src == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || p.Dst.IsMulticast() ||
			p.Dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return false
		}
		if t := p.ICMPType(); t >= 0 && IsICMPv4Error(uint8(t)) {
			return false
		}
		return true
	}
	if p.Dst.IsMulticast() {
		return false
	}
	if t := p.ICMPType(); t >= 0 && IsICMPv6Error(uint8(t)) {
		return false
	}
	return true
}

// BuildICMPError writes into dst an IP packet carrying an ICMP error about
// the IP packet orig (described by p): from src, to orig's source, with as
// much of orig as the RFC size limits and len(dst) allow. For IPv4, typ and
// code are ICMPv4 values; for IPv6, ICMPv6 values. rest is the 4-byte
// rest-of-header (the next-hop MTU for fragmentation needed and packet too
// big; zero otherwise). It returns the length written, or 0 when dst is too
// small for the headers.
func BuildICMPError(dst, orig []byte, p *Parsed, src netip.Addr, typ, code uint8, rest uint32) int {
	if p.Version == 4 {
		return buildICMPv4Error(dst, orig, p, src, typ, code, rest)
	}
	return buildICMPv6Error(dst, orig, p, src, typ, code, rest)
}

func buildICMPv4Error(dst, orig []byte, p *Parsed, src netip.Addr, typ, code uint8, rest uint32) int {
	const hdr = IPv4MinLen + ICMPLen
	limit := min(len(dst), maxICMPv4Error)
	if limit < hdr {
		return 0
	}
	n := hdr + copy(dst[hdr:limit], orig)
	ip := IPv4(dst)
	ip.Encode(IPv4Fields{TotalLen: uint16(n), TTL: icmpErrorTTL, Protocol: ProtoICMPv4, Src: src, Dst: p.Src})
	c := dst[IPv4MinLen:n]
	c[0], c[1], c[2], c[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(c[4:8], rest)
	binary.BigEndian.PutUint16(c[2:4], ^Checksum(c, 0))
	return n
}

func buildICMPv6Error(dst, orig []byte, p *Parsed, src netip.Addr, typ, code uint8, rest uint32) int {
	const hdr = IPv6Len + ICMPLen
	limit := min(len(dst), maxICMPv6Error)
	if limit < hdr {
		return 0
	}
	n := hdr + copy(dst[hdr:limit], orig)
	IPv6(dst).Encode(uint16(n-IPv6Len), ProtoICMPv6, icmpErrorTTL, src, p.Src)
	c := dst[IPv6Len:n]
	c[0], c[1], c[2], c[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(c[4:8], rest)
	sum := Checksum(c, PseudoHeaderSum(src, p.Src, ProtoICMPv6, len(c)))
	binary.BigEndian.PutUint16(c[2:4], ^sum)
	return n
}

// BuildARPReply writes into frame (at least EthernetLen+ARPLen bytes) an
// Ethernet frame carrying the ARP reply "ip is at mac" to the sender of the
// request req.
func BuildARPReply(frame []byte, req ARP, mac MAC, ip netip.Addr) int {
	sha, spa := req.SenderMAC(), req.SenderIP()
	Ethernet(frame).Encode(sha, mac, EtherTypeARP)
	ARP(frame[EthernetLen:]).Encode(ARPReply, mac, ip, sha, spa)
	return EthernetLen + ARPLen
}

// NDP message layout (RFC 4861 4.3, 4.4) after the 4-byte ICMPv6 header:
// 4 bytes reserved/flags, 16 bytes target, then options.
const (
	ndpTargetOff   = ICMPLen
	ndpOptionsOff  = ICMPLen + 16
	ndpOptSrcLL    = 1
	ndpOptTargetLL = 2
	naFlagRouter   = 0x80000000
	naFlagSolicit  = 0x40000000
	naFlagOverride = 0x20000000
)

// NeighborSolicit is the part of a neighbour solicitation the engine needs.
type NeighborSolicit struct {
	Target netip.Addr
	SrcLL  MAC  // from the source link-layer address option
	HasLL  bool // the option was present
}

// ParseNeighborSolicit parses the ICMPv6 message icmp (starting at the ICMPv6
// header) of an IPv6 packet with the given hop limit, as RFC 4861 7.1.1
// validates it: hop limit 255, code 0, length >= 24, well-formed options.
func ParseNeighborSolicit(icmp []byte, hopLimit uint8) (NeighborSolicit, bool) {
	var ns NeighborSolicit
	if hopLimit != 255 || len(icmp) < ndpOptionsOff || icmp[0] != ICMPv6NeighborSolicit || icmp[1] != 0 {
		return ns, false
	}
	ns.Target = netip.AddrFrom16([16]byte(icmp[ndpTargetOff:ndpOptionsOff]))
	if ns.Target.IsMulticast() {
		return ns, false
	}
	for opts := icmp[ndpOptionsOff:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return ns, false
		}
		l := int(opts[1]) * 8
		if opts[0] == ndpOptSrcLL && l >= 8 {
			copy(ns.SrcLL[:], opts[2:8])
			ns.HasLL = true
		}
		opts = opts[l:]
	}
	return ns, true
}

// NeighborAdvertLen is the length of the frame BuildNeighborAdvert writes.
const NeighborAdvertLen = EthernetLen + IPv6Len + ndpOptionsOff + 8

// BuildNeighborAdvert writes into frame an Ethernet frame carrying a
// solicited neighbour advertisement (the S flag set: callers answer only
// unicast-sourced solicitations, never DAD probes from ::) "target is at mac" from target to dst
// (the solicitation's source) at dstMAC, with the router flag when router
// is set.
func BuildNeighborAdvert(frame []byte, dstMAC, mac MAC, target, dst netip.Addr, router bool) int {
	Ethernet(frame).Encode(dstMAC, mac, EtherTypeIPv6)
	const plen = ndpOptionsOff + 8
	IPv6(frame[EthernetLen:]).Encode(plen, ProtoICMPv6, 255, target, dst)
	c := frame[EthernetLen+IPv6Len : EthernetLen+IPv6Len+plen]
	c[0], c[1], c[2], c[3] = ICMPv6NeighborAdvert, 0, 0, 0
	flags := uint32(naFlagSolicit | naFlagOverride)
	if router {
		flags |= naFlagRouter
	}
	binary.BigEndian.PutUint32(c[4:8], flags)
	t := target.As16()
	copy(c[ndpTargetOff:ndpOptionsOff], t[:])
	o := c[ndpOptionsOff:]
	o[0], o[1] = ndpOptTargetLL, 1
	copy(o[2:8], mac[:])
	binary.BigEndian.PutUint16(c[2:4], ^Checksum(c, PseudoHeaderSum(target, dst, ProtoICMPv6, plen)))
	return NeighborAdvertLen
}

// RateLimiter is a token bucket for the ICMP errors a router sends (Linux:
// net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst). It is safe for concurrent
// use; the clock is injected for tests.
type RateLimiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

// NewRateLimiter returns a bucket of burst tokens refilled at perSec tokens
// per second. A nil now means time.Now.
func NewRateLimiter(perSec, burst int, now func() time.Time) *RateLimiter {
	if now == nil {
		now = time.Now
	}
	return &RateLimiter{rate: float64(perSec), burst: float64(burst), tokens: float64(burst), last: now(), now: now}
}

// Allow takes a token if one is available.
func (r *RateLimiter) Allow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.now()
	if d := t.Sub(r.last); d > 0 {
		r.tokens = min(r.burst, r.tokens+d.Seconds()*r.rate)
		r.last = t
	}
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
