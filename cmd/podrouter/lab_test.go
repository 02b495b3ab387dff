package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLabMultiNode(t *testing.T) {
	var out, errb bytes.Buffer
	rc := run([]string{"lab", "--nodes", "2", "--pods", "1", "--backend", "udp", "--duration", "200ms"}, &out, &errb)
	if rc != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", rc, out.String(), errb.String())
	}
	for _, want := range []string{"2 nodes, 2 virtual pods, backend udp", "n0-pod-0", "n1-pod-0",
		"throughput n0-pod-0 -> n1-pod-0 TCP (cross node, udp)", "result: 2/2 pairs ok: PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestLabTopologyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lab.yaml")
	if err := os.WriteFile(path, []byte("backend: vxlan\nnodes:\n  - name: west\n    pods: 1\n  - name: east\n    pods: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if rc := run([]string{"lab", "--topology", path, "--duration", "0"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", rc, out.String(), errb.String())
	}
	for _, want := range []string{"west-pod-0", "east-pod-0", "backend vxlan", "result: 2/2 pairs ok: PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("nodes:\n  - {}\n  - podCIDR: 10.9.0.0/24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkUsageErrors(t, nil, []usageCase{
		{"bad topology", []string{"lab", "--topology", bad}, "nodes[1].podCIDR 10.9.0.0/24: not inside clusterCIDR"},
		{"nodes with topology", []string{"lab", "--topology", path, "--nodes", "3"}, "--nodes: not allowed with --topology"},
		{"missing topology", []string{"lab", "--topology", filepath.Join(t.TempDir(), "missing.yaml")}, "no such file"},
	})
}

func TestLabMultiNodeFlagErrors(t *testing.T) {
	checkUsageErrors(t, nil, []usageCase{
		{"no nodes", []string{"lab", "--nodes", "0"}, "--nodes 0"},
		{"too many nodes", []string{"lab", "--nodes", "100"}, "--nodes 100"},
		{"bad backend", []string{"lab", "--backend", "gre"}, "--backend \"gre\""},
		{"bad pod mode", []string{"lab", "--pod-mode", "vm"}, "--pod-mode \"vm\""},
		{"underlay MTU too small", []string{"lab", "--underlay-mtu", "100"}, "--underlay-mtu 100"},
		{"nodes beyond the cluster CIDR", []string{"lab", "--nodes", "300", "--cluster-cidr", "10.0.0.0/16"}, "--nodes 300"},
		{"v4 cluster CIDR6", []string{"lab", "--cluster-cidr6", "10.0.0.0/8"}, "--cluster-cidr6 10.0.0.0/8"},
	})
}

func TestLabExecWithoutLab(t *testing.T) {
	state := filepath.Join(t.TempDir(), "lab.json")
	var out, errb bytes.Buffer
	if rc := run([]string{"lab", "exec", "--state", state, "n0-pod-0", "--", "true"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "no lab is holding") {
		t.Errorf("exit %d, stderr %q; want 1 and 'no lab is holding'", rc, errb.String())
	}
	errb.Reset()
	if rc := run([]string{"lab", "exec", "n0-pod-0", "true"}, &out, &errb); rc != 2 || !strings.Contains(errb.String(), "POD -- COMMAND") {
		t.Errorf("exit %d, stderr %q; want 2 and the usage", rc, errb.String())
	}
}

func TestHelpDocumentsMultiNodeLabFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := run([]string{"help", "lab"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	for _, f := range []string{"-nodes", "-backend", "-underlay-mtu", "-cluster-cidr6", "-topology", "-pod-mode", "-hold", "-state", "lab exec"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help lacks %s", f)
		}
	}
}
