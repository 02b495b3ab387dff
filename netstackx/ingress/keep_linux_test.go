package ingress_test

// KeepSource end to end: a client in a throwaway network namespace, at an
// address of its own (not loopback) ─► the Forwarder's socket in that
// namespace ─► its stack, dialling from the client's address ─► the
// engine's nodePort frontend of an externalTrafficPolicy Local Service ─►
// the virtual pod, which sees the client's address and port; its replies
// come back to the Forwarder's port.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/netstackx/ingress"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

// nsListener opens the Forwarder's host sockets inside a namespace.
type nsListener struct{ ns *nstest.NS }

func (l nsListener) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := l.ns.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	return ln, err
}

func (l nsListener) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := l.ns.Do(func() error {
		var err error
		pc, err = (&net.ListenConfig{}).ListenPacket(ctx, network, address)
		return err
	})
	return pc, err
}

// dialFrom dials address from local inside ns.
func dialFrom(t *testing.T, ns *nstest.NS, network string, local net.Addr, address string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}).Dial(network, address)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// askUDPFrom sends msg to dst from an unconnected socket at from inside
// ns and returns the reply. Unconnected: a socket listening on every
// address (0.0.0.0) answers from the address the kernel picks for the
// client, which need not be the one the client sent to.
func askUDPFrom(t *testing.T, ns *nstest.NS, from netip.Addr, dst, msg string) string {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(from, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst))); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("udp reply: %v", err)
	}
	return string(buf[:n])
}

// TestKeepSource: through a KeepSource rule to a Local nodePort, the pod
// sees the client's own address and port, TCP and UDP, both families; a
// loopback client, and every client of a rule without KeepSource, come
// from the gateway.
func TestKeepSource(t *testing.T) {
	nstest.RequireRoot(t)
	node4, node6 := netip.MustParseAddr("172.29.0.2"), netip.MustParseAddr("fd00:29::2")
	ns := nstest.New(t)
	ns.Run(t, "ip", "addr", "add", "192.0.2.1/32", "dev", "lo")
	ns.Run(t, "ip", "addr", "add", "192.0.2.2/32", "dev", "lo")
	ns.Run(t, "ip", "-6", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad")
	ns.Run(t, "ip", "-6", "addr", "add", "2001:db8::2/128", "dev", "lo", "nodad")
	v := newEnvWith(t, func(c *engine.Config) { c.HostAddrs = []netip.Addr{node4, node6} },
		func(c *ingress.Config) { c.Listener = nsListener{ns} })
	fwd := v.fwd
	ct, err := conntrack.New(conntrack.Config{SNAT: []conntrack.SNATAddr{
		{Addr: gw4, PortMin: engine.HairpinPortMin, PortMax: engine.HairpinPortMax},
		{Addr: gw6, PortMin: engine.HairpinPortMin, PortMax: engine.HairpinPortMax}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.e.EnableServices(engine.ServicesConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/108")}, Table: ct}); err != nil {
		t.Fatal(err)
	}
	bs := []service.Backend{{Addr: podAddr, Port: 80, Ready: true, Serving: true, Local: true}, {Addr: podAddr6, Port: 80, Ready: true, Serving: true, Local: true}}
	svcs := []service.Service{{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
		ExternalLocal: true, Ports: []service.Port{
			{Name: "tcp", Proto: packet.ProtoTCP, Port: 80, NodePort: 30080, Backends: bs},
			{Name: "udp", Proto: packet.ProtoUDP, Port: 80, NodePort: 30080, Backends: bs}}},
		{Namespace: "ns", Name: "elsewhere", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}, ExternalLocal: true,
			Ports: []service.Port{{Name: "tcp", Proto: packet.ProtoTCP, Port: 80, NodePort: 30090,
				Backends: []service.Backend{{Addr: netip.MustParseAddr("10.244.2.9"), Port: 80, Ready: true, Serving: true}}}}}}
	if err := v.e.SetServices(service.NewTable(svcs, service.Options{NodeAddrs: []netip.Addr{node4, node6}})); err != nil {
		t.Fatal(err)
	}
	// The pod answers TCP with the peer it sees, UDP as serveUDP.
	ln, err := v.pod.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	nstest.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		fmt.Fprint(c, c.RemoteAddr().String())
	})
	serveUDP(t, v.pod, 80)
	var rules []ingress.Rule
	for _, a := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		node := node4
		if a.Is6() {
			node = node6
		}
		for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
			tgt := netip.AddrPortFrom(node, 30080)
			rules = append(rules,
				ingress.Rule{Proto: proto, Listen: netip.AddrPortFrom(a, 30080), Target: tgt, KeepSource: true},
				ingress.Rule{Proto: proto, Listen: netip.AddrPortFrom(a, 30081), Target: tgt})
		}
	}
	rules = append(rules, ingress.Rule{Proto: packet.ProtoTCP, Listen: netip.MustParseAddrPort("0.0.0.0:30090"),
		Target: netip.AddrPortFrom(node4, 30090), KeepSource: true})
	if err := fwd.SetRules(rules); err != nil {
		t.Fatal(err)
	}
	if c := fwd.Conflicts(); len(c) != 0 {
		t.Fatalf("conflicts %v", c)
	}
	for _, tc := range []struct {
		name         string
		from, listen string
		port         uint16
		want         string // the address the pod sees: "client" for the client's own
	}{
		{"v4 kept", "192.0.2.2", "192.0.2.1", 30080, "client"},
		{"v4 loopback", "127.0.0.1", "127.0.0.1", 30080, gw4.String()},
		{"v4 no KeepSource", "192.0.2.2", "192.0.2.1", 30081, gw4.String()},
		{"v6 kept", "2001:db8::2", "2001:db8::1", 30080, "client"},
		{"v6 loopback", "::1", "::1", 30080, gw6.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := netip.MustParseAddr(tc.from)
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.listen), tc.port).String()
			c := dialFrom(t, ns, "tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), dst)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("tcp: %v", err)
			}
			seen, err := netip.ParseAddrPort(string(b))
			if err != nil {
				t.Fatalf("tcp answer %q", b)
			}
			self := netip.MustParseAddrPort(c.LocalAddr().String())
			if tc.want == "client" {
				if seen != self {
					t.Fatalf("tcp: the pod saw %s, want the client %s", seen, self)
				}
			} else if seen.Addr().String() != tc.want {
				t.Fatalf("tcp: the pod saw %s, want %s", seen, tc.want)
			}
			want := tc.want
			if want == "client" {
				want = from.String()
			}
			t.Cleanup(func() {
				if t.Failed() {
					for _, p := range v.e.Ports() {
						t.Logf("port %s: %+v", p.Name(), p.Stats())
					}
					t.Logf("ingress %+v", fwd.Stats())
				}
			})
			if got := askUDPFrom(t, ns, from, dst, "hello"); got != "80 "+want+" hello" {
				t.Fatalf("udp: reply %q, want %q", got, "80 "+want+" hello")
			}
		})
	}
	if st := fwd.Stats(); st.SourceKept != 4 {
		t.Fatalf("stats %+v: want 4 flows that kept their source", st)
	}
	// One client port reaching the node at two addresses: the stack cannot
	// take that port twice toward the one target, so the second flow keeps
	// the client's address with another port.
	reuse := func(network, address string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		}); err != nil {
			return err
		}
		return serr
	}
	var first netip.AddrPort
	for i, dst := range []string{"192.0.2.1:30080", "192.0.2.2:30080"} {
		var c net.Conn
		if err := ns.Do(func() error {
			var err error
			local := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: int(first.Port())}
			c, err = (&net.Dialer{LocalAddr: local, Control: reuse, Timeout: 5 * time.Second}).Dial("tcp", dst)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		seen, err := netip.ParseAddrPort(string(b))
		self := netip.MustParseAddrPort(c.LocalAddr().String())
		switch {
		case err != nil:
			t.Fatalf("answer %q", b)
		case i == 0 && seen != self:
			t.Fatalf("first flow: the pod saw %s, want %s", seen, self)
		case i == 1 && (seen.Addr() != self.Addr() || self.Port() != first.Port()):
			t.Fatalf("second flow from %s: the pod saw %s, want the client's address", self, seen)
		}
		t.Logf("flow %d from %s: the pod saw %s", i, self, seen)
		first = self
	}

	// No backend on this node: the engine's port unreachable reaches the
	// stack, and the client is reset at once (not after DialTimeout).
	start := time.Now()
	var c net.Conn
	err = ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.2")}, Timeout: 5 * time.Second}).Dial("tcp", "192.0.2.1:30090")
		return err
	})
	if err == nil {
		// The host accepted; the reset follows. (It may also come before
		// the dialer has read the connect's result: then the dial itself
		// reports it.)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("no local backend: %v, want a reset", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("reset after %v: the refusal did not reach the ingress", d)
	}
	if st := fwd.Stats(); st.TCPDialFailed != 1 || st.SourceKept != 6 {
		t.Fatalf("stats %+v: want 1 failed dial, 6 flows that kept their source", st)
	}
}
