package egress_test

// Virtual pods (netstackx.NewPod) behind the real engine, with the
// Forwarder as the egress port: everything but the host side runs in this
// process, without privileges. The outside address 192.0.2.10 (TEST-NET-1)
// is never dialled: the test Dialer maps it to servers on 127.0.0.1.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/netstackx/egress"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

var (
	podCIDR     = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6    = netip.MustParsePrefix("fd00:10:244:1::/64")
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	gw4         = netip.MustParseAddr("10.244.1.1")
	gw6         = netip.MustParseAddr("fd00:10:244:1::1")
	outside     = netip.MustParseAddr("192.0.2.10")
	outside6    = netip.MustParseAddr("2001:db8::10")
	blackhole   = netip.MustParseAddr("203.0.113.99")
	loopback    = netip.MustParseAddr("127.0.0.1")
)

// checkGoroutines fails t if, once its other cleanups have run, more
// goroutines are alive than when it was called. Call it first.
func checkGoroutines(t *testing.T) { t.Helper(); leaktest.Check(t, 10*time.Second) }

// mapDialer dials the mapped address instead of the one asked for; an
// unmapped address fails with "no route to host", and a blackholed one
// hangs until the dial's context ends, as a SYN nobody answers.
type mapDialer struct {
	mu    sync.Mutex
	m     map[netip.AddrPort]netip.AddrPort
	hang  map[netip.Addr]bool
	dials []string
	d     net.Dialer
}

func (d *mapDialer) set(from, to netip.AddrPort) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[netip.AddrPort]netip.AddrPort{}
	}
	d.m[from] = to
}

func (d *mapDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.dials = append(d.dials, network+" "+address)
	to, ok := d.m[ap]
	hang := d.hang[ap.Addr()]
	d.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	}
	return d.d.DialContext(ctx, network, to.String())
}

type env struct {
	e   *engine.Engine
	fwd *egress.Forwarder
	d   *mapDialer
}

// newEnv makes an engine whose egress port is a Forwarder (with cfg as
// mod leaves it) dialling through a mapDialer, with default routes to it.
// It first checks that the test leaves no goroutine behind
// (checkGoroutines), so call it first.
func newEnv(t *testing.T, mod func(*egress.Config)) *env {
	t.Helper()
	checkGoroutines(t)
	log := zaptest.NewLogger(t)
	e, err := engine.New(engine.Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	d := &mapDialer{hang: map[netip.Addr]bool{blackhole: true}}
	cfg := egress.Config{Dialer: d, Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	fwd, err := egress.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.AddPort(fwd, engine.PortConfig{Name: "egress", Kind: engine.KindEgress, MTU: 1500})
	if err != nil {
		_ = fwd.Close()
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(p.Index())},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(p.Index())},
	}); err != nil {
		t.Fatal(err)
	}
	return &env{e: e, fwd: fwd, d: d}
}

// pod attaches virtual pod number i (10.244.1.(i+2)).
func (v *env) pod(t *testing.T, i int) *netstackx.Pod {
	t.Helper()
	a4 := netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 2)})
	a6 := netip.MustParseAddr(fmt.Sprintf("fd00:10:244:1::%x", i+2))
	p, err := netstackx.NewPod(netstackx.PodConfig{
		Name: fmt.Sprintf("pod%d", i), Addr: netip.PrefixFrom(a4, 24), Gateway: gw4,
		Addr6: netip.PrefixFrom(a6, 64), Gateway6: gw6,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if _, err := v.e.AddPort(p.Device(), engine.PortConfig{
		Name: p.Name(), Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(p.MAC()), MTU: 1500, Addrs: []netip.Addr{a4, a6},
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dialTCP dials dst from p, with 10 seconds to connect; the connection is
// closed when the test ends.
func dialTCP(t *testing.T, p *netstackx.Pod, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := p.DialTCP(ctxT(t, 10*time.Second), dst)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", p.Name(), dst, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// askUDP sends msg from p to dst on a connected UDP socket (closed when
// the test ends) and returns the first reply, which must come within 5
// seconds.
func askUDP(t *testing.T, p *netstackx.Pod, dst netip.AddrPort, msg string) string {
	t.Helper()
	c, err := p.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s: reply from %s: %v", p.Name(), dst, err)
	}
	return string(buf[:n])
}

// closedPort returns a 127.0.0.1 port on which nothing listens for network
// ("tcp" or "udp"): one that was just bound and closed.
func closedPort(t *testing.T, network string) netip.AddrPort {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialBlackhole starts n dials from p to the blackholed address (ports 80
// up), which hang until the test ends.
func dialBlackhole(t *testing.T, p *netstackx.Pod, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = p.DialTCP(ctx, netip.AddrPortFrom(blackhole, uint16(80+i)))
		}()
	}
}

// serve runs handler for every connection to a TCP listener on addr
// (127.0.0.1:0 or [::1]:0) until the test ends, and returns its address.
func serve(t *testing.T, addr string, handler func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nstest.Serve(t, ln, handler)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func echoHandler(c net.Conn) {
	defer c.Close()
	_, _ = io.Copy(c, c)
}

// serveAt runs handler for every connection to outside:port, served from
// 127.0.0.1, until the test ends. It returns the server's address.
func (v *env) serveAt(t *testing.T, port uint16, handler func(net.Conn)) netip.AddrPort {
	t.Helper()
	srv := serve(t, "127.0.0.1:0", handler)
	v.d.set(netip.AddrPortFrom(outside, port), srv)
	return srv
}

// echo sends n random bytes through c, half-closes, and checks that what
// comes back, to EOF, has the same SHA-256.
func echo(t *testing.T, c net.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read back: %v after %d bytes", err, got)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo: %d bytes back (want %d), checksum match %v", got, n, bytes.Equal(h.Sum(nil), want[:]))
	}
}

func TestTCPEcho(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	var peer atomic.Value
	v.serveAt(t, 7, func(c net.Conn) {
		peer.Store(c.RemoteAddr().String())
		echoHandler(c)
	})
	c := dialTCP(t, p, netip.AddrPortFrom(outside, 7))
	echo(t, c, 4<<20)
	// The server saw the node's address (here: loopback), not the pod's.
	if s, _ := peer.Load().(string); !strings.HasPrefix(s, "127.0.0.1:") {
		t.Fatalf("server saw the connection from %q", s)
	}
	if got := c.RemoteAddr().String(); got != "192.0.2.10:7" {
		t.Fatalf("pod's connection is to %s, want 192.0.2.10:7", got)
	}
	st := v.fwd.Stats()
	if st.TCPDials != 1 || st.TCPConnected != 1 || st.BytesToRemote != 4<<20 || st.BytesToPod != 4<<20 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTCPEchoIPv6(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("skipped: no IPv6 loopback on this host: %v", err)
	}
	_ = ln.Close()
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	srv := serve(t, "[::1]:0", echoHandler)
	v.d.set(netip.AddrPortFrom(outside6, 7), srv)
	echo(t, dialTCP(t, p, netip.AddrPortFrom(outside6, 7)), 1<<20)
}

// TestTCPHalfClose: the pod's FIN reaches the server as EOF while the
// server can still answer; the server's FIN reaches the pod as EOF.
func TestTCPHalfClose(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	v.serveAt(t, 80, func(c net.Conn) {
		defer c.Close()
		n, err := io.Copy(io.Discard, c) // to the pod's FIN
		if err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the half-closed flow lives on
		fmt.Fprintf(c, "got %d bytes", n)
		_ = c.(*net.TCPConn).CloseWrite()
	})
	c := dialTCP(t, p, netip.AddrPortFrom(outside, 80))
	if _, err := c.Write(make([]byte, 100000)); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 100000 bytes" {
		t.Fatalf("answer after half-close: %q, %v", got, err)
	}
}

// TestTCPResetFromRemote: a RST from the remote becomes a RST to the pod.
func TestTCPResetFromRemote(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	v.serveAt(t, 80, func(c net.Conn) {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close() // RST
	})
	c := dialTCP(t, p, netip.AddrPortFrom(outside, 80))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 10))
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("pod read after the remote's RST: %v, want connection reset", err)
	}
	waitFor(t, func() bool { return v.fwd.Stats().TCPResetsToPod == 1 }, "TCPResetsToPod == 1")
}

// TestTCPResetFromPod: a RST from the pod (closing with unread data)
// becomes a RST to the remote.
func TestTCPResetFromPod(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	remoteErr := make(chan error, 1)
	v.serveAt(t, 80, func(c net.Conn) {
		defer c.Close()
		if _, err := c.Write([]byte("unread data")); err != nil {
			remoteErr <- err
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 10))
		remoteErr <- err
	})
	c := dialTCP(t, p, netip.AddrPortFrom(outside, 80))
	// Let the data arrive, then close without reading it: the pod's stack
	// answers with a RST (RFC 1122 4.2.2.13).
	waitFor(t, func() bool { return v.fwd.Stats().BytesToPod == 11 }, "data delivered to the pod")
	time.Sleep(50 * time.Millisecond)
	_ = c.Close()
	select {
	case err := <-remoteErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("remote read after the pod's RST: %v, want ECONNRESET", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the remote saw nothing of the pod's RST")
	}
	if st := v.fwd.Stats(); st.TCPResetsToHost != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTCPRefused: a refused dial is a RST to the pod, which sees
// ECONNREFUSED at once.
func TestTCPRefused(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	v.d.set(netip.AddrPortFrom(outside, 81), closedPort(t, "tcp"))
	start := time.Now()
	_, err := p.DialTCP(ctxT(t, 10*time.Second), netip.AddrPortFrom(outside, 81))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("refusal took %v", d)
	}
	// The pod sees the RST before the forwarder's goroutine for the flow
	// has returned and released it, so the flow count is awaited.
	waitFor(t, func() bool { st := v.fwd.Stats(); return st.ActiveFlows == 0 && st.DialsInFlight == 0 }, "the refused flow to be released")
	if st := v.fwd.Stats(); st.TCPRefused != 1 || st.TCPDials != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTCPUnreachable: a dial that finds no route is an ICMP host
// unreachable to the pod, quoting its SYN.
func TestTCPUnreachable(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	_, err := p.DialTCP(ctxT(t, 10*time.Second), netip.MustParseAddrPort("198.51.100.77:80"))
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial with no route: %v, want EHOSTUNREACH", err)
	}
	// The forwarder counts the ICMP error after sending it: the pod's dial
	// may return first (a CI flake under load).
	waitFor(t, func() bool { st := v.fwd.Stats(); return st.TCPUnreachable == 1 && st.ICMPErrorsSent == 1 },
		"the forwarder to count the unreachable dial and its ICMP error")
	if st := p.Stats(); st.ICMPDstUnreachable != 1 {
		t.Fatalf("the pod received %d destination unreachable", st.ICMPDstUnreachable)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveUDP answers every datagram to pc with what reply returns, until
// the test ends.
func serveUDP(t *testing.T, pc net.PacketConn, reply func(msg []byte, from net.Addr) []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(reply(buf[:n], from), from)
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
}

// udpEcho runs a UDP echo server on 127.0.0.1 until the test ends.
func udpEcho(t *testing.T) (netip.AddrPort, *atomic.Value) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var peer atomic.Value
	serveUDP(t, pc, func(msg []byte, from net.Addr) []byte {
		peer.Store(from.String())
		return append([]byte("echo: "), msg...)
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), &peer
}

func TestUDP(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) { c.UDPIdle = 300 * time.Millisecond })
	p := v.pod(t, 0)
	srv, peer := udpEcho(t)
	v.d.set(netip.AddrPortFrom(outside, 9), srv)
	pc, err := p.ListenUDP(5000)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := &net.UDPAddr{IP: outside.AsSlice(), Port: 9}
	buf := make([]byte, 100)
	for i := range 3 {
		msg := fmt.Sprintf("request %d", i)
		if _, err := pc.WriteTo([]byte(msg), dst); err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if string(buf[:n]) != "echo: "+msg || from.String() != "192.0.2.10:9" {
			t.Fatalf("reply %q from %v, want %q from 192.0.2.10:9", buf[:n], from, "echo: "+msg)
		}
	}
	if s, _ := peer.Load().(string); !strings.HasPrefix(s, "127.0.0.1:") {
		t.Fatalf("server saw %q", s)
	}
	if st := v.fwd.Stats(); st.UDPFlows != 1 {
		t.Fatalf("three datagrams of one flow opened %d flows", st.UDPFlows)
	}
	// Idle: the flow closes, and the next datagram opens another.
	waitFor(t, func() bool { return v.fwd.Stats().UDPIdleClosed == 1 }, "the idle UDP flow to close")
	if _, err := pc.WriteTo([]byte("again"), dst); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "echo: again" {
		t.Fatalf("after idle close: %q, %v", buf[:n], err)
	}
	if st := v.fwd.Stats(); st.UDPFlows != 2 || st.ActiveFlows != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestUDPPortUnreachable: a destination's port unreachable reaches the
// pod's connected socket as ECONNREFUSED.
func TestUDPPortUnreachable(t *testing.T) {
	v := newEnv(t, nil)
	p := v.pod(t, 0)
	v.d.set(netip.AddrPortFrom(outside, 10), closedPort(t, "udp"))
	c, err := p.DialUDP(netip.AddrPortFrom(outside, 10))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return v.fwd.Stats().ICMPErrorsSent >= 1 }, "an ICMP port unreachable")
	waitFor(t, func() bool { return p.Stats().ICMPDstUnreachable >= 1 }, "the pod to receive it")
}

// TestDNSIdle: flows to port 53 use the short idle timeout.
func TestDNSIdle(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) { c.DNSIdle = 200 * time.Millisecond; c.UDPIdle = time.Hour })
	p := v.pod(t, 0)
	srv, _ := udpEcho(t)
	v.d.set(netip.AddrPortFrom(outside, 53), srv)
	v.d.set(netip.AddrPortFrom(outside, 54), srv)
	for _, port := range []uint16{53, 54} {
		askUDP(t, p, netip.AddrPortFrom(outside, port), "q")
	}
	waitFor(t, func() bool { return v.fwd.Stats().UDPIdleClosed == 1 }, "the DNS flow to close")
	time.Sleep(300 * time.Millisecond)
	if st := v.fwd.Stats(); st.UDPIdleClosed != 1 || st.ActiveFlows != 1 {
		t.Fatalf("stats %+v: want the port-54 flow still open", st)
	}
}

// TestFlowLimitPerPod: a pod opening 10x its flow limit gets RSTs beyond
// it, and another pod's new flows are not affected.
func TestFlowLimitPerPod(t *testing.T) {
	const limit = 8
	v := newEnv(t, func(c *egress.Config) { c.MaxFlowsPerPod = limit; c.MaxFlows = 4 * limit })
	a, b := v.pod(t, 0), v.pod(t, 1)
	v.serveAt(t, 7, echoHandler)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	refused := 0
	for range 10 * limit {
		c, err := a.DialTCP(ctxT(t, 10*time.Second), netip.AddrPortFrom(outside, 7))
		switch {
		case err == nil:
			conns = append(conns, c)
		case errors.Is(err, syscall.ECONNREFUSED):
			refused++
		default:
			t.Fatalf("pod A: %v", err)
		}
	}
	if len(conns) != limit || refused != 9*limit {
		t.Fatalf("pod A: %d flows, %d refused; want %d and %d", len(conns), refused, limit, 9*limit)
	}
	for range 3 {
		c := dialTCP(t, b, netip.AddrPortFrom(outside, 7))
		echo(t, c, 1000)
		_ = c.Close()
	}
	// Pod A's flows still work.
	echo(t, conns[0], 1000)
	if st := v.fwd.Stats(); st.TCPFlowLimited != 9*limit {
		t.Fatalf("stats %+v", st)
	}
}

// TestFairShare: with a total limit, pods that flood cannot take the last
// slots: another pod still gets one.
func TestFairShare(t *testing.T) {
	const total = 16
	v := newEnv(t, func(c *egress.Config) { c.MaxFlows = total; c.MaxFlowsPerPod = total })
	a, b := v.pod(t, 0), v.pod(t, 1)
	srv, _ := udpEcho(t)
	v.d.set(netip.AddrPortFrom(outside, 9), srv)
	// Pod A opens UDP flows to 50 ports: it gets all but the reserve.
	for port := range 50 {
		v.d.set(netip.AddrPortFrom(outside, uint16(100+port)), srv)
		if err := a.SendUDPWithTTL(netip.AddrPortFrom(outside, uint16(100+port)), 64, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return v.fwd.Stats().UDPFlowLimited > 0 }, "pod A to hit the limit")
	if st := v.fwd.Stats(); st.ActiveFlows >= total {
		t.Fatalf("pod A took all %d flows", st.ActiveFlows)
	}
	askUDP(t, b, netip.AddrPortFrom(outside, 9), "b")
}

// TestBlackholeDoesNotBlock: dials to a destination that never answers
// run concurrently with their timeout and block no other dial.
func TestBlackholeDoesNotBlock(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) { c.DialTimeout = time.Minute; c.MaxDialsPerPod = 16 })
	a, b := v.pod(t, 0), v.pod(t, 1)
	v.serveAt(t, 7, echoHandler)
	dialBlackhole(t, a, 10)
	waitFor(t, func() bool { return v.fwd.Stats().DialsInFlight == 10 }, "10 dials to the blackhole in flight")
	for _, p := range []*netstackx.Pod{a, b} {
		start := time.Now()
		c := dialTCP(t, p, netip.AddrPortFrom(outside, 7))
		echo(t, c, 1000)
		_ = c.Close()
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("%s: dial took %v", p.Name(), d)
		}
	}
	if st := v.fwd.Stats(); st.DialsInFlight != 10 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDialLimit: SYNs over a pod's in-flight dial limit are dropped (the
// pod retransmits); another pod dials meanwhile.
func TestDialLimit(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) { c.MaxDialsPerPod = 2; c.MaxDials = 8 })
	a, b := v.pod(t, 0), v.pod(t, 1)
	v.serveAt(t, 7, echoHandler)
	dialBlackhole(t, a, 3)
	waitFor(t, func() bool { return v.fwd.Stats().TCPDialLimited >= 1 }, "pod A's third dial to be dropped")
	c := dialTCP(t, b, netip.AddrPortFrom(outside, 7))
	echo(t, c, 100)
	_ = c.Close()
	if st := v.fwd.Stats(); st.DialsInFlight != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPing: ICMP echo through a ping socket where net.ipv4.ping_group_range
// permits one (the reply comes back from the original destination), and a
// counter where it does not.
func TestPing(t *testing.T) {
	pingDialer := func(ctx context.Context, dst netip.Addr) (net.Conn, error) {
		if dst != outside {
			return nil, &net.OpError{Op: "dial", Net: "ping", Err: syscall.EHOSTUNREACH}
		}
		return egress.DialPing(ctx, loopback)
	}
	v := newEnv(t, func(c *egress.Config) { c.Ping = pingDialer })
	p := v.pod(t, 0)
	probe, perr := egress.DialPing(context.Background(), loopback)
	if perr == nil {
		_ = probe.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := p.Ping(ctx, outside, 56)
	st := v.fwd.Stats()
	if perr == nil {
		if err != nil {
			t.Fatalf("ping through a permitted ping socket: %v", err)
		}
		if st.ICMPEchoRequests != 1 || st.ICMPEchoReplies != 1 {
			t.Fatalf("stats %+v", st)
		}
		return
	}
	if !errors.Is(perr, syscall.EACCES) {
		t.Fatalf("ping socket: %v, want EACCES when not permitted", perr)
	}
	t.Logf("ping sockets not permitted here (%v): checking the counter", perr)
	if err == nil {
		t.Fatal("ping answered without a ping socket")
	}
	if st.PingUnsupported != 1 || st.ICMPEchoRequests != 0 {
		t.Fatalf("stats %+v, want PingUnsupported 1", st)
	}
}

// TestResetSourceAndClose: ResetSource aborts a pod's flows (RST to the
// pod); Close aborts the rest and every goroutine ends.
func TestResetSourceAndClose(t *testing.T) {
	v := newEnv(t, nil)
	a, b := v.pod(t, 0), v.pod(t, 1)
	v.serveAt(t, 7, echoHandler)
	ca := dialTCP(t, a, netip.AddrPortFrom(outside, 7))
	cb := dialTCP(t, b, netip.AddrPortFrom(outside, 7))
	// The pod's dial returns at its SYN-ACK; the forwarder registers the
	// flow when its own handshake completes, a moment later.
	for deadline := time.Now().Add(5 * time.Second); v.fwd.TrackedFlows() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := v.fwd.ResetSource(a.Addr()); n != 1 {
		t.Fatalf("ResetSource: %d flows", n)
	}
	_ = ca.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ca.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("pod A after ResetSource: %v", err)
	}
	echo(t, cb, 1000)
	if err := v.fwd.Close(); err != nil {
		t.Fatal(err)
	}
	if st := v.fwd.Stats(); st.ActiveFlows != 0 {
		t.Fatalf("after Close: %+v", st)
	}
}

// synPacket builds a TCP SYN from src to dst with gVisor's header package.
func synPacket(src, dst netip.AddrPort) []byte {
	var b []byte
	var sa, da tcpip.Address
	if src.Addr().Is4() {
		b = make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
		ip := header.IPv4(b)
		sa, da = tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: sa, DstAddr: da})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		b = make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize)
		sa, da = tcpip.AddrFrom16(src.Addr().As16()), tcpip.AddrFrom16(dst.Addr().As16())
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: sa, DstAddr: da})
	}
	tcp := header.TCP(b[len(b)-header.TCPMinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	tcp.SetChecksum(^tcp.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, sa, da, header.TCPMinimumSize)))
	return b
}

// TestDenied: a pod cannot reach the node's loopback (or other martian
// destinations) through egress. The SYNs are written to a Forwarder of its
// own (a Linux pod, unlike a netstack one, sends them); gVisor drops most
// as martians, the forwarder refuses the rest (allowed, unit-tested in
// limit_test.go); either way the Dialer is never asked.
func TestDenied(t *testing.T) {
	checkGoroutines(t)
	d := &mapDialer{}
	fwd, err := egress.New(egress.Config{Dialer: d, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	for i, dst := range []string{"127.0.0.1:22", "0.0.0.0:22", "255.255.255.255:22", "[::1]:22", "[::ffff:127.0.0.1]:22", "[::]:22"} {
		ap := netip.MustParseAddrPort(dst)
		d.set(ap, ap) // would connect, were it asked
		src := netip.MustParseAddrPort(fmt.Sprintf("10.244.1.2:%d", 40000+i))
		if ap.Addr().Is6() {
			src = netip.MustParseAddrPort(fmt.Sprintf("[fd00:10:244:1::2]:%d", 40000+i))
		}
		pkt := synPacket(src, ap)
		buf := make([]byte, 64+len(pkt))
		copy(buf[64:], pkt)
		if _, err := fwd.Write([][]byte{buf}, 64); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if st := fwd.Stats(); st.TCPDials != 0 || st.DialsInFlight != 0 || st.ActiveFlows != 0 {
		t.Fatalf("stats %+v", st)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.dials) != 0 {
		t.Fatalf("the Dialer was asked for %v", d.dials)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []egress.Config{
		{MTU: 1000},
		{MaxFlows: 10, MaxFlowsPerPod: 11},
		{MaxDials: -1},
		{DialTimeout: -time.Second},
	} {
		if f, err := egress.New(cfg); err == nil {
			_ = f.Close()
			t.Errorf("New(%+v): no error", cfg)
		}
	}
}
