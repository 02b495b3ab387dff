package cni_test

// End-to-end egress (root): the real daemon (netstack egress, the
// default) in a node netns, pods attached by the real CNI plugin, and an
// "outside" netns joined to the node netns by a veth pair (10.253.X.0/24:
// the node's end .1, the outside's .2). Nothing leaves the test's
// namespaces: the node netns has no default route, and the "stuck"
// destination 10.254.X.0/24 is routed to the outside netns, which does not
// forward, so SYNs to it vanish.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/nstest"
)

// outside is the outside netns and its addresses.
type outside struct {
	ns     *nstest.NS
	addr   netip.Addr   // the outside's own address
	nodeIP netip.Addr   // the node's end of the veth: what the outside sees
	stuck  netip.Prefix // routed to the outside, never answered
}

// newOutside joins a new netns to n's by a veth pair.
func newOutside(t *testing.T, n *node) *outside {
	t.Helper()
	x := 1 + rand.IntN(250)
	o := &outside{
		ns:     nstest.New(t),
		addr:   netip.MustParseAddr(fmt.Sprintf("10.253.%d.2", x)),
		nodeIP: netip.MustParseAddr(fmt.Sprintf("10.253.%d.1", x)),
		stuck:  netip.MustParsePrefix(fmt.Sprintf("10.254.%d.0/24", x)),
	}
	id := rand.IntN(1 << 20)
	nodeEnd, outEnd := fmt.Sprintf("pen%05x", id), fmt.Sprintf("peo%05x", id)
	// Both ends are born in the node netns (deleted with it); one moves.
	n.ns.Run(t, "ip", "link", "add", nodeEnd, "type", "veth", "peer", "name", outEnd)
	n.ns.Run(t, "ip", "link", "set", outEnd, "netns", o.ns.Name)
	n.ns.Run(t, "ip", "addr", "add", o.nodeIP.String()+"/24", "dev", nodeEnd)
	n.ns.Run(t, "ip", "link", "set", nodeEnd, "up")
	n.ns.Run(t, "ip", "route", "add", o.stuck.String(), "via", o.addr.String())
	o.ns.Run(t, "ip", "addr", "add", o.addr.String()+"/24", "dev", outEnd)
	o.ns.Run(t, "ip", "link", "set", outEnd, "up")
	// A new netns does not forward (net.ipv4.ip_forward is 0): o.stuck
	// packets die there without an ICMP error.
	if out := o.ns.Run(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "0" {
		t.Fatalf("the outside netns forwards: ip_forward %q", out)
	}
	return o
}

// listen opens a listener inside ns (the socket stays there, whatever
// thread uses it later).
func listen(t *testing.T, ns *nstest.NS, network, addr string) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	err := ns.Do(func() error {
		var err error
		if network == "udp" {
			pc, err = net.ListenPacket(network, addr)
		} else {
			ln, err = net.Listen(network, addr)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln, pc
}

// dialIn dials from inside ns.
func dialIn(ctx context.Context, ns *nstest.NS, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// holdServer accepts TCP connections on ln and holds them open (reading
// until EOF) until the test ends; it counts the connections it saw.
type holdServer struct {
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func serveHold(t *testing.T, ln net.Listener) *holdServer {
	h := &holdServer{}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			_ = c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

func TestEgress(t *testing.T) {
	n := newNode(t)
	const perPod = 12
	flags := []string{"--egress-max-flows-per-pod", strconv.Itoa(perPod), "--egress-dial-timeout", "20s"}
	n.startDaemon(flags...)
	o := newOutside(t, n)
	a, b := n.addPod(), n.addPod()
	ctx := context.Background()

	// The outside's servers: HTTP answering with the peer it sees, a UDP
	// echo that prefixes the peer, and a TCP sink holding connections.
	hln, _ := listen(t, o.ns, "tcp", o.addr.String()+":8080")
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "you are %s", r.RemoteAddr)
	})}
	go func() { _ = hs.Serve(hln) }()
	t.Cleanup(func() { _ = hs.Close() })
	_, upc := listen(t, o.ns, "udp", o.addr.String()+":9000")
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		buf := make([]byte, 2048)
		for {
			k, from, err := upc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = upc.WriteTo([]byte(fmt.Sprintf("%s from %s", buf[:k], from)), from)
		}
	}()
	t.Cleanup(func() { _ = upc.Close(); <-udpDone })
	sln, _ := listen(t, o.ns, "tcp", o.addr.String()+":7000")
	sink := serveHold(t, sln)

	t.Run("http sees the node", func(t *testing.T) {
		body := httpGet(t, a.ns, fmt.Sprintf("http://%s:8080/", o.addr))
		host, _, err := net.SplitHostPort(strings.TrimPrefix(body, "you are "))
		if err != nil || host != o.nodeIP.String() {
			t.Fatalf("the outside saw %q, want the node's %s (pod %s)", body, o.nodeIP, a.ip)
		}
	})

	t.Run("udp", func(t *testing.T) {
		var pc net.PacketConn
		if err := a.ns.Do(func() error {
			var err error
			pc, err = net.ListenPacket("udp4", ":0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.addr, 9000))
		buf := make([]byte, 2048)
		for i := range 3 {
			if _, err := pc.WriteTo([]byte(fmt.Sprintf("ping %d", i)), dst); err != nil {
				t.Fatal(err)
			}
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
			want := fmt.Sprintf("ping %d from %s:", i, o.nodeIP)
			if !strings.HasPrefix(string(buf[:k]), want) || from.String() != dst.String() {
				t.Fatalf("reply %q from %v, want %q... from %v", buf[:k], from, want, dst)
			}
		}
		ct, err := n.client().Conntrack(ctx, api.ConntrackRequest{Pod: a.ip.String()})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, f := range ct.Flows {
			if f.Proto == "udp" && f.Dst == netip.AddrPortFrom(o.addr, 9000) && f.ReplyDst.Addr() == o.nodeIP && !f.Expires.IsZero() {
				found = true
			}
		}
		if !found {
			t.Fatalf("conntrack lacks the UDP flow: %+v", ct.Flows)
		}
	})

	t.Run("icmp echo", func(t *testing.T) {
		// A new netns allows no group ping sockets: the echo is dropped
		// and counted, with a warning.
		if out, err := a.ns.Command(ctx, "ping", "-c", "1", "-W", "1", o.addr.String()).CombinedOutput(); err == nil {
			t.Fatalf("ping with ping sockets forbidden succeeded:\n%s", out)
		}
		st, err := n.client().Status(ctx)
		if err != nil || st.Egress == nil || st.Egress.Drops["ping-unsupported"] == 0 {
			t.Fatalf("status after a forbidden ping: %+v, %v", st.Egress, err)
		}
		// Per netns: only the node netns changes.
		n.ns.Run(t, "sh", "-c", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range")
		ping(t, a.ns, o.addr)
	})

	t.Run("iperf3", func(t *testing.T) {
		r, err := iperf(t, &pod{ns: o.ns, ip: o.addr}, a, 5201, "-t", "2")
		if err != nil {
			t.Fatal(err)
		}
		if r.End.SumReceived.Bytes == 0 {
			t.Fatalf("iperf3 moved nothing: %+v", r.End)
		}
		t.Logf("egress TCP pod -> outside: %.2f Gbit/s", r.End.SumReceived.BitsPerSec/1e9)
	})

	t.Run("flow limit is per pod", func(t *testing.T) {
		// Pod c, with no flows yet, opens 10x its flow limit; only perPod
		// connect.
		c := n.addPod()
		var conns []net.Conn
		defer func() {
			for _, cn := range conns {
				_ = cn.Close()
			}
		}()
		refused := 0
		for range 10 * perPod {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			cn, err := dialIn(dctx, c.ns, "tcp", netip.AddrPortFrom(o.addr, 7000).String())
			cancel()
			switch {
			case err == nil:
				conns = append(conns, cn)
			case errors.Is(err, syscall.ECONNREFUSED):
				refused++
			default:
				t.Fatalf("dial %d: %v", len(conns)+refused, err)
			}
		}
		if len(conns) != perPod || refused != 9*perPod {
			t.Fatalf("%d connected, %d refused; want %d and %d", len(conns), refused, perPod, 9*perPod)
		}
		// The other pods are not affected.
		body := httpGet(t, b.ns, fmt.Sprintf("http://%s:8080/", o.addr))
		if !strings.Contains(body, o.nodeIP.String()) {
			t.Fatalf("pod b: %q", body)
		}
		ct, err := n.client().Conntrack(ctx, api.ConntrackRequest{Pod: c.ip.String()})
		if err != nil {
			t.Fatal(err)
		}
		if len(ct.Flows) != perPod || ct.Stats.Drops["tcp-flow-limit"] < uint64(9*perPod) {
			t.Fatalf("conntrack --pod a: %d flows, drops %v", len(ct.Flows), ct.Stats.Drops)
		}
		for _, f := range ct.Flows {
			if f.Proto != "tcp" || f.State != "established" || f.ReplySrc != netip.AddrPortFrom(o.addr, 7000) ||
				f.ReplyDst.Addr() != o.nodeIP || f.Src.Addr() != c.ip || f.Pod == "" {
				t.Fatalf("flow %+v", f)
			}
		}
		// The CLI shows the same, and the metrics count the drops.
		out, err := exec.Command(filepath.Join(n.bin, "podrouter"), "conntrack", "--socket", n.socket, "--pod", c.ip.String()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d flows, egress netstack", perPod)) ||
			!strings.Contains(string(out), o.nodeIP.String()) {
			t.Fatalf("podrouter conntrack: %v\n%s", err, out)
		}
		m := scrape(t, n.metricsHTTP())
		if v := m.get("podrouter_egress_drops_total", map[string]string{"reason": "tcp-flow-limit"}); v < float64(9*perPod) {
			t.Errorf("podrouter_egress_drops_total{reason=tcp-flow-limit} = %v", v)
		}
		if v := m.get("podrouter_egress_flows", nil); v < perPod {
			t.Errorf("podrouter_egress_flows = %v", v)
		}
		for _, cn := range conns {
			_ = cn.Close()
		}
		conns = nil
		waitFlows(t, n, c.ip, 0)
		sink.mu.Lock()
		seen := len(sink.conns)
		sink.mu.Unlock()
		if seen != perPod {
			t.Errorf("the sink saw %d connections, want %d", seen, perPod)
		}
	})

	t.Run("stuck destination does not block", func(t *testing.T) {
		dctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		for i := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if c, err := dialIn(dctx, a.ns, "tcp", netip.AddrPortFrom(o.stuck.Addr().Next(), uint16(80+i)).String()); err == nil {
					_ = c.Close()
				}
			}()
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := n.client().Status(ctx)
			if err == nil && st.Egress != nil && st.Egress.DialsInFlight == 5 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("5 dials to the stuck destination not in flight: %+v, %v", st.Egress, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, p := range []*pod{a, b} {
			t0 := time.Now()
			body := httpGet(t, p.ns, fmt.Sprintf("http://%s:8080/", o.addr))
			if d := time.Since(t0); d > 3*time.Second || !strings.Contains(body, o.nodeIP.String()) {
				t.Fatalf("pod %s next to stuck dials: %q after %v", p.ip, body, d)
			}
		}
		ct, err := n.client().Conntrack(ctx, api.ConntrackRequest{Pod: a.ip.String()})
		if err != nil {
			t.Fatal(err)
		}
		dialing := 0
		for _, f := range ct.Flows {
			if f.State == "dialing" && o.stuck.Contains(f.Dst.Addr()) {
				dialing++
			}
		}
		if dialing != 5 {
			t.Fatalf("conntrack shows %d dialing flows, want 5: %+v", dialing, ct.Flows)
		}
		// The daemon stops promptly with dials in flight and a live flow.
		held, err := dialIn(ctx, b.ns, "tcp", netip.AddrPortFrom(o.addr, 7000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		t0 := time.Now()
		n.stopDaemon(syscall.SIGTERM)
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("SIGTERM with egress flows: the daemon took %v to stop", d)
		}
		// The outside's end of the live flow was closed with the daemon.
		deadline = time.Now().Add(5 * time.Second)
		for {
			sink.mu.Lock()
			last := sink.conns[len(sink.conns)-1]
			sink.mu.Unlock()
			_ = last.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := last.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the outside's end of a flow is still open after the daemon stopped")
			}
		}
		// Back up, so that the pods' CNI DEL at cleanup finds the daemon.
		n.startDaemon(flags...)
	})
}

// waitFlows waits until pod ip has want live egress flows.
func waitFlows(t *testing.T, n *node, ip netip.Addr, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ct, err := n.client().Conntrack(context.Background(), api.ConntrackRequest{Pod: ip.String()})
		if err == nil && len(ct.Flows) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: %d flows, want %d (%v)", ip, len(ct.Flows), want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
