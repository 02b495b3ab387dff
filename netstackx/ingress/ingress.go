// Package ingress publishes pods' ports on the node's own addresses without
// iptables: NodePort and hostPort. It is the reverse of netstackx/egress: a
// Forwarder keeps a set of host listening sockets in sync with its rules,
// and re-originates every connection (TCP) and flow (UDP) they receive from
// a gVisor stack of its own, attached to the engine as the gateway port
// (engine.PortConfig.Gateway), toward the rule's Target.
//
//	client ─► host socket (Rule.Listen, opened by SetRules)
//	   TCP: accept ─► limits ─► dial Target from the stack (source: the
//	        pods' gateway address, or the client's own for a KeepSource
//	        rule) ─► splice both ways (FIN = half-close,
//	        RST = RST) ─► closed when either side is done
//	   UDP: datagram ─► flow per client addr:port (limits) ─► stack UDP
//	        endpoint connected to Target ─► replies back to the client
//	        from the listening socket ─► idle timeout
//	stack ── Read ─► engine: Target is a ClusterIP or this node's address
//	        at a nodePort (the engine's service stage picks a backend) or
//	        a pod's address (hostPort)
//	stack ◄─ Write ── engine: replies to the gateway address, from this
//	        node's pods and, through the underlay, from other nodes' pods;
//	        replies of KeepSource flows, to their clients' addresses
//
// Design notes. The flows leave from the first address of the node's
// podCIDR, the gateway: kube-proxy with flannel masquerades NodePort
// traffic to the cni0 address, which is the same address, so a pod on any
// node routes its replies back to this node, and the engine hands them to
// the gateway port. The client's own address is therefore not seen by the
// pod (externalTrafficPolicy: Cluster), except through a rule with
// KeepSource (externalTrafficPolicy: Local): its flows leave from the
// client's address and port, which the stack may use as it spoofs on its
// NIC (stack.SetSpoofing) and takes in packets to any address
// (stack.SetPromiscuousMode); the engine, seeing such a flow come from the
// gateway port, does not translate it and sends its replies back here
// (router/engine svc.go), not where the client's address routes. A host
// socket completes the TCP
// handshake before we know whether Target answers, so a refused or
// unreachable Target is a RST to the client after its connect succeeded,
// where iptables DNAT would have refused the connect itself. A rule whose
// port is taken on the host (EADDRINUSE) is skipped, counted and logged
// once; every later SetRules tries it again, and the other rules work.
package ingress

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// Errors.
var (
	// ErrClosed is returned by SetRules, Read and Write after Close.
	ErrClosed = link.ErrClosed
	// ErrRule wraps SetRules' errors about an invalid rule set (nothing
	// was changed).
	ErrRule = errors.New("ingress: invalid rule")
)

// Rule publishes Target on a host address: connections (TCP) and
// datagrams (UDP) to Listen are forwarded to Target.
type Rule struct {
	// Proto is packet.ProtoTCP or packet.ProtoUDP.
	Proto uint8
	// Listen is the host address and port; an unspecified address
	// (0.0.0.0, ::) listens on all the host's addresses of its family.
	Listen netip.AddrPort
	// Target is where flows go: a ClusterIP:port or a pod's address:port.
	Target netip.AddrPort
	// KeepSource makes flows leave from their client's own address and
	// port instead of the gateway (a nodePort of an externalTrafficPolicy
	// Local Service: Target is this node's address at the nodePort, whose
	// engine frontend sends the replies back to this port). A client
	// address that cannot leave the host (loopback, link-local: see
	// keptSource) or of another family than Target's still uses the
	// gateway.
	KeepSource bool
}

// String returns "tcp 0.0.0.0:30080->10.96.0.10:80", with " keep-source"
// after it for a rule that keeps its clients' addresses.
func (r Rule) String() string {
	s := protoName(r.Proto) + " " + r.Listen.String() + "->" + r.Target.String()
	if r.KeepSource {
		s += " keep-source"
	}
	return s
}

func protoName(p uint8) string {
	switch p {
	case packet.ProtoTCP:
		return "tcp"
	case packet.ProtoUDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// key is what a host socket is: its protocol and address.
type key struct {
	proto  uint8
	listen netip.AddrPort
}

func (r Rule) validate() error {
	if r.Proto != packet.ProtoTCP && r.Proto != packet.ProtoUDP {
		return fmt.Errorf("%w: %s: protocol must be tcp or udp", ErrRule, r)
	}
	l, t := r.Listen.Addr(), r.Target.Addr()
	if !l.IsValid() || l.Zone() != "" || l.Is4In6() || l.IsMulticast() || r.Listen.Port() == 0 {
		return fmt.Errorf("%w: %s: want a listen address with a port", ErrRule, r)
	}
	if !t.IsValid() || t.Zone() != "" || t.Is4In6() || t.IsUnspecified() || t.IsMulticast() || t.IsLoopback() || r.Target.Port() == 0 {
		return fmt.Errorf("%w: %s: want a unicast target with a port", ErrRule, r)
	}
	return nil
}

// Listener opens host sockets. *net.ListenConfig is one; a node whose host
// sockets live in another network namespace (tests, a rootless broker)
// hands in its own.
type Listener interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
}

// Defaults.
const (
	DefaultMTU               = 1500
	DefaultDialTimeout       = 10 * time.Second
	DefaultUDPIdle           = 60 * time.Second
	DefaultMaxFlows          = 65536
	DefaultMaxFlowsPerClient = 4096
)

// Config configures a Forwarder. Zero fields take the defaults.
type Config struct {
	// Gateway is the IPv4 address flows leave from (required): the pods'
	// gateway, engine.Gateway. Gateway6 is the IPv6 one (optional; without
	// it IPv6 targets are unreachable).
	Gateway, Gateway6 netip.Addr
	// MTU is the port's IP MTU (default DefaultMTU); give the engine port
	// the same.
	MTU int
	// Listener opens the host sockets (default &net.ListenConfig{}).
	Listener Listener
	// DialTimeout bounds a TCP dial to a Target (default
	// DefaultDialTimeout); the client's connection is then reset.
	DialTimeout time.Duration
	// UDPIdle closes a UDP flow with no datagram either way for this long
	// (default DefaultUDPIdle).
	UDPIdle time.Duration
	// MaxFlows bounds the TCP and UDP flows in total, MaxFlowsPerClient
	// those of one client address. A TCP connection over the limits is
	// reset, a datagram dropped.
	MaxFlows, MaxFlowsPerClient int
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

func (c *Config) setDefaults() error {
	if !c.Gateway.Is4() {
		return fmt.Errorf("ingress: Gateway %v: want an IPv4 address", c.Gateway)
	}
	if c.Gateway6.IsValid() && (!c.Gateway6.Is6() || c.Gateway6.Is4In6()) {
		return fmt.Errorf("ingress: Gateway6 %v: want an IPv6 address", c.Gateway6)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MTU, DefaultMTU)
	def(&c.MaxFlows, DefaultMaxFlows)
	def(&c.MaxFlowsPerClient, min(DefaultMaxFlowsPerClient, c.MaxFlows))
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.UDPIdle == 0 {
		c.UDPIdle = DefaultUDPIdle
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("ingress: MTU %d outside [1280, 65535]", c.MTU)
	}
	if c.MaxFlows < 1 || c.MaxFlowsPerClient < 1 || c.MaxFlowsPerClient > c.MaxFlows {
		return fmt.Errorf("ingress: MaxFlows %d, per client %d: want 1 <= per client <= total", c.MaxFlows, c.MaxFlowsPerClient)
	}
	if c.DialTimeout < 0 || c.UDPIdle < 0 {
		return errors.New("ingress: negative timeout")
	}
	if c.Listener == nil {
		c.Listener = &net.ListenConfig{}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

const nicID = 1

// Forwarder is the ingress port. It is a link.Device for the engine (L3:
// bare IP packets); attach it as a KindNetstack port with Gateway set and
// the same MTU. Its methods are safe for concurrent use.
type Forwarder struct {
	cfg Config
	log *zap.Logger
	ep  *netstackx.Endpoint
	s   *stack.Stack

	ctx    context.Context
	cancel context.CancelFunc

	setMu sync.Mutex // serialises SetRules

	mu        sync.Mutex
	closed    bool
	listeners map[key]*listener
	conflicts map[Rule]bool // rules skipped for EADDRINUSE (logged once each)
	flows     map[flow]*listener
	wg        sync.WaitGroup
	lim       limiter

	c counters
}

// flow is a live TCP connection or UDP flow: abort tears it down at once.
type flow interface{ abort() }

var _ link.Device = (*Forwarder)(nil)

// New builds a Forwarder with no rules. It owns goroutines only for its
// listening sockets and live flows.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ep, err := netstackx.NewEndpoint(netstackx.EndpointConfig{Framing: netstackx.L3, MTU: cfg.MTU, QueueLen: 4096})
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	f := &Forwarder{
		cfg: cfg, log: cfg.Logger.Named("ingress"), ep: ep, s: s,
		listeners: map[key]*listener{}, conflicts: map[Rule]bool{}, flows: map[flow]*listener{},
	}
	f.lim.init(cfg.MaxFlows, cfg.MaxFlowsPerClient)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	success := false
	defer func() {
		if !success {
			f.cancel()
			s.Close()
			s.Wait()
			_ = ep.Close()
		}
	}()
	if err := f.configure(); err != nil {
		return nil, err
	}
	success = true
	f.log.Info("ingress forwarder ready", zap.Stringer("gateway", cfg.Gateway), zap.Stringer("gateway6", cfg.Gateway6),
		zap.Int("mtu", cfg.MTU), zap.Int("maxFlows", cfg.MaxFlows))
	return f, nil
}

// TCP buffers, as egress's: a window above a LAN path's bandwidth-delay
// product.
var tcpBuffers = netstackx.TCPBuffers{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}

func (f *Forwarder) configure() error {
	s := f.s
	if err := netstackx.TuneTCP(s, tcpBuffers); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	if err := s.CreateNICWithOptions(nicID, f.ep.LinkEndpoint(), stack.NICOptions{Name: "ingress"}); err != nil {
		return fmt.Errorf("ingress: create NIC: %s", err)
	}
	add := func(proto tcpip.NetworkProtocolNumber, a netip.Addr) error {
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(a), PrefixLen: a.BitLen()}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("ingress: add address %s: %s", a, err)
		}
		return nil
	}
	if err := add(ipv4.ProtocolNumber, f.cfg.Gateway); err != nil {
		return err
	}
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	if f.cfg.Gateway6.IsValid() {
		if err := add(ipv6.ProtocolNumber, f.cfg.Gateway6); err != nil {
			return err
		}
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	s.SetRouteTable(routes)
	// KeepSource flows send from their clients' addresses and take the
	// replies to them: the engine delivers to this port only packets to
	// the gateway and the replies of such flows.
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("ingress: spoofing: %s", err)
	}
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("ingress: promiscuous mode: %s", err)
	}
	return nil
}

// BatchSize implements link.Device.
func (f *Forwarder) BatchSize() int { return f.ep.BatchSize() }

// Read implements link.Device: the packets the stack sends toward the
// targets, one copy each into the caller's buffers.
func (f *Forwarder) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return f.ep.Read(bufs, sizes, offset)
}

// Write implements link.Device: packets to the gateway addresses and the
// replies of KeepSource flows (to their clients' addresses: the NIC takes
// packets to any address) go to the stack; the stack answers anything it
// has no flow for as a host would (RST, ICMP port unreachable).
func (f *Forwarder) Write(bufs [][]byte, offset int) (int, error) {
	return f.ep.Write(bufs, offset)
}

// SetRules makes rs the published set: sockets of rules no longer in rs
// are closed (their flows reset), sockets of new rules opened, and the
// sockets and flows of rules still in rs kept. A rule whose Listen stays
// but whose Target changes keeps its socket; new flows go to the new
// Target. A rule whose socket cannot be opened (its port is taken) is
// skipped and reported in Stats and Conflicts; SetRules returns an error
// only for an invalid set (ErrRule: nothing changed) or after Close.
func (f *Forwarder) SetRules(rs []Rule) error {
	want := make(map[key]Rule, len(rs))
	for _, r := range rs {
		if err := r.validate(); err != nil {
			return err
		}
		k := key{r.Proto, r.Listen}
		if old, dup := want[k]; dup && old != r {
			return fmt.Errorf("%w: %s and %s listen on the same socket", ErrRule, old, r)
		}
		want[k] = r
	}
	f.setMu.Lock()
	defer f.setMu.Unlock()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	var gone []*listener
	for k, l := range f.listeners {
		r, ok := want[k]
		if !ok {
			delete(f.listeners, k)
			gone = append(gone, l)
			continue
		}
		if was := l.rule(); was != r {
			l.setTarget(r.Target, r.KeepSource)
			f.log.Info("published port retargeted", zap.Stringer("rule", r), zap.Stringer("was", was))
		}
	}
	var open []Rule
	for k, r := range want {
		if _, ok := f.listeners[k]; !ok {
			open = append(open, r)
		}
	}
	for r := range f.conflicts {
		if want[key{r.Proto, r.Listen}] != r {
			delete(f.conflicts, r)
		}
	}
	f.mu.Unlock()
	for _, l := range gone {
		f.closeListener(l)
		f.log.Info("published port closed", zap.Stringer("rule", l.rule()))
	}
	slices.SortFunc(open, compareRules)
	for _, r := range open {
		l, err := f.openListener(r)
		f.mu.Lock()
		switch {
		case err == nil && f.closed:
			f.mu.Unlock()
			f.closeListener(l)
			return ErrClosed
		case err == nil:
			f.listeners[key{r.Proto, r.Listen}] = l
			delete(f.conflicts, r)
			l.start()
			f.mu.Unlock()
			f.log.Info("published port opened", zap.Stringer("rule", r))
		default:
			warned := f.conflicts[r]
			f.conflicts[r] = true
			f.mu.Unlock()
			if errors.Is(err, syscall.EADDRINUSE) {
				f.c.conflicts.Add(1)
			} else {
				f.c.listenErrors.Add(1)
			}
			if !warned {
				f.log.Warn("cannot publish port; rule skipped", zap.Stringer("rule", r), zap.Error(err))
			}
		}
	}
	return nil
}

func compareRules(a, b Rule) int {
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	if c := a.Listen.Compare(b.Listen); c != 0 {
		return c
	}
	if c := a.Target.Compare(b.Target); c != 0 {
		return c
	}
	switch {
	case a.KeepSource == b.KeepSource:
		return 0
	case b.KeepSource:
		return -1
	}
	return 1
}

// Rules returns the rules whose sockets are open, sorted.
func (f *Forwarder) Rules() []Rule {
	f.mu.Lock()
	out := make([]Rule, 0, len(f.listeners))
	for _, l := range f.listeners {
		out = append(out, l.rule())
	}
	f.mu.Unlock()
	slices.SortFunc(out, compareRules)
	return out
}

// Conflicts returns the rules of the current set whose sockets could not
// be opened (the port is taken, or the address is not the host's), sorted.
func (f *Forwarder) Conflicts() []Rule {
	f.mu.Lock()
	out := make([]Rule, 0, len(f.conflicts))
	for r := range f.conflicts {
		out = append(out, r)
	}
	f.mu.Unlock()
	slices.SortFunc(out, compareRules)
	return out
}

// listener is one host socket and the rule it serves.
type listener struct {
	f     *Forwarder
	proto uint8
	addr  netip.AddrPort
	tgt   atomic.Pointer[target]
	ln    net.Listener   // TCP
	pc    net.PacketConn // UDP
	done  chan struct{}  // closed when the accept/read loop has returned

	mu    sync.Mutex // UDP flows by client
	udp   map[netip.AddrPort]*udpFlow
	dying bool
}

// target is where a listener's new flows go, and whether they keep their
// client's address (Rule.Target, KeepSource).
type target struct {
	addr netip.AddrPort
	keep bool
}

func (l *listener) target() target { return *l.tgt.Load() }
func (l *listener) setTarget(t netip.AddrPort, keep bool) {
	l.tgt.Store(&target{addr: t, keep: keep})
}
func (l *listener) rule() Rule {
	t := l.target()
	return Rule{Proto: l.proto, Listen: l.addr, Target: t.addr, KeepSource: t.keep}
}

func (f *Forwarder) openListener(r Rule) (*listener, error) {
	l := &listener{f: f, proto: r.Proto, addr: r.Listen, done: make(chan struct{})}
	l.setTarget(r.Target, r.KeepSource)
	family := "4"
	if r.Listen.Addr().Is6() {
		family = "6"
	}
	var err error
	if r.Proto == packet.ProtoTCP {
		l.ln, err = f.cfg.Listener.Listen(f.ctx, "tcp"+family, r.Listen.String())
	} else {
		l.pc, err = f.cfg.Listener.ListenPacket(f.ctx, "udp"+family, r.Listen.String())
		l.udp = map[netip.AddrPort]*udpFlow{}
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// start runs the listener's loop; the caller holds f.mu (so Close waits
// for it).
func (l *listener) start() {
	l.f.wg.Add(1)
	go func() {
		defer l.f.wg.Done()
		defer close(l.done)
		if l.ln != nil {
			l.acceptLoop()
		} else {
			l.readLoop()
		}
	}()
}

// closeListener closes l's socket, waits for its loop and aborts its
// flows.
func (f *Forwarder) closeListener(l *listener) {
	if l.ln != nil {
		_ = l.ln.Close()
	} else {
		_ = l.pc.Close()
	}
	<-l.done
	f.mu.Lock()
	var fl []flow
	for x, owner := range f.flows {
		if owner == l {
			fl = append(fl, x)
		}
	}
	f.mu.Unlock()
	for _, x := range fl {
		x.abort()
	}
}

// Close implements link.Device: it closes every host socket, aborts every
// flow (RST both ways for TCP), closes the stack and the port and waits
// for the goroutines. It is idempotent.
func (f *Forwarder) Close() error {
	f.setMu.Lock()
	defer f.setMu.Unlock()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	ls := make([]*listener, 0, len(f.listeners))
	for _, l := range f.listeners {
		ls = append(ls, l)
	}
	clear(f.listeners)
	f.mu.Unlock()
	f.cancel()
	for _, l := range ls {
		f.closeListener(l)
	}
	_ = f.ep.Close()
	f.mu.Lock()
	fl := make([]flow, 0, len(f.flows))
	for x := range f.flows {
		fl = append(fl, x)
	}
	f.mu.Unlock()
	for _, x := range fl {
		x.abort()
	}
	f.s.Close()
	f.s.Wait()
	f.wg.Wait()
	f.log.Info("ingress forwarder closed")
	return nil
}

// track registers a live flow of l; false when the forwarder is closing
// (the caller tears the flow down). On true the caller owns a wg count,
// released by untrack.
func (f *Forwarder) track(fl flow, l *listener) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.flows[fl] = l
	f.wg.Add(1)
	return true
}

func (f *Forwarder) untrack(fl flow, client netip.Addr) {
	f.mu.Lock()
	_, ok := f.flows[fl]
	delete(f.flows, fl)
	f.mu.Unlock()
	if ok {
		f.lim.release(client)
		f.wg.Done()
	}
}

// Stats is a snapshot of a Forwarder's counters.
type Stats struct {
	Listeners       int    // host sockets open
	Conflicts       uint64 // sockets not opened: the port is taken (EADDRINUSE)
	ListenErrors    uint64 // sockets not opened for another reason
	TCPAccepted     uint64 // client connections accepted
	TCPConnected    uint64 // dials to a Target that connected (flows spliced)
	TCPDialFailed   uint64 // dials refused, unreachable or timed out: client reset
	TCPFlowLimited  uint64 // connections reset: too many flows
	TCPResetsClient uint64 // flows reset toward the client (the target reset, or we aborted)
	TCPResetsTarget uint64 // flows reset toward the target (the client reset)
	SourceKept      uint64 // TCP and UDP flows that left from their client's address (Rule.KeepSource)
	UDPFlows        uint64 // UDP flows opened
	UDPFlowLimited  uint64 // datagrams dropped: too many flows
	UDPIdleClosed   uint64 // UDP flows closed after their idle timeout
	UDPErrors       uint64 // UDP flows that could not reach their Target
	BytesToTarget   uint64 // TCP and UDP payload bytes sent to targets
	BytesToClient   uint64 // TCP and UDP payload bytes sent to clients
	ActiveFlows     int
	Endpoint        netstackx.EndpointStats
}

type counters struct {
	conflicts, listenErrors                                  atomic.Uint64
	tcpAccepted, tcpConnected, tcpDialFailed, tcpFlowLimited atomic.Uint64
	tcpResetsClient, tcpResetsTarget, sourceKept             atomic.Uint64
	udpFlows, udpFlowLimited, udpIdleClosed, udpErrors       atomic.Uint64
	bytesToTarget, bytesToClient                             atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (f *Forwarder) Stats() Stats {
	c := &f.c
	f.mu.Lock()
	n := len(f.listeners)
	f.mu.Unlock()
	return Stats{
		Listeners: n, Conflicts: c.conflicts.Load(), ListenErrors: c.listenErrors.Load(),
		TCPAccepted: c.tcpAccepted.Load(), TCPConnected: c.tcpConnected.Load(), TCPDialFailed: c.tcpDialFailed.Load(),
		TCPFlowLimited: c.tcpFlowLimited.Load(), TCPResetsClient: c.tcpResetsClient.Load(), TCPResetsTarget: c.tcpResetsTarget.Load(),
		SourceKept: c.sourceKept.Load(), UDPFlows: c.udpFlows.Load(), UDPFlowLimited: c.udpFlowLimited.Load(), UDPIdleClosed: c.udpIdleClosed.Load(),
		UDPErrors: c.udpErrors.Load(), BytesToTarget: c.bytesToTarget.Load(), BytesToClient: c.bytesToClient.Load(),
		ActiveFlows: f.lim.inUse(), Endpoint: f.ep.Stats(),
	}
}

// limiter counts flows in total and per client address.
type limiter struct {
	mu         sync.Mutex
	total, per int
	used       int
	by         map[netip.Addr]int
}

func (l *limiter) init(total, per int) { l.total, l.per, l.by = total, per, map[netip.Addr]int{} }

func (l *limiter) acquire(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used >= l.total || l.by[a] >= l.per {
		return false
	}
	l.by[a]++
	l.used++
	return true
}

func (l *limiter) release(a netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch n := l.by[a]; {
	case n > 1:
		l.by[a] = n - 1
	case n == 1:
		delete(l.by, a)
	default:
		return
	}
	l.used--
}

func (l *limiter) inUse() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used
}

func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(ap.Addr()), Port: ap.Port()}
}

// netProto is the stack's protocol for dst, or false when the forwarder
// has no source address of dst's family.
func (f *Forwarder) netProto(dst netip.Addr) (tcpip.NetworkProtocolNumber, bool) {
	if dst.Is4() {
		return ipv4.ProtocolNumber, true
	}
	return ipv6.ProtocolNumber, f.cfg.Gateway6.IsValid()
}

// keptSource returns the address a flow from client to the target t
// leaves from: client itself when t keeps sources and client can be a
// pod's peer (a unicast address that is not loopback or link-local: a
// pod drops the former and answers the latter on its own link), of t's
// family; else the zero AddrPort (the stack's gateway address).
func keptSource(t target, client netip.AddrPort) netip.AddrPort {
	a := client.Addr()
	if !t.keep || !a.IsGlobalUnicast() || a.Is4() != t.addr.Addr().Is4() {
		return netip.AddrPort{}
	}
	return client
}

// bindSource binds ep to src when src is valid: to its port first, else
// (the stack still holds that port for the address: a flow from the same
// client port to another of the host's addresses, or one in TIME-WAIT) to
// a port of the stack's choosing, so that the target still sees the
// client's address. Without src it binds ep to the gateway address of
// dst's family: with spoofing on, the stack would otherwise pick as a
// flow's source any address it has seen (a kept client's).
func (f *Forwarder) bindSource(ep tcpip.Endpoint, src, dst netip.AddrPort) tcpip.Error {
	if !src.IsValid() {
		gw := f.cfg.Gateway
		if dst.Addr().Is6() {
			gw = f.cfg.Gateway6
		}
		return ep.Bind(fullAddr(netip.AddrPortFrom(gw, 0)))
	}
	if ep.Bind(fullAddr(src)) == nil {
		return nil
	}
	return ep.Bind(fullAddr(netip.AddrPortFrom(src.Addr(), 0)))
}

// clientAddr returns a host socket's peer address, unmapped.
func clientAddr(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch x := a.(type) {
	case *net.TCPAddr:
		ap = x.AddrPort()
	case *net.UDPAddr:
		ap = x.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
