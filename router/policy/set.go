package policy

// The compiled set and its hot path.
//
//	Set.local:  map[local pod address] ─► localPod{Rules[Ingress], Rules[Egress]}
//	Set.peers:  map[any listed pod address] ─► podRec{identity id, named ports}
//	Rules:      []rule in policy index order, each rule
//	              ports:  anyPort | {proto, lo..hi} | egress {proto, port name id}
//	              peers:  anyPeer | identity bitset (selectors) | ipBlocks
//
// Design notes. Selectors match labels, but a packet carries addresses:
// Compile groups pods into identities (namespace + label set: pods of one
// Deployment share one), evaluates every selector peer once against the
// identities into a bitset, and indexes every pod address to its
// identity. Check then costs one map lookup for the peer (only when a
// rule needs it) and, per rule, a port comparison and a bit test. Named
// ports are resolved against the destination: for ingress that is the
// local pod, known when compiling, so they become numeric ranges; for
// egress it is the peer, so the rule keeps the interned port name and
// Check compares it with the peer record's ports. Bitsets are evaluated
// only for policies that select a local pod (a node hosts a small share
// of the cluster), and one bitset is shared by every peer with the same
// selectors.

import (
	"net/netip"
)

// Set is a compiled, immutable policy set, safe for concurrent use. A nil
// *Set has no policies: every pod is unisolated.
type Set struct {
	policies []*policy // index order: namespace, then name
	local    map[netip.Addr]*localPod
	locals   []*localPod // sorted by namespace/name
	peers    map[netip.Addr]*podRec
	idents   []*identity
	nsNames  []string
}

// localPod is a pod of this node and its rule sets.
type localPod struct {
	rec   *podRec
	rules [2]*Rules // by Direction; nil: not isolated
}

// podRec is a listed pod as the hot path sees it.
type podRec struct {
	pod   *Pod
	ident int32
	ports []podPort
}

// podPort is a named container port with the name interned.
type podPort struct {
	name  int32
	proto uint8
	port  uint16
}

// Rules is one local pod's rules for one direction. It is immutable.
type Rules struct {
	rules    []rule
	policies []int32
	peers    map[netip.Addr]*podRec // the Set's address index
}

// rule is one ingress or egress rule of one policy, compiled for one pod.
type rule struct {
	policy  int32
	anyPeer bool // from/to empty: every address
	anyPort bool // ports empty: every protocol and port
	ids     bitset
	blocks  []ipBlock
	ports   []portRange
	named   []namedRef // egress named ports, resolved against the peer
}

type portRange struct {
	proto  uint8
	lo, hi uint16
}

type namedRef struct {
	proto uint8
	name  int32
}

type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (b *ipBlock) contains(a netip.Addr) bool {
	if !b.cidr.Contains(a) {
		return false
	}
	for _, e := range b.except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// bitset is a set of identity ids.
type bitset []uint64

func (b bitset) has(i int32) bool {
	w := int(i >> 6)
	return w < len(b) && b[w]&(1<<(uint(i)&63)) != 0
}

func (b bitset) set(i int32) { b[i>>6] |= 1 << (uint(i) & 63) }

// Verdict is a Check's answer.
type Verdict struct {
	Allowed bool
	// Policy is the index (Set.Policy) of the policy whose rule allowed
	// the flow, or -1 when it was denied (or allowed by nil Rules: the pod
	// is not isolated).
	Policy int32
}

// Rules returns the rules of the local pod with address local for d, or
// nil when that pod is not isolated for d (or is not a local pod). It is
// one map lookup; a nil Set returns nil.
func (s *Set) Rules(d Direction, local netip.Addr) *Rules {
	if s == nil || d > Egress {
		return nil
	}
	lp := s.local[local.Unmap()]
	if lp == nil {
		return nil
	}
	return lp.rules[d]
}

// NumPolicies is the number of policies in the set.
func (s *Set) NumPolicies() int {
	if s == nil {
		return 0
	}
	return len(s.policies)
}

// Policy is the namespace and name of policy i, or empty strings when
// there is no policy i.
func (s *Set) Policy(i int32) (namespace, name string) {
	if s == nil || i < 0 || int(i) >= len(s.policies) {
		return "", ""
	}
	p := s.policies[i]
	return p.namespace, p.name
}

// Check judges a flow between the rules' pod and peer: proto is the IP
// protocol, port the destination port (0 for protocols without ports).
// The flow is allowed when a rule matches both its ports and its peers;
// the Verdict names the first such rule's policy in index order. It does
// not allocate. Nil Rules allow everything (Policy -1).
func (r *Rules) Check(peer netip.Addr, proto uint8, port uint16) Verdict {
	if r == nil {
		return Verdict{Allowed: true, Policy: -1}
	}
	if peer.Is4In6() {
		peer = peer.Unmap()
	}
	var rec *podRec
	looked := false
	for i := range r.rules {
		ru := &r.rules[i]
		ok := ru.anyPort
		if !ok {
			for _, p := range ru.ports {
				if p.proto == proto && p.lo <= port && port <= p.hi {
					ok = true
					break
				}
			}
		}
		if !ok && len(ru.named) > 0 {
			if !looked {
				rec, looked = r.peers[peer], true
			}
			ok = rec != nil && rec.hasNamed(ru.named, proto, port)
		}
		if !ok {
			continue
		}
		if ru.anyPeer {
			return Verdict{Allowed: true, Policy: ru.policy}
		}
		if ru.ids != nil {
			if !looked {
				rec, looked = r.peers[peer], true
			}
			if rec != nil && ru.ids.has(rec.ident) {
				return Verdict{Allowed: true, Policy: ru.policy}
			}
		}
		for j := range ru.blocks {
			if ru.blocks[j].contains(peer) {
				return Verdict{Allowed: true, Policy: ru.policy}
			}
		}
	}
	return Verdict{Policy: -1}
}

// hasNamed says whether one of the pod's named ports is one of refs and
// is proto/port.
func (p *podRec) hasNamed(refs []namedRef, proto uint8, port uint16) bool {
	for _, pp := range p.ports {
		if pp.proto != proto || pp.port != port {
			continue
		}
		for _, n := range refs {
			if n.name == pp.name && n.proto == proto {
				return true
			}
		}
	}
	return false
}

// Policies are the indexes of the policies that isolate the pod in this
// direction, ascending. The slice is shared: callers must not modify it.
func (r *Rules) Policies() []int32 {
	if r == nil {
		return nil
	}
	return r.policies
}
