// Package egress is podrouter's default way out of the cluster, and needs
// no privileges: an engine port (KindEgress, L3) whose packets go into a
// gVisor stack in promiscuous and spoofing mode, which terminates every TCP
// connection and UDP flow to any address, and re-originates each from an
// ordinary host socket, so the world sees the node's address. ICMP echo
// goes out through unprivileged ping sockets.
//
//	engine ── Write ──► ICMP echo request? ── ping socket per (pod, dst, id) ─┐
//	                └─► gVisor stack (any dst accepted, replies spoofed from it)
//	                      TCP SYN ─► limits ─► dial (concurrent, timeout) ─► handshake
//	                                 or RST (refused) / ICMP unreachable ─► splice
//	                      UDP     ─► limits ─► host UDP socket per flow ─► relay, idle timeout
//	engine ◄── Read ─── NIC queue ◄── replies from the original destination ◄─┘
//
// Design notes. A TCP flow is accepted only once the host socket has
// connected (tailscale's netstack and gvisor-tap-vsock do the same): the
// pod's SYN waits while we dial, so a refused connection is a RST and an
// unreachable one an ICMP error, exactly as without us, and a destination
// that never answers costs one goroutine until the dial times out, never a
// blocked handshake for anyone else. Splicing keeps TCP semantics end to
// end: a FIN becomes a half-close (CloseWrite) on the other side, a RST a
// RST (an aborted gVisor endpoint toward the pod, SO_LINGER 0 toward the
// remote). Limits are counted per pod (source address) as well as in total,
// and the last eighth of each total is kept for pods below their fair
// share, so one pod cannot starve the others (limit.go).
package egress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/link"
)

// ErrClosed is returned by New's result after Close (Write, Read).
var ErrClosed = link.ErrClosed

// Dialer opens the host side of a flow: "tcp" or "udp" to an address
// "ip:port" (an IP literal). *net.Dialer is one; tests map addresses, and a
// node running in a network namespace dials from inside it. DialContext
// must give up when ctx ends (Close cancels dials in flight and waits for
// them), and a "tcp" connection must have CloseWrite (as *net.TCPConn).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// PingDialer opens a connected ICMP echo socket to dst (ICMPv4 or ICMPv6 by
// dst's family): Write sends an echo message (type, code, checksum,
// identifier, sequence, data; the socket may replace the identifier and
// checksum), Read returns one reply message from dst. DialPing, the
// default, uses an unprivileged ping socket.
type PingDialer func(ctx context.Context, dst netip.Addr) (net.Conn, error)

// Defaults.
const (
	DefaultMTU            = 1500
	DefaultDialTimeout    = 30 * time.Second
	DefaultUDPIdle        = 60 * time.Second
	DefaultDNSIdle        = 10 * time.Second
	DefaultICMPIdle       = 30 * time.Second
	DefaultMaxFlows       = 65536
	DefaultMaxDials       = 4096
	DefaultMaxFlowsPerPod = 4096
	DefaultMaxDialsPerPod = 256
)

// Config configures a Forwarder. Zero fields take the defaults.
type Config struct {
	// MTU is the port's IP MTU (default DefaultMTU); give the engine port
	// the same.
	MTU int
	// Dialer opens host sockets (default &net.Dialer{}).
	Dialer Dialer
	// Ping opens ping sockets (default DialPing).
	Ping PingDialer
	// DialTimeout bounds a TCP dial (default DefaultDialTimeout). A dial
	// that times out is dropped silently: the pod's SYN was never answered,
	// as if we were not there.
	DialTimeout time.Duration
	// UDPIdle closes a UDP flow with no datagram either way for this long
	// (default DefaultUDPIdle); DNSIdle applies instead to flows to port 53
	// (default DefaultDNSIdle).
	UDPIdle, DNSIdle time.Duration
	// ICMPIdle closes an echo flow (its ping socket) after this long
	// without a request or reply (default DefaultICMPIdle).
	ICMPIdle time.Duration
	// MaxFlows bounds the TCP, UDP and echo flows in total, MaxFlowsPerPod
	// those of one source address.
	MaxFlows, MaxFlowsPerPod int
	// MaxDials bounds the TCP dials in flight (SYNs not yet answered), in
	// total and per source address.
	MaxDials, MaxDialsPerPod int
	// Allow, when set, is asked about every packet's source and
	// destination before the forwarder handles it: packets it refuses
	// (flows that must keep their source, as pod <-> cluster under the
	// masquerade policy) are dropped and counted as NotAllowed. It runs on
	// the engine's worker, per packet: it must be quick, must not block and
	// must not allocate.
	Allow func(src, dst netip.Addr) bool
	// DenyUDP, when set, is asked about every UDP packet's destination
	// (unfragmented, without IPv6 extension headers): packets to the
	// addresses it names (other nodes' underlay endpoints: a pod must not
	// inject into another node's underlay from this node's address) are
	// dropped and counted as UnderlayDenied. Same rules as Allow: quick,
	// no blocking, no allocation.
	DenyUDP func(dst netip.AddrPort) bool
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

func (c *Config) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MTU, DefaultMTU)
	def(&c.MaxFlows, DefaultMaxFlows)
	def(&c.MaxDials, DefaultMaxDials)
	def(&c.MaxFlowsPerPod, min(DefaultMaxFlowsPerPod, c.MaxFlows))
	def(&c.MaxDialsPerPod, min(DefaultMaxDialsPerPod, c.MaxDials))
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defD(&c.DialTimeout, DefaultDialTimeout)
	defD(&c.UDPIdle, DefaultUDPIdle)
	defD(&c.DNSIdle, DefaultDNSIdle)
	defD(&c.ICMPIdle, DefaultICMPIdle)
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("egress: MTU %d outside [1280, 65535]", c.MTU)
	}
	for _, l := range []struct {
		name       string
		total, per int
	}{{"MaxFlows", c.MaxFlows, c.MaxFlowsPerPod}, {"MaxDials", c.MaxDials, c.MaxDialsPerPod}} {
		if l.total < 1 || l.per < 1 || l.per > l.total {
			return fmt.Errorf("egress: %s %d, per pod %d: want 1 <= per pod <= total", l.name, l.total, l.per)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DialTimeout", c.DialTimeout}, {"UDPIdle", c.UDPIdle}, {"DNSIdle", c.DNSIdle}, {"ICMPIdle", c.ICMPIdle}} {
		if d.v < 0 {
			return fmt.Errorf("egress: %s %v is negative", d.name, d.v)
		}
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
	if c.Ping == nil {
		c.Ping = DialPing
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

const nicID = 1

// Forwarder is the egress port. It is a link.Device for the engine (L3:
// bare IP packets); attach it as a KindEgress port with the same MTU and
// route 0.0.0.0/0 and ::/0 to it.
type Forwarder struct {
	cfg Config
	log *zap.Logger
	ep  *netstackx.Endpoint
	s   *stack.Stack
	tcp *tcp.Forwarder

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	pending map[stack.TransportEndpointID]*synInfo // SYNs handed to gVisor's forwarder
	dialing map[*synInfo]struct{}                  // SYNs being dialled
	flows   map[flowCloser]netip.Addr              // live flows by source
	pings   map[pingKey]*pingFlow
	wg      sync.WaitGroup
	dials   limiter // in-flight TCP dials
	conns   limiter // TCP, UDP and echo flows

	pingWarn sync.Once
	c        counters
}

// flowCloser is a live flow: abort tears it down at once (RST both ways
// for TCP); info describes it for Flows.
type flowCloser interface {
	abort()
	info() Flow
}

var _ link.Device = (*Forwarder)(nil)

// New builds a Forwarder. It owns goroutines only for live flows.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ep, err := netstackx.NewEndpoint(netstackx.EndpointConfig{Framing: netstackx.L3, MTU: cfg.MTU, QueueLen: 4096})
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	f := &Forwarder{
		cfg: cfg, log: cfg.Logger.Named("egress"), ep: ep, s: s,
		pending: map[stack.TransportEndpointID]*synInfo{},
		dialing: map[*synInfo]struct{}{},
		flows:   map[flowCloser]netip.Addr{},
		pings:   map[pingKey]*pingFlow{},
	}
	f.dials.init(cfg.MaxDials, cfg.MaxDialsPerPod)
	f.conns.init(cfg.MaxFlows, cfg.MaxFlowsPerPod)
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
	f.log.Info("egress forwarder ready", zap.Int("mtu", cfg.MTU), zap.Int("maxFlows", cfg.MaxFlows),
		zap.Int("maxFlowsPerPod", cfg.MaxFlowsPerPod), zap.Int("maxDials", cfg.MaxDials),
		zap.Int("maxDialsPerPod", cfg.MaxDialsPerPod), zap.Duration("dialTimeout", cfg.DialTimeout))
	return f, nil
}

// TCP buffers: throughput needs a window well above the bandwidth-delay
// product of a host socket's loopback or LAN path.
var tcpBuffers = netstackx.TCPBuffers{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}

func (f *Forwarder) configure() error {
	s := f.s
	if err := netstackx.TuneTCP(s, tcpBuffers); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	if err := s.CreateNICWithOptions(nicID, f.ep.LinkEndpoint(), stack.NICOptions{Name: "egress"}); err != nil {
		return fmt.Errorf("egress: create NIC: %s", err)
	}
	// Promiscuous: accept packets to any address. Spoofing: send replies
	// from that address.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("egress: promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("egress: spoofing: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	// The gVisor forwarder's own in-flight cap is above ours: we drop SYNs
	// over the limits before it sees them.
	f.tcp = tcp.NewForwarder(s, 0, f.cfg.MaxDials+1, f.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, f.tcpSYN)
	u := udp.NewForwarder(s, f.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, u.HandlePacket)
	return nil
}

// BatchSize implements link.Device.
func (f *Forwarder) BatchSize() int { return f.ep.BatchSize() }

// Read implements link.Device: the packets the stack sends toward the
// pods (replies from the original destinations, RSTs, ICMP errors, echo
// replies), one copy each into the caller's buffers.
func (f *Forwarder) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return f.ep.Read(bufs, sizes, offset)
}

// Write implements link.Device: every packet bufs[i][offset:] (a bare IP
// packet from a pod) goes to the stack, but ICMP echo requests, which go
// to ping sockets, and packets Config.Allow refuses, which are dropped.
// Malformed packets are dropped and counted.
func (f *Forwarder) Write(bufs [][]byte, offset int) (int, error) {
	start := 0
	for i, b := range bufs {
		if offset > len(b) {
			continue
		}
		echo := isEchoRequest(b[offset:])
		denied := false
		if f.cfg.Allow != nil {
			if src, dst, ok := ipAddrs(b[offset:]); ok && !f.cfg.Allow(src, dst) {
				denied = true
			}
		}
		toUnderlay := false
		if !denied && f.cfg.DenyUDP != nil {
			if dst, ok := udpDst(b[offset:]); ok && f.cfg.DenyUDP(dst) {
				denied, toUnderlay = true, true
			}
		}
		if !echo && !denied {
			continue
		}
		if start < i {
			if _, err := f.ep.Write(bufs[start:i], offset); err != nil {
				return start, err
			}
		}
		switch {
		case toUnderlay:
			f.c.underlayDenied.Add(1)
		case denied:
			f.c.notAllowed.Add(1)
		default:
			f.handleEcho(b[offset:])
		}
		start = i + 1
	}
	if start < len(bufs) {
		if _, err := f.ep.Write(bufs[start:], offset); err != nil {
			return start, err
		}
	}
	return len(bufs), nil
}

// Close implements link.Device: it aborts every flow (a RST to the pod and
// to the remote for TCP), closes the stack and the port, and waits for the
// flows' goroutines. It is idempotent.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	flows := make([]flowCloser, 0, len(f.flows))
	for fl := range f.flows {
		flows = append(flows, fl)
	}
	f.mu.Unlock()
	f.cancel() // dials in flight give up
	_ = f.ep.Close()
	for _, fl := range flows {
		fl.abort()
	}
	f.s.Close()
	f.s.Wait()
	f.wg.Wait()
	f.log.Info("egress forwarder closed")
	return nil
}

// ResetSource aborts every flow of the pod with address src (it went
// away) and returns how many there were.
func (f *Forwarder) ResetSource(src netip.Addr) int {
	f.mu.Lock()
	var flows []flowCloser
	for fl, a := range f.flows {
		if a == src {
			flows = append(flows, fl)
		}
	}
	f.mu.Unlock()
	for _, fl := range flows {
		fl.abort()
	}
	return len(flows)
}

// track registers a live flow; it returns false when the forwarder is
// closing (the caller then tears the flow down itself). On true the caller
// owns a wg count, released by untrack.
func (f *Forwarder) track(fl flowCloser, src netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.flows[fl] = src
	f.wg.Add(1)
	return true
}

func (f *Forwarder) untrack(fl flowCloser) {
	f.mu.Lock()
	src, ok := f.flows[fl]
	delete(f.flows, fl)
	f.mu.Unlock()
	if ok {
		f.conns.release(src)
		f.wg.Done()
	}
}

// goTracked runs fn on a goroutine that Close waits for, unless the
// forwarder is closing.
func (f *Forwarder) goTracked(fn func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		fn()
	}()
	return true
}

// Stats is a snapshot of a Forwarder's counters.
type Stats struct {
	TCPDials         uint64 // SYNs accepted for a dial
	TCPConnected     uint64 // dials that connected (flows spliced)
	TCPRefused       uint64 // dials refused: RST to the pod
	TCPUnreachable   uint64 // dials failed with host or net unreachable: ICMP to the pod
	TCPDialTimeouts  uint64 // dials that timed out: the SYN goes unanswered
	TCPDialErrors    uint64 // other dial failures: RST to the pod
	TCPDialLimited   uint64 // SYNs dropped: too many dials in flight (the pod retries)
	TCPFlowLimited   uint64 // SYNs refused with RST: too many flows
	TCPResetsToPod   uint64 // flows reset toward the pod (the remote reset, or we aborted)
	TCPResetsToHost  uint64 // flows reset toward the remote (the pod reset)
	UDPFlows         uint64 // UDP flows opened
	UDPFlowLimited   uint64 // datagrams dropped: too many flows
	UDPDialErrors    uint64 // host UDP sockets that could not be opened
	UDPIdleClosed    uint64 // UDP flows closed after their idle timeout
	ICMPEchoRequests uint64 // echo requests sent out through ping sockets
	ICMPEchoReplies  uint64 // echo replies delivered to pods
	ICMPEchoDropped  uint64 // echo requests dropped (flow limit, full queue, socket error)
	PingUnsupported  uint64 // echo requests dropped: ping sockets not permitted (net.ipv4.ping_group_range)
	ICMPErrorsSent   uint64 // ICMP errors sent to pods (unreachable)
	Denied           uint64 // packets to destinations never dialled (loopback, unspecified, multicast): RST or dropped
	NotAllowed       uint64 // packets dropped because Config.Allow refused them
	UnderlayDenied   uint64 // UDP packets dropped because Config.DenyUDP named their destination
	BytesToRemote    uint64 // TCP and UDP payload bytes sent to the outside
	BytesToPod       uint64 // TCP and UDP payload bytes sent to pods
	ActiveFlows      int    // TCP, UDP and echo flows now
	DialsInFlight    int
	Endpoint         netstackx.EndpointStats
}

type counters struct {
	tcpDials, tcpConnected, tcpRefused, tcpUnreachable, tcpDialTimeouts, tcpDialErrors atomic.Uint64
	tcpDialLimited, tcpFlowLimited, tcpResetsToPod, tcpResetsToHost                    atomic.Uint64
	udpFlows, udpFlowLimited, udpDialErrors, udpIdleClosed                             atomic.Uint64
	echoRequests, echoReplies, echoDropped, pingUnsupported, icmpErrorsSent, denied    atomic.Uint64
	notAllowed, underlayDenied                                                         atomic.Uint64
	bytesToRemote, bytesToPod                                                          atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (f *Forwarder) Stats() Stats {
	c := &f.c
	return Stats{
		TCPDials: c.tcpDials.Load(), TCPConnected: c.tcpConnected.Load(), TCPRefused: c.tcpRefused.Load(),
		TCPUnreachable: c.tcpUnreachable.Load(), TCPDialTimeouts: c.tcpDialTimeouts.Load(),
		TCPDialErrors: c.tcpDialErrors.Load(), TCPDialLimited: c.tcpDialLimited.Load(),
		TCPFlowLimited: c.tcpFlowLimited.Load(), TCPResetsToPod: c.tcpResetsToPod.Load(),
		TCPResetsToHost: c.tcpResetsToHost.Load(), UDPFlows: c.udpFlows.Load(),
		UDPFlowLimited: c.udpFlowLimited.Load(), UDPDialErrors: c.udpDialErrors.Load(),
		UDPIdleClosed: c.udpIdleClosed.Load(), ICMPEchoRequests: c.echoRequests.Load(),
		ICMPEchoReplies: c.echoReplies.Load(), ICMPEchoDropped: c.echoDropped.Load(),
		PingUnsupported: c.pingUnsupported.Load(), ICMPErrorsSent: c.icmpErrorsSent.Load(), Denied: c.denied.Load(), NotAllowed: c.notAllowed.Load(), UnderlayDenied: c.underlayDenied.Load(),
		BytesToRemote: c.bytesToRemote.Load(), BytesToPod: c.bytesToPod.Load(),
		ActiveFlows: f.conns.inUse(), DialsInFlight: f.dials.inUse(),
		Endpoint: f.ep.Stats(),
	}
}

// inject hands an IP packet the forwarder built itself (an ICMP error or
// echo reply) to the port, toward the pods.
func (f *Forwarder) inject(pkt []byte) {
	proto := header.IPv4ProtocolNumber
	if pkt[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	if err := f.s.WriteRawPacket(nicID, proto, buffer.MakeWithData(pkt)); err != nil {
		f.log.Debug("inject failed", zap.String("err", err.String()))
	}
}

func fromTCPIP(a tcpip.Address) netip.Addr {
	x, _ := netip.AddrFromSlice(a.AsSlice())
	return x
}

// allowed reports whether the forwarder may open a host socket to dst on a
// pod's behalf. Loopback, unspecified, multicast and IPv4-mapped IPv6
// destinations are refused: a Linux router drops such packets as martians,
// and dialling them from the node would hand pods the node's own loopback
// services.
func allowed(dst netip.Addr) bool {
	return dst.IsValid() && !dst.IsLoopback() && !dst.IsUnspecified() && !dst.IsMulticast() &&
		!dst.Is4In6() && dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
