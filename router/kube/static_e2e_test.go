package kube

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/nstest"
)

// TestStaticPeersDaemons: without Kubernetes, two daemons with static
// --peers files over the udp backend; pods on each ping each other.
func TestStaticPeersDaemons(t *testing.T) { staticPeers(t, "udp", "8285") }

// TestStaticPeersHostGW: the host-gw backend; the pods' packets cross the
// underlay link as they are, routed by the node hosts (no encapsulation).
func TestStaticPeersHostGW(t *testing.T) { staticPeers(t, "host-gw", "") }

// TestStaticPeersDirectRouting: vxlan with --direct-routing between nodes
// on one subnet: as host-gw, nothing encapsulated.
func TestStaticPeersDirectRouting(t *testing.T) { staticPeers(t, "vxlan", "8472", "--direct-routing") }

func staticPeers(t *testing.T, backend, port string, extra ...string) {
	nstest.RequireRoot(t)
	direct := backend == "host-gw" || slices.Contains(extra, "--direct-routing")
	if direct {
		nstest.RequireCommand(t, "tcpdump")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, cniBin, tools := buildE2E(t, ctx, dir)
	nodes := nodePair(t, dir, "10.253", "prs")
	for i, n := range nodes {
		other := nodes[1-i]
		if err := os.MkdirAll(filepath.Join(n.dir, "net.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		peers := filepath.Join(n.dir, "peers.yaml")
		sock := filepath.Join(n.dir, "api.sock")
		ep := other.ip
		if port != "" {
			ep += ":" + port
		}
		entry := fmt.Sprintf("- name: %s\n  endpoint: %s\n  podCIDRs: [%s]\n", other.name, ep, other.podCIDR)
		if backend == "vxlan" { // unused while routed directly, but vxlan needs it
			entry += fmt.Sprintf("  vtepMAC: 0e:00:00:00:00:%02x\n", 2-i)
		}
		if err := os.WriteFile(peers, []byte(entry), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.dir, "net.d", "10-podrouter.conflist"), fmt.Appendf(nil,
			`{"cniVersion":"1.1.0","name":"podrouter","plugins":[{"type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q}}]}`,
			sock, filepath.Join(n.dir, "ipam")), 0o644); err != nil {
			t.Fatal(err)
		}
		if direct { // the hosts route the pods' packets
			n.ns.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
		}
		n.cmd = n.ns.Command(context.Background(), bin, append([]string{"daemon", "--pod-cidr", n.podCIDR, "--cluster-cidr", "10.244.0.0/16",
			"--node-ip", n.ip, "--mtu", "1472", "--backend", backend, "--public-ip", n.ip, "--peers", peers,
			"--state-dir", filepath.Join(n.dir, "state"), "--socket", sock, "--uplink", "podr0", "--metrics-addr", "off"}, extra...)...)
		n.start(t)
	}
	for _, n := range nodes {
		deadline := time.Now().Add(30 * time.Second)
		for exec.CommandContext(ctx, bin, "status", "--socket", filepath.Join(n.dir, "api.sock")).Run() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready", n.name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !direct {
		pingAcross(t, ctx, nodes, cniBin, tools)
		return
	}
	for i, n := range nodes {
		other := nodes[1-i]
		if r := n.ns.Run(t, "ip", "route", "show", other.podCIDR); !strings.Contains(r, "via "+other.ip+" dev "+n.veth) {
			t.Fatalf("%s: host route to %s: %q, want via %s dev %s", n.name, other.podCIDR, r, other.ip, n.veth)
		}
	}
	// What crosses the underlay link: the pods' own packets, no UDP.
	cctx, stop := context.WithCancel(ctx)
	dump := nodes[0].ns.Command(cctx, "tcpdump", "-i", nodes[0].veth, "-t", "-n", "-l", "-p", "icmp or udp")
	var out strings.Builder
	dump.Stdout = &out
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "listening on") {
	}
	go func() {
		for sc.Scan() {
		}
	}()
	podIPs := pingAcross(t, ctx, nodes, cniBin, tools)
	time.Sleep(200 * time.Millisecond)
	_ = dump.Process.Signal(syscall.SIGINT)
	_ = dump.Wait()
	stop()
	seen := 0
	for _, l := range strings.Split(out.String(), "\n") {
		switch {
		case strings.TrimSpace(l) == "":
		case strings.Contains(l, "UDP") || strings.Contains(l, "VXLAN") || strings.Contains(l, ".8472"):
			t.Errorf("encapsulated on the underlay: %s", l)
		case strings.Contains(l, podIPs[0]+" > "+podIPs[1]+": ICMP echo request"):
			seen++
		}
	}
	if seen == 0 {
		t.Fatalf("no echo request from %s to %s on the underlay link:\n%s", podIPs[0], podIPs[1], out.String())
	}
	t.Logf("%d echo requests crossed the underlay unencapsulated", seen)
	// A daemon that stops takes its host routes with it.
	a := nodes[0]
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("node-a did not stop")
	}
	if r := a.ns.Run(t, "ip", "route", "show", nodes[1].podCIDR); strings.TrimSpace(r) != "" {
		t.Fatalf("node-a's host route to %s after it stopped: %q", nodes[1].podCIDR, r)
	}
}
