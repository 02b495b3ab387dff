package netstackx

// A virtual pod: one gVisor stack, one NIC on an Endpoint.
//
// Routing inside a pod, for both framings: an on-link route for the pod's
// prefix (Addr, and Addr6 when set) and a default route via Gateway (and
// Gateway6). With L2 framing the stack ARPs (or solicits) the destination
// for on-link traffic and the gateway for everything else, exactly like a
// pod's eth0 behind a bridge. With L3 framing there is no link-layer
// addressing, so the next hop only selects the NIC: every packet leaves
// through the single port whatever the route says.
//
// Design notes: TCP is tuned for throughput (SACK, CUBIC, receive buffer
// moderation, 4 MiB default buffers). Path MTU discovery: gVisor's TCP sets
// DF on every segment unless a socket opts out (the zero PMTUD strategy,
// PMTUDiscoveryWant, already sets DF), and its HandleError lowers the
// connection's MSS on ICMP fragmentation-needed / packet-too-big. We set
// PMTUDiscoveryDo explicitly on every dialled and accepted connection, so
// the behaviour does not depend on that default.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/podrouter/podrouter/router/link"
)

// ErrPodClosed is returned by a Pod's socket methods (Dial*, Listen*, Ping,
// SendUDPWithTTL) after Close.
var ErrPodClosed = errors.New("netstackx: pod closed")

const (
	nicID = 1
)

// podTCPBuffers are a Pod's TCP buffers: a pod's flows are loopback-fast.
var podTCPBuffers = TCPBuffers{Min: 4 << 10, Default: 4 << 20, Max: 16 << 20}

// TCPBuffers is the range of a TCP socket's send and receive buffer
// sizes, in bytes; gVisor's moderation grows a receive buffer from Default
// up to Max.
type TCPBuffers struct{ Min, Default, Max int }

// TuneTCP sets the TCP options every stack of ours runs with (a Pod's and
// the egress forwarder's): SACK, receive buffer moderation, CUBIC, and
// send and receive buffers of bufs. Call it before the stack has
// endpoints. The error names the option and wraps gVisor's error as a Pod's
// errors do.
func TuneTCP(s *stack.Stack, bufs TCPBuffers) error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	cubic := tcpip.CongestionControlOption("cubic")
	sndBuf := tcpip.TCPSendBufferSizeRangeOption{Min: bufs.Min, Default: bufs.Default, Max: bufs.Max}
	rcvBuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: bufs.Min, Default: bufs.Default, Max: bufs.Max}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &cubic, &sndBuf, &rcvBuf} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("tcp option %T: %w", opt, tcpipErr(err))
		}
	}
	return nil
}

// PodConfig describes a virtual pod.
type PodConfig struct {
	// Name names the pod's NIC (diagnostics only). Defaults to "pod-<Addr>".
	Name string
	// Addr is the pod's IPv4 address with its podCIDR's length, for
	// example 10.244.1.5/24. Required.
	Addr netip.Prefix
	// Gateway is the IPv4 default gateway, inside Addr's prefix. Required.
	Gateway netip.Addr
	// Addr6 is an optional IPv6 address with prefix length.
	Addr6 netip.Prefix
	// Gateway6 is the optional IPv6 default gateway, inside Addr6's prefix
	// or link-local. It requires Addr6.
	Gateway6 netip.Addr
	// MTU is the IP MTU; zero means DefaultMTU. At least 1280 with Addr6.
	MTU int
	// MAC is the L2 address; when nil a locally administered one is
	// derived from Addr (02:50:a:b:c:d). Must be nil with L3.
	MAC net.HardwareAddr
	// L3 makes the pod's link carry raw IP packets (no Ethernet, no ARP).
	L3 bool
}

// Pod is a virtual pod: a gVisor netstack whose only NIC is an Endpoint.
// Its methods are safe for concurrent use.
type Pod struct {
	name  string
	addr  netip.Prefix
	addr6 netip.Prefix
	ep    *Endpoint
	s     *stack.Stack

	pingSeq   atomic.Uint32
	closed    atomic.Bool
	closeOnce sync.Once
}

// NewPod validates cfg and builds the pod's stack.
func NewPod(cfg PodConfig) (*Pod, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("netstackx: pod %q: %w", cfg.Name, err)
	}
	framing := L2
	if cfg.L3 {
		framing = L3
	}
	ep, err := NewEndpoint(EndpointConfig{Framing: framing, MTU: cfg.MTU, MAC: cfg.MAC})
	if err != nil {
		return nil, fmt.Errorf("netstackx: pod %q: %w", cfg.Name, err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{
			tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
		},
		HandleLocal: true,
	})
	p := &Pod{name: cfg.Name, addr: cfg.Addr, addr6: cfg.Addr6, ep: ep, s: s}
	success := false
	defer func() {
		if !success {
			s.Close()
			s.Wait()
			_ = ep.Close()
		}
	}()
	if err := p.configure(&cfg); err != nil {
		return nil, fmt.Errorf("netstackx: pod %q: %w", cfg.Name, err)
	}
	success = true
	return p, nil
}

func (cfg *PodConfig) validate() error {
	if !cfg.Addr.IsValid() {
		return errors.New("Addr: required")
	}
	if !cfg.Addr.Addr().Is4() {
		return fmt.Errorf("Addr: %s is not an IPv4 prefix", cfg.Addr)
	}
	if err := checkHostAddr(cfg.Addr.Addr()); err != nil {
		return fmt.Errorf("Addr: %w", err)
	}
	if !cfg.Gateway.IsValid() {
		return errors.New("Gateway: required")
	}
	if !cfg.Gateway.Is4() {
		return fmt.Errorf("Gateway: %s is not an IPv4 address", cfg.Gateway)
	}
	if !cfg.Addr.Contains(cfg.Gateway) || cfg.Gateway == cfg.Addr.Addr() {
		return fmt.Errorf("Gateway: %s is not another address of %s", cfg.Gateway, cfg.Addr.Masked())
	}
	if cfg.Addr6.IsValid() {
		a := cfg.Addr6.Addr()
		if !a.Is6() || a.Is4In6() {
			return fmt.Errorf("Addr6: %s is not an IPv6 prefix", cfg.Addr6)
		}
		if err := checkHostAddr(a); err != nil {
			return fmt.Errorf("Addr6: %w", err)
		}
	}
	if cfg.Gateway6.IsValid() {
		if !cfg.Addr6.IsValid() {
			return errors.New("Gateway6: set without Addr6")
		}
		g := cfg.Gateway6
		if !g.Is6() || g.Is4In6() {
			return fmt.Errorf("Gateway6: %s is not an IPv6 address", g)
		}
		onLink := cfg.Addr6.Contains(g) || g.IsLinkLocalUnicast()
		if !onLink || g == cfg.Addr6.Addr() {
			return fmt.Errorf("Gateway6: %s is neither another address of %s nor link-local", g, cfg.Addr6.Masked())
		}
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	minimum := minMTU
	if cfg.Addr6.IsValid() {
		minimum = header.IPv6MinimumMTU
	}
	if cfg.MTU < minimum || cfg.MTU > maxMTU {
		return fmt.Errorf("MTU: %d outside [%d, %d]", cfg.MTU, minimum, maxMTU)
	}
	if cfg.L3 {
		if cfg.MAC != nil {
			return errors.New("MAC: must be nil with L3")
		}
	} else {
		if cfg.MAC == nil {
			a := cfg.Addr.Addr().As4()
			cfg.MAC = net.HardwareAddr{0x02, 0x50, a[0], a[1], a[2], a[3]}
		}
		if err := checkMAC(cfg.MAC); err != nil {
			return fmt.Errorf("MAC: %w", err)
		}
	}
	if cfg.Name == "" {
		cfg.Name = "pod-" + cfg.Addr.Addr().String()
	}
	return nil
}

func checkHostAddr(a netip.Addr) error {
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("%s is not a unicast host address", a)
	}
	return nil
}

func (p *Pod) configure(cfg *PodConfig) error {
	s := p.s
	if err := TuneTCP(s, podTCPBuffers); err != nil {
		return err
	}
	if err := s.CreateNICWithOptions(nicID, p.ep.LinkEndpoint(), stack.NICOptions{Name: cfg.Name}); err != nil {
		return fmt.Errorf("create NIC: %w", tcpipErr(err))
	}
	addAddr := func(proto tcpip.NetworkProtocolNumber, pfx netip.Prefix) error {
		pa := tcpip.ProtocolAddress{
			Protocol: proto,
			AddressWithPrefix: tcpip.AddressWithPrefix{
				Address:   tcpipAddr(pfx.Addr()),
				PrefixLen: pfx.Bits(),
			},
		}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %s: %w", pfx, tcpipErr(err))
		}
		return nil
	}
	if err := addAddr(ipv4.ProtocolNumber, cfg.Addr); err != nil {
		return err
	}
	routes := []tcpip.Route{
		{Destination: subnet(cfg.Addr.Masked()), NIC: nicID},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpipAddr(cfg.Gateway), NIC: nicID},
	}
	if cfg.Addr6.IsValid() {
		if err := addAddr(ipv6.ProtocolNumber, cfg.Addr6); err != nil {
			return err
		}
		routes = append(routes, tcpip.Route{Destination: subnet(cfg.Addr6.Masked()), NIC: nicID})
		if cfg.Gateway6.IsValid() {
			routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, Gateway: tcpipAddr(cfg.Gateway6), NIC: nicID})
		}
	}
	s.SetRouteTable(routes)
	return nil
}

// Name returns the pod's name.
func (p *Pod) Name() string { return p.name }

// Device returns the engine side of the pod's NIC. Closing it takes the
// NIC out of the pod's stack.
func (p *Pod) Device() link.Device { return p.ep }

// Endpoint returns the pod's Endpoint (Device with its counters).
func (p *Pod) Endpoint() *Endpoint { return p.ep }

// MAC returns the pod's Ethernet address (nil for an L3 pod).
func (p *Pod) MAC() net.HardwareAddr { return p.ep.MAC() }

// Addr returns the pod's IPv4 address.
func (p *Pod) Addr() netip.Addr { return p.addr.Addr() }

// Addr6 returns the pod's IPv6 address, or the zero Addr when it has none.
func (p *Pod) Addr6() netip.Addr {
	if !p.addr6.IsValid() {
		return netip.Addr{}
	}
	return p.addr6.Addr()
}

// netProto returns the network protocol for dst, or an error if the pod
// has no address of that family.
func (p *Pod) netProto(dst netip.Addr) (tcpip.NetworkProtocolNumber, error) {
	if p.closed.Load() {
		return 0, ErrPodClosed
	}
	switch {
	case dst.Is4() || dst.Is4In6():
		return ipv4.ProtocolNumber, nil
	case dst.Is6() && p.addr6.IsValid():
		return ipv6.ProtocolNumber, nil
	case dst.Is6():
		return 0, fmt.Errorf("netstackx: pod %s has no IPv6 address for %s", p.name, dst)
	default:
		return 0, fmt.Errorf("netstackx: invalid address %v", dst)
	}
}

// listenProto is the protocol of listening sockets: dual-stack IPv6 when
// the pod has an IPv6 address, IPv4 otherwise.
func (p *Pod) listenProto() tcpip.NetworkProtocolNumber {
	if p.addr6.IsValid() {
		return ipv6.ProtocolNumber
	}
	return ipv4.ProtocolNumber
}

func setPMTUD(ep tcpip.Endpoint) {
	// Cannot fail for a valid strategy on a TCP endpoint.
	_ = ep.SetSockOptInt(tcpip.MTUDiscoverOption, int(tcpip.PMTUDiscoveryDo))
}

// DialTCP opens a TCP connection from the pod to dst.
func (p *Pod) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	proto, err := p.netProto(dst.Addr())
	if err != nil {
		return nil, err
	}
	raddr := fullAddr(dst)
	var wq waiter.Queue
	ep, terr := p.s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, p.opError("dial", "tcp", raddr, tcpipErr(terr))
	}
	setPMTUD(ep)
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	terr = ep.Connect(raddr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, p.opError("dial", "tcp", raddr, ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, p.opError("dial", "tcp", raddr, tcpipErr(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

func (p *Pod) opError(op, network string, addr tcpip.FullAddress, err error) error {
	var a net.Addr
	if addr.Addr.Len() > 0 {
		a = &net.TCPAddr{IP: net.IP(addr.Addr.AsSlice()), Port: int(addr.Port)}
		if network == "udp" {
			a = &net.UDPAddr{IP: net.IP(addr.Addr.AsSlice()), Port: int(addr.Port)}
		}
	}
	return &net.OpError{Op: op, Net: network, Addr: a, Err: err}
}

// ListenTCP listens on port on all the pod's addresses (dual-stack when the
// pod has an IPv6 address).
func (p *Pod) ListenTCP(port uint16) (net.Listener, error) {
	if p.closed.Load() {
		return nil, ErrPodClosed
	}
	laddr := tcpip.FullAddress{NIC: nicID, Port: port}
	var wq waiter.Queue
	ep, terr := p.s.NewEndpoint(tcp.ProtocolNumber, p.listenProto(), &wq)
	if terr != nil {
		return nil, p.opError("listen", "tcp", laddr, tcpipErr(terr))
	}
	setPMTUD(ep)
	if terr := ep.Bind(laddr); terr != nil {
		ep.Close()
		return nil, p.opError("listen", "tcp", laddr, tcpipErr(terr))
	}
	if terr := ep.Listen(4096); terr != nil {
		ep.Close()
		return nil, p.opError("listen", "tcp", laddr, tcpipErr(terr))
	}
	return &tcpListener{p: p, ep: ep, wq: &wq, done: make(chan struct{})}, nil
}

// tcpListener is gonet.TCPListener plus PMTUD set on accepted endpoints
// (gonet.TCPListener hides the accepted tcpip.Endpoint).
type tcpListener struct {
	p    *Pod
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	once sync.Once
	done chan struct{}
}

func (l *tcpListener) Accept() (net.Conn, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		n, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			setPMTUD(n)
			return gonet.NewTCPConn(wq, n), nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: tcpipErr(terr)}
		}
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		case <-notify:
		}
	}
}

func (l *tcpListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ep.Close()
	})
	return nil
}

func (l *tcpListener) Addr() net.Addr {
	a, err := l.ep.GetLocalAddress()
	if err != nil {
		return &net.TCPAddr{}
	}
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// DialUDP returns a UDP socket of the pod connected to dst.
func (p *Pod) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	proto, err := p.netProto(dst.Addr())
	if err != nil {
		return nil, err
	}
	raddr := fullAddr(dst)
	c, err := gonet.DialUDP(p.s, nil, &raddr, proto)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenUDP returns a UDP socket bound to port on all the pod's addresses
// (dual-stack when the pod has an IPv6 address).
func (p *Pod) ListenUDP(port uint16) (net.PacketConn, error) {
	if p.closed.Load() {
		return nil, ErrPodClosed
	}
	laddr := tcpip.FullAddress{NIC: nicID, Port: port}
	c, err := gonet.DialUDP(p.s, &laddr, nil, p.listenProto())
	if err != nil {
		return nil, err
	}
	return c, nil
}

// SendUDPWithTTL sends one UDP datagram to dst with the given IPv4 TTL or
// IPv6 hop limit (1 to 255), from an ephemeral port.
func (p *Pod) SendUDPWithTTL(dst netip.AddrPort, ttl uint8, payload []byte) error {
	if ttl == 0 {
		return errors.New("netstackx: SendUDPWithTTL: ttl must be at least 1")
	}
	proto, err := p.netProto(dst.Addr())
	if err != nil {
		return err
	}
	raddr := fullAddr(dst)
	var wq waiter.Queue
	ep, terr := p.s.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return p.opError("write", "udp", raddr, tcpipErr(terr))
	}
	defer ep.Close()
	opt := tcpip.IPv4TTLOption
	if proto == ipv6.ProtocolNumber {
		opt = tcpip.IPv6HopLimitOption
	}
	if terr := ep.SetSockOptInt(opt, int(ttl)); terr != nil {
		return p.opError("write", "udp", raddr, tcpipErr(terr))
	}
	if _, terr := ep.Write(bytes.NewReader(payload), tcpip.WriteOptions{To: &raddr}); terr != nil {
		return p.opError("write", "udp", raddr, tcpipErr(terr))
	}
	return nil
}

// Sniff calls fn with every IP packet (L3 bytes; Ethernet header stripped)
// delivered to the pod, before its netstack sees it, on the goroutine that
// calls Device().Write. pkt is valid only during the call; fn must not
// block. stop removes fn; it is idempotent. With no sniffer installed the
// cost per packet is one atomic load.
func (p *Pod) Sniff(fn func(pkt []byte)) (stop func()) {
	return p.ep.addSniffer(fn)
}

// PodStats are a pod's counters: its Endpoint's and a few of its stack's.
type PodStats struct {
	Endpoint EndpointStats

	IPPacketsReceived  uint64 // IP packets received by the stack (v4 and v6)
	IPPacketsSent      uint64 // IP packets sent
	IPMalformed        uint64 // malformed IP packets received
	IPInvalidDest      uint64 // IP packets received for another address
	TCPActiveOpens     uint64
	TCPPassiveOpens    uint64
	TCPRetransmits     uint64
	TCPResetsSent      uint64
	UDPPacketsReceived uint64
	UDPRcvBufErrors    uint64
	ICMPEchoReplies    uint64 // ICMPv4 + ICMPv6 echo replies received
	ICMPDstUnreachable uint64 // ICMPv4 + ICMPv6 destination unreachable received
	ICMPTimeExceeded   uint64 // ICMPv4 + ICMPv6 time exceeded received
	ICMPPacketTooBig   uint64 // ICMPv6 packet too big received (ICMPv4 fragmentation needed is a destination unreachable)
}

// Stats returns a snapshot of the pod's counters.
func (p *Pod) Stats() PodStats {
	st := p.s.Stats()
	v4, v6 := st.ICMP.V4, st.ICMP.V6
	return PodStats{
		Endpoint:           p.ep.Stats(),
		IPPacketsReceived:  st.IP.PacketsReceived.Value(),
		IPPacketsSent:      st.IP.PacketsSent.Value(),
		IPMalformed:        st.IP.MalformedPacketsReceived.Value(),
		IPInvalidDest:      st.IP.InvalidDestinationAddressesReceived.Value(),
		TCPActiveOpens:     st.TCP.ActiveConnectionOpenings.Value(),
		TCPPassiveOpens:    st.TCP.PassiveConnectionOpenings.Value(),
		TCPRetransmits:     st.TCP.Retransmits.Value(),
		TCPResetsSent:      st.TCP.ResetsSent.Value(),
		UDPPacketsReceived: st.UDP.PacketsReceived.Value(),
		UDPRcvBufErrors:    st.UDP.ReceiveBufferErrors.Value(),
		ICMPEchoReplies:    v4.PacketsReceived.EchoReply.Value() + v6.PacketsReceived.EchoReply.Value(),
		ICMPDstUnreachable: v4.PacketsReceived.DstUnreachable.Value() + v6.PacketsReceived.DstUnreachable.Value(),
		ICMPTimeExceeded:   v4.PacketsReceived.TimeExceeded.Value() + v6.PacketsReceived.TimeExceeded.Value(),
		ICMPPacketTooBig:   v6.PacketsReceived.PacketTooBig.Value(),
	}
}

// Close tears the pod down: its sockets, its stack and its Endpoint. It is
// idempotent. The pod owns no goroutines once Close returns.
func (p *Pod) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.s.Close()
		p.s.Wait()
		_ = p.ep.Close()
	})
	return nil
}

func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() || a.Is4In6() {
		return tcpip.AddrFrom4(a.Unmap().As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(ap.Addr()), Port: ap.Port()}
}

func subnet(p netip.Prefix) tcpip.Subnet {
	a := tcpipAddr(p.Addr())
	sn, err := tcpip.NewSubnet(a, tcpip.MaskFromBytes(net.CIDRMask(p.Bits(), a.Len()*8)))
	if err != nil {
		// p is masked, so the address has no bits outside the mask.
		panic(fmt.Sprintf("netstackx: subnet %s: %v", p, err))
	}
	return sn
}

// tcpipErr converts a gVisor error into a Go error; errors.Is matches the
// usual net errors where one fits.
func tcpipErr(err tcpip.Error) error {
	if err == nil {
		return nil
	}
	return &netstackError{err: err}
}

// netstackError is a gVisor tcpip.Error as a Go error. It stays unexported
// so that no gVisor type leaks out of netstackx; match it with errors.Is.
type netstackError struct{ err tcpip.Error }

func (e *netstackError) Error() string { return "netstack: " + e.err.String() }

// Is reports whether e matches target: net.ErrClosed for closed
// endpoints, context.DeadlineExceeded for timeouts, and the syscall errno
// for refused and unreachable.
func (e *netstackError) Is(target error) bool {
	switch e.err.(type) {
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive:
		return target == net.ErrClosed
	case *tcpip.ErrTimeout:
		return target == context.DeadlineExceeded
	case *tcpip.ErrConnectionRefused:
		return target == syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return target == syscall.ECONNRESET
	case *tcpip.ErrNetworkUnreachable:
		return target == syscall.ENETUNREACH
	case *tcpip.ErrHostUnreachable:
		return target == syscall.EHOSTUNREACH
	}
	return false
}
