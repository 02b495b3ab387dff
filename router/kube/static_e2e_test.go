package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/nstest"
)

// TestStaticPeersDaemons: without Kubernetes, two daemons with static
// --peers files over the udp backend; pods on each ping each other.
func TestStaticPeersDaemons(t *testing.T) {
	nstest.RequireRoot(t)
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
		if err := os.WriteFile(peers, fmt.Appendf(nil, "- name: %s\n  endpoint: %s:8285\n  podCIDRs: [%s]\n", other.name, other.ip, other.podCIDR), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.dir, "net.d", "10-podrouter.conflist"), fmt.Appendf(nil,
			`{"cniVersion":"1.1.0","name":"podrouter","plugins":[{"type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q}}]}`,
			sock, filepath.Join(n.dir, "ipam")), 0o644); err != nil {
			t.Fatal(err)
		}
		n.cmd = n.ns.Command(context.Background(), bin, "daemon", "--pod-cidr", n.podCIDR, "--cluster-cidr", "10.244.0.0/16",
			"--node-ip", n.ip, "--mtu", "1472", "--backend", "udp", "--public-ip", n.ip, "--peers", peers,
			"--state-dir", filepath.Join(n.dir, "state"), "--socket", sock, "--uplink", "podr0", "--metrics-addr", "off")
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
	pingAcross(t, ctx, nodes, cniBin, tools)
}
