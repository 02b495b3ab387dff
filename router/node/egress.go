package node

// Egress: how a node's pods reach addresses outside the cluster.
//
//	netstack (default in the daemon; netstackx/egress): pod ─► engine ─►
//	    egress port (gVisor terminates the flow) ─► host socket ─► out,
//	    from the node's address; the node's addresses and UplinkRoutes
//	    still go to the uplink (the host kernel).
//	uplink (egress_uplink.go): pod ─► engine ─► uplink TUN ─► host kernel
//	    (routing, and iptables MASQUERADE if the operator set it up) ─► out.
//	snat (egress_snat.go): pod ─► engine (conntrack + source NAT to
//	    SNATAddr on the uplink port) ─► uplink TUN ─► host kernel forwards.
//	masquerade off (EgressConfig.NoMasquerade, any mode): pod ─► engine
//	    ─► uplink TUN ─► host kernel forwards, the pod's address kept.
//
// Design notes. Modes used to be told apart by nil checks in the daemon.
// Each is now a kind registered by name (RegisterEgress) that implements
// Egress; the node calls the interface and never the mode. The engine's
// routes keep pod <-> pod and pod <-> cluster traffic away from any
// egress (local pods are /32 routes, the rest of the cluster CIDR is
// unreachable), and each egress checks the masquerade policy again per
// flow (conntrack.Policy), so a wrong route never re-originates in-cluster
// traffic from the node's address.

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
)

// EgressMode names a kind of egress (the --egress value).
type EgressMode string

// The egress modes podrouter ships. EgressNetstack is implemented in
// netstackx/egress (router/ imports no gVisor), which registers it.
const (
	EgressNetstack EgressMode = "netstack"
	EgressUplink   EgressMode = "uplink"
	EgressSNAT     EgressMode = "snat"
)

// String returns the mode's flag value.
func (m EgressMode) String() string { return string(m) }

// EgressPortName is the name of the port an egress attaches for itself.
const EgressPortName = "egress"

// EgressConfig configures a node's egress. Zero limits take the kind's
// defaults.
type EgressConfig struct {
	// Mode is the kind (a registered name); "" means no egress.
	Mode EgressMode
	// NoMasquerade is flannel's --ip-masq=false (net-conf's masquerade:
	// false): pods' traffic to the outside keeps the pod's own address.
	// Whatever Mode says, the node then routes it to the uplink untouched
	// and the host forwards it (uplink egress with the default routes);
	// the outside must route the podCIDRs back to the node.
	NoMasquerade bool
	// MaxFlows and MaxFlowsPerPod bound the live flows (TCP, UDP, ICMP
	// echo) in total and per pod address; MaxDials and MaxDialsPerPod the
	// TCP dials in flight (netstack).
	MaxFlows, MaxFlowsPerPod int
	MaxDials, MaxDialsPerPod int
	// DialTimeout bounds a TCP dial (a SYN nobody answers).
	DialTimeout time.Duration
	// UplinkRoutes are prefixes outside the cluster that pods reach
	// through the uplink (the host kernel) rather than the egress port
	// (netstack); the node's addresses always are.
	UplinkRoutes []netip.Prefix
	// SNATAddr (IPv4, required) and SNATAddr6 (optional) are the addresses
	// pods' flows are translated to (snat).
	SNATAddr, SNATAddr6 netip.Addr
	// Dial opens the host side of a flow (netstack; default: a plain
	// dialer in the node's network namespace). A node whose host sockets
	// live elsewhere (another network namespace, a rootless broker) hands
	// in its own; it must give up when ctx ends.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Env is what an egress kind's New gets: the node being built.
type Env struct {
	// Config is the node's validated configuration (MTU filled in).
	Config *Config
	// Engine is the node's engine; ports are added in Egress.Attach.
	Engine *engine.Engine
	// Uplink is the node's uplink, nil without one.
	Uplink *Uplink
	// Logger is the node's logger.
	Logger *zap.Logger
	// UnderlayEndpoint reports whether a destination is an underlay
	// endpoint (this node's or a peer's, kept current as peers change):
	// an egress must not send there (Node.UnderlayEndpoint).
	UnderlayEndpoint func(netip.AddrPort) bool
}

// Egress is a node's way out of the cluster: where packets to addresses
// beyond the podCIDRs and the peers go, and how their source becomes one
// the outside can answer.
//
// The node drives it in this order:
//
//	kind.New(env) ─► UplinkPort(&pc) ─► [uplink port attached] ─► Attach(uplink)
//	─► Routes(uplink) at every route swap ─► Ready() at every probe ─► Close()
//
// New may prepare host state (routes on env.Uplink) and undoes it itself
// when it fails. UplinkPort may amend the uplink port's config (SNAT); it
// is called only on a node with an uplink. Attach adds the egress's own
// engine ports (the engine closes them when the node closes); uplink is
// nil without one. Routes returns the routes beyond the podCIDRs (default
// routes, node addresses) naming the egress's ports or the uplink; it runs
// under the node's route lock and must not block. Ready returns nil while
// the egress carries traffic, else why not. Close releases what New made;
// it runs once, after the engine closed its ports.
//
// The operator's view may run concurrently with traffic: Stats returns
// the egress's state and counters (nil: it keeps none, as uplink egress
// whose flows the host kernel tracks); Flows lists at most max live flows,
// of the sources srcs only when srcs is not nil (truncated: some were left
// out; Pod is left empty); Collect sends its metrics (the descriptions of
// DescribeEgress). ResetSource ends the flows of a pod that is gone (RST to
// the remotes) and returns how many it ended; an egress that cannot (snat:
// its entries expire) returns 0.
type Egress interface {
	UplinkPort(pc *engine.PortConfig)
	Attach(uplink *engine.Port) error
	Routes(uplink *engine.Port) []route.Route
	Ready() error
	Stats() *api.Egress
	Flows(srcs []netip.Addr, max int) (flows []api.Flow, truncated bool)
	Collect(ch chan<- prometheus.Metric)
	ResetSource(src netip.Addr) int
	Close() error
}

// EgressKind is one registered kind of egress.
type EgressKind struct {
	Mode EgressMode
	// Validate checks the kind's own fields of c against the cluster
	// (nil: nothing to check). Its errors name the flag.
	Validate func(c *EgressConfig, cluster []netip.Prefix) error
	// New builds the egress for a node under construction.
	New func(env *Env) (Egress, error)
}

var egressKinds = registry[EgressMode, EgressKind]{what: "egress"}

// RegisterEgress adds a kind of egress (typically from an init function
// in the kind's own file). It panics when the mode is empty or taken: a
// programming error.
func RegisterEgress(k EgressKind) {
	if k.Mode == "" || k.New == nil {
		panic("node: RegisterEgress: mode and New are required")
	}
	egressKinds.add(k.Mode, k)
}

func egressKind(m EgressMode) (EgressKind, bool) { return egressKinds.get(m) }

// EgressModes returns the registered modes, sorted.
func EgressModes() []EgressMode { return egressKinds.names() }

func wantModes() string {
	var s []string
	for _, m := range EgressModes() {
		s = append(s, string(m))
	}
	return strings.Join(s, ", ")
}

// ParseEgressMode parses a --egress value against the registered kinds.
func ParseEgressMode(s string) (EgressMode, error) {
	if _, ok := egressKind(EgressMode(s)); ok {
		return EgressMode(s), nil
	}
	return "", fmt.Errorf("%q: want one of %s", s, wantModes())
}

// validate checks c against the cluster.
func (c *EgressConfig) validate(cluster []netip.Prefix) error {
	if c.Mode == "" {
		if c.SNATAddr.IsValid() || c.SNATAddr6.IsValid() {
			return configErr("snat-addr: only with --egress snat (no egress)")
		}
		return nil
	}
	k, ok := egressKind(c.Mode)
	if !ok {
		return configErr("egress %s: want one of %s", c.Mode, wantModes())
	}
	if c.Mode != EgressSNAT && (c.SNATAddr.IsValid() || c.SNATAddr6.IsValid()) {
		return configErr("snat-addr: only with --egress snat (egress is %s)", c.Mode)
	}
	if c.Mode != EgressNetstack {
		// The netstack forwarder's limits and routes mean nothing to
		// another kind: refused rather than silently ignored.
		for _, l := range []struct {
			name string
			set  bool
			v    any
		}{{"egress-max-flows", c.MaxFlows != 0, c.MaxFlows}, {"egress-max-flows-per-pod", c.MaxFlowsPerPod != 0, c.MaxFlowsPerPod},
			{"egress-max-dials", c.MaxDials != 0, c.MaxDials}, {"egress-max-dials-per-pod", c.MaxDialsPerPod != 0, c.MaxDialsPerPod},
			{"egress-dial-timeout", c.DialTimeout != 0, c.DialTimeout}, {"uplink-route", len(c.UplinkRoutes) > 0, c.UplinkRoutes}} {
			if l.set {
				return configErr("%s %v: only with --egress netstack (egress is %s)", l.name, l.v, c.Mode)
			}
		}
	}
	if k.Validate != nil {
		if err := k.Validate(c, cluster); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	for _, l := range []struct {
		name string
		v    int
	}{{"egress-max-flows", c.MaxFlows}, {"egress-max-flows-per-pod", c.MaxFlowsPerPod},
		{"egress-max-dials", c.MaxDials}, {"egress-max-dials-per-pod", c.MaxDialsPerPod}} {
		if l.v < 0 {
			return configErr("%s %d: want a positive number (0: the default)", l.name, l.v)
		}
	}
	if c.MaxFlows > 0 && c.MaxFlowsPerPod > c.MaxFlows {
		return configErr("egress-max-flows-per-pod %d: above egress-max-flows %d", c.MaxFlowsPerPod, c.MaxFlows)
	}
	if c.MaxDials > 0 && c.MaxDialsPerPod > c.MaxDials {
		return configErr("egress-max-dials-per-pod %d: above egress-max-dials %d", c.MaxDialsPerPod, c.MaxDials)
	}
	if c.DialTimeout < 0 {
		return configErr("egress-dial-timeout %v: negative", c.DialTimeout)
	}
	for _, p := range c.UplinkRoutes {
		if !p.IsValid() {
			return configErr("uplink-route: an unset prefix in the list")
		}
		if p != p.Masked() {
			return configErr("uplink-route %s: want a masked prefix (%s)", p, p.Masked())
		}
		for _, cc := range cluster {
			if cc.Overlaps(p) {
				return configErr("uplink-route %s: overlaps cluster-cidr %s", p, cc)
			}
		}
	}
	return nil
}

// DefaultRoutes returns the default routes to port (IPv4, and IPv6 when
// the node has an IPv6 podCIDR).
func DefaultRoutes(cfg *Config, port int32) []route.Route {
	rs := []route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(port)}}
	if cfg.PodCIDR6.IsValid() {
		rs = append(rs, route.Route{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(port)})
	}
	return rs
}

// HostRoutes returns routes of each address, as a host prefix, to port.
func HostRoutes(addrs []netip.Addr, port int32) []route.Route {
	var rs []route.Route
	for _, a := range addrs {
		rs = append(rs, route.Route{Prefix: netip.PrefixFrom(a, a.BitLen()), NextHop: route.ToEgress(port)})
	}
	return rs
}

// Egress metrics: one set for every kind, so dashboards do not care which
// one a node runs.
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

// DescribeEgress sends the descriptions of every egress metric.
func DescribeEgress(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEgressFlows, descEgressDials, descEgressEvents, descEgressDrops, descEgressBytes} {
		ch <- d
	}
}

// SendEgressMetrics sends e as the egress metrics; forwarder adds the
// metrics only a forwarder keeps (dials in flight, bytes). Labels are the
// names e lists: a fixed set per kind, so series stay bounded.
func SendEgressMetrics(ch chan<- prometheus.Metric, e api.Egress, forwarder bool) {
	ch <- prometheus.MustNewConstMetric(descEgressFlows, prometheus.GaugeValue, float64(e.Flows))
	if forwarder {
		ch <- prometheus.MustNewConstMetric(descEgressDials, prometheus.GaugeValue, float64(e.DialsInFlight))
	}
	for _, name := range sortedKeys(e.Events) {
		ch <- prometheus.MustNewConstMetric(descEgressEvents, prometheus.CounterValue, float64(e.Events[name]), name)
	}
	for _, name := range sortedKeys(e.Drops) {
		ch <- prometheus.MustNewConstMetric(descEgressDrops, prometheus.CounterValue, float64(e.Drops[name]), name)
	}
	if forwarder {
		ch <- prometheus.MustNewConstMetric(descEgressBytes, prometheus.CounterValue, float64(e.BytesToRemote), "to-remote")
		ch <- prometheus.MustNewConstMetric(descEgressBytes, prometheus.CounterValue, float64(e.BytesToPod), "to-pod")
	}
}

func sortedKeys(m map[string]uint64) []string { return slices.Sorted(maps.Keys(m)) }
