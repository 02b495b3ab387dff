package policy

import (
	"net/netip"
	"sort"
	"strconv"
)

// PodRef names a listed pod and its addresses.
type PodRef struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	IPs       []netip.Addr `json:"ips"`
}

// PodRules describes the rules in force for one local pod (the operator
// CLI's `podrouter policy POD`).
type PodRules struct {
	PodRef
	Ingress DirectionRules `json:"ingress"`
	Egress  DirectionRules `json:"egress"`
}

// DirectionRules are a pod's rules for one direction. A flow is allowed
// when the pod is not isolated or when any rule matches it.
type DirectionRules struct {
	Isolated bool `json:"isolated"`
	// Policies isolating the pod, "namespace/name", in index order.
	Policies []string `json:"policies,omitempty"`
	// Rules of those policies, in the order Check tries them. A policy
	// without rules of this direction (default deny) has none here.
	Rules []RuleInfo `json:"rules,omitempty"`
}

// RuleInfo is one rule as written, with named ports resolved where the
// pod decides them.
type RuleInfo struct {
	Policy      string `json:"policy"`      // "namespace/name"
	PolicyIndex int32  `json:"policyIndex"` // Set.Policy, Verdict.Policy
	Rule        int    `json:"rule"`        // index in spec.ingress or spec.egress
	// Peers, one per from/to entry: "any" (no from/to), "pods{app=a} in
	// namespace ns", "pods{} in namespaces{team=x}", "ipBlock 10.0.0.0/8
	// except 10.1.0.0/16", or "none (invalid: ...)" for a peer that
	// matches nothing.
	Peers []string `json:"peers"`
	// Ports: "any" (every protocol and port), "TCP/80", "UDP/1000-2000",
	// "TCP/all", "TCP/http (=8080)", "TCP/http (unresolved)" or
	// "TCP/http (the peer's)" for egress, "... (invalid: ...)".
	Ports []string `json:"ports"`
}

// LocalPods are the local pods, sorted by namespace and name.
func (s *Set) LocalPods() []PodRef {
	if s == nil {
		return nil
	}
	out := make([]PodRef, len(s.locals))
	for i, lp := range s.locals {
		out[i] = podRef(lp.rec.pod)
	}
	return out
}

func podRef(p *Pod) PodRef {
	return PodRef{Namespace: p.Namespace, Name: p.Name, IPs: append([]netip.Addr(nil), p.IPs...)}
}

// PodAt names the listed pod (local or not) with address a.
func (s *Set) PodAt(a netip.Addr) (namespace, name string, ok bool) {
	if s == nil {
		return "", "", false
	}
	rec := s.peers[a.Unmap()]
	if rec == nil {
		return "", "", false
	}
	return rec.pod.Namespace, rec.pod.Name, true
}

// Explain describes the rules in force for the local pod namespace/name;
// false when it is not a local pod.
func (s *Set) Explain(namespace, name string) (PodRules, bool) {
	if s == nil {
		return PodRules{}, false
	}
	i := sort.Search(len(s.locals), func(i int) bool {
		p := s.locals[i].rec.pod
		return p.Namespace > namespace || p.Namespace == namespace && p.Name >= name
	})
	if i == len(s.locals) || s.locals[i].rec.pod.Namespace != namespace || s.locals[i].rec.pod.Name != name {
		return PodRules{}, false
	}
	lp := s.locals[i]
	out := PodRules{PodRef: podRef(lp.rec.pod)}
	out.Ingress = s.explain(Ingress, lp)
	out.Egress = s.explain(Egress, lp)
	return out, true
}

func (s *Set) explain(d Direction, lp *localPod) DirectionRules {
	r := lp.rules[d]
	if r == nil {
		return DirectionRules{}
	}
	out := DirectionRules{Isolated: true}
	for _, pi := range r.policies {
		p := s.policies[pi]
		pname := p.namespace + "/" + p.name
		out.Policies = append(out.Policies, pname)
		for _, cr := range p.rules[d] {
			ri := RuleInfo{
				Policy:      pname,
				PolicyIndex: pi,
				Rule:        cr.index,
				Peers:       append([]string(nil), cr.peerText...),
				Ports:       append([]string(nil), cr.portText...),
			}
			for _, n := range cr.named {
				pfx := protoName(n.proto) + "/" + n.name
				if d == Egress {
					ri.Ports = append(ri.Ports, pfx+" (the peer's)")
					continue
				}
				found := false
				for _, pp := range lp.rec.pod.Ports {
					if pp.Name == n.name && pp.Proto == n.proto {
						ri.Ports = append(ri.Ports, pfx+" (="+strconv.Itoa(int(pp.Port))+")")
						found = true
					}
				}
				if !found {
					ri.Ports = append(ri.Ports, pfx+" (unresolved)")
				}
			}
			out.Rules = append(out.Rules, ri)
		}
	}
	return out
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "TCP"
	case protoUDP:
		return "UDP"
	case protoSCTP:
		return "SCTP"
	}
	return strconv.Itoa(int(p))
}
