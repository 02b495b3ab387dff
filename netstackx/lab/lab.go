// Package lab builds a podrouter cluster on one machine: N nodes, each its
// own engine with a podCIDR carved from the cluster CIDR and its own UDP
// underlay on loopback, and M pods per node. It checks that every pod
// reaches every other one (ICMP echo, TCP, UDP, IPv4 and IPv6), measures
// TCP throughput within a node and across nodes, and reports it all.
//
//	node n0 (engine, podCIDR 10.244.0.0/24)        node n1 (10.244.1.0/24)
//	  n0-pod-0 ─┐                                     ┌─ n1-pod-0
//	  n0-pod-1 ─┼─ engine ─ peer port ─┐   ┌─ ... ─ engine ─┼─ n1-pod-1
//	            │           rx port ◄──┼───┼─ UDP 127.0.0.1:port (udp|vxlan)
//	            └──────────────────────┘   └──────────────────┘
//
// Pods are virtual by default (gVisor netstacks on engine ports: no
// privileges at all), or network namespaces whose eth0 is a TAP held by
// the engine (PodMode netns, as root): then the pods' own kernels talk, and
// `podrouter lab exec` runs commands inside them while the lab holds.
//
// A one-node lab has no underlay: it is the switch of one node, as before
// nodes existed.
package lab

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/underlay"
)

// Ports the lab's pods serve on.
const (
	echoPort   = 7 // TCP and UDP echo
	sinkPort   = 9 // TCP discard (RFC 863), for throughput; iperf3 keeps 5201
	tcpPayload = 64 << 10
	udpPayload = 512
)

// DefaultDuration is the default throughput measurement time.
const DefaultDuration = 2 * time.Second

// Limits.
const (
	MaxNodes = 64
	MaxPods  = 250 // per node
)

// PodMode is what a lab pod is.
type PodMode uint8

// Pod modes.
const (
	// Virtual pods are gVisor netstacks on L2 engine ports: no privileges.
	Virtual PodMode = iota
	// Netns pods are network namespaces whose eth0 is a TAP device held by
	// the engine: the pods' kernels talk. Needs root (or CAP_NET_ADMIN and
	// CAP_SYS_ADMIN) and /dev/net/tun.
	Netns
)

// String returns "virtual" or "netns".
func (m PodMode) String() string {
	if m == Netns {
		return "netns"
	}
	return "virtual"
}

// ParsePodMode parses "virtual" or "netns".
func ParsePodMode(s string) (PodMode, error) {
	switch s {
	case "virtual":
		return Virtual, nil
	case "netns":
		return Netns, nil
	}
	return 0, fmt.Errorf("%q: want virtual or netns", s)
}

// NodeSpec is one node of a lab.
type NodeSpec struct {
	Name     string
	PodCIDR  netip.Prefix // IPv4 podCIDR, inside the cluster CIDR
	PodCIDR6 netip.Prefix // IPv6 podCIDR; zero for IPv4 only
	Pods     int          // 1..MaxPods
}

// Config describes a lab. Validate fills in defaults. Errors from
// Validate name the flag (or, for Topology, the topology file's field).
type Config struct {
	ClusterCIDR  netip.Prefix // default 10.244.0.0/16
	ClusterCIDR6 netip.Prefix // default: node 0's PodCIDR6 widened by 8 bits (fd00:10:244::/56)
	// PodCIDR is node 0's podCIDR (default: the first /24 of the cluster
	// CIDR); node i gets the i-th next prefix of the same length.
	PodCIDR netip.Prefix
	// PodCIDR6 is node 0's IPv6 podCIDR (default fd00:10:244::/64), node i
	// the i-th next. IPv6 checks run when valid.
	PodCIDR6 netip.Prefix
	NoIPv6   bool // IPv4 only
	Nodes    int  // nodes, 1..MaxNodes; default 1
	Pods     int  // pods per node; default 4 (at least 2 on one node)
	// Topology lists the nodes explicitly (a topology file); when set,
	// Nodes, Pods, PodCIDR and PodCIDR6 are ignored.
	Topology []NodeSpec
	// Backend is the underlay backend between nodes, a registered name
	// (node.BackendNames: udp, vxlan, wireguard; default vxlan).
	Backend string
	// UnderlayMTU is the underlay's MTU, 576..65535 (default 1500).
	UnderlayMTU int
	// MTU is the pods' MTU, 1280..65535. Default: 1500 on one node; the
	// underlay MTU less the encapsulation overhead on several (as flannel
	// sets it), so that no packet needs PMTUD.
	MTU      int
	PodMode  PodMode       // default Virtual
	Duration time.Duration // throughput measurement; 0 skips it; default 2s
	Timeout  time.Duration // per pair's checks; default 5s
	Parallel int           // pairs checked at once; default 8
	// Hold keeps the lab running after the report until Run's context
	// ends, described in StateFile for `podrouter lab exec`.
	Hold      bool
	StateFile string // default DefaultStateFile()
	Logger    *zap.Logger
}

// Validate checks cfg and fills in defaults, Topology included.
func (c *Config) Validate() error {
	fromFile := len(c.Topology) > 0
	// name returns the flag or field name for error messages.
	name := func(flagName, field string) string {
		if fromFile {
			return field
		}
		return "--" + flagName
	}
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	}
	if !c.ClusterCIDR.Addr().Is4() || c.ClusterCIDR != c.ClusterCIDR.Masked() {
		return fmt.Errorf("%s %s: want a masked IPv4 prefix such as 10.244.0.0/16", name("cluster-cidr", "clusterCIDR"), c.ClusterCIDR)
	}
	if c.Backend == "" {
		c.Backend = underlay.EncapVXLAN.String()
	}
	if _, err := node.LookupBackend(c.Backend); err != nil {
		return fmt.Errorf("%s: %w", name("backend", "backend"), err)
	}
	if c.Backend == node.BackendHostGW {
		return fmt.Errorf("%s host-gw: not in the lab: it routes through each node's host kernel, and the lab's nodes share one host (try two node netns: go test -run TestStaticPeersHostGW ./router/kube)", name("backend", "backend"))
	}
	if c.UnderlayMTU == 0 {
		c.UnderlayMTU = 1500
	}
	if c.UnderlayMTU < 576 || c.UnderlayMTU > 65535 {
		return fmt.Errorf("%s %d: want 576..65535", name("underlay-mtu", "underlayMTU"), c.UnderlayMTU)
	}
	if fromFile {
		if err := c.validateTopology(); err != nil {
			return err
		}
	} else if err := c.carveNodes(); err != nil {
		return err
	}
	kind, err := node.LookupBackend(c.Backend)
	if err != nil {
		return err
	}
	peerMTU := c.UnderlayMTU - kind.Overhead(false)
	if len(c.Topology) > 1 && peerMTU < 1280 && (c.MTU == 0 || c.PodCIDR6.IsValid()) {
		return fmt.Errorf("%s %d: leaves %d bytes for pod packets across nodes over %s, want at least 1280",
			name("underlay-mtu", "underlayMTU"), c.UnderlayMTU, peerMTU, c.Backend)
	}
	if c.MTU == 0 {
		c.MTU = 1500
		if len(c.Topology) > 1 {
			c.MTU = node.PodMTU(c.UnderlayMTU, kind, false)
		}
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("%s %d: want 1280..65535", name("mtu", "podMTU"), c.MTU)
	}
	if c.PodMode != Virtual && c.PodMode != Netns {
		return fmt.Errorf("%s %d: want virtual or netns", name("pod-mode", "podMode"), c.PodMode)
	}
	if c.Duration < 0 {
		return fmt.Errorf("--duration %s: must not be negative", c.Duration)
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Timeout < 0 {
		return fmt.Errorf("--timeout %s: must be positive", c.Timeout)
	}
	if c.Parallel <= 0 {
		c.Parallel = 8
	}
	if c.StateFile == "" {
		c.StateFile = DefaultStateFile()
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// carveNodes builds Topology from the flags: node i gets the i-th podCIDR
// after PodCIDR (and PodCIDR6), as kube-controller-manager hands them out.
func (c *Config) carveNodes() error {
	if c.Nodes == 0 {
		c.Nodes = 1
	}
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return fmt.Errorf("--nodes %d: want 1..%d", c.Nodes, MaxNodes)
	}
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = netip.PrefixFrom(c.ClusterCIDR.Addr(), max(c.ClusterCIDR.Bits(), 24))
	}
	if !c.PodCIDR.Addr().Is4() || c.PodCIDR != c.PodCIDR.Masked() {
		return fmt.Errorf("--pod-cidr %s: want a masked IPv4 prefix such as 10.244.1.0/24", c.PodCIDR)
	}
	if !c.ClusterCIDR.Contains(c.PodCIDR.Addr()) || c.PodCIDR.Bits() < c.ClusterCIDR.Bits() {
		return fmt.Errorf("--pod-cidr %s: not inside --cluster-cidr %s", c.PodCIDR, c.ClusterCIDR)
	}
	if c.PodCIDR.Bits() > 30 {
		return fmt.Errorf("--pod-cidr %s: want at most /30", c.PodCIDR)
	}
	if c.Pods == 0 {
		c.Pods = 4
	}
	minPods := 1
	if c.Nodes == 1 {
		minPods = 2
	}
	if c.Pods < minPods || c.Pods > MaxPods {
		return fmt.Errorf("--pods %d: want %d..%d", c.Pods, minPods, MaxPods)
	}
	if hosts := podCapacity(c.PodCIDR); c.Pods > hosts {
		return fmt.Errorf("--pods %d: --pod-cidr %s holds at most %d pods", c.Pods, c.PodCIDR, max(hosts, 0))
	}
	if c.NoIPv6 {
		c.PodCIDR6, c.ClusterCIDR6 = netip.Prefix{}, netip.Prefix{}
	} else {
		if !c.PodCIDR6.IsValid() {
			c.PodCIDR6 = netip.MustParsePrefix("fd00:10:244::/64")
		}
		if !c.PodCIDR6.Addr().Is6() || c.PodCIDR6.Addr().Is4In6() || c.PodCIDR6 != c.PodCIDR6.Masked() || c.PodCIDR6.Bits() > 120 {
			return fmt.Errorf("--pod-cidr6 %s: want a masked IPv6 prefix of at most /120", c.PodCIDR6)
		}
		if !c.ClusterCIDR6.IsValid() {
			c.ClusterCIDR6 = netip.PrefixFrom(c.PodCIDR6.Addr(), max(c.PodCIDR6.Bits()-8, 0)).Masked()
		}
		if !c.ClusterCIDR6.Addr().Is6() || c.ClusterCIDR6 != c.ClusterCIDR6.Masked() {
			return fmt.Errorf("--cluster-cidr6 %s: want a masked IPv6 prefix", c.ClusterCIDR6)
		}
	}
	c.Topology = make([]NodeSpec, c.Nodes)
	for i := range c.Topology {
		n := NodeSpec{Name: fmt.Sprintf("n%d", i), Pods: c.Pods}
		var ok bool
		if n.PodCIDR, ok = nthPrefix(c.PodCIDR, i); !ok || !contains(c.ClusterCIDR, n.PodCIDR) {
			return fmt.Errorf("--nodes %d: --cluster-cidr %s has no room for %d podCIDRs of /%d from %s", c.Nodes, c.ClusterCIDR, c.Nodes, c.PodCIDR.Bits(), c.PodCIDR)
		}
		if c.PodCIDR6.IsValid() {
			if n.PodCIDR6, ok = nthPrefix(c.PodCIDR6, i); !ok || !contains(c.ClusterCIDR6, n.PodCIDR6) {
				return fmt.Errorf("--nodes %d: --cluster-cidr6 %s has no room for %d podCIDRs of /%d from %s", c.Nodes, c.ClusterCIDR6, c.Nodes, c.PodCIDR6.Bits(), c.PodCIDR6)
			}
		}
		c.Topology[i] = n
	}
	return nil
}

// validateTopology checks explicit nodes; errors name the topology file's
// fields.
func (c *Config) validateTopology() error {
	if len(c.Topology) > MaxNodes {
		return fmt.Errorf("nodes: %d nodes, want at most %d", len(c.Topology), MaxNodes)
	}
	ipv6 := c.Topology[0].PodCIDR6.IsValid()
	if ipv6 && !c.ClusterCIDR6.IsValid() {
		return errors.New("clusterCIDR6: required with IPv6 podCIDRs")
	}
	if c.ClusterCIDR6.IsValid() && (!c.ClusterCIDR6.Addr().Is6() || c.ClusterCIDR6 != c.ClusterCIDR6.Masked()) {
		return fmt.Errorf("clusterCIDR6 %s: want a masked IPv6 prefix", c.ClusterCIDR6)
	}
	total := 0
	names := map[string]bool{}
	for i, n := range c.Topology {
		f := fmt.Sprintf("nodes[%d]", i)
		if n.Name == "" {
			return fmt.Errorf("%s.name: required", f)
		}
		if !validName(n.Name) {
			return fmt.Errorf("%s.name %q: want 1..15 letters, digits and dashes", f, n.Name)
		}
		if names[n.Name] {
			return fmt.Errorf("%s.name %q: used by another node", f, n.Name)
		}
		names[n.Name] = true
		if !n.PodCIDR.IsValid() || !n.PodCIDR.Addr().Is4() || n.PodCIDR != n.PodCIDR.Masked() || n.PodCIDR.Bits() > 30 {
			return fmt.Errorf("%s.podCIDR %s: want a masked IPv4 prefix of at most /30", f, n.PodCIDR)
		}
		if !contains(c.ClusterCIDR, n.PodCIDR) {
			return fmt.Errorf("%s.podCIDR %s: not inside clusterCIDR %s", f, n.PodCIDR, c.ClusterCIDR)
		}
		if n.PodCIDR6.IsValid() != ipv6 {
			return fmt.Errorf("%s.podCIDR6: give every node an IPv6 podCIDR or none", f)
		}
		if ipv6 {
			if !n.PodCIDR6.Addr().Is6() || n.PodCIDR6 != n.PodCIDR6.Masked() || n.PodCIDR6.Bits() > 120 {
				return fmt.Errorf("%s.podCIDR6 %s: want a masked IPv6 prefix of at most /120", f, n.PodCIDR6)
			}
			if !contains(c.ClusterCIDR6, n.PodCIDR6) {
				return fmt.Errorf("%s.podCIDR6 %s: not inside clusterCIDR6 %s", f, n.PodCIDR6, c.ClusterCIDR6)
			}
		}
		for j, m := range c.Topology[:i] {
			if n.PodCIDR.Overlaps(m.PodCIDR) || (ipv6 && n.PodCIDR6.Overlaps(m.PodCIDR6)) {
				return fmt.Errorf("%s: podCIDRs overlap those of nodes[%d] (%s)", f, j, m.Name)
			}
		}
		if n.Pods < 0 || n.Pods > MaxPods {
			return fmt.Errorf("%s.pods %d: want 0..%d", f, n.Pods, MaxPods)
		}
		if n.Pods > podCapacity(n.PodCIDR) {
			return fmt.Errorf("%s.pods %d: podCIDR %s holds at most %d pods", f, n.Pods, n.PodCIDR, podCapacity(n.PodCIDR))
		}
		total += n.Pods
	}
	if total < 2 {
		return fmt.Errorf("nodes: %d pods in all, want at least 2", total)
	}
	c.PodCIDR, c.PodCIDR6 = c.Topology[0].PodCIDR, c.Topology[0].PodCIDR6
	c.Nodes, c.NoIPv6 = len(c.Topology), !ipv6
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// podCapacity is how many pods a podCIDR holds: all but the network
// address, the gateway and (IPv4) the broadcast address.
func podCapacity(p netip.Prefix) int {
	host := p.Addr().BitLen() - p.Bits()
	if host >= 16 {
		return MaxPods
	}
	return 1<<host - 3
}

func contains(outer, inner netip.Prefix) bool {
	return outer.IsValid() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// nthPrefix returns the i-th prefix of p's length after p (p itself for
// i = 0); false when it would leave the address space.
func nthPrefix(p netip.Prefix, i int) (netip.Prefix, bool) {
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, new(big.Int).Lsh(big.NewInt(int64(i)), uint(p.Addr().BitLen()-p.Bits())))
	if n.BitLen() > len(b)*8 {
		return netip.Prefix{}, false
	}
	out := make([]byte, len(b))
	n.FillBytes(out)
	a, _ := netip.AddrFromSlice(out)
	return netip.PrefixFrom(a, p.Bits()), true
}
