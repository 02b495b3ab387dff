package packet_test

// Packet construction and the independent oracle for the tests. Everything
// here builds or reads packets with gVisor's header package, never with the
// code under test, so a bug shared by builder and parser cannot hide.

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IPv6 extension header numbers (unexported in the package).
const (
	protoHopOpts = 0
	protoRouting = 43
	protoFrag    = 44
	protoNoNext  = 59
	protoDstOpts = 60
)

var (
	macA = packet.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x0a}
	macB = packet.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x0b}

	src4 = netip.MustParseAddr("10.1.2.3")
	dst4 = netip.MustParseAddr("192.0.2.77")
	rtr4 = netip.MustParseAddr("10.1.0.1")
	src6 = netip.MustParseAddr("fd00:1::3")
	dst6 = netip.MustParseAddr("2001:db8::77")
	rtr6 = netip.MustParseAddr("fd00:1::1")
)

func gvAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func fromGV(a tcpip.Address) netip.Addr {
	x, ok := netip.AddrFromSlice(a.AsSlice())
	if !ok {
		panic("bad tcpip.Address")
	}
	return x
}

func gvMAC(m packet.MAC) tcpip.LinkAddress { return tcpip.LinkAddress(m[:]) }

func gvProto(p uint8) tcpip.TransportProtocolNumber { return tcpip.TransportProtocolNumber(p) }

// eth prepends an Ethernet header and appends pad zero bytes (link padding).
func eth(typ uint16, payload []byte, pad int) []byte {
	b := make([]byte, header.EthernetMinimumSize+len(payload)+pad)
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: gvMAC(macA),
		DstAddr: gvMAC(macB),
		Type:    tcpip.NetworkProtocolNumber(typ),
	})
	copy(b[header.EthernetMinimumSize:], payload)
	return b
}

// udpSeg builds a UDP datagram with a valid checksum.
func udpSeg(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(payload))
	copy(b[header.UDPMinimumSize:], payload)
	u := header.UDP(b)
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(b))})
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gvAddr(src), gvAddr(dst), uint16(len(b)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, xsum)))
	return b
}

// tcpSeg builds a TCP segment with an MSS option and a valid checksum.
func tcpSeg(src, dst netip.Addr, sport, dport uint16, flags header.TCPFlags, payload []byte) []byte {
	const hl = header.TCPMinimumSize + 4
	b := make([]byte, hl+len(payload))
	copy(b[hl:], payload)
	t := header.TCP(b)
	t.Encode(&header.TCPFields{
		SrcPort: sport, DstPort: dport, SeqNum: 0x01020304, AckNum: 0x0a0b0c0d,
		DataOffset: hl, Flags: flags, WindowSize: 65000,
	})
	header.EncodeMSSOption(1460, b[header.TCPMinimumSize:])
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gvAddr(src), gvAddr(dst), uint16(len(b)))
	t.SetChecksum(^t.CalculateChecksum(checksum.Checksum(payload, xsum)))
	return b
}

// icmp4 builds an ICMPv4 message with a valid checksum; rest is the 4-byte
// rest-of-header (ident<<16|seq for echo).
func icmp4(typ, code uint8, rest uint32, payload []byte) []byte {
	b := make([]byte, header.ICMPv4MinimumSize+len(payload))
	copy(b[header.ICMPv4MinimumSize:], payload)
	h := header.ICMPv4(b)
	h.SetType(header.ICMPv4Type(typ))
	h.SetCode(header.ICMPv4Code(code))
	h.SetIdent(uint16(rest >> 16))
	h.SetSequence(uint16(rest))
	h.SetChecksum(header.ICMPv4Checksum(h[:header.ICMPv4MinimumSize], checksum.Checksum(payload, 0)))
	return b
}

// icmp6 builds an ICMPv6 message with a valid checksum.
func icmp6(src, dst netip.Addr, typ, code uint8, rest uint32, payload []byte) []byte {
	b := make([]byte, header.ICMPv6MinimumSize+len(payload))
	copy(b[header.ICMPv6MinimumSize:], payload)
	h := header.ICMPv6(b)
	h.SetType(header.ICMPv6Type(typ))
	h.SetCode(header.ICMPv6Code(code))
	h.SetTypeSpecific(rest)
	h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: h, Src: gvAddr(src), Dst: gvAddr(dst),
	}))
	return b
}

// v4 describes an IPv4 packet for ip4.
type v4 struct {
	src, dst netip.Addr
	proto    uint8
	ttl      uint8
	flags    uint8  // gVisor flag bits: header.IPv4FlagDontFragment, IPv4FlagMoreFragments
	fragOff  uint16 // in bytes, a multiple of 8
	opts     header.IPv4OptionsSerializer
}

// ip4 builds an IPv4 packet with a valid header checksum.
func ip4(f v4, payload []byte) []byte {
	hl := header.IPv4MinimumSize + int(f.opts.Length())
	b := make([]byte, hl+len(payload))
	if f.ttl == 0 {
		f.ttl = 64
	}
	h := header.IPv4(b)
	h.Encode(&header.IPv4Fields{
		TotalLength:    uint16(len(b)),
		ID:             0x1234,
		Flags:          f.flags,
		FragmentOffset: f.fragOff,
		TTL:            f.ttl,
		Protocol:       f.proto,
		SrcAddr:        gvAddr(f.src),
		DstAddr:        gvAddr(f.dst),
		Options:        f.opts,
	})
	h.SetChecksum(^h.CalculateChecksum())
	copy(b[hl:], payload)
	return b
}

// ip6 builds an IPv6 packet. ext are raw extension headers in order; the
// first byte (next header) of each is filled in from the chain, the final one
// pointing at proto. Each ext's first element names its own type.
func ip6(src, dst netip.Addr, hop uint8, proto uint8, ext []extHdr, payload []byte) []byte {
	n := header.IPv6MinimumSize
	for _, e := range ext {
		n += len(e.b)
	}
	b := make([]byte, n+len(payload))
	first := proto
	if len(ext) > 0 {
		first = ext[0].typ
	}
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: gvProto(first),
		HopLimit:          hop,
		SrcAddr:           gvAddr(src),
		DstAddr:           gvAddr(dst),
	})
	off := header.IPv6MinimumSize
	for i, e := range ext {
		copy(b[off:], e.b)
		if i+1 < len(ext) {
			b[off] = ext[i+1].typ
		} else {
			b[off] = proto
		}
		off += len(e.b)
	}
	copy(b[off:], payload)
	return b
}

type extHdr struct {
	typ uint8
	b   []byte
}

// hopByHop is a hop-by-hop options header serialized by gVisor (router alert).
func hopByHop() extHdr {
	s := header.IPv6ExtHdrSerializer{header.IPv6SerializableHopByHopExtHdr{
		&header.IPv6RouterAlertOption{Value: header.IPv6RouterAlertMLD},
	}}
	b := make([]byte, s.Length())
	s.Serialize(header.UDPProtocolNumber, b)
	return extHdr{protoHopOpts, b}
}

// fragHdr is a fragment header serialized by gVisor; off in bytes.
func fragHdr(off uint16, more bool) extHdr {
	s := header.IPv6ExtHdrSerializer{&header.IPv6SerializableFragmentExtHdr{
		FragmentOffset: off / 8, M: more, Identification: 0xdeadbeef,
	}}
	b := make([]byte, s.Length())
	s.Serialize(header.UDPProtocolNumber, b)
	return extHdr{protoFrag, b}
}

// optsHdr is a destination options (or routing) header of 8*(words+1) bytes
// padded with PadN: gVisor has no serializer for it.
func optsHdr(typ uint8, words int) extHdr {
	b := make([]byte, 8*(words+1))
	b[1] = uint8(words)
	b[2] = 1 // PadN
	b[3] = uint8(len(b) - 4)
	return extHdr{typ, b}
}

// arpPkt builds an Ethernet/IPv4 ARP packet with gVisor.
func arpPkt(op header.ARPOp, sha packet.MAC, spa netip.Addr, tha packet.MAC, tpa netip.Addr) []byte {
	b := make([]byte, header.ARPSize)
	a := header.ARP(b)
	a.SetIPv4OverEthernet()
	a.SetOp(op)
	copy(a.HardwareAddressSender(), sha[:])
	s, t := spa.As4(), tpa.As4()
	copy(a.ProtocolAddressSender(), s[:])
	copy(a.HardwareAddressTarget(), tha[:])
	copy(a.ProtocolAddressTarget(), t[:])
	return b
}

// oracle computes, with gVisor's header views only, the Parsed that Parse
// must return for a frame it accepts. ok is false when gVisor's checks
// reject the frame (or the oracle cannot judge it; see skip).
// skip reports a frame outside what the oracle models (gVisor's IPv6
// iterator knows the experimental extension header 253; Parse does not).
func oracle(frame []byte, l2 bool) (want packet.Parsed, ok, skip bool) {
	off := 0
	var ethType uint16
	if l2 {
		if len(frame) < header.EthernetMinimumSize {
			return want, false, false
		}
		ethType = uint16(header.Ethernet(frame).Type())
		off = header.EthernetMinimumSize
	}
	b := frame[off:]
	if len(b) < 1 {
		return want, false, false
	}
	want.IPOff = off
	switch header.IPVersion(b) {
	case header.IPv4Version:
		if l2 && ethType != uint16(header.IPv4ProtocolNumber) {
			return want, false, false
		}
		h := header.IPv4(b)
		if !h.IsValid(len(b)) || !h.IsChecksumValid() {
			return want, false, false
		}
		want.EthType = packet.EtherTypeIPv4
		want.Version = 4
		want.Proto = h.Protocol()
		want.TTL = h.TTL()
		want.DF = h.Flags()&header.IPv4FlagDontFragment != 0
		want.Frag = h.More() || h.FragmentOffset() != 0
		want.FragOff = h.FragmentOffset() != 0
		want.Src = fromGV(h.SourceAddress())
		want.Dst = fromGV(h.DestinationAddress())
		want.IPEnd = off + int(h.TotalLength())
		want.L4Off = off + int(h.HeaderLength())
		oraclePorts(&want, frame[want.L4Off:want.IPEnd])
		return want, true, false
	case header.IPv6Version:
		if l2 && ethType != uint16(header.IPv6ProtocolNumber) {
			return want, false, false
		}
		h := header.IPv6(b)
		if !h.IsValid(len(b)) {
			return want, false, false
		}
		end := header.IPv6MinimumSize + int(h.PayloadLength())
		want.EthType = packet.EtherTypeIPv6
		want.Version = 6
		want.DF = true
		want.TTL = h.HopLimit()
		want.Src = fromGV(h.SourceAddress())
		want.Dst = fromGV(h.DestinationAddress())
		want.IPEnd = off + end
		it := header.MakeIPv6PayloadIterator(header.IPv6ExtensionHeaderIdentifier(h.NextHeader()),
			buffer.MakeWithData(append([]byte(nil), b[header.IPv6MinimumSize:end]...)))
		defer it.Release()
		for {
			if it.NextHeaderIdentifier() == header.IPv6ExperimentExtHdrIdentifier {
				return want, false, true
			}
			hdr, done, err := it.Next()
			if err != nil {
				return want, false, false
			}
			if done { // No Next Header
				want.Proto = protoNoNext
				want.L4Off = want.IPEnd
				return want, true, false
			}
			switch hdr := hdr.(type) {
			case header.IPv6FragmentExtHdr:
				want.Frag = true
				want.FragOff = hdr.FragmentOffset() != 0
			case header.IPv6RawPayloadHeader:
				// The transport header starts where the remaining raw
				// payload does. (it.HeaderOffset() is no use: gVisor
				// computes it in uint8 and wraps for headers longer
				// than 255 bytes; see testdata/fuzz/FuzzParse/6c26d56ddc06916b.)
				want.Proto = uint8(hdr.Identifier)
				want.L4Off = off + end - int(hdr.Buf.Size())
				hdr.Release()
				if want.FragOff && want.Proto == protoNoNext {
					// A non-first fragment whose header chain ends in
					// No Next Header: gVisor reports the raw payload,
					// Parse the end of the packet. Both are defensible.
					return want, false, true
				}
				oraclePorts(&want, frame[want.L4Off:want.IPEnd])
				return want, true, false
			case interface{ Release() }:
				hdr.Release()
			}
		}
	}
	return want, false, false
}

// oraclePorts fills the port fields from the transport header the way Parsed
// documents them, reading it with gVisor's views.
func oraclePorts(p *packet.Parsed, l4 []byte) {
	if p.FragOff {
		return
	}
	switch p.Proto {
	case packet.ProtoTCP, packet.ProtoUDP:
		if len(l4) >= 4 {
			p.SrcPort = header.UDP(l4).SourcePort()
			p.DstPort = header.UDP(l4).DestinationPort()
		}
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		if len(l4) >= header.ICMPv4MinimumSize {
			c := header.ICMPv4(l4)
			p.DstPort = uint16(c.Type())<<8 | uint16(c.Code())
			p.SrcPort = c.Ident()
		}
	}
}

// mustParse parses a frame that must be OK.
func mustParse(t testing.TB, frame []byte, l2 bool) packet.Parsed {
	t.Helper()
	var p packet.Parsed
	if st := packet.Parse(frame, l2, &p); st != packet.OK {
		t.Fatalf("Parse = %v, want ok", st)
	}
	return p
}

// be16 reads a big-endian word (for hand-annotated checks).
func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
