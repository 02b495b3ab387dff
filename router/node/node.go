// Package node builds one podrouter node: the engine, its uplink to the
// host, its way out of the cluster (egress), its underlay to the other
// nodes (backend) and the routes between them. The daemon, the lab and the
// benchmarks all build their nodes here, so what is measured is what ships.
//
//	pod port ─► engine: parse ─► source check ─► [policy: egress rules,
//	            first packet]  ─► [service: ClusterIP DNAT via conntrack]
//	            ─► LPM route ─► next port
//	next port ∈ { local pod ─► [policy: ingress rules],
//	              peer      (Backend: udp | vxlan | wireguard; next host-gw),
//	              egress    (Egress: netstack | snat | uplink),
//	              uplink    (the host: node addresses, kubelet probes) }
//
//	New: config ─► engine ─► backend (underlay socket; pod MTU rule)
//	     ─► uplink TUN + host routes ─► egress (kind's New) ─► uplink port
//	     ─► egress Attach ─► backend RX port
//	Start: routes = egress routes + peer podCIDRs ─► one table swap
//	SetPeers(snapshot): usable peers ─► backend peer table ─► a port per
//	     new peer ─► routes swapped ─► ports of peers gone detached
//	Close: engine (its ports) ─► backend ─► egress ─► uplink
//
// Stages are small interfaces with their contract in the doc comment
// (Egress, Backend), chosen by name from a registry (RegisterEgress,
// RegisterBackend): a new kind is one file that implements the interface
// and registers itself. The service and policy stages (ClusterIP DNAT,
// NetworkPolicy) will sit where the picture shows: they judge a flow's
// first packet in the engine and record the decision in its conntrack
// entry, so they become engine hooks configured here, not new branches in
// the daemon.
//
// Design notes. Before this package a node was put together three times
// (daemon, lab, bench/e2e), and the pod MTU rule lived in two places; a
// benchmark therefore did not measure the wiring the daemon ran. The node
// is built in a fixed order with one rollback (the success flag), and every
// datapath decision (which routes go where, which peers are usable, what
// MTU the pods get) is made here and nowhere else.
package node

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// ErrConfig is wrapped by every Config.Validate error.
var ErrConfig = errors.New("node: invalid config")

// ErrClosed: an operation on a closed node.
var ErrClosed = errors.New("node: closed")

// DefaultMTU is the pods' MTU of a node without an underlay and without
// an explicit MTU.
const DefaultMTU = 1500

// Config configures a node. The zero value of an optional field means its
// documented default.
type Config struct {
	// PodCIDR is the node's IPv4 podCIDR (required); its first address is
	// the pods' gateway. PodCIDR6 is the optional IPv6 podCIDR.
	PodCIDR, PodCIDR6 netip.Prefix
	// ClusterCIDRs is the in-cluster address space (default: the
	// podCIDRs). In-cluster destinations with no route are unreachable.
	ClusterCIDRs []netip.Prefix
	// NodeIPs are the node's own addresses (routed to the uplink; the
	// host's podCIDR routes use the first of each family as their source).
	NodeIPs []netip.Addr
	// MTU is the pods' MTU and the uplink's. 0: the backend's inner MTU
	// (underlay MTU less the encapsulation, PodMTU), or DefaultMTU
	// without a backend.
	MTU int
	// Uplink is the node's side towards its host (zero value: none, as in
	// the lab and the benchmarks).
	Uplink UplinkConfig
	// Egress is the way out of the cluster (zero Mode: none).
	Egress EgressConfig
	// Underlay carries traffic to the other nodes (zero Backend: none).
	Underlay UnderlayConfig
	// Services turns the load balancer on (zero value: off).
	Services ServicesConfig
	// Policy turns NetworkPolicy enforcement on (zero value: off).
	Policy PolicyConfig
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Validate fills in defaults and checks every field, naming the bad one.
// Errors wrap ErrConfig.
func (c *Config) Validate() error {
	// An unset value is said to be missing, never printed: its text is a
	// Go zero value ("invalid Prefix") that names nothing the operator gave.
	if !c.PodCIDR.IsValid() {
		return configErr("pod-cidr: required (the node's IPv4 podCIDR)")
	}
	if !c.PodCIDR.Addr().Is4() || c.PodCIDR != c.PodCIDR.Masked() || c.PodCIDR.Bits() > 30 {
		return configErr("pod-cidr %s: want a masked IPv4 prefix of at most /30", c.PodCIDR)
	}
	if c.PodCIDR6.IsValid() && (!c.PodCIDR6.Addr().Is6() || c.PodCIDR6 != c.PodCIDR6.Masked() || c.PodCIDR6.Bits() > 126) {
		return configErr("pod-cidr6 %s: want a masked IPv6 prefix of at most /126", c.PodCIDR6)
	}
	pods := c.PodCIDRs()
	if len(c.ClusterCIDRs) == 0 {
		c.ClusterCIDRs = pods
	}
	for _, cc := range c.ClusterCIDRs {
		if !cc.IsValid() {
			return configErr("cluster-cidr: an unset prefix in the list")
		}
		if cc != cc.Masked() {
			return configErr("cluster-cidr %s: want a masked prefix (%s)", cc, cc.Masked())
		}
	}
	for _, p := range pods {
		if !InCluster(c.ClusterCIDRs, p) {
			return configErr("pod-cidr %s: not inside any cluster-cidr %v", p, c.ClusterCIDRs)
		}
	}
	for _, a := range c.NodeIPs {
		if !a.IsValid() {
			return configErr("node-ip: an unset address in the list")
		}
		if a.Zone() != "" || a.Is4In6() {
			return configErr("node-ip %s: want a plain IPv4 or IPv6 address", a)
		}
		for _, cc := range c.ClusterCIDRs {
			if cc.Contains(a) {
				return configErr("node-ip %s: inside cluster-cidr %s", a, cc)
			}
		}
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return configErr("mtu %d: out of range 1280..65535", c.MTU)
	}
	if err := c.Uplink.validate(); err != nil {
		return err
	}
	if err := c.Egress.validate(c.ClusterCIDRs); err != nil {
		return err
	}
	if err := c.Underlay.validate(); err != nil {
		return err
	}
	if err := c.Policy.validate(); err != nil {
		return err
	}
	if err := c.Services.validate(c.ClusterCIDRs); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// PodCIDRs returns the configured podCIDRs, IPv4 first.
func (c Config) PodCIDRs() []netip.Prefix {
	out := []netip.Prefix{c.PodCIDR}
	if c.PodCIDR6.IsValid() {
		out = append(out, c.PodCIDR6)
	}
	return out
}

// uplinkPrefixes are the prefixes the host routes to the uplink: the
// podCIDRs and the whole cluster address space, so that the host and its
// hostNetwork pods reach the pods of every node, through the engine and
// the underlay.
func (c Config) uplinkPrefixes() []netip.Prefix {
	out := c.PodCIDRs()
	for _, cc := range c.ClusterCIDRs {
		if !slices.Contains(out, cc) {
			out = append(out, cc)
		}
	}
	// The Service CIDRs: the host and its hostNetwork pods reach
	// ClusterIPs through the engine's load balancer.
	return append(out, c.Services.CIDRs...)
}

func configErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
}

// InCluster reports whether p lies inside one of the cluster CIDRs.
func InCluster(cluster []netip.Prefix, p netip.Prefix) bool {
	for _, cc := range cluster {
		if cc.Addr().BitLen() == p.Addr().BitLen() && cc.Bits() <= p.Bits() && cc.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Node is a running node. Its methods are safe for concurrent use.
type Node struct {
	cfg    Config
	log    *zap.Logger
	eng    *engine.Engine
	up     *Uplink
	upPort *engine.Port
	egress Egress
	peers  peering
	svc    *serviceLB   // nil: no load balancer
	pol    *tableReaper // nil: no NetworkPolicy enforcement
	closed atomic.Bool
	// endpoints are the underlay endpoints of this node and its peers,
	// which no egress may send to (UnderlayEndpoint).
	endpoints atomic.Pointer[map[netip.AddrPort]struct{}]
}

// New builds a node from cfg (see the package doc for the order). Its
// routes are set by Start; until then the engine routes nothing beyond
// its local pods. On error everything built so far is torn down again.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.Named("node")}
	success := false
	defer func() {
		if !success {
			_ = n.teardown()
		}
	}()
	var err error
	if n.eng, err = engine.New(engine.Config{
		PodCIDR: cfg.PodCIDR, PodCIDR6: cfg.PodCIDR6, ClusterCIDRs: cfg.ClusterCIDRs, HostAddrs: cfg.NodeIPs, Logger: cfg.Logger,
	}); err != nil {
		return nil, fmt.Errorf("node: engine: %w", err)
	}
	if cfg.Services.enabled() {
		if err := n.startServices(); err != nil {
			return nil, fmt.Errorf("node: services: %w", err)
		}
	}
	if cfg.Policy.Enabled {
		if err := n.startPolicy(); err != nil {
			return nil, fmt.Errorf("node: policy: %w", err)
		}
	}
	if cfg.Underlay.Backend != "" {
		if n.peers.b, err = openBackend(cfg.Underlay, cfg.Logger); err != nil {
			return nil, fmt.Errorf("node: underlay: %w", err)
		}
		n.peers.ports = map[string]*engine.Port{}
		n.setEndpoints(nil)
	}
	if n.cfg.MTU == 0 {
		n.cfg.MTU = DefaultMTU
		if n.peers.b != nil {
			n.cfg.MTU = max(n.peers.b.MTU(), 1280)
		}
	}
	if cfg.Uplink.enabled() {
		if n.up, err = openUplink(cfg.Uplink, n.cfg.MTU, n.cfg.uplinkPrefixes(), cfg.NodeIPs); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	if cfg.Egress.Mode != "" {
		kind, _ := egressKind(cfg.Egress.Mode) // Validate checked it
		if cfg.Egress.NoMasquerade {
			kind.New = newUnmasqueradedEgress
		}
		env := &Env{Config: &n.cfg, Engine: n.eng, Uplink: n.up, Logger: cfg.Logger, UnderlayEndpoint: n.UnderlayEndpoint}
		if n.egress, err = kind.New(env); err != nil {
			return nil, fmt.Errorf("node: egress %s: %w", cfg.Egress.Mode, err)
		}
	}
	if n.up != nil {
		pc := engine.PortConfig{Name: n.up.Name(), Kind: engine.KindUplink, MTU: n.cfg.MTU}
		if n.egress != nil {
			n.egress.UplinkPort(&pc)
		}
		if n.upPort, err = n.eng.AddPort(n.up.Device(), pc); err != nil {
			_ = n.up.Device().Close()
			return nil, fmt.Errorf("node: uplink port: %w", err)
		}
	}
	if n.egress != nil {
		if err := n.egress.Attach(n.upPort); err != nil {
			return nil, fmt.Errorf("node: egress %s: %w", cfg.Egress.Mode, err)
		}
	}
	if b := n.peers.b; b != nil {
		if rx := b.RxDevice(); rx != nil {
			if n.peers.rx, err = n.eng.AddPort(rx, engine.PortConfig{Name: "underlay", Kind: engine.KindPeer, MTU: b.MTU()}); err != nil {
				return nil, fmt.Errorf("node: underlay port: %w", err)
			}
		}
		n.log.Info("underlay up", zap.String("backend", string(cfg.Underlay.Backend)), zap.Stringer("local", b.LocalAddr()),
			zap.Int("innerMTU", b.MTU()))
	}
	success = true
	return n, nil
}

// Start sets the node's routes (the egress's and, with an underlay, the
// peers' podCIDRs; none yet) and applies cfg.Underlay.Peers when given.
func (n *Node) Start() error {
	n.peers.mu.Lock()
	err := n.applyRoutes()
	n.peers.mu.Unlock()
	if err != nil {
		return fmt.Errorf("node: routes: %w", err)
	}
	if len(n.cfg.Underlay.Peers) > 0 {
		return n.SetPeers(n.cfg.Underlay.Peers)
	}
	return nil
}

// applyRoutes sets the engine's table: the egress's routes and the
// peers'. Callers hold peers.mu (or run before the node is shared).
func (n *Node) applyRoutes() error {
	var rs []route.Route
	if n.egress != nil {
		rs = n.egress.Routes(n.upPort)
	}
	return n.eng.SetRoutes(slices.Concat(rs, n.peers.routes))
}

// UnderlayEndpoint reports whether ap is the underlay endpoint of this node
// or of one of its peers: egress refuses to send there, so that a pod cannot
// inject into another node's underlay from this node's address. It is
// safe for concurrent use and does not allocate.
func (n *Node) UnderlayEndpoint(ap netip.AddrPort) bool {
	m := n.endpoints.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
	return ok
}

// setEndpoints publishes the underlay endpoints: ours and the peers'.
func (n *Node) setEndpoints(peers []Peer) {
	m := map[netip.AddrPort]struct{}{n.peers.b.LocalAddr(): {}}
	for _, q := range peers {
		m[q.Addr] = struct{}{}
	}
	n.endpoints.Store(&m)
}

// Engine returns the node's engine (pods' ports are attached to it).
func (n *Node) Engine() *engine.Engine { return n.eng }

// Config returns the validated configuration, with the MTU the pods got.
func (n *Node) Config() Config { return n.cfg }

// MTU returns the pods' MTU.
func (n *Node) MTU() int { return n.cfg.MTU }

// Uplink returns the node's uplink, or nil without one.
func (n *Node) Uplink() *Uplink { return n.up }

// UplinkPort returns the uplink's engine port, or nil without one.
func (n *Node) UplinkPort() *engine.Port { return n.upPort }

// Egress returns the node's egress, or nil without one.
func (n *Node) Egress() Egress { return n.egress }

// EgressMode returns the mode the node's egress runs: Config.Egress.Mode,
// but uplink with masquerade off ("" without egress).
func (n *Node) EgressMode() EgressMode {
	if n.cfg.Egress.Mode != "" && n.cfg.Egress.NoMasquerade {
		return EgressUplink
	}
	return n.cfg.Egress.Mode
}

// Backend returns the node's underlay backend, or nil without one.
func (n *Node) Backend() Backend { return n.peers.b }

// Ready returns nil when the node's own parts carry traffic: the uplink is
// there and up, and the egress is ready; else why not.
func (n *Node) Ready() error {
	if n.closed.Load() {
		return ErrClosed
	}
	if n.up != nil {
		if err := n.up.probe(); err != nil {
			return err
		}
	}
	if n.egress != nil {
		return n.egress.Ready()
	}
	return nil
}

// Close stops the node: the engine and its ports (pods' devices included),
// the backend, the egress and the uplink (the kernel removes the uplink
// TUN and its routes). It is idempotent.
func (n *Node) Close() error {
	if n.closed.Swap(true) {
		return nil
	}
	return n.teardown()
}

func (n *Node) teardown() error {
	n.closed.Store(true)
	var errs []error
	if n.eng != nil {
		errs = append(errs, n.eng.Close()) // closes the uplink port's TUN too
	}
	if n.peers.b != nil {
		errs = append(errs, n.peers.b.Close())
	}
	if n.egress != nil {
		errs = append(errs, n.egress.Close())
	}
	if n.up != nil {
		n.up.close()
	}
	if n.pol != nil {
		n.pol.close()
	}
	if n.svc != nil {
		n.svc.close()
	}
	return errors.Join(errs...)
}

// peering is the node's backend and its peer ports.
type peering struct {
	mu     sync.Mutex // serializes SetPeers and route updates
	b      Backend
	rx     *engine.Port
	ports  map[string]*engine.Port // by peer name
	routes []route.Route           // the peers' routes, in the current table
}

// UnderlayPort returns the engine port peers' packets arrive on, or nil.
func (n *Node) UnderlayPort() *engine.Port { return n.peers.rx }

// Underlay returns the node's underlay when its backend is udp or vxlan
// (router/underlay), else nil: for reports and tests that need the
// underlay's own operations.
func (n *Node) Underlay() *underlay.Underlay {
	if u, ok := n.peers.b.(underlayBackend); ok {
		return u.Underlay
	}
	return nil
}
