package api

// OpConntrack: the daemon's flows to the outside (the egress forwarder's
// live flows in netstack mode, the engine's conntrack table's in snat
// mode), the Service flows of the node's load balancer, and the egress
// and Service flow table counters, for `podrouter conntrack`.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// OpConntrack lists flows: ConntrackRequest -> Conntrack.
const OpConntrack Op = "conntrack"

// MaxConntrackFlows bounds the flows one reply carries (Conntrack.Truncated
// says when more were left out).
const MaxConntrackFlows = 100_000

// ConntrackHandler is a Handler that also serves OpConntrack; a Server
// whose Handler is not one answers conntrack requests with ErrBadRequest.
type ConntrackHandler interface {
	Handler
	// Conntrack lists the flows (of req.Pod only, when set), at most
	// req.Max of them. req is normalized (ConntrackRequest.Normalize). An
	// unknown pod is ErrNotFound.
	Conntrack(ctx context.Context, req ConntrackRequest) (Conntrack, error)
}

// ConntrackRequest asks for the daemon's flows.
type ConntrackRequest struct {
	// Pod, when set, names the pod whose flows are listed: a pod address,
	// a port name ("containerID/ifName") or a container ID or a unique
	// prefix of one, as CaptureRequest.Pod.
	Pod string `json:"pod,omitempty"`
	// Max bounds the flows listed (0: MaxConntrackFlows).
	Max int `json:"max,omitempty"`
}

// Normalize fills in Max and checks every field; errors wrap ErrBadRequest.
func (r *ConntrackRequest) Normalize() error {
	if len(r.Pod) > 1100 || strings.ContainsFunc(r.Pod, func(c rune) bool { return c < 0x21 || c == 0x7f }) {
		return fmt.Errorf("%w: conntrack: pod %.40q: want a port name, container ID or address", ErrBadRequest, r.Pod)
	}
	if r.Max < 0 || r.Max > MaxConntrackFlows {
		return fmt.Errorf("%w: conntrack: max %d out of range 0..%d", ErrBadRequest, r.Max, MaxConntrackFlows)
	}
	if r.Max == 0 {
		r.Max = MaxConntrackFlows
	}
	return nil
}

// Flow is one flow to the outside, or a Service flow (Table).
type Flow struct {
	// Table is the flow's table: "egress" (a flow to the outside, as the
	// egress mode tracks it) or "service" (the load balancer's: Src -> Dst
	// is the client to the Service's address and port, ReplySrc the
	// backend, ReplyDst the client, or for a hairpin the pod gateway's
	// address and port the client's source was translated to).
	Table string `json:"table,omitempty"`
	// Service is a Service flow's "namespace/name", empty when its
	// frontend left the table (the flow lives on to its backend).
	Service string `json:"service,omitempty"`
	// Proto is "tcp", "udp", "icmp" or "icmpv6".
	Proto string `json:"proto"`
	// Src and Dst are the original tuple, as the pod sent it (the port of
	// an ICMP echo flow's Src is its identifier).
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
	// ReplySrc and ReplyDst are the reply tuple as the outside sees it:
	// from the remote to the node's (translated) address and port.
	// ReplyDst is invalid while the flow is being dialled, and for echo
	// flows whose ping socket the kernel numbers.
	ReplySrc netip.AddrPort `json:"replySrc,omitzero"`
	ReplyDst netip.AddrPort `json:"replyDst,omitzero"`
	// State: dialing, established, pod-closed, remote-closed, closing.
	State string `json:"state"`
	// Started is when the flow began (zero when unknown: snat egress);
	// Expires when it closes if idle (zero for TCP, which lives as long as
	// its connection, in netstack egress).
	Started time.Time `json:"started,omitzero"`
	Expires time.Time `json:"expires,omitzero"`
	// Pod is the pod's port name ("containerID/ifName"), empty when no
	// attachment has the source address (the client's, for a Service
	// flow).
	Pod string `json:"pod,omitempty"`
}

// Conntrack is the reply to OpConntrack.
type Conntrack struct {
	// Egress is the daemon's egress mode: netstack, snat (the engine's
	// conntrack table) or uplink (whose flows the host kernel tracks, so
	// Flows has no egress flows). Flows lists the egress flows first,
	// then the Service flows; Max bounds them together.
	Egress    string  `json:"egress"`
	Flows     []Flow  `json:"flows"`
	Truncated bool    `json:"truncated,omitempty"`
	Stats     *Egress `json:"stats,omitempty"`
	// ServiceTable is the Service flow table's counters, as Stats in snat
	// mode; nil when the node has no load balancer.
	ServiceTable *Egress `json:"serviceTable,omitempty"`
}

// Egress is the egress forwarder's state and counters (netstack mode), or
// the engine's conntrack table's (snat mode: Flows are its entries, Events
// inserts, deletes, expired and early-drops, Drops the packets conntrack
// refused by reason; DialsInFlight and the byte counts stay zero).
type Egress struct {
	// Flows are the live flows, DialsInFlight the TCP dials not yet
	// answered.
	Flows         int `json:"flows"`
	DialsInFlight int `json:"dialsInFlight"`
	// Inserts counts the flows opened (TCP connected, UDP, ICMP echo).
	Inserts uint64 `json:"inserts"`
	// Events counts what happened to flows by name (tcp-dials,
	// tcp-connected, tcp-refused, udp-idle-closed, ...); Drops the packets
	// and SYNs refused, by reason (tcp-dial-limit, tcp-flow-limit,
	// udp-flow-limit, not-masqueraded, ...). Both list every name, zero or
	// not.
	Events map[string]uint64 `json:"events"`
	Drops  map[string]uint64 `json:"drops"`
	// BytesToRemote and BytesToPod are TCP and UDP payload bytes.
	BytesToRemote uint64 `json:"bytesToRemote"`
	BytesToPod    uint64 `json:"bytesToPod"`
}

// Conntrack lists the daemon's flows to the outside.
func (c *Client) Conntrack(ctx context.Context, req ConntrackRequest) (Conntrack, error) {
	if err := req.Normalize(); err != nil {
		return Conntrack{}, err
	}
	rep, err := c.do(ctx, request{Op: OpConntrack, Conntrack: &req}, nil)
	return answer(rep.Conntrack, err, "conntrack reply without the flows")
}

// serveConntrack is dispatch's OpConntrack.
func (s *Server) serveConntrack(ctx context.Context, req request, rep *reply) error {
	if req.Conntrack == nil {
		return fmt.Errorf("%w: conntrack without its request", ErrBadRequest)
	}
	ch, ok := s.h.(ConntrackHandler)
	if !ok {
		return fmt.Errorf("%w: this daemon does not track flows", ErrBadRequest)
	}
	if err := req.Conntrack.Normalize(); err != nil {
		return err
	}
	ct, err := ch.Conntrack(ctx, *req.Conntrack)
	if err != nil {
		return err
	}
	if ct.Flows == nil {
		ct.Flows = []Flow{}
	}
	rep.Conntrack = &ct
	return nil
}
