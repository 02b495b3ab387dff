// Package engine is podrouter's packet engine: it reads packet batches from
// its ports, routes each packet by longest prefix and writes it, in batches,
// to the next port.
//
//	port.Read batch ─► parse ─► ARP/NDP? answer ─► source check ─► route lookup
//	   ─► TTL (routed hops only) ─► MTU (frag-needed / fragment) ─► SNAT (ports
//	   with PortConfig.SNAT) ─► stage per next port ─► next port.Write batch
//
// Each port has one worker goroutine that owns its buffers; the routing
// table and the port list are one immutable snapshot behind an atomic
// pointer, rebuilt under a mutex by the control side (AddPort, RemovePort,
// SetRoutes) and never locked by a worker.
package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// Errors returned by the engine's control methods.
var (
	ErrClosed      = errors.New("engine: closed")
	ErrPortUnknown = errors.New("engine: port not attached")
	ErrAddrInUse   = errors.New("engine: address already attached to another port")
)

// PortKind says what stands behind a port; it decides source checks and
// whether a hop is routed (TTL decremented) or switched.
type PortKind uint8

// Port kinds.
const (
	KindPod      PortKind = iota // a pod's interface: may only send from its own addresses
	KindUplink                   // the node itself (host TUN)
	KindEgress                   // the way out of the cluster
	KindNetstack                 // a netstack service port
	KindPeer                     // another node, through the underlay: its device encapsulates and decapsulates
	numPortKinds
)

var kindNames = [numPortKinds]string{"pod", "uplink", "egress", "netstack", "peer"}

// String returns the kind's name.
func (k PortKind) String() string {
	if k < numPortKinds {
		return kindNames[k]
	}
	return "unknown"
}

// Config configures an engine. The zero value of every optional field means
// its documented default.
type Config struct {
	// PodCIDR is this node's IPv4 podCIDR (required). Its first address is
	// the pods' gateway, which the engine answers for.
	PodCIDR netip.Prefix
	// PodCIDR6 is this node's IPv6 podCIDR (optional).
	PodCIDR6 netip.Prefix
	// ClusterCIDRs is the in-cluster address space. Destinations inside it
	// with no more specific route are unreachable (ICMP error, never
	// egress). Defaults to the podCIDRs.
	ClusterCIDRs []netip.Prefix
	// HostAddrs are this node's own addresses. Peers may send to them as
	// well as to the podCIDRs: their hosts and hostNetwork pods reach this
	// host (through its routes, usually to the uplink) without NAT.
	HostAddrs []netip.Addr
	// GatewayMAC is the MAC the engine answers ARP/NDP with on L2 ports.
	// Default: 0a:58 followed by the IPv4 gateway address.
	GatewayMAC packet.MAC
	// ICMPRate and ICMPBurst bound the ICMP errors the engine sends about
	// the packets of each port, one budget per port (default 1000/s, burst
	// 50, as Linux's icmp_msgs_per_sec/burst). Errors that carry a path MTU
	// (fragmentation needed, packet too big) are never limited, as in Linux.
	ICMPRate, ICMPBurst int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// PortConfig describes a port when it is attached.
type PortConfig struct {
	Name string
	Kind PortKind
	// L2 ports carry Ethernet frames; the engine answers ARP and NDP on them
	// and addresses frames to PeerMAC. L3 ports carry bare IP packets.
	L2 bool
	// PeerMAC is the MAC of the interface behind an L2 port. When zero it is
	// learned from the first frame the port sends.
	PeerMAC packet.MAC
	// MTU is the largest IP packet the port carries, 68..65535 (required).
	MTU int
	// Addrs are a pod port's addresses: host routes to the port, and the
	// only sources it may send from. Each must lie in a podCIDR.
	Addrs []netip.Addr
	// SNAT, when set, translates pods' flows leaving through this port and
	// their replies (see SNAT). Nil: the port forwards as it is.
	SNAT *SNAT
	// Gateway makes the port receive the packets addressed to the pods'
	// gateway addresses (Engine.Gateway, Gateway6) that the engine does not
	// answer itself (everything but ICMP echo requests): a netstack that
	// originates flows from the gateway address (ingress: NodePort,
	// hostPort) gets their replies, from local pods and from other nodes'.
	// At most one port may have it, of kind KindNetstack or KindUplink.
	// Without such a port those packets are dropped (DropToGateway).
	Gateway bool
}

// Engine is the packet engine of one node.
type Engine struct {
	cfg      Config
	gw4, gw6 netip.Addr
	log      *zap.Logger

	state atomic.Pointer[snapshot]

	mu      sync.Mutex // serialises control changes below
	ports   []*Port    // by index; nil = free
	routes  []route.Route
	closed  bool
	workers sync.WaitGroup

	svc atomic.Pointer[services] // the load balancer (svc.go); nil: off
	pol *netpol                  // NetworkPolicy (policy.go), under mu; nil: off

	icmpSent, icmpLimited atomic.Uint64
	origDrops             atomic.Uint64 // packets the engine made and could not deliver
	offload               struct {
		whole, segmented, segments, csums atomic.Uint64
	}
}

// OffloadStats counts the engine's offload work.
type OffloadStats struct {
	SuperPackets    uint64 // super-packets passed whole to a port that takes them
	Segmented       uint64 // super-packets cut in software
	Segments        uint64 // the segments those made
	ChecksumsFilled uint64 // partial checksums finished in software
}

// OffloadStats returns the offload counters.
func (e *Engine) OffloadStats() OffloadStats {
	return OffloadStats{
		SuperPackets: e.offload.whole.Load(), Segmented: e.offload.segmented.Load(),
		Segments: e.offload.segments.Load(), ChecksumsFilled: e.offload.csums.Load(),
	}
}

// snapshot is what a worker reads per batch: a consistent route table and
// port list.
type snapshot struct {
	table *route.Table
	ports []*Port
	// gateway is the port with PortConfig.Gateway, or nil.
	gateway *Port
	// pol is the NetworkPolicy state (policy.go); nil: enforcement off.
	pol *polState
}

// Port is an attached port.
type Port struct {
	e       *Engine
	idx     int32
	cfg     PortConfig
	dev     link.Device
	peerMAC atomic.Pointer[packet.MAC]
	addrs   []netip.Addr
	c       counters
	done    chan struct{}
	tap     atomic.Pointer[Tap]
	// gsoDev is dev as a GSODevice (nil when it is not one), offloads
	// what its WriteGSO accepts.
	gsoDev   link.GSODevice
	offloads packet.Offloads
	// icmp is the budget of the ICMP errors sent about this port's packets
	// (see worker.icmpError); only the port's worker takes from it.
	icmp *packet.RateLimiter
	// polRecent is the ring of flows the policy stage judged on this
	// port's packets (policy.go).
	polRecent polRecent
}

// Direction says which way a tapped packet crossed a port.
type Direction uint8

// Directions.
const (
	Rx Direction = iota // read from the port's device (the host sent it)
	Tx                  // written to the port's device (the host receives it)
)

// String returns "rx" or "tx".
func (d Direction) String() string {
	if d == Rx {
		return "rx"
	}
	return "tx"
}

// Tap receives copies of the packets crossing a port (a packet capture).
// Fn runs on a worker goroutine with a frame that is only valid during the
// call, as the port frames it (Ethernet on L2 ports, IP on L3); it must be
// quick and must not block.
type Tap struct {
	Fn func(dir Direction, frame []byte)
}

// SetTap installs t on the port, or removes the tap when t is nil. With no
// tap the data path pays one atomic load per batch.
func (p *Port) SetTap(t *Tap) { p.tap.Store(t) }

// SwapTap installs t only if the port's tap is still old, so that two
// captures never steal each other's tap; it reports whether it did.
func (p *Port) SwapTap(old, t *Tap) bool { return p.tap.CompareAndSwap(old, t) }

// Index returns the port's index, as route next hops name it.
func (p *Port) Index() int32 { return p.idx }

// Name returns the port's name.
func (p *Port) Name() string { return p.cfg.Name }

// Config returns the port's configuration.
func (p *Port) Config() PortConfig { return p.cfg }

// Stats returns a snapshot of the port's counters.
func (p *Port) Stats() PortStats { return p.c.snapshot() }

// New validates cfg and returns an engine with no ports.
func New(cfg Config) (*Engine, error) {
	if !cfg.PodCIDR.IsValid() || !cfg.PodCIDR.Addr().Is4() {
		return nil, fmt.Errorf("engine: PodCIDR %q: want an IPv4 prefix", cfg.PodCIDR)
	}
	if cfg.PodCIDR != cfg.PodCIDR.Masked() || cfg.PodCIDR.Bits() > 30 {
		return nil, fmt.Errorf("engine: PodCIDR %s: want a masked prefix of at most /30", cfg.PodCIDR)
	}
	if cfg.PodCIDR6.IsValid() {
		if !cfg.PodCIDR6.Addr().Is6() || cfg.PodCIDR6 != cfg.PodCIDR6.Masked() || cfg.PodCIDR6.Bits() > 126 {
			return nil, fmt.Errorf("engine: PodCIDR6 %s: want a masked IPv6 prefix of at most /126", cfg.PodCIDR6)
		}
	}
	if len(cfg.ClusterCIDRs) == 0 {
		cfg.ClusterCIDRs = []netip.Prefix{cfg.PodCIDR}
		if cfg.PodCIDR6.IsValid() {
			cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, cfg.PodCIDR6)
		}
	}
	for _, c := range cfg.ClusterCIDRs {
		if !c.IsValid() || c != c.Masked() {
			return nil, fmt.Errorf("engine: cluster CIDR %s: want a masked prefix", c)
		}
	}
	if cfg.ICMPRate <= 0 {
		cfg.ICMPRate = 1000
	}
	if cfg.ICMPBurst <= 0 {
		cfg.ICMPBurst = 50
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Engine{cfg: cfg, log: cfg.Logger.Named("engine")}
	e.gw4 = cfg.PodCIDR.Addr().Next()
	if cfg.PodCIDR6.IsValid() {
		e.gw6 = cfg.PodCIDR6.Addr().Next()
	}
	if cfg.GatewayMAC == (packet.MAC{}) {
		g := e.gw4.As4()
		e.cfg.GatewayMAC = packet.MAC{0x0a, 0x58, g[0], g[1], g[2], g[3]}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.publishLocked(); err != nil {
		return nil, err
	}
	return e, nil
}

// Gateway returns the pods' IPv4 gateway (first address of the podCIDR).
func (e *Engine) Gateway() netip.Addr { return e.gw4 }

// Gateway6 returns the pods' IPv6 gateway, or the zero Addr.
func (e *Engine) Gateway6() netip.Addr { return e.gw6 }

// GatewayMAC returns the MAC the engine answers with on L2 ports.
func (e *Engine) GatewayMAC() packet.MAC { return e.cfg.GatewayMAC }

// AddPort attaches dev as a port and starts its worker. The engine owns dev
// from now on: RemovePort and Close close it.
func (e *Engine) AddPort(dev link.Device, pc PortConfig) (*Port, error) {
	return e.addPort(dev, pc, nil)
}

// ReplacePort attaches dev as AddPort does and, in the same table swap,
// detaches old (whose addresses and name the new port may take): traffic
// moves from old to the new port at once. When the new port cannot be
// attached, old stays as it was and the error says why. On success old's
// worker stops and its device is closed, as RemovePort does.
func (e *Engine) ReplacePort(old *Port, dev link.Device, pc PortConfig) (*Port, error) {
	if old == nil {
		return nil, ErrPortUnknown
	}
	p, err := e.addPort(dev, pc, old)
	if err != nil {
		return nil, err
	}
	cerr := old.dev.Close()
	<-old.done
	e.log.Info("port replaced", zap.String("port", old.cfg.Name), zap.String("by", pc.Name))
	if cerr != nil {
		e.log.Warn("close replaced port", zap.String("port", old.cfg.Name), zap.Error(cerr))
	}
	return p, nil
}

// addPort attaches dev; with replace, it detaches that port in the same
// snapshot (the caller closes its device).
func (e *Engine) addPort(dev link.Device, pc PortConfig, replace *Port) (*Port, error) {
	if pc.Name == "" {
		return nil, errors.New("engine: port name is empty")
	}
	if pc.MTU < 68 || pc.MTU > 65535 {
		return nil, fmt.Errorf("engine: port %s: MTU %d out of range 68..65535", pc.Name, pc.MTU)
	}
	if pc.Kind >= numPortKinds {
		return nil, fmt.Errorf("engine: port %s: unknown kind %d", pc.Name, pc.Kind)
	}
	if pc.SNAT != nil {
		if err := pc.SNAT.validate(); err != nil {
			return nil, fmt.Errorf("engine: port %s: %w", pc.Name, err)
		}
	}
	if pc.Gateway && pc.Kind != KindNetstack && pc.Kind != KindUplink {
		return nil, fmt.Errorf("engine: port %s: a gateway port must be of kind netstack or uplink, not %s", pc.Name, pc.Kind)
	}
	for _, a := range pc.Addrs {
		if !e.inPodCIDR(a) || a == e.gw4 || a == e.gw6 || a == e.cfg.PodCIDR.Addr() {
			return nil, fmt.Errorf("engine: port %s: address %s is not a pod address of %s", pc.Name, a, e.podCIDRs())
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if replace != nil && (int(replace.idx) >= len(e.ports) || e.ports[replace.idx] != replace) {
		return nil, ErrPortUnknown
	}
	for _, q := range e.ports {
		if q == nil || q == replace {
			continue
		}
		if q.cfg.Name == pc.Name {
			return nil, fmt.Errorf("engine: port name %q already attached", pc.Name)
		}
		if pc.Gateway && q.cfg.Gateway {
			return nil, fmt.Errorf("engine: port %s: port %s already receives the gateway's packets", pc.Name, q.cfg.Name)
		}
		for _, a := range pc.Addrs {
			if slices.Contains(q.addrs, a) {
				return nil, fmt.Errorf("%w: %s (port %s)", ErrAddrInUse, a, q.cfg.Name)
			}
		}
	}
	p := &Port{e: e, cfg: pc, dev: dev, addrs: slices.Clone(pc.Addrs), done: make(chan struct{}),
		icmp: packet.NewRateLimiter(e.cfg.ICMPRate, e.cfg.ICMPBurst, e.cfg.Now)}
	if g, ok := dev.(link.GSODevice); ok {
		p.gsoDev, p.offloads = g, g.Offloads()
	}
	p.cfg.Addrs = p.addrs
	if pc.PeerMAC != (packet.MAC{}) {
		m := pc.PeerMAC
		p.peerMAC.Store(&m)
	}
	if replace != nil {
		e.ports[replace.idx] = nil
	}
	idx := slices.Index(e.ports, nil)
	if idx < 0 {
		idx = len(e.ports)
		e.ports = append(e.ports, nil)
	}
	p.idx = int32(idx)
	e.ports[idx] = p
	if err := e.publishLocked(); err != nil {
		e.ports[idx] = nil
		if replace != nil {
			e.ports[replace.idx] = replace
		}
		return nil, err
	}
	e.workers.Add(1)
	go e.run(p)
	e.log.Info("port attached", zap.String("port", pc.Name), zap.Stringer("kind", pc.Kind),
		zap.Bool("l2", pc.L2), zap.Int("mtu", pc.MTU), zap.Any("addrs", pc.Addrs))
	return p, nil
}

// RemovePort detaches p: its routes go, its worker stops and its device is
// closed.
func (e *Engine) RemovePort(p *Port) error {
	e.mu.Lock()
	if int(p.idx) >= len(e.ports) || e.ports[p.idx] != p {
		e.mu.Unlock()
		return ErrPortUnknown
	}
	e.ports[p.idx] = nil
	err := e.publishLocked()
	e.mu.Unlock()
	cerr := p.dev.Close()
	<-p.done
	e.log.Info("port detached", zap.String("port", p.cfg.Name))
	return errors.Join(err, cerr)
}

// Ports returns the attached ports.
func (e *Engine) Ports() []*Port {
	s := e.state.Load()
	out := make([]*Port, 0, len(s.ports))
	for _, p := range s.ports {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// SetRoutes replaces the control plane's routes (peer podCIDRs, egress
// default, ...). Routes to local pods come from their ports and need not be
// listed; a listed route's port must be attached. A Peer next hop names, in
// NextHop.Peer, the index of the KindPeer port that reaches that node.
func (e *Engine) SetRoutes(rs []route.Route) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.routes
	e.routes = slices.Clone(rs)
	if err := e.publishLocked(); err != nil {
		e.routes = old
		return err
	}
	e.log.Info("routes set", zap.Int("routes", len(rs)))
	return nil
}

// Routes returns the current table.
func (e *Engine) Routes() *route.Table { return e.state.Load().table }

// PortByIndex resolves a route's port index in the current snapshot.
func (e *Engine) PortByIndex(i int32) *Port {
	s := e.state.Load()
	if i < 0 || int(i) >= len(s.ports) {
		return nil
	}
	return s.ports[i]
}

// ICMPStats returns the ICMP errors sent and suppressed by the rate limit.
func (e *Engine) ICMPStats() (sent, limited uint64) {
	return e.icmpSent.Load(), e.icmpLimited.Load()
}

// OriginatedDrops returns how many packets the engine made itself (ICMP
// errors, echo replies) it then dropped, e.g. for want of a route back to
// the sender. They are not counted on any port: each port counts the
// packets that arrived on it, each under exactly one reason.
func (e *Engine) OriginatedDrops() uint64 { return e.origDrops.Load() }

// Close detaches every port and waits for the workers.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	ports := slices.Clone(e.ports)
	clear(e.ports)
	_ = e.publishLocked()
	e.mu.Unlock()
	var errs []error
	for _, p := range ports {
		if p != nil {
			errs = append(errs, p.dev.Close())
		}
	}
	e.workers.Wait()
	return errors.Join(errs...)
}

// publishLocked builds and swaps in a new snapshot. Order of precedence by
// prefix length is LPM's; for equal prefixes a local pod's host route wins
// over a control-plane route.
func (e *Engine) publishLocked() error {
	b := route.NewBuilder()
	seen := map[netip.Prefix]bool{}
	var gw *Port
	add := func(p netip.Prefix, nh route.NextHop) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		return b.Add(p, nh)
	}
	for _, p := range e.ports {
		if p == nil {
			continue
		}
		if p.cfg.Gateway {
			gw = p
		}
		for _, a := range p.addrs {
			if err := add(netip.PrefixFrom(a, a.BitLen()), route.NextHop{Kind: route.Local, Port: p.idx}); err != nil {
				return err
			}
		}
	}
	for _, r := range e.routes {
		i, needsPort := int32(0), true
		switch r.NextHop.Kind {
		case route.Local, route.Egress:
			i = r.NextHop.Port
		case route.Peer:
			i = r.NextHop.Peer
		default:
			needsPort = false
		}
		if needsPort {
			if i < 0 || int(i) >= len(e.ports) || e.ports[i] == nil {
				return fmt.Errorf("engine: route %s: port %d not attached", r.Prefix, i)
			}
			if r.NextHop.Kind == route.Peer && e.ports[i].cfg.Kind != KindPeer {
				return fmt.Errorf("engine: route %s: peer next hop on port %s of kind %s", r.Prefix, e.ports[i].cfg.Name, e.ports[i].cfg.Kind)
			}
		}
		if err := add(r.Prefix, r.NextHop); err != nil {
			return err
		}
	}
	// The gateway port's host routes: the gateway's packets that the
	// engine does not answer go there (see worker.toGatewayPort).
	if gw != nil {
		for _, a := range []netip.Addr{e.gw4, e.gw6} {
			if a.IsValid() {
				if err := add(netip.PrefixFrom(a, a.BitLen()), route.NextHop{Kind: route.Local, Port: gw.idx}); err != nil {
					return err
				}
			}
		}
	}
	// The in-cluster remainder is unreachable, never egress.
	for _, c := range append([]netip.Prefix{e.cfg.PodCIDR, e.cfg.PodCIDR6}, e.cfg.ClusterCIDRs...) {
		if c.IsValid() {
			if err := add(c, route.NextHop{Kind: route.Unreachable}); err != nil {
				return err
			}
		}
	}
	e.state.Store(&snapshot{table: b.Build(), ports: slices.Clone(e.ports), gateway: gw, pol: e.buildPolStateLocked()})
	return nil
}

func (e *Engine) inPodCIDR(a netip.Addr) bool {
	return e.cfg.PodCIDR.Contains(a) || (e.cfg.PodCIDR6.IsValid() && e.cfg.PodCIDR6.Contains(a))
}

// isHostAddr reports whether a is one of the node's own addresses.
func (e *Engine) isHostAddr(a netip.Addr) bool {
	for _, h := range e.cfg.HostAddrs {
		if h == a {
			return true
		}
	}
	return false
}

func (e *Engine) podCIDRs() string {
	if e.cfg.PodCIDR6.IsValid() {
		return e.cfg.PodCIDR.String() + "," + e.cfg.PodCIDR6.String()
	}
	return e.cfg.PodCIDR.String()
}
