package ingress_test

// A host client on loopback ─► the Forwarder's listening socket on
// 127.0.0.1 ─► its stack ─► the real engine ─► a virtual pod
// (netstackx.NewPod) serving TCP and UDP. Everything but the client's
// socket runs in this process, without privileges; nothing leaves
// loopback.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/netstackx/ingress"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	podCIDR  = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6 = netip.MustParsePrefix("fd00:10:244:1::/64")
	gw4      = netip.MustParseAddr("10.244.1.1")
	gw6      = netip.MustParseAddr("fd00:10:244:1::1")
	podAddr  = netip.MustParseAddr("10.244.1.2")
	podAddr6 = netip.MustParseAddr("fd00:10:244:1::2")
)

type env struct {
	e   *engine.Engine
	fwd *ingress.Forwarder
	pod *netstackx.Pod
}

// newEnv builds an engine with one virtual pod and a Forwarder (cfg as mod
// leaves it) as its gateway port. It first checks that the test leaves no
// goroutine behind, so call it first.
func newEnv(t *testing.T, mod func(*ingress.Config)) *env {
	t.Helper()
	return newEnvWith(t, nil, mod)
}

// newEnvWith is newEnv with the engine's Config as engMod leaves it.
func newEnvWith(t *testing.T, engMod func(*engine.Config), mod func(*ingress.Config)) *env {
	t.Helper()
	leaktest.Check(t, 10*time.Second)
	log := zaptest.NewLogger(t)
	ecfg := engine.Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, Logger: log}
	if engMod != nil {
		engMod(&ecfg)
	}
	e, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	if e.Gateway() != gw4 || e.Gateway6() != gw6 {
		t.Fatalf("gateways %s, %s", e.Gateway(), e.Gateway6())
	}
	cfg := ingress.Config{Gateway: e.Gateway(), Gateway6: e.Gateway6(), Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	fwd, err := ingress.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(fwd, engine.PortConfig{Name: "ingress", Kind: engine.KindNetstack, MTU: 1500, Gateway: true}); err != nil {
		_ = fwd.Close()
		t.Fatal(err)
	}
	p, err := netstackx.NewPod(netstackx.PodConfig{Name: "pod", Addr: netip.PrefixFrom(podAddr, 24), Gateway: gw4,
		Addr6: netip.PrefixFrom(podAddr6, 64), Gateway6: gw6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if _, err := e.AddPort(p.Device(), engine.PortConfig{
		Name: "pod", Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(p.MAC()), MTU: 1500, Addrs: []netip.Addr{podAddr, podAddr6},
	}); err != nil {
		t.Fatal(err)
	}
	return &env{e: e, fwd: fwd, pod: p}
}

// freePort returns a 127.0.0.1 port that was just free for both TCP and
// UDP.
func freePort(t *testing.T) netip.AddrPort { t.Helper(); return freePortOn(t, "127.0.0.1") }

// freePortOn is freePort on a loopback address of either family.
func freePortOn(t *testing.T, host string) netip.AddrPort {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(l.Addr().String())
		u, err := net.ListenPacket("udp", ap.String())
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return ap
		}
	}
	t.Fatal("no free port")
	return netip.AddrPort{}
}

// serveTCP runs a server on the pod's port: it reads a request to EOF
// and answers "<peer address> <sha256 of the request>", then closes.
func serveTCP(t *testing.T, p *netstackx.Pod, port uint16) {
	t.Helper()
	ln, err := p.ListenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				if _, err := io.Copy(h, c); err != nil {
					return
				}
				peer := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
				fmt.Fprintf(c, "%d %s %x", port, peer, h.Sum(nil))
			}()
		}
	}()
}

// serveUDP answers each datagram on the pod's port with "<port> <peer
// address> <datagram>".
func serveUDP(t *testing.T, p *netstackx.Pod, port uint16) {
	t.Helper()
	pc, err := p.ListenUDP(port)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { _ = pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			peer := netip.MustParseAddrPort(from.String()).Addr().Unmap()
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%d %s %s", port, peer, buf[:n]), from)
		}
	}()
}

// askTCP sends size random bytes to addr, half-closes and returns the
// answer and what it should say.
func askTCP(t *testing.T, addr netip.AddrPort, port uint16, size int) (got, want string) {
	t.Helper()
	return askTCPFrom(t, addr, port, size, gw4)
}

// askTCPFrom is askTCP for a target the forwarder reaches from gw.
func askTCPFrom(t *testing.T, addr netip.AddrPort, port uint16, size int, gw netip.Addr) (got, want string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := make([]byte, size)
	_, _ = rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return string(b), fmt.Sprintf("%d %s %x", port, gw, sha256.Sum256(msg))
}

func askUDP(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("udp reply: %v", err)
	}
	return string(buf[:n])
}

// expectReset connects to addr and expects the connection to be reset,
// while connecting or at the first read (the host socket accepts before
// the forwarder knows whether the target answers).
func expectReset(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err == nil {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection to %s: %v, want a reset", addr, err)
	}
}

func tcpRule(l netip.AddrPort, port uint16) ingress.Rule {
	return ingress.Rule{Proto: packet.ProtoTCP, Listen: l, Target: netip.AddrPortFrom(podAddr, port)}
}

func udpRule(l netip.AddrPort, port uint16) ingress.Rule {
	return ingress.Rule{Proto: packet.ProtoUDP, Listen: l, Target: netip.AddrPortFrom(podAddr, port)}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTCP: a host client's connection reaches the pod's server from the
// gateway address, both ways, with the client's half-close passed on;
// the flow is released afterwards.
func TestTCP(t *testing.T) {
	v := newEnv(t, nil)
	serveTCP(t, v.pod, 80)
	l := freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(l, 80)}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, 4 << 20} {
		if got, want := askTCP(t, l, 80, size); got != want {
			t.Fatalf("%d bytes: answer %q, want %q", size, got, want)
		}
	}
	waitFor(t, "flows released", func() bool { return v.fwd.Stats().ActiveFlows == 0 })
	st := v.fwd.Stats()
	if st.TCPAccepted != 3 || st.TCPConnected != 3 || st.BytesToTarget != 4<<20+1 || st.Listeners != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTCPTargetRefused: nothing listens on the target port: the client's
// connection is reset.
func TestTCPTargetRefused(t *testing.T) {
	v := newEnv(t, nil)
	l := freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(l, 81)}); err != nil {
		t.Fatal(err)
	}
	expectReset(t, l)
	waitFor(t, "dial failure counted", func() bool { return v.fwd.Stats().TCPDialFailed == 1 })
}

// TestUDP: two clients get a flow each to the pod's server, from the
// gateway address; replies come from the listening address; idle flows
// close.
func TestUDP(t *testing.T) {
	v := newEnv(t, func(c *ingress.Config) { c.UDPIdle = 300 * time.Millisecond })
	serveUDP(t, v.pod, 53)
	l := freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{udpRule(l, 53)}); err != nil {
		t.Fatal(err)
	}
	var cs []net.Conn
	for i := range 2 {
		c, err := net.Dial("udp", l.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
		for j := range 3 {
			msg := fmt.Sprintf("client %d #%d", i, j)
			if got, want := askUDP(t, c, msg), fmt.Sprintf("53 %s %s", gw4, msg); got != want {
				t.Fatalf("reply %q, want %q", got, want)
			}
		}
	}
	if st := v.fwd.Stats(); st.UDPFlows != 2 || st.ActiveFlows != 2 {
		t.Fatalf("stats %+v", st)
	}
	waitFor(t, "idle flows closed", func() bool { st := v.fwd.Stats(); return st.ActiveFlows == 0 && st.UDPIdleClosed == 2 })
	// The next datagram opens a new flow.
	if got := askUDP(t, cs[0], "again"); got != fmt.Sprintf("53 %s again", gw4) {
		t.Fatalf("reply %q", got)
	}
}

// TestSetRules: a new set opens the new sockets, closes the removed ones
// (their flows reset) and keeps the others and their flows; a changed
// Target keeps the socket and steers new flows only.
func TestSetRules(t *testing.T) {
	v := newEnv(t, nil)
	serveTCP(t, v.pod, 80)
	serveTCP(t, v.pod, 8080)
	serveUDP(t, v.pod, 53)
	a, b, c := freePort(t), freePort(t), freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(a, 80), udpRule(b, 53)}); err != nil {
		t.Fatal(err)
	}
	// A long-lived flow through rule a: a raw connection to the pod, half
	// written.
	keep, err := net.DialTimeout("tcp", a.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	if _, err := keep.Write([]byte("first half ")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flow connected", func() bool { return v.fwd.Stats().TCPConnected == 1 })

	// b goes, c comes, a stays.
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(a, 80), tcpRule(c, 8080)}); err != nil {
		t.Fatal(err)
	}
	if got := v.fwd.Rules(); len(got) != 2 || got[0] != tcpRule(a, 80) && got[1] != tcpRule(a, 80) {
		t.Fatalf("rules %v", got)
	}
	if u, err := net.ListenPacket("udp4", b.String()); err != nil {
		t.Fatalf("removed UDP socket still bound: %v", err)
	} else {
		_ = u.Close()
	}
	if got, want := askTCP(t, c, 8080, 100); got != want {
		t.Fatalf("new rule: %q, want %q", got, want)
	}
	if _, err := keep.Write([]byte("second half")); err != nil {
		t.Fatal(err)
	}
	_ = keep.(*net.TCPConn).CloseWrite()
	_ = keep.SetReadDeadline(time.Now().Add(10 * time.Second))
	ans, err := io.ReadAll(keep)
	if want := fmt.Sprintf("80 %s %x", gw4, sha256.Sum256([]byte("first half second half"))); err != nil || string(ans) != want {
		t.Fatalf("kept flow: %q, %v; want %q", ans, err, want)
	}

	// a is retargeted: its socket stays, a flow opened before keeps its
	// target, a new one goes to the new target.
	old, err := net.DialTimeout("tcp", a.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	waitFor(t, "flow connected", func() bool { return v.fwd.Stats().TCPConnected == 3 })
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(a, 8080)}); err != nil {
		t.Fatal(err)
	}
	if got, want := askTCP(t, a, 8080, 10); got != want {
		t.Fatalf("retargeted: %q, want %q", got, want)
	}
	_ = old.(*net.TCPConn).CloseWrite()
	_ = old.SetReadDeadline(time.Now().Add(10 * time.Second))
	if ans, err := io.ReadAll(old); err != nil || string(ans) != fmt.Sprintf("80 %s %x", gw4, sha256.Sum256(nil)) {
		t.Fatalf("flow opened before the retarget: %q, %v", ans, err)
	}

	// KeepSource turned on: the socket stays; a loopback client cannot
	// be kept (a pod drops loopback sources) and comes from the gateway.
	ks := tcpRule(a, 8080)
	ks.KeepSource = true
	if err := v.fwd.SetRules([]ingress.Rule{ks}); err != nil {
		t.Fatal(err)
	}
	if got := v.fwd.Rules(); len(got) != 1 || got[0] != ks || got[0].String() != "tcp "+a.String()+"->10.244.1.2:8080 keep-source" {
		t.Fatalf("rules %v, want %v", got, ks)
	}
	if got, want := askTCP(t, a, 8080, 10); got != want {
		t.Fatalf("KeepSource, loopback client: %q, want %q", got, want)
	}
	if st := v.fwd.Stats(); st.SourceKept != 0 {
		t.Fatalf("stats %+v: a loopback client kept its address", st)
	}

	// Removing a rule resets its flows.
	live, err := net.DialTimeout("tcp", a.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	waitFor(t, "flow connected", func() bool { return v.fwd.Stats().ActiveFlows == 1 })
	if err := v.fwd.SetRules(nil); err != nil {
		t.Fatal(err)
	}
	_ = live.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := live.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("flow of a removed rule: read %v, want a reset", err)
	}
	if _, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
		t.Fatal("removed TCP socket still accepts")
	}
	if st := v.fwd.Stats(); st.Listeners != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPortConflict: a rule whose port is taken is skipped and counted;
// the others work; once the port is free, the next SetRules opens it.
func TestPortConflict(t *testing.T) {
	v := newEnv(t, nil)
	serveTCP(t, v.pod, 80)
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := netip.MustParseAddrPort(taken.Addr().String())
	ok := freePort(t)
	rules := []ingress.Rule{tcpRule(busy, 80), tcpRule(ok, 80)}
	if err := v.fwd.SetRules(rules); err != nil {
		t.Fatal(err)
	}
	if got, want := askTCP(t, ok, 80, 10); got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if st, c := v.fwd.Stats(), v.fwd.Conflicts(); st.Conflicts != 1 || st.Listeners != 1 || len(c) != 1 || c[0] != rules[0] {
		t.Fatalf("stats %+v, conflicts %v", st, c)
	}
	_ = taken.Close()
	if err := v.fwd.SetRules(rules); err != nil {
		t.Fatal(err)
	}
	if got, want := askTCP(t, busy, 80, 10); got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if st, c := v.fwd.Stats(), v.fwd.Conflicts(); st.Listeners != 2 || len(c) != 0 {
		t.Fatalf("stats %+v, conflicts %v", st, c)
	}
}

// TestBadRules: an invalid set is refused whole.
func TestBadRules(t *testing.T) {
	v := newEnv(t, nil)
	l := freePort(t)
	for _, rs := range [][]ingress.Rule{
		{{Proto: packet.ProtoICMPv4, Listen: l, Target: netip.AddrPortFrom(podAddr, 1)}},
		{tcpRule(netip.AddrPortFrom(l.Addr(), 0), 80)},
		{{Proto: packet.ProtoTCP, Listen: l, Target: netip.MustParseAddrPort("127.0.0.1:80")}},
		{tcpRule(l, 80), tcpRule(l, 81)},
	} {
		if err := v.fwd.SetRules(rs); !errors.Is(err, ingress.ErrRule) {
			t.Errorf("%v: %v, want ErrRule", rs, err)
		}
	}
	if st := v.fwd.Stats(); st.Listeners != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestFlowLimit: a connection over MaxFlows is reset; the first keeps
// working.
func TestFlowLimit(t *testing.T) {
	v := newEnv(t, func(c *ingress.Config) { c.MaxFlows = 1 })
	serveTCP(t, v.pod, 80)
	l := freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(l, 80)}); err != nil {
		t.Fatal(err)
	}
	first, err := net.DialTimeout("tcp", l.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, "flow connected", func() bool { return v.fwd.Stats().TCPConnected == 1 })
	expectReset(t, l)
	_ = first.(*net.TCPConn).CloseWrite()
	_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
	if ans, err := io.ReadAll(first); err != nil || string(ans) != fmt.Sprintf("80 %s %x", gw4, sha256.Sum256(nil)) {
		t.Fatalf("first: %q, %v", ans, err)
	}
	if st := v.fwd.Stats(); st.TCPFlowLimited != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestClose: Close resets live flows and closes the sockets; SetRules then
// fails.
func TestClose(t *testing.T) {
	v := newEnv(t, nil)
	serveTCP(t, v.pod, 80)
	l := freePort(t)
	if err := v.fwd.SetRules([]ingress.Rule{tcpRule(l, 80)}); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", l.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "flow connected", func() bool { return v.fwd.Stats().TCPConnected == 1 })
	if err := v.fwd.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %v, want a reset", err)
	}
	if err := v.fwd.SetRules(nil); !errors.Is(err, ingress.ErrClosed) {
		t.Fatalf("SetRules after Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d net.Dialer
	if c2, err := d.DialContext(ctx, "tcp", l.String()); err == nil {
		_ = c2.Close()
		t.Fatal("socket still accepts after Close")
	}
}

// TestIPv6: rules listening on ::1 reach the pod's IPv6 address from the
// IPv6 gateway; a rule may also cross families (an IPv4 client, an IPv6
// target).
func TestIPv6(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = l.Close()
	}
	v := newEnv(t, nil)
	serveTCP(t, v.pod, 80)
	serveUDP(t, v.pod, 53)
	l6, l4 := freePortOn(t, "::1"), freePort(t)
	t6 := netip.AddrPortFrom(podAddr6, 80)
	if err := v.fwd.SetRules([]ingress.Rule{
		{Proto: packet.ProtoTCP, Listen: l6, Target: t6},
		{Proto: packet.ProtoUDP, Listen: l6, Target: netip.AddrPortFrom(podAddr6, 53)},
		{Proto: packet.ProtoTCP, Listen: l4, Target: t6},
	}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []netip.AddrPort{l6, l4} {
		if got, want := askTCPFrom(t, l, 80, 100000, gw6); got != want {
			t.Fatalf("via %s: %q, want %q", l, got, want)
		}
	}
	c, err := net.Dial("udp", l6.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := askUDP(t, c, "six"), fmt.Sprintf("53 %s six", gw6); got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
}
