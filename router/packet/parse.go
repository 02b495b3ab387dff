package packet

import (
	"encoding/binary"
	"net/netip"
)

// Status is the outcome of Parse. Everything but OK names why a frame is not
// a forwardable IP packet; the engine counts drops by it.
type Status uint8

// Parse outcomes.
const (
	OK           Status = iota
	IsARP               // a valid Ethernet/IPv4 ARP packet (L2 only)
	TooShort            // shorter than the headers it claims
	BadEtherType        // not IPv4, IPv6 or ARP
	BadVersion          // IP version nibble disagrees with the EtherType
	BadHeader           // malformed IP header (IHL, lengths, extension chain)
	BadChecksum         // IPv4 header checksum wrong
	BadARP              // ARP that is not Ethernet/IPv4
	numStatus
)

var statusNames = [numStatus]string{"ok", "arp", "too-short", "bad-ethertype", "bad-version", "bad-header", "bad-checksum", "bad-arp"}

// String returns a short kebab-case name.
func (s Status) String() string {
	if s < numStatus {
		return statusNames[s]
	}
	return "unknown"
}

// Parsed holds the result of one parse of a frame: offsets into the frame
// and the few fields the engine decides on. It is a plain value, reused by
// the caller from packet to packet; Parse overwrites every field.
type Parsed struct {
	EthType uint16     // EtherType (for L3 input, derived from the version nibble)
	IPOff   int        // offset of the IP header in the frame
	IPEnd   int        // IPOff + IP total length (trailing link padding excluded)
	L4Off   int        // offset of the transport header (of the fragment data for a non-first fragment; IPEnd with no next header)
	Version uint8      // 4 or 6
	Proto   uint8      // transport protocol (after IPv6 extension headers)
	TTL     uint8      // TTL or hop limit
	Frag    bool       // a fragment (any fragment of a fragmented datagram)
	FragOff bool       // a non-first fragment: no transport header present
	DF      bool       // IPv4 don't-fragment set (always true for IPv6: routers never fragment)
	Src     netip.Addr // source address
	Dst     netip.Addr // destination address
	SrcPort uint16     // TCP/UDP source port; ICMP echo identifier
	DstPort uint16     // TCP/UDP destination port; ICMP type<<8|code
}

// IPLen returns the IP packet's length (header plus payload).
func (p *Parsed) IPLen() int { return p.IPEnd - p.IPOff }

// Parse parses frame once. When l2 is set the frame starts with an Ethernet
// header; otherwise it is a bare IP packet. It checks every length before
// reading a field and never allocates. For ARP frames it returns IsARP with
// IPOff at the ARP payload.
func Parse(frame []byte, l2 bool, p *Parsed) Status {
	*p = Parsed{}
	off := 0
	if l2 {
		if len(frame) < EthernetLen {
			return TooShort
		}
		p.EthType = binary.BigEndian.Uint16(frame[12:14])
		off = EthernetLen
		switch p.EthType {
		case EtherTypeIPv4, EtherTypeIPv6:
		case EtherTypeARP:
			p.IPOff = off
			if !ARP(frame[off:]).IsValid() {
				if len(frame)-off < ARPLen {
					return TooShort
				}
				return BadARP
			}
			p.IPEnd = off + ARPLen
			return IsARP
		default:
			return BadEtherType
		}
	}
	p.IPOff = off
	b := frame[off:]
	if len(b) < 1 {
		return TooShort
	}
	switch b[0] >> 4 {
	case 4:
		if l2 && p.EthType != EtherTypeIPv4 {
			return BadVersion
		}
		p.EthType = EtherTypeIPv4
		return p.parse4(b, off)
	case 6:
		if l2 && p.EthType != EtherTypeIPv6 {
			return BadVersion
		}
		p.EthType = EtherTypeIPv6
		return p.parse6(b, off)
	}
	return BadVersion
}

func (p *Parsed) parse4(b []byte, off int) Status {
	if len(b) < IPv4MinLen {
		return TooShort
	}
	h := IPv4(b)
	hl := h.HeaderLen()
	tl := int(h.TotalLen())
	if hl < IPv4MinLen || tl < hl {
		return BadHeader
	}
	if tl > len(b) {
		return TooShort
	}
	if Checksum(b[:hl], 0) != 0xffff {
		return BadChecksum
	}
	p.Version = 4
	p.Proto = h.Protocol()
	p.TTL = h.TTL()
	ff := h.FlagsFrag()
	p.DF = ff&IPv4FlagDF != 0
	p.Frag = ff&(IPv4FlagMF|IPv4FragOffMask) != 0
	p.FragOff = ff&IPv4FragOffMask != 0
	p.Src = h.Src()
	p.Dst = h.Dst()
	p.IPEnd = off + tl
	p.L4Off = off + hl
	p.parseL4(b[hl:tl])
	return OK
}

func (p *Parsed) parse6(b []byte, off int) Status {
	if len(b) < IPv6Len {
		return TooShort
	}
	h := IPv6(b)
	end := IPv6Len + int(h.PayloadLen())
	if end > len(b) {
		return TooShort
	}
	p.Version = 6
	p.DF = true
	p.TTL = h.HopLimit()
	p.Src = h.Src()
	p.Dst = h.Dst()
	p.IPEnd = off + end
	// Walk the extension header chain to the transport header. The chain is
	// bounded by the packet length: each step advances by at least 8 bytes.
	next := h.NextHeader()
	pos := IPv6Len
	for {
		switch next {
		case protoHopOpts, protoRouting, protoDstOpts:
			if pos+8 > end {
				return BadHeader
			}
			next = b[pos]
			pos += (int(b[pos+1]) + 1) * 8
			if pos > end {
				return BadHeader
			}
			continue
		case protoFrag:
			if pos+8 > end {
				return BadHeader
			}
			next = b[pos]
			fo := binary.BigEndian.Uint16(b[pos+2 : pos+4])
			p.Frag = true
			p.FragOff = fo&0xfff8 != 0
			pos += 8
			if p.FragOff {
				// A non-first fragment carries data, not headers (RFC 8200 4.5).
				break
			}
			continue
		}
		break
	}
	p.Proto = next
	p.L4Off = off + pos
	if next == protoNoNext {
		p.L4Off = p.IPEnd
		return OK
	}
	p.parseL4(b[pos:end])
	return OK
}

// parseL4 fills the ports from the transport header when its first bytes
// are present (4 for TCP/UDP ports, 8 for ICMP); the engine needs no more.
func (p *Parsed) parseL4(l4 []byte) {
	if p.FragOff {
		return
	}
	switch p.Proto {
	case ProtoTCP, ProtoUDP:
		if len(l4) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		}
	case ProtoICMPv4, ProtoICMPv6:
		if len(l4) >= ICMPLen {
			p.DstPort = uint16(l4[0])<<8 | uint16(l4[1])
			p.SrcPort = binary.BigEndian.Uint16(l4[4:6])
		}
	}
}

// ICMPType returns the ICMP type of an ICMPv4/ICMPv6 packet parsed whole
// (as Parse stores it in DstPort), or -1 when it is not one.
func (p *Parsed) ICMPType() int {
	if p.FragOff || p.L4Off+ICMPLen > p.IPEnd {
		return -1
	}
	if (p.Version == 4 && p.Proto == ProtoICMPv4) || (p.Version == 6 && p.Proto == ProtoICMPv6) {
		return int(p.DstPort >> 8)
	}
	return -1
}
