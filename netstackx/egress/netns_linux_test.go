package egress_test

// The egress path against a real "outside" host, with root: three
// throwaway network namespaces (router/nstest), nothing added to the test
// process's own namespace.
//
//	pod netns (TAP eth0 10.244.1.50) ─┐
//	virtual pods (netstack) ──────────┤ engine (this process) ─► Forwarder
//	                                  │   host sockets opened inside "node"
//	node netns: vn 198.51.100.1 ══ veth ══ vo 198.51.100.2: outside netns
//	                                       (HTTP, UDP, iperf3 servers; ping)
//
// Design notes: the engine and the Forwarder run in the test process, but
// every host socket the Forwarder opens is created inside the node
// namespace: its Dialer and PingDialer create the socket on an OS thread
// switched into that namespace (nstest.NS.Do), and a socket stays in the
// namespace it was created in. So the outside host is reachable only
// through the node, and the node has no other link: no packet can leave
// the test's namespaces.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/netstackx/egress"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/route"
)

var (
	nodeAddr  = netip.MustParseAddr("198.51.100.1")
	outAddr   = netip.MustParseAddr("198.51.100.2")
	nodeAddr6 = netip.MustParseAddr("2001:db8:100::1")
	outAddr6  = netip.MustParseAddr("2001:db8:100::2")
)

func nsPing(ns *nstest.NS) egress.PingDialer {
	return func(ctx context.Context, dst netip.Addr) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = egress.DialPing(ctx, dst)
			return err
		})
		return c, err
	}
}

// listen opens a listener inside ns.
func listen(t *testing.T, ns *nstest.NS, network, addr string) any {
	t.Helper()
	var l any
	if err := ns.Do(func() error {
		var err error
		if strings.HasPrefix(network, "udp") {
			l, err = net.ListenPacket(network, addr)
		} else {
			l, err = net.Listen(network, addr)
		}
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	return l
}

type netnsEnv struct {
	node, out, pod *nstest.NS
	e              *engine.Engine
	fwd            *egress.Forwarder
	vpod           *netstackx.Pod
}

func newNetnsEnv(t *testing.T) *netnsEnv {
	t.Helper()
	nstest.RequireRoot(t)
	v := &netnsEnv{node: nstest.New(t), out: nstest.New(t), pod: nstest.New(t)}
	v.node.Run(t, "ip", "link", "add", "vn", "type", "veth", "peer", "name", "vo", "netns", v.out.Name)
	for _, c := range []struct {
		ns     *nstest.NS
		dev    string
		a4, a6 netip.Addr
	}{{v.node, "vn", nodeAddr, nodeAddr6}, {v.out, "vo", outAddr, outAddr6}} {
		c.ns.Run(t, "ip", "addr", "add", c.a4.String()+"/24", "dev", c.dev)
		c.ns.Run(t, "ip", "addr", "add", c.a6.String()+"/64", "dev", c.dev, "nodad")
		c.ns.Run(t, "ip", "link", "set", c.dev, "up")
	}
	// Ping sockets for everyone, in the node's namespace only.
	if err := v.node.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
	}); err != nil {
		t.Fatalf("ping_group_range in the node netns: %v", err)
	}
	log := zaptest.NewLogger(t)
	e, err := engine.New(engine.Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	v.e = e
	fwd, err := egress.New(egress.Config{Dialer: v.node, Ping: nsPing(v.node), DialTimeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.AddPort(fwd, engine.PortConfig{Name: "egress", Kind: engine.KindEgress, MTU: 1500})
	if err != nil {
		_ = fwd.Close()
		t.Fatal(err)
	}
	v.fwd = fwd
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(p.Index())},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(p.Index())},
	}); err != nil {
		t.Fatal(err)
	}
	v.vpod = (&env{e: e}).pod(t, 0)
	return v
}

// addTAPPod gives the pod namespace an eth0 on a TAP attached to the
// engine, 10.244.1.50/24 with the gateway as default route.
func (v *netnsEnv) addTAPPod(t *testing.T) {
	t.Helper()
	var dev *tap.Device
	if err := v.pod.Do(func() error {
		var err error
		dev, err = tap.Create("eth0", tap.Config{MTU: 1500})
		return err
	}); err != nil {
		t.Fatalf("TAP in the pod netns: %v", err)
	}
	a := netip.MustParseAddr("10.244.1.50")
	if _, err := v.e.AddPort(dev, engine.PortConfig{Name: "tap-pod", Kind: engine.KindPod, L2: true, MTU: 1500, Addrs: []netip.Addr{a}}); err != nil {
		_ = dev.Close()
		t.Fatal(err)
	}
	v.pod.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "eth0")
	v.pod.Run(t, "ip", "link", "set", "eth0", "up")
	v.pod.Run(t, "ip", "route", "add", "default", "via", gw4.String())
}

func TestNetnsHTTP(t *testing.T) {
	v := newNetnsEnv(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.RemoteAddr)
	})}
	var wg sync.WaitGroup
	for _, addr := range []string{"198.51.100.2:8080", "[2001:db8:100::2]:8080"} {
		ln := listen(t, v.out, "tcp", addr).(net.Listener)
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ln) }()
	}
	t.Cleanup(func() { _ = srv.Close(); wg.Wait() })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return v.vpod.DialTCP(ctx, netip.MustParseAddrPort(addr))
		},
	}}
	defer client.CloseIdleConnections()
	for _, c := range []struct{ url, want string }{
		{"http://198.51.100.2:8080/", "198.51.100.1:"},
		{"http://[2001:db8:100::2]:8080/", "[2001:db8:100::1]:"},
	} {
		resp, err := client.Get(c.url)
		if err != nil {
			t.Fatalf("GET %s: %v", c.url, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.HasPrefix(string(body), c.want) {
			t.Fatalf("GET %s: the server saw %q (%v), want the node's address %s...", c.url, body, err, c.want)
		}
	}
	// No route from the node: the pod gets an ICMP unreachable.
	_, err := v.vpod.DialTCP(ctxT(t, 10*time.Second), netip.MustParseAddrPort("192.0.2.99:80"))
	if !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial with no route from the node: %v, want unreachable", err)
	}
}

func TestNetnsUDPAndPing(t *testing.T) {
	v := newNetnsEnv(t)
	pc := listen(t, v.out, "udp", "198.51.100.2:9").(net.PacketConn)
	serveUDP(t, pc, func(msg []byte, from net.Addr) []byte { return fmt.Appendf(nil, "%s from %s", msg, from) })
	if got := askUDP(t, v.vpod, netip.MustParseAddrPort("198.51.100.2:9"), "hi"); !strings.HasPrefix(got, "hi from 198.51.100.1:") {
		t.Fatalf("UDP reply %q: want the node's address", got)
	}
	for _, dst := range []netip.Addr{outAddr, outAddr6} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rtt, err := v.vpod.Ping(ctx, dst, 100)
		cancel()
		if err != nil {
			t.Fatalf("ping %s: %v (stats %+v)", dst, err, v.fwd.Stats())
		}
		t.Logf("ping %s from a virtual pod: %v", dst, rtt)
	}
	// A Linux pod's ping, through the TAP: the reply must come from the
	// address it pinged, with its identifier.
	v.addTAPPod(t)
	out := v.pod.Run(t, "ping", "-c", "3", "-i", "0.2", "-W", "5", outAddr.String())
	if !strings.Contains(out, "3 received") {
		t.Fatalf("ping from the pod netns:\n%s", out)
	}
	if st := v.fwd.Stats(); st.ICMPEchoReplies < 5 || st.PingUnsupported != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNetnsIperf3 measures TCP both ways between a Linux pod (TAP) and an
// iperf3 server outside.
func TestNetnsIperf3(t *testing.T) {
	nstest.RequireCommand(t, "iperf3")
	v := newNetnsEnv(t)
	v.addTAPPod(t)
	ctx, cancel := context.WithCancel(context.Background())
	srv := v.out.Command(ctx, "iperf3", "-s", "-B", outAddr.String(), "-p", "5201")
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Wait() })
	waitFor(t, func() bool {
		return v.out.Do(func() error {
			c, err := net.DialTimeout("tcp", "198.51.100.2:5201", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}) == nil
	}, "the iperf3 server")
	dur := "2"
	if testing.Short() {
		dur = "1"
	}
	for _, reverse := range []bool{false, true} {
		args := []string{"-c", outAddr.String(), "-p", "5201", "-t", dur, "-J"}
		if reverse {
			args = append(args, "-R")
		}
		var res struct {
			End struct {
				SumReceived struct {
					Bytes         float64 `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		out := v.pod.Run(t, "iperf3", args...)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("iperf3 output: %v\n%s", err, out)
		}
		if res.End.SumReceived.Bytes == 0 {
			t.Fatalf("iperf3 (reverse %v) moved nothing:\n%s", reverse, out)
		}
		t.Logf("iperf3 pod -> outside (reverse %v): %.2f Gbit/s; egress %+v", reverse, res.End.SumReceived.BitsPerSecond/1e9, v.fwd.Stats().Endpoint)
		for _, p := range v.e.Ports() {
			t.Logf("port %s: %+v", p.Name(), p.Stats())
		}
	}
	if st := v.fwd.Stats(); st.TCPConnected < 4 {
		t.Fatalf("stats %+v", st)
	}
}
