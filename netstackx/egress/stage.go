package egress

// The netstack egress as a node stage (router/node.Egress): the forwarder
// on an engine port of its own, default routes to it, and the node's
// addresses and the configured uplink routes to the uplink (the host
// kernel). The forwarder dials from the node's network namespace, so the
// outside sees whatever source the node's routing picks: the node's
// address.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/route"
)

func init() {
	node.RegisterEgress(node.EgressKind{Mode: node.EgressNetstack, New: newStage})
}

// stage is a Forwarder as a node's egress.
type stage struct {
	cfg  *node.Config
	eng  *engine.Engine
	fwd  *Forwarder
	port *engine.Port
	log  *zap.Logger
}

var _ node.Egress = (*stage)(nil)

// dialFunc is a function as a Dialer.
type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return f(ctx, network, address)
}

// newStage builds the forwarder with the masquerade policy of the node's
// cluster (pod <-> cluster traffic is never re-originated).
func newStage(env *node.Env) (node.Egress, error) {
	cfg := env.Config
	pc := conntrack.PolicyConfig{ClusterCIDRs: cfg.ClusterCIDRs, HostSockets: true}
	for _, a := range cfg.NodeIPs {
		switch {
		case a.Is4() && !pc.NodeAddr.IsValid() && a.IsGlobalUnicast():
			pc.NodeAddr = a
		case a.Is6() && !pc.NodeAddr6.IsValid() && a.IsGlobalUnicast():
			pc.NodeAddr6 = a
		}
	}
	pol, err := conntrack.NewPolicy(pc)
	if err != nil {
		return nil, err
	}
	e := cfg.Egress
	var dialer Dialer
	if e.Dial != nil {
		dialer = dialFunc(e.Dial)
	}
	fwd, err := New(Config{
		Dialer:   dialer,
		MTU:      cfg.MTU,
		MaxFlows: e.MaxFlows, MaxFlowsPerPod: e.MaxFlowsPerPod,
		MaxDials: e.MaxDials, MaxDialsPerPod: e.MaxDialsPerPod,
		DialTimeout: e.DialTimeout,
		Allow:       pol.Translates,
		DenyUDP:     env.UnderlayEndpoint,
		Logger:      env.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &stage{cfg: cfg, eng: env.Engine, fwd: fwd, log: env.Logger}, nil
}

func (s *stage) UplinkPort(*engine.PortConfig) {}

// Attach adds the forwarder's port.
func (s *stage) Attach(*engine.Port) error {
	port, err := s.eng.AddPort(s.fwd, engine.PortConfig{Name: node.EgressPortName, Kind: engine.KindEgress, MTU: s.cfg.MTU})
	if err != nil {
		return err
	}
	s.port = port
	s.log.Info("egress through the netstack forwarder", zap.String("port", port.Name()),
		zap.Stringers("uplinkRoutes", s.cfg.Egress.UplinkRoutes), zap.Stringers("nodeIPs", s.cfg.NodeIPs))
	return nil
}

// Routes sends everything outside the cluster to the forwarder, and the
// node's addresses and the uplink routes to the uplink (when there is one).
func (s *stage) Routes(up *engine.Port) []route.Route {
	rs := node.DefaultRoutes(s.cfg, s.port.Index())
	if up == nil {
		return rs
	}
	rs = append(rs, node.HostRoutes(s.cfg.NodeIPs, up.Index())...)
	for _, p := range s.cfg.Egress.UplinkRoutes {
		rs = append(rs, route.Route{Prefix: p, NextHop: route.ToEgress(up.Index())})
	}
	return rs
}

// Ready fails once the forwarder's port is detached or the forwarder closed.
func (s *stage) Ready() error {
	if p := s.eng.PortByIndex(s.port.Index()); p != s.port || s.fwd.Closed() {
		return errors.New("egress port detached")
	}
	return nil
}

// Close shuts the forwarder down (after the engine closed its port: then
// it is already closed, and this only makes sure).
func (s *stage) Close() error { return s.fwd.Close() }

// ResetSource ends a gone pod's flows.
func (s *stage) ResetSource(src netip.Addr) int { return s.fwd.ResetSource(src) }

// Flows lists the forwarder's live flows.
func (s *stage) Flows(srcs []netip.Addr, max int) (out []api.Flow, truncated bool) {
	var flows []Flow
	if srcs == nil {
		flows, truncated = s.fwd.Flows(netip.Addr{}, max)
	} else {
		for _, a := range srcs {
			fs, more := s.fwd.Flows(a, max-len(flows))
			flows = append(flows, fs...)
			truncated = truncated || more
			if len(flows) >= max {
				truncated = truncated || len(srcs) > 1
				break
			}
		}
	}
	out = []api.Flow{}
	for _, f := range flows {
		out = append(out, api.Flow{
			Proto: conntrack.ProtoName(f.Proto), Src: f.Src, Dst: f.Dst, ReplySrc: f.Remote, ReplyDst: f.Local,
			State: f.State.String(), Started: f.Started.UTC(), Expires: utcOrZero(f.Expires),
		})
	}
	return out, truncated
}

func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// Stats is the API's view of the forwarder's counters: a fixed set of
// names, so the metrics' labels stay bounded.
func (s *stage) Stats() *api.Egress {
	st := s.fwd.Stats()
	events := map[string]uint64{
		"tcp-dials": st.TCPDials, "tcp-connected": st.TCPConnected, "tcp-refused": st.TCPRefused,
		"tcp-unreachable": st.TCPUnreachable, "tcp-dial-timeouts": st.TCPDialTimeouts, "tcp-dial-errors": st.TCPDialErrors,
		"tcp-resets-to-pod": st.TCPResetsToPod, "tcp-resets-to-host": st.TCPResetsToHost,
		"udp-flows": st.UDPFlows, "udp-dial-errors": st.UDPDialErrors, "udp-idle-closed": st.UDPIdleClosed,
		"icmp-echo-requests": st.ICMPEchoRequests, "icmp-echo-replies": st.ICMPEchoReplies,
		"icmp-errors-sent": st.ICMPErrorsSent,
	}
	drops := map[string]uint64{
		"tcp-dial-limit": st.TCPDialLimited, "tcp-flow-limit": st.TCPFlowLimited, "udp-flow-limit": st.UDPFlowLimited,
		"icmp-echo-dropped": st.ICMPEchoDropped, "ping-unsupported": st.PingUnsupported,
		"denied-destination": st.Denied, "not-masqueraded": st.NotAllowed,
		"underlay-endpoint": st.UnderlayDenied,
	}
	return &api.Egress{
		Flows: st.ActiveFlows, DialsInFlight: st.DialsInFlight,
		// Flows opened: TCP connections spliced and UDP sockets opened
		// (echo flows are not counted: see icmp-echo-requests).
		Inserts: st.TCPConnected + st.UDPFlows,
		Events:  events, Drops: drops,
		BytesToRemote: st.BytesToRemote, BytesToPod: st.BytesToPod,
	}
}

// Collect sends the forwarder's counters as the egress metrics.
func (s *stage) Collect(ch chan<- prometheus.Metric) { node.SendEgressMetrics(ch, *s.Stats(), true) }
