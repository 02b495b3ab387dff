package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDaemonKubeBadFlags(t *testing.T) {
	nc := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(nc, []byte(`{"Network":"10.244.0.0/16"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "")
	checkUsageErrors(t, []string{"daemon", "--kube", "--metrics-addr", "off"}, []usageCase{
		{"no node name", []string{"--net-conf", nc}, "--node-name"},
		{"no net-conf", []string{"--node-name", "n", "--net-conf", nc + ".absent"}, "--net-conf"},
		{"bad backend", []string{"--node-name", "n", "--net-conf", nc, "--backend", "gre"}, "--backend"},
		{"bad port", []string{"--node-name", "n", "--net-conf", nc, "--underlay-port", "70000"}, "--underlay-port"},
		{"bad public ip", []string{"--node-name", "n", "--net-conf", nc, "--public-ip", "nowhere"}, "--public-ip"},
		{"bad first read", []string{"--node-name", "n", "--net-conf", nc, "--kube-first-read", "0s"}, "--kube-first-read"},
	})
}

func TestDaemonStaticPeersBadFlags(t *testing.T) {
	pf := filepath.Join(t.TempDir(), "peers.yaml")
	if err := os.WriteFile(pf, []byte("- name: b\n  endpoint: 192.0.2.2:8472\n  vtepMAC: 0a:00:00:00:00:02\n  podCIDRs: [10.244.2.0/24]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkUsageErrors(t, []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--cluster-cidr", "10.244.0.0/16", "--metrics-addr", "off"}, []usageCase{
		{"no public ip", []string{"--peers", pf}, "--public-ip"},
		{"bad backend", []string{"--peers", pf, "--public-ip", "192.0.2.1", "--backend", "gre"}, "--backend"},
		{"bad file", []string{"--peers", pf + ".absent", "--public-ip", "192.0.2.1"}, "--peers"},
	})
}
