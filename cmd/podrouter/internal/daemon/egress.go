package daemon

// Egress: how pods reach addresses outside the cluster.
//
//	netstack (default): pod ─► engine ─► egress port (egress.Forwarder:
//	    gVisor terminates the flow) ─► host socket in the node's netns ─► out,
//	    from the node's address; the node's addresses and --uplink-route
//	    prefixes still go to the uplink (the host kernel).
//	uplink: pod ─► engine ─► uplink TUN ─► host kernel (routing, and
//	    iptables MASQUERADE if the operator set it up) ─► out.
//	snat: pod ─► engine (conntrack + source NAT to --snat-addr on the
//	    uplink port) ─► uplink TUN ─► host kernel forwards ─► out; replies
//	    to the SNAT address are routed by the host to the uplink (snat.go).
//
// Design notes. The engine's routes already keep pod <-> pod and pod <->
// cluster traffic away from the egress port (local pods are /32 routes, the
// rest of the cluster CIDR is unreachable); the forwarder checks the
// masquerade policy again per packet (conntrack.Policy, as flannel's
// --ip-masq), so a wrong route can never re-originate in-cluster traffic
// from the node's address. The forwarder dials from the daemon's network
// namespace, so the outside sees whatever source the node's routing picks:
// the node's address.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/netstackx/egress"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
)

// EgressMode is how pods reach addresses outside the cluster.
type EgressMode uint8

// Egress modes.
const (
	// EgressNetstack terminates pods' flows to the outside in the egress
	// forwarder (gVisor) and re-originates them from host sockets: no
	// iptables, no privileges needed for the translation.
	EgressNetstack EgressMode = iota
	// EgressUplink routes everything outside the cluster to the uplink
	// TUN and leaves it to the host kernel (and its iptables masquerade).
	EgressUplink
	// EgressSNAT translates pods' flows to the outside in the engine, to
	// an address the host routes to the uplink TUN (snat.go), and routes
	// them to the uplink: the host kernel forwards them as it forwards
	// any routed traffic.
	EgressSNAT
)

// String returns the mode's flag value.
func (m EgressMode) String() string {
	switch m {
	case EgressNetstack:
		return "netstack"
	case EgressUplink:
		return "uplink"
	case EgressSNAT:
		return "snat"
	}
	return fmt.Sprintf("egress-mode-%d", uint8(m))
}

// ParseEgressMode parses a --egress value.
func ParseEgressMode(s string) (EgressMode, error) {
	switch s {
	case "netstack":
		return EgressNetstack, nil
	case "uplink":
		return EgressUplink, nil
	case "snat":
		return EgressSNAT, nil
	}
	return 0, fmt.Errorf("%q: want netstack, uplink or snat", s)
}

// EgressPortName is the egress port's name in the engine.
const EgressPortName = "egress"

// EgressConfig configures egress. Zero limits take the egress package's
// defaults.
type EgressConfig struct {
	Mode EgressMode
	// MaxFlows and MaxFlowsPerPod bound the live flows (TCP, UDP, ICMP
	// echo) in total and per pod address; MaxDials and MaxDialsPerPod the
	// TCP dials in flight.
	MaxFlows, MaxFlowsPerPod int
	MaxDials, MaxDialsPerPod int
	// DialTimeout bounds a TCP dial (a SYN nobody answers).
	DialTimeout time.Duration
	// UplinkRoutes are prefixes outside the cluster that pods reach
	// through the uplink (the host kernel) rather than the egress
	// forwarder, in netstack mode; the node's addresses always are.
	UplinkRoutes []netip.Prefix
	// SNATAddr (IPv4, required) and SNATAddr6 (optional) are the addresses
	// pods' flows are translated to in snat mode (snat.go).
	SNATAddr, SNATAddr6 netip.Addr
}

// validate checks c against the cluster; bad formats its errors.
func (c *EgressConfig) validate(cluster []netip.Prefix, bad func(string, ...any) error) error {
	if c.Mode != EgressNetstack && c.Mode != EgressUplink && c.Mode != EgressSNAT {
		return bad("egress %s: want netstack, uplink or snat", c.Mode)
	}
	if err := c.validateSNAT(cluster, bad); err != nil {
		return err
	}
	for _, l := range []struct {
		name string
		v    int
	}{{"egress-max-flows", c.MaxFlows}, {"egress-max-flows-per-pod", c.MaxFlowsPerPod},
		{"egress-max-dials", c.MaxDials}, {"egress-max-dials-per-pod", c.MaxDialsPerPod}} {
		if l.v < 0 {
			return bad("%s %d: want a positive number (0: the default)", l.name, l.v)
		}
	}
	if c.MaxFlows > 0 && c.MaxFlowsPerPod > c.MaxFlows {
		return bad("egress-max-flows-per-pod %d: above egress-max-flows %d", c.MaxFlowsPerPod, c.MaxFlows)
	}
	if c.MaxDials > 0 && c.MaxDialsPerPod > c.MaxDials {
		return bad("egress-max-dials-per-pod %d: above egress-max-dials %d", c.MaxDialsPerPod, c.MaxDials)
	}
	if c.DialTimeout < 0 {
		return bad("egress-dial-timeout %v: negative", c.DialTimeout)
	}
	for _, p := range c.UplinkRoutes {
		if !p.IsValid() || p != p.Masked() {
			return bad("uplink-route %q: want a masked prefix", p)
		}
		for _, cc := range cluster {
			if cc.Overlaps(p) {
				return bad("uplink-route %s: overlaps cluster-cidr %s", p, cc)
			}
		}
	}
	return nil
}

// egressPort is the running egress of a netstack-mode daemon.
type egressPort struct {
	fwd  *egress.Forwarder
	port *engine.Port
}

// startEgress builds the egress forwarder and attaches it as the egress
// port (netstack mode; nil in uplink mode). On error nothing is left.
func (d *Daemon) startEgress() (*egressPort, error) {
	cfg := d.cfg
	if cfg.Egress.Mode != EgressNetstack {
		return nil, nil
	}
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
		return nil, fmt.Errorf("daemon: egress policy: %w", err)
	}
	e := cfg.Egress
	fwd, err := egress.New(egress.Config{
		MTU:      cfg.MTU,
		MaxFlows: e.MaxFlows, MaxFlowsPerPod: e.MaxFlowsPerPod,
		MaxDials: e.MaxDials, MaxDialsPerPod: e.MaxDialsPerPod,
		DialTimeout: e.DialTimeout,
		Allow:       pol.Translates,
		Logger:      cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("daemon: egress: %w", err)
	}
	port, err := d.eng.AddPort(fwd, engine.PortConfig{Name: EgressPortName, Kind: engine.KindEgress, MTU: cfg.MTU})
	if err != nil {
		_ = fwd.Close()
		return nil, fmt.Errorf("daemon: egress port: %w", err)
	}
	d.egressFwd.Store(fwd)
	return &egressPort{fwd: fwd, port: port}, nil
}

// outsideRoutes are the engine's routes beyond the podCIDRs: in uplink
// mode uplinkRoutes; in netstack mode the default routes to the egress
// port, and the node's addresses and the uplink routes to the uplink.
func (d *Daemon) outsideRoutes() []route.Route {
	up := d.upPort.Index()
	if d.snat != nil {
		return d.snat.routes(d.cfg, up)
	}
	if d.egr == nil {
		return uplinkRoutes(d.cfg, up)
	}
	eg := d.egr.port.Index()
	rs := []route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(eg)}}
	if d.cfg.PodCIDR6.IsValid() {
		rs = append(rs, route.Route{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(eg)})
	}
	for _, a := range d.cfg.NodeIPs {
		rs = append(rs, route.Route{Prefix: netip.PrefixFrom(a, a.BitLen()), NextHop: route.ToEgress(up)})
	}
	for _, p := range d.cfg.Egress.UplinkRoutes {
		rs = append(rs, route.Route{Prefix: p, NextHop: route.ToEgress(up)})
	}
	return rs
}

// egressReady is the readiness probe of the egress port (netstack mode).
func (d *Daemon) egressReady() error {
	if d.egr == nil {
		return nil
	}
	if p := d.eng.PortByIndex(d.egr.port.Index()); p != d.egr.port || d.egr.fwd.Closed() {
		return errors.New("egress port detached")
	}
	return nil
}

// closeEgress shuts the forwarder down (after the engine closed its port:
// then it is already closed, and this only makes sure).
func (d *Daemon) closeEgress() error {
	if d.egr == nil {
		return nil
	}
	return d.egr.fwd.Close()
}

// Conntrack implements api.ConntrackHandler: the egress forwarder's live
// flows (none in uplink mode, where the host kernel tracks them).
func (d *Daemon) Conntrack(_ context.Context, req api.ConntrackRequest) (api.Conntrack, error) {
	if err := req.Normalize(); err != nil {
		return api.Conntrack{}, err
	}
	out := api.Conntrack{Egress: d.cfg.Egress.Mode.String(), Flows: []api.Flow{}}
	var srcs []netip.Addr
	if req.Pod != "" {
		if a, err := netip.ParseAddr(req.Pod); err == nil {
			srcs = []netip.Addr{a}
		} else {
			p, err := d.findPort(req.Pod)
			if err != nil {
				return api.Conntrack{}, err
			}
			srcs = p.Config().Addrs
			if len(srcs) == 0 {
				return out, nil // a port without addresses (the uplink) sends no pod flows
			}
		}
	}
	if d.snat != nil {
		return d.snat.conntrack(out, srcs, req.Max, d.podNames()), nil
	}
	fwd := d.egressFwd.Load()
	if fwd == nil {
		return out, nil
	}
	st := egressStats(fwd.Stats())
	out.Stats = &st
	var flows []egress.Flow
	if srcs == nil {
		flows, out.Truncated = fwd.Flows(netip.Addr{}, req.Max)
	} else {
		for _, a := range srcs {
			fs, more := fwd.Flows(a, req.Max-len(flows))
			flows = append(flows, fs...)
			out.Truncated = out.Truncated || more
			if len(flows) >= req.Max {
				out.Truncated = out.Truncated || len(srcs) > 1
				break
			}
		}
	}
	names := d.podNames()
	for _, f := range flows {
		out.Flows = append(out.Flows, api.Flow{
			Proto: conntrack.ProtoName(f.Proto), Src: f.Src, Dst: f.Dst, ReplySrc: f.Remote, ReplyDst: f.Local,
			State: f.State.String(), Started: f.Started.UTC(), Expires: utcOrZero(f.Expires), Pod: names[f.Src.Addr()],
		})
	}
	return out, nil
}

// podNames maps the attached pods' addresses to their port names.
func (d *Daemon) podNames() map[netip.Addr]string {
	names := map[netip.Addr]string{}
	for _, p := range d.eng.Ports() {
		if p.Config().Kind == engine.KindPod {
			for _, a := range p.Config().Addrs {
				names[a] = p.Name()
			}
		}
	}
	return names
}

func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// egressCount is one forwarder counter under its metric label.
type egressCount struct {
	name string
	v    uint64
}

// egressEvents and egressDrops name the forwarder's counters: a fixed set,
// so the metrics' labels stay bounded.
func egressEvents(s egress.Stats) []egressCount {
	return []egressCount{
		{"tcp-dials", s.TCPDials}, {"tcp-connected", s.TCPConnected}, {"tcp-refused", s.TCPRefused},
		{"tcp-unreachable", s.TCPUnreachable}, {"tcp-dial-timeouts", s.TCPDialTimeouts}, {"tcp-dial-errors", s.TCPDialErrors},
		{"tcp-resets-to-pod", s.TCPResetsToPod}, {"tcp-resets-to-host", s.TCPResetsToHost},
		{"udp-flows", s.UDPFlows}, {"udp-dial-errors", s.UDPDialErrors}, {"udp-idle-closed", s.UDPIdleClosed},
		{"icmp-echo-requests", s.ICMPEchoRequests}, {"icmp-echo-replies", s.ICMPEchoReplies},
		{"icmp-errors-sent", s.ICMPErrorsSent},
	}
}

func egressDrops(s egress.Stats) []egressCount {
	return []egressCount{
		{"tcp-dial-limit", s.TCPDialLimited}, {"tcp-flow-limit", s.TCPFlowLimited}, {"udp-flow-limit", s.UDPFlowLimited},
		{"icmp-echo-dropped", s.ICMPEchoDropped}, {"ping-unsupported", s.PingUnsupported},
		{"denied-destination", s.Denied}, {"not-masqueraded", s.NotAllowed},
	}
}

// egressStats is the API's view of the forwarder's counters.
func egressStats(s egress.Stats) api.Egress {
	e := api.Egress{
		Flows: s.ActiveFlows, DialsInFlight: s.DialsInFlight,
		// Flows opened: TCP connections spliced and UDP sockets opened
		// (echo flows are not counted: see icmp-echo-requests).
		Inserts: s.TCPConnected + s.UDPFlows,
		Events:  map[string]uint64{}, Drops: map[string]uint64{},
		BytesToRemote: s.BytesToRemote, BytesToPod: s.BytesToPod,
	}
	for _, c := range egressEvents(s) {
		e.Events[c.name] = c.v
	}
	for _, c := range egressDrops(s) {
		e.Drops[c.name] = c.v
	}
	return e
}

var (
	descEgressFlows = prometheus.NewDesc("podrouter_egress_flows",
		"Live flows to the outside (TCP, UDP, ICMP echo): the egress forwarder's (netstack), or the engine's conntrack entries (snat).", nil, nil)
	descEgressDials = prometheus.NewDesc("podrouter_egress_dials_in_flight",
		"TCP dials of the egress forwarder not answered yet.", nil, nil)
	descEgressEvents = prometheus.NewDesc("podrouter_egress_events_total",
		"What happened to flows through the egress forwarder, by event (tcp-dials, tcp-connected, tcp-refused, udp-flows, ...).", []string{"event"}, nil)
	descEgressDrops = prometheus.NewDesc("podrouter_egress_drops_total",
		"Packets and SYNs the egress forwarder refused, by reason (tcp-dial-limit, tcp-flow-limit, udp-flow-limit, not-masqueraded, ...).", []string{"reason"}, nil)
	descEgressBytes = prometheus.NewDesc("podrouter_egress_bytes_total",
		"TCP and UDP payload bytes through the egress forwarder, by direction (to-remote, to-pod).", []string{"direction"}, nil)
)

// describeEgress and collectEgress are the collector's egress part: the
// forwarder's counters, read at scrape time (nothing in uplink mode).
func describeEgress(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEgressFlows, descEgressDials, descEgressEvents, descEgressDrops, descEgressBytes} {
		ch <- d
	}
}

func (d *Daemon) collectEgress(ch chan<- prometheus.Metric) {
	if d.snat != nil {
		d.snat.collect(ch)
		return
	}
	fwd := d.egressFwd.Load()
	if fwd == nil {
		return
	}
	s := fwd.Stats()
	ch <- prometheus.MustNewConstMetric(descEgressFlows, prometheus.GaugeValue, float64(s.ActiveFlows))
	ch <- prometheus.MustNewConstMetric(descEgressDials, prometheus.GaugeValue, float64(s.DialsInFlight))
	for _, c := range egressEvents(s) {
		ch <- prometheus.MustNewConstMetric(descEgressEvents, prometheus.CounterValue, float64(c.v), c.name)
	}
	for _, c := range egressDrops(s) {
		ch <- prometheus.MustNewConstMetric(descEgressDrops, prometheus.CounterValue, float64(c.v), c.name)
	}
	ch <- prometheus.MustNewConstMetric(descEgressBytes, prometheus.CounterValue, float64(s.BytesToRemote), "to-remote")
	ch <- prometheus.MustNewConstMetric(descEgressBytes, prometheus.CounterValue, float64(s.BytesToPod), "to-pod")
}

// logEgress logs the egress configuration at start.
func (d *Daemon) logEgress() {
	if d.snat != nil {
		d.log.Info("egress through the uplink with source NAT in the engine", zap.String("uplink", d.cfg.Uplink),
			zap.Stringer("snatAddr", d.cfg.Egress.SNATAddr), zap.Stringer("snatAddr6", d.cfg.Egress.SNATAddr6))
		return
	}
	if d.egr == nil {
		d.log.Info("egress through the uplink (the host kernel routes and masquerades)", zap.String("uplink", d.cfg.Uplink))
		return
	}
	d.log.Info("egress through the netstack forwarder", zap.String("port", d.egr.port.Name()),
		zap.Stringers("uplinkRoutes", d.cfg.Egress.UplinkRoutes), zap.Stringers("nodeIPs", slices.Clone(d.cfg.NodeIPs)))
}
