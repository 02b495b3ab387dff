package cni_test

// End-to-end snat egress (root): the real daemon with --egress snat in a
// node netns, pods attached by the real CNI plugin, and an "outside" netns
// joined to the node netns by a veth pair (newOutside). The SNAT address
// 10.249.X.7 is assigned nowhere: the outside routes it to the node, and
// the daemon routes it to its uplink TUN. The node netns forwards
// (ip_forward=1, as on a Kubernetes node) and has no default route, so
// nothing leaves the test's namespaces.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

func TestSNATEgress(t *testing.T) {
	n := newNode(t)
	nstestRequireTcpdump(t)
	o := newOutside(t, n)
	snat := netip.MustParseAddr(fmt.Sprintf("10.249.%d.7", 1+rand.IntN(250)))
	flags := []string{"--egress", "snat", "--snat-addr", snat.String()}
	ctx := context.Background()

	// Without forwarding the daemon refuses to start, and says why.
	n.ns.Run(t, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	out, err := n.ns.Command(fctx, filepath.Join(n.bin, "podrouter"), append([]string{"daemon",
		"--pod-cidr", n.podCIDR.String(), "--node-ip", n.nodeIP.String(),
		"--state-dir", filepath.Join(n.dir, "state"), "--socket", n.socket, "--uplink", n.uplink}, flags...)...).CombinedOutput()
	cancel()
	if err == nil || !strings.Contains(string(out), "net.ipv4.ip_forward is off") {
		t.Fatalf("daemon with ip_forward=0: %v\n%s", err, out)
	}

	n.ns.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	// An address the host owns cannot be the SNAT address (replies would
	// be the host's): refused, and nothing is left behind (the real start
	// below reuses the uplink's name).
	fctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	out, err = n.ns.Command(fctx, filepath.Join(n.bin, "podrouter"), "daemon",
		"--pod-cidr", n.podCIDR.String(), "--node-ip", n.nodeIP.String(),
		"--state-dir", filepath.Join(n.dir, "state"), "--socket", n.socket, "--uplink", n.uplink,
		"--egress", "snat", "--snat-addr", o.nodeIP.String()).CombinedOutput()
	cancel()
	if err == nil || !strings.Contains(string(out), "is assigned to this host") {
		t.Fatalf("daemon with the host's own address as snat-addr: %v\n%s", err, out)
	}
	o.ns.Run(t, "ip", "route", "add", snat.String()+"/32", "via", o.nodeIP.String())
	n.startDaemon(flags...)
	if r := n.ns.Run(t, "ip", "route", "show", snat.String()+"/32"); !strings.Contains(r, "dev "+n.uplink) {
		t.Fatalf("host route to the SNAT address: %q", r)
	}
	a := n.addPod()

	// Everything the outside receives from the pod network or the SNAT
	// address, captured for the whole test.
	capture := startCapture(t, o, fmt.Sprintf("src net %s or src host %s", n.podCIDR, snat))

	o.serveEcho(t)

	// HTTP: the server sees the SNAT address.
	body := httpGet(t, a.ns, fmt.Sprintf("http://%s:8080/", o.addr))
	host, _, err := net.SplitHostPort(strings.TrimPrefix(body, "you are "))
	if err != nil || host != snat.String() {
		t.Fatalf("the outside saw %q, want the SNAT address %s (pod %s)", body, snat, a.ip)
	}

	// UDP request/response, from one socket: one flow, one port.
	_, pc := listen(t, a.ns, "udp4", ":0")
	defer pc.Close()
	var seenFrom string
	for i := range 3 {
		f := o.udpEcho(t, pc, i, snat)
		if i == 0 {
			seenFrom = f
		} else if f != seenFrom {
			t.Fatalf("datagram %d from %s, the first from %s: the translation changed", i, f, seenFrom)
		}
	}

	// ICMP echo, translated both ways (no ping sockets needed in snat mode).
	ping(t, a.ns, o.addr)

	// An ICMP error about a translated flow reaches the pod translated
	// back: a datagram to a closed port of the outside is refused.
	uc, err := a.ns.DialContext(ctx, "udp4", netip.AddrPortFrom(o.addr, 9001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	_ = uc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Write([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	if _, err := uc.Read(make([]byte, 64)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UDP to a closed port of the outside: %v, want ECONNREFUSED (port unreachable, translated back)", err)
	}

	// podrouter conntrack: the UDP flow with its translation.
	ct, err := n.client().Conntrack(ctx, api.ConntrackRequest{Pod: a.ip.String()})
	if err != nil {
		t.Fatal(err)
	}
	udpFlow := false
	for _, f := range ct.Flows {
		if f.Src.Addr() != a.ip || f.ReplyDst.Addr() != snat {
			t.Fatalf("flow %+v: want from pod %s, replies to %s", f, a.ip, snat)
		}
		if f.Proto == "udp" && f.Dst == netip.AddrPortFrom(o.addr, 9000) && f.ReplyDst.String() == seenFrom && f.State == "replied" && f.Pod != "" {
			udpFlow = true
		}
	}
	if ct.Egress != "snat" || !udpFlow || ct.Stats == nil || ct.Stats.Inserts < 3 {
		t.Fatalf("conntrack: egress %q, flows %+v, stats %+v; want the UDP flow replying to %s", ct.Egress, ct.Flows, ct.Stats, seenFrom)
	}
	cli, err := n.cli("conntrack", "--pod", a.ip.String())
	if err != nil || !strings.Contains(string(cli), "egress snat") || !strings.Contains(string(cli), seenFrom) {
		t.Fatalf("podrouter conntrack: %v\n%s", err, cli)
	}
	st, err := n.client().Status(ctx)
	if err != nil || st.EgressMode != "snat" || st.Egress == nil || st.Egress.Flows < 3 {
		t.Fatalf("status: %+v, %v", st.Egress, err)
	}
	m := scrape(t, n.ns.HTTPClient())
	if v := m.get("podrouter_egress_events_total", map[string]string{"event": "inserts"}); v < 3 {
		t.Errorf("podrouter_egress_events_total{event=inserts} = %v, want >= 3", v)
	}
	if v := m.get("podrouter_egress_flows", nil); v < 3 {
		t.Errorf("podrouter_egress_flows = %v, want >= 3", v)
	}

	// Unsolicited traffic to the SNAT address is dropped by the engine.
	stray, err := o.ns.DialContext(ctx, "udp4", netip.AddrPortFrom(snat, 40404).String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = stray.Write([]byte("stray"))
	stray.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ports, err := n.client().Ports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var drops uint64
		for _, p := range ports {
			if p.Name == n.uplink {
				drops = p.Drops["no-conntrack"]
			}
		}
		if drops > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no no-conntrack drop on the uplink: %+v", ports)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The capture: the SNAT address, never a pod's own.
	lines := capture()
	fromSNAT := 0
	for _, l := range lines {
		if strings.Contains(l, " "+a.ip.String()+".") || strings.Contains(l, " "+a.ip.String()+" ") {
			t.Errorf("the outside received a packet from the pod's address: %s", l)
		}
		if strings.Contains(l, snat.String()) {
			fromSNAT++
		}
	}
	if fromSNAT == 0 {
		t.Fatalf("the capture saw nothing from %s:\n%s", snat, strings.Join(lines, "\n"))
	}
	t.Logf("the outside received %d packets, %d from the SNAT address %s", len(lines), fromSNAT, snat)
}

// nstestRequireTcpdump skips without tcpdump (installed by .ci/deps).
func nstestRequireTcpdump(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not installed (.ci/deps installs it)")
	}
}

// startCapture runs tcpdump with filter in o's netns on every interface
// and returns a function that stops it and returns the packets it saw, one
// line each.
func startCapture(t *testing.T, o *outside, filter string) func() []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := o.ns.Command(ctx, "tcpdump", "-i", "any", "-n", "-l", "-p", filter)
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := c.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan []string, 1)
	go func() {
		var ls []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ls = append(ls, sc.Text())
		}
		lines <- ls
	}()
	// tcpdump says "listening on ..." once its capture is open.
	listening := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				listening <- nil
				for sc.Scan() {
				}
				return
			}
		}
		listening <- fmt.Errorf("tcpdump exited before listening")
	}()
	select {
	case err := <-listening:
		if err != nil {
			cancel()
			_ = c.Wait()
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		cancel()
		_ = c.Wait()
		t.Fatal("tcpdump not listening after 10s")
	}
	stopped := false
	stop := func() []string {
		if stopped {
			return nil
		}
		stopped = true
		time.Sleep(200 * time.Millisecond) // let the last packets be printed
		_ = c.Process.Signal(syscall.SIGINT)
		ls := <-lines
		_ = c.Wait()
		cancel()
		return ls
	}
	t.Cleanup(func() { stop() })
	return stop
}
