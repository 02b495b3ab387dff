package lab

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestLoadTopology(t *testing.T) {
	const doc = `
# three nodes, custom CIDRs
backend: udp
clusterCIDR: 10.50.0.0/16
clusterCIDR6: fd00:50::/56
underlayMTU: 9000
nodes:
  - name: alpha
    podCIDR: 10.50.7.0/24
    podCIDR6: fd00:50:0:7::/64
    pods: 3
  - name: beta
    pods: 1
  - {}
`
	var c Config
	if err := LoadTopology(strings.NewReader(doc), &c); err != nil {
		t.Fatal(err)
	}
	want := []NodeSpec{
		{"alpha", netip.MustParsePrefix("10.50.7.0/24"), netip.MustParsePrefix("fd00:50:0:7::/64"), 3},
		{"beta", netip.MustParsePrefix("10.50.1.0/24"), netip.MustParsePrefix("fd00:50:0:1::/64"), 1},
		{"n2", netip.MustParsePrefix("10.50.2.0/24"), netip.MustParsePrefix("fd00:50:0:2::/64"), 2},
	}
	if len(c.Topology) != len(want) {
		t.Fatalf("nodes %+v", c.Topology)
	}
	for i := range want {
		if c.Topology[i] != want[i] {
			t.Errorf("node %d: %+v, want %+v", i, c.Topology[i], want[i])
		}
	}
	if c.Backend != "udp" || c.UnderlayMTU != 9000 || c.MTU != 9000-28 || c.PodMode != Virtual {
		t.Errorf("backend %v, underlay MTU %d, pod MTU %d, mode %v", c.Backend, c.UnderlayMTU, c.MTU, c.PodMode)
	}
}

func TestTopologyErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"empty", ``, "empty file"},
		{"unknown field", "nodes: [{}]\nbogus: 1\n", "field bogus not found"},
		{"no nodes", "backend: udp\n", "nodes: at least one node"},
		{"bad backend", "backend: gre\nnodes: [{}]\n", "backend \"gre\""},
		{"bad pod mode", "podMode: vm\nnodes: [{}]\n", "podMode \"vm\""},
		{"bad prefix", "nodes: [{podCIDR: 10.1.2.3}]\n", "nodes[0].podCIDR \"10.1.2.3\""},
		{"host bits", "nodes: [{}, {podCIDR: 10.244.9.1/24}]\n", "nodes[1].podCIDR 10.244.9.1/24: host bits set"},
		{"outside the cluster", "nodes: [{}, {podCIDR: 10.9.0.0/24}]\n", "nodes[1].podCIDR 10.9.0.0/24: not inside clusterCIDR"},
		{"overlap", "nodes: [{podCIDR: 10.244.0.0/23}, {podCIDR: 10.244.1.0/24}]\n", "nodes[1]: podCIDRs overlap those of nodes[0]"},
		{"duplicate name", "nodes: [{name: a}, {name: a}]\n", "nodes[1].name \"a\": used by another node"},
		{"bad name", "nodes: [{name: a_b}, {}]\n", "nodes[0].name \"a_b\""},
		{"too many pods", "nodes: [{pods: 300}]\n", "nodes[0].pods 300"},
		{"too few pods", "nodes: [{pods: 1}]\n", "1 pods in all, want at least 2"},
		{"ipv6 family", "clusterCIDR6: 10.0.0.0/8\nnodes: [{}]\n", "clusterCIDR6 10.0.0.0/8: want an IPv6 prefix"},
		{"ipv6 on some nodes", "nodes: [{podCIDR6: 'fd00::/64'}, {}]\n", "clusterCIDR6: required"},
		{"pod MTU", "podMTU: 100\nnodes: [{}]\n", "podMTU 100"},
		{"underlay MTU", "underlayMTU: 1000\nnodes: [{}, {}]\n", "underlayMTU 1000"},
		{"not yaml", "nodes: [\n", "yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			err := LoadTopology(strings.NewReader(tc.doc), &c)
			if !errors.Is(err, ErrTopology) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrTopology naming %q", err, tc.want)
			}
		})
	}
}
