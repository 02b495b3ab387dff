package packet

// Offload descriptors: what a port says about a packet it moves (the
// virtio-net header's meaning, without its framing). They live here, with
// the parser that checks them, and router/link's devices carry them.

// GSOType says how a super-packet is to be segmented. Values follow the
// virtio-net header's gso_type (VIRTIO_NET_HDR_GSO_*), without the ECN bit.
type GSOType uint8

// GSO types.
const (
	GSONone  GSOType = 0 // a plain packet
	GSOTCPv4 GSOType = 1 // TSO over IPv4
	GSOUDPL4 GSOType = 5 // UDP segmentation offload (USO)
	GSOTCPv6 GSOType = 4 // TSO over IPv6
)

// String returns the type's name.
func (t GSOType) String() string {
	switch t {
	case GSONone:
		return "none"
	case GSOTCPv4:
		return "tcp4"
	case GSOTCPv6:
		return "tcp6"
	case GSOUDPL4:
		return "udp"
	}
	return "unknown"
}

// GSO describes the offload state of one packet: whether it is a super-
// packet to be cut into segments of Size payload bytes, and whether its L4
// checksum is still partial (pseudo-header sum only, as with
// VIRTIO_NET_HDR_F_NEEDS_CSUM). Offsets are relative to the start of the IP
// header, whatever the framing of the port (an L2 port's device adds the
// Ethernet header length when it speaks virtio-net).
type GSO struct {
	Type       GSOType
	NeedsCsum  bool   // the checksum at CsumStart+CsumOffset covers the pseudo-header only
	HdrLen     uint16 // IP + L4 header length of each segment
	Size       uint16 // segment payload size (MSS for TCP)
	CsumStart  uint16 // where checksumming starts (the L4 header)
	CsumOffset uint16 // where the checksum field is, from CsumStart
}

// Offloads is a set of offloads a device accepts on Write.
type Offloads uint8

// Offload bits.
const (
	OffloadCsum Offloads = 1 << iota // packets with a partial checksum (NeedsCsum)
	OffloadTSO4                      // GSOTCPv4 super-packets
	OffloadTSO6                      // GSOTCPv6 super-packets
	OffloadUSO                       // GSOUDPL4 super-packets
)

// Accepts reports whether a device with offloads o takes a packet with g
// as it is.
func (o Offloads) Accepts(g GSO) bool {
	if g.NeedsCsum && o&OffloadCsum == 0 {
		return false
	}
	switch g.Type {
	case GSONone:
		return true
	case GSOTCPv4:
		return o&OffloadTSO4 != 0
	case GSOTCPv6:
		return o&OffloadTSO6 != 0
	case GSOUDPL4:
		return o&OffloadUSO != 0
	}
	return false
}

// Where each transport's checksum field lies in its header: the only
// CsumOffset a partial checksum may carry.
const (
	tcpCsumOff    = 16
	udpCsumOff    = 6
	icmpv6CsumOff = 2
)

// OffloadValid reports whether g can honestly describe the packet that p
// describes (p from Parse of frame). The offsets of an offload descriptor
// come from whoever sent the packet (a pod's virtio-net header), and the
// engine or the next kernel acts on them after the source check: a partial
// checksum written at a chosen offset could rewrite any two bytes, the
// source address included, and a forged segment size or header length
// would defeat the MTU check. So:
//
//   - a plain packet (GSONone, no partial checksum) is valid whatever its
//     other fields, which nothing reads;
//   - a partial checksum must start at the transport header Parse found (not
//     a fragment) and point at the checksum field of TCP, UDP or ICMPv6,
//     inside the packet;
//   - a super-packet must have a partial checksum as above, a type that
//     matches the IP version and transport (TCPv4: IPv4/TCP, TCPv6:
//     IPv6/TCP, UDP L4: UDP over either), a segment size above zero and a
//     header length equal to the IP and transport headers' (TCP's data
//     offset, read from the packet).
//
// It reads frame only within p's offsets and never allocates.
func (p *Parsed) OffloadValid(frame []byte, g GSO) bool {
	if g.Type == GSONone && !g.NeedsCsum {
		return true
	}
	if !g.NeedsCsum || p.Frag || p.L4Off >= p.IPEnd || p.IPEnd > len(frame) {
		return false
	}
	l4 := p.L4Off - p.IPOff
	if int(g.CsumStart) != l4 {
		return false
	}
	var want, hdr int // checksum field offset, transport header length
	switch {
	case p.Proto == ProtoTCP:
		want, hdr = tcpCsumOff, TCPMinLen
	case p.Proto == ProtoUDP:
		want, hdr = udpCsumOff, UDPLen
	case p.Proto == ProtoICMPv6 && p.Version == 6:
		want, hdr = icmpv6CsumOff, ICMPLen
	default:
		return false
	}
	if int(g.CsumOffset) != want || p.L4Off+hdr > p.IPEnd {
		return false
	}
	switch g.Type {
	case GSONone:
		return true
	case GSOTCPv4:
		if p.Version != 4 || p.Proto != ProtoTCP {
			return false
		}
	case GSOTCPv6:
		if p.Version != 6 || p.Proto != ProtoTCP {
			return false
		}
	case GSOUDPL4:
		if p.Proto != ProtoUDP {
			return false
		}
	default:
		return false
	}
	if g.Size == 0 {
		return false
	}
	if p.Proto == ProtoTCP {
		hdr = TCP(frame[p.L4Off:p.IPEnd]).DataOffset()
		if hdr < TCPMinLen || p.L4Off+hdr > p.IPEnd {
			return false
		}
	}
	return int(g.HdrLen) == l4+hdr
}
