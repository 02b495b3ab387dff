package engine

import "sync/atomic"

// DropReason says why the engine dropped a packet. Every drop is counted
// under exactly one reason on the port it arrived on.
type DropReason uint8

// Drop reasons.
const (
	DropTooShort    DropReason = iota // truncated frame or header
	DropMalformed                     // bad version, header length, extension chain, ARP
	DropBadChecksum                   // IPv4 header checksum wrong
	DropEtherType                     // neither IPv4, IPv6 nor ARP
	DropNotForUs                      // L2 unicast to another MAC
	DropMulticast                     // IP multicast/broadcast (no multicast routing)
	DropSpoofed                       // source address not the port's own
	DropNoRoute                       // no route, or an unreachable route (ICMP unreachable sent)
	DropTTL                           // TTL/hop limit expired (ICMP time exceeded sent)
	DropTooBig                        // larger than the next hop's MTU with DF (ICMP sent)
	DropToGateway                     // addressed to the gateway, not an echo request
	DropNeighbor                      // ARP/NDP not answered (probe, not in the podCIDR)
	DropNotLocal                      // from a peer, but not for this node's podCIDR or addresses
	DropTxError                       // the next port's Write failed
	DropNoBuffer                      // no scratch buffer for a reply or fragment
	DropNoConntrack                   // to a port's SNAT address, but no tracked flow's reply
	DropSNAT                          // to be translated, but conntrack refused it or it cannot be rewritten
	DropBadOffload                    // an offload descriptor that does not fit the packet (packet.Parsed.OffloadValid)
	DropNoEndpoints                   // a new flow to a Service port with no usable backend (ICMP port unreachable sent)
	DropServicePort                   // to a Service address, on no Service port or with a protocol Services do not carry (SCTP, ...)
	DropService                       // a Service flow conntrack refused (table full, clash) or that cannot be rewritten
	DropPolicy                        // a NetworkPolicy denies the flow (policy.go)
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"too-short", "malformed", "bad-checksum", "ethertype", "not-for-us", "multicast",
	"spoofed-source", "no-route", "ttl-exceeded", "too-big", "to-gateway", "neighbor",
	"not-local", "tx-error", "no-buffer", "no-conntrack", "snat",
	"bad-offload", "no-endpoints", "service-port", "service", "policy",
}

// String returns the reason's kebab-case name, as metrics and the CLI show it.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// DropReasons lists every reason, in order.
func DropReasons() []DropReason {
	rs := make([]DropReason, numDropReasons)
	for i := range rs {
		rs[i] = DropReason(i)
	}
	return rs
}

// counters of one port. rx* are written only by the port's own worker, tx*
// by every worker that forwards to the port, drops by the port's worker.
type counters struct {
	rxPackets, rxBytes atomic.Uint64
	_                  [48]byte // keep rx (one writer) and tx (many writers) apart
	txPackets, txBytes atomic.Uint64
	drops              [numDropReasons]atomic.Uint64
}

// PortStats is a snapshot of a port's counters.
type PortStats struct {
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	Drops              map[DropReason]uint64 // reasons with a non-zero count
}

func (c *counters) snapshot() PortStats {
	s := PortStats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		Drops: map[DropReason]uint64{},
	}
	for i := range c.drops {
		if v := c.drops[i].Load(); v != 0 {
			s.Drops[DropReason(i)] = v
		}
	}
	return s
}

// TotalDrops sums the drops over every reason.
func (s PortStats) TotalDrops() uint64 {
	var n uint64
	for _, v := range s.Drops {
		n += v
	}
	return n
}
