package node

// The operator's view of the Service flow table (the daemon's OpConntrack):
// its flows as api.Flows naming their Service, and its counters, in the
// shape of the snat egress's (egress_snat.go), whose helpers it shares.

import (
	"net/netip"
	"slices"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
)

// ServiceFlowList lists at most max Service flows (of clients in srcs
// only, when srcs is not nil) as the load balancer tracks them: Src -> Dst
// the client to the Service's address and port, ReplySrc the backend,
// ReplyDst the client (a hairpin's: the gateway's address and port). It
// returns nil when the load balancer is off.
func (n *Node) ServiceFlowList(srcs []netip.Addr, max int) (flows []api.Flow, truncated bool) {
	if n.svc == nil {
		return nil, false
	}
	table := n.svc.table
	svcs := n.eng.Services()
	flows = []api.Flow{}
	table.RangeShards(table.Now(), func(f conntrack.Flow) bool {
		src, dst := f.Orig.Src(), f.Orig.Dst()
		if srcs != nil && !slices.Contains(srcs, src.Addr()) {
			return true
		}
		if len(flows) >= max {
			truncated = true
			return false
		}
		fl := api.Flow{
			Table: "service", Proto: conntrack.ProtoName(f.Orig.Proto()), Src: src, Dst: dst,
			ReplySrc: f.Reply.Src(), ReplyDst: f.Reply.Dst(), State: flowState(f), Expires: table.Wall(f.Expires).UTC(),
		}
		if svcs != nil {
			if fr := svcs.Frontend(dst.Addr(), dst.Port(), f.Orig.Proto()); fr != nil {
				fl.Service = fr.Service
			}
		}
		flows = append(flows, fl)
		return true
	})
	return flows, truncated
}

// ServiceFlowStats returns the Service flow table's counters (nil when the
// load balancer is off): Flows its entries, Inserts the flows created,
// Events deletes/expired/early-drops, Drops what it refused by reason.
func (n *Node) ServiceFlowStats() *api.Egress {
	if n.svc == nil {
		return nil
	}
	return tableStats(n.svc.table, conntrack.DropTableFull, conntrack.DropSourceLimit, conntrack.DropPortsExhausted,
		conntrack.DropInvalid, conntrack.DropClash)
}
