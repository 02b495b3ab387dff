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
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

func TestEgress(t *testing.T) {
	n := newNode(t)
	const perPod = 12
	flags := []string{"--egress-max-flows-per-pod", strconv.Itoa(perPod), "--egress-dial-timeout", "20s"}
	n.startDaemon(flags...)
	o := newOutside(t, n)
	a, b := n.addPod(), n.addPod()
	ctx := context.Background()

	// The outside's servers (serveEcho), and a TCP sink holding
	// connections.
	o.serveEcho(t)
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
		_, pc := listen(t, a.ns, "udp4", ":0")
		defer pc.Close()
		for i := range 3 {
			o.udpEcho(t, pc, i, o.nodeIP)
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
			cn, err := c.ns.DialContext(dctx, "tcp", netip.AddrPortFrom(o.addr, 7000).String())
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
		out, err := n.cli("conntrack", "--pod", c.ip.String())
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d flows, egress netstack", perPod)) ||
			!strings.Contains(string(out), o.nodeIP.String()) {
			t.Fatalf("podrouter conntrack: %v\n%s", err, out)
		}
		m := scrape(t, n.ns.HTTPClient())
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
				if c, err := a.ns.DialContext(dctx, "tcp", netip.AddrPortFrom(o.stuck.Addr().Next(), uint16(80+i)).String()); err == nil {
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
		held, err := b.ns.DialContext(ctx, "tcp", netip.AddrPortFrom(o.addr, 7000).String())
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
