package egress

// Flows: a snapshot of the forwarder's live flows for `podrouter
// conntrack`. It copies the flow set under the forwarder's lock (one map
// walk, bounded by MaxFlows plus MaxDials) and describes each flow after
// the lock is released, so the data path waits at most for that copy.

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

// FlowState is where a flow stands.
type FlowState uint8

// Flow states.
const (
	// StateDialing: a pod's SYN waits while the host socket connects.
	StateDialing FlowState = iota
	// StateEstablished: the flow is spliced (TCP), or open (UDP, echo).
	StateEstablished
	// StatePodClosed: the pod sent its FIN (TCP half-closed toward the
	// remote); the remote may still send.
	StatePodClosed
	// StateRemoteClosed: the remote sent its FIN; the pod may still send.
	StateRemoteClosed
	// StateClosing: both sides sent their FIN.
	StateClosing
)

// String returns the state's kebab-case name.
func (s FlowState) String() string {
	switch s {
	case StateDialing:
		return "dialing"
	case StateEstablished:
		return "established"
	case StatePodClosed:
		return "pod-closed"
	case StateRemoteClosed:
		return "remote-closed"
	case StateClosing:
		return "closing"
	}
	return "unknown"
}

// Flow describes one live flow.
type Flow struct {
	// Proto is packet.ProtoTCP, packet.ProtoUDP, packet.ProtoICMPv4 or
	// packet.ProtoICMPv6.
	Proto uint8
	// Src and Dst are the pod's side: the pod's address and port (the
	// echo identifier for ICMP) and the destination it asked for.
	Src, Dst netip.AddrPort
	// Local is the host socket's own address and port, what the outside
	// sees as the source (invalid while dialling, and for echo flows,
	// whose ping socket the kernel numbers). Remote is the host socket's
	// peer (Dst, for a connected flow).
	Local, Remote netip.AddrPort
	State         FlowState
	// Started is when the flow was opened (for TCP, when its dial began).
	Started time.Time
	// Expires is when the flow closes if nothing crosses it (UDP, echo);
	// zero for TCP, which lives as long as its connection.
	Expires time.Time
}

// Flows returns a snapshot of the live flows (those being dialled first),
// of the pod with address src only when src is valid, at most limit of them
// (limit <= 0: all), and whether more were left out. The order is stable:
// by protocol, then source, then destination.
func (f *Forwarder) Flows(src netip.Addr, limit int) ([]Flow, bool) {
	f.mu.Lock()
	dials := make([]Flow, 0, len(f.dialing))
	for s := range f.dialing {
		if !src.IsValid() || s.src.Addr() == src {
			dials = append(dials, Flow{Proto: packet.ProtoTCP, Src: s.src, Dst: s.dst, Remote: s.dst, State: StateDialing, Started: s.started})
		}
	}
	live := make([]flowCloser, 0, len(f.flows))
	for fl, a := range f.flows {
		if !src.IsValid() || a == src {
			live = append(live, fl)
		}
	}
	f.mu.Unlock()
	out := dials
	for _, fl := range live {
		out = append(out, fl.info())
	}
	slices.SortFunc(out, func(a, b Flow) int {
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		if c := a.Src.Compare(b.Src); c != 0 {
			return c
		}
		return a.Dst.Compare(b.Dst)
	})
	if limit > 0 && len(out) > limit {
		return out[:limit], true
	}
	return out, false
}

func (fl *tcpFlow) info() Flow {
	st := StateEstablished
	switch pf, hf := fl.podFin.Load(), fl.hostFin.Load(); {
	case pf && hf:
		st = StateClosing
	case pf:
		st = StatePodClosed
	case hf:
		st = StateRemoteClosed
	}
	return Flow{
		Proto: packet.ProtoTCP, Src: netip.AddrPortFrom(fl.src, fl.srcPort), Dst: fl.dst,
		Local: addrPortOf(fl.host.LocalAddr()), Remote: addrPortOf(fl.host.RemoteAddr()),
		State: st, Started: fl.started,
	}
}

func (fl *udpFlow) info() Flow {
	x := Flow{
		Proto: packet.ProtoUDP, Src: fl.src, Dst: fl.dst, Remote: fl.dst, State: StateEstablished,
		Started: fl.started, Expires: time.Unix(0, fl.last.Load()).Add(fl.idle),
	}
	fl.mu.Lock()
	if fl.host != nil {
		x.Local, x.Remote = addrPortOf(fl.host.LocalAddr()), addrPortOf(fl.host.RemoteAddr())
	} else {
		x.State, x.Expires = StateDialing, time.Time{}
	}
	fl.mu.Unlock()
	return x
}

func (pf *pingFlow) info() Flow {
	proto := uint8(packet.ProtoICMPv4)
	if pf.key.dst.Is6() {
		proto = packet.ProtoICMPv6
	}
	return Flow{
		Proto: proto, Src: netip.AddrPortFrom(pf.key.src, pf.key.id), Dst: netip.AddrPortFrom(pf.key.dst, 0),
		Remote: netip.AddrPortFrom(pf.key.dst, 0), State: StateEstablished, Started: pf.started,
		Expires: time.Unix(0, pf.last.Load()).Add(pf.f.cfg.ICMPIdle),
	}
}

// addrPortOf returns a socket address as an AddrPort (IPv4-mapped
// addresses unmapped); invalid for anything else.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch x := a.(type) {
	case *net.TCPAddr:
		ap = x.AddrPort()
	case *net.UDPAddr:
		ap = x.AddrPort()
	default:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ipAddrs reads an IP packet's source and destination without parsing
// the rest; false when b is too short or not IPv4/IPv6.
func ipAddrs(b []byte) (src, dst netip.Addr, ok bool) {
	if len(b) == 0 {
		return src, dst, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return src, dst, false
		}
		return netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), true
	case 6:
		if len(b) < 40 {
			return src, dst, false
		}
		return netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), true
	}
	return src, dst, false
}

// udpDst returns the destination of a UDP packet: IPv4 without
// fragmentation past the first, or IPv6 whose next header is UDP.
func udpDst(b []byte) (netip.AddrPort, bool) {
	if len(b) == 0 {
		return netip.AddrPort{}, false
	}
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if len(b) < 20 || ihl < 20 || len(b) < ihl+4 || b[9] != 17 || (b[6]&0x1f != 0 || b[7] != 0) {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), uint16(b[ihl+2])<<8|uint16(b[ihl+3])), true
	case 6:
		if len(b) < 44 || b[6] != 17 {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), uint16(b[42])<<8|uint16(b[43])), true
	}
	return netip.AddrPort{}, false
}

// Closed reports whether Close has been called (readiness probes).
func (f *Forwarder) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}
