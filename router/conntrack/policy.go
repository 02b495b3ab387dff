package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
)

// PolicyConfig configures a masquerade Policy.
type PolicyConfig struct {
	// ClusterCIDRs is the in-cluster address space (cluster CIDR, and the
	// service CIDR if services should not be translated): flows between
	// two of its addresses keep their source. Required.
	ClusterCIDRs []netip.Prefix
	// NodeAddr and NodeAddr6 are the addresses pod traffic to the outside
	// is translated to, per family; at least one is required. A family
	// without one is never translated.
	NodeAddr, NodeAddr6 netip.Addr
	// HostSockets says the translation is done by the node's own sockets
	// (netstack egress: the kernel picks the source address), so NodeAddr
	// and NodeAddr6 are optional; use Translates for the decision.
	HostSockets bool
}

// Policy is the masquerade decision of flannel's --ip-masq, without
// iptables:
//
//	-s cluster -d cluster        RETURN      pod <-> pod: no NAT
//	-s cluster ! -d 224.0.0.0/4  MASQUERADE  pod -> outside: node address
//	everything else              (no NAT)    the node's own and inbound traffic
//
// A pod's traffic to the node's own address is not translated either (on
// a Linux node it never reaches POSTROUTING). Policy is immutable and safe
// for concurrent use.
type Policy struct {
	cluster      []netip.Prefix
	node4, node6 netip.Addr
}

// NewPolicy validates cfg.
func NewPolicy(cfg PolicyConfig) (*Policy, error) {
	if len(cfg.ClusterCIDRs) == 0 {
		return nil, errors.New("conntrack: policy: ClusterCIDRs: required")
	}
	p := &Policy{}
	for _, c := range cfg.ClusterCIDRs {
		if !c.IsValid() || c != c.Masked() {
			return nil, fmt.Errorf("conntrack: policy: cluster CIDR %s: want a masked prefix", c)
		}
		p.cluster = append(p.cluster, c)
	}
	if !cfg.NodeAddr.IsValid() && !cfg.NodeAddr6.IsValid() && !cfg.HostSockets {
		return nil, errors.New("conntrack: policy: NodeAddr or NodeAddr6: required")
	}
	if a := cfg.NodeAddr; a.IsValid() && (!a.Is4() || !a.IsGlobalUnicast()) {
		return nil, fmt.Errorf("conntrack: policy: NodeAddr %s: want a unicast IPv4 address", a)
	}
	if a := cfg.NodeAddr6; a.IsValid() && (!a.Is6() || a.Is4In6() || !a.IsGlobalUnicast()) {
		return nil, fmt.Errorf("conntrack: policy: NodeAddr6 %s: want a global unicast IPv6 address", a)
	}
	p.node4, p.node6 = cfg.NodeAddr, cfg.NodeAddr6
	return p, nil
}

func (p *Policy) inCluster(a netip.Addr) bool {
	for _, c := range p.cluster {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// Masquerade returns the address a new flow from src to dst is translated
// to, or false when it keeps its source.
func (p *Policy) Masquerade(src, dst netip.Addr) (netip.Addr, bool) {
	if !p.inCluster(src) || p.inCluster(dst) || dst.IsMulticast() {
		return netip.Addr{}, false
	}
	node := p.node4
	if dst.Is6() {
		node = p.node6
	}
	if !node.IsValid() || dst == node || src.Is4() != dst.Is4() {
		return netip.Addr{}, false
	}
	return node, true
}

// Translates reports whether a flow from src to dst leaves the cluster
// and has its source translated: src is in the cluster, dst is not, is
// not multicast, is of src's family and is not one of the node's
// addresses. Unlike Masquerade it answers for a family without a node
// address too (HostSockets policies).
func (p *Policy) Translates(src, dst netip.Addr) bool {
	return p.inCluster(src) && !p.inCluster(dst) && !dst.IsMulticast() && src.Is4() == dst.Is4() &&
		dst != p.node4 && dst != p.node6
}
