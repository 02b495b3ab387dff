// Package policy compiles Kubernetes NetworkPolicies into immutable,
// per-pod rule sets that the engine judges a flow's first packet by.
//
//	Input (trimmed Pods, Namespaces, NetworkPolicies)
//	   ─► Compile ─► *Set (immutable, swapped atomically by the caller)
//	   ─► Set.Rules(Ingress|Egress, local pod address) ─► *Rules (nil: the
//	      pod is not isolated in that direction: everything is allowed)
//	   ─► Rules.Check(peer address, protocol, port) ─► Verdict
//
// Semantics are the API's (k8s.io/api/networking/v1): a pod is isolated
// for a direction when a policy selecting it has that policyType; then a
// flow is allowed when any rule of any such policy allows it. Peers are
// matched by IP: ipBlock matches any address (pod addresses included, as
// the upstream suite expects), podSelector and namespaceSelector match
// the pods the Input lists (hostNetwork pods are never listed: they have
// the node's address). Named ports resolve against the destination pod:
// the local pod for ingress, the peer for egress.
//
// The engine, not this package, lets the node's own traffic to its pods
// through (the API requires kubelet probes to work) and lets replies and
// established flows through (conntrack).
package policy

import (
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
)

// Direction is the side of a flow a rule set judges.
type Direction uint8

// Directions.
const (
	Ingress Direction = iota // flows to a local pod
	Egress                   // flows from a local pod
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// NamedPort is a container port with a name (pod.spec.containers[].ports[]).
type NamedPort struct {
	Name  string
	Proto uint8 // IP protocol number: 6 TCP, 17 UDP, 132 SCTP
	Port  uint16
}

// Pod is what policy needs of a pod: the caller lists only pods that have
// addresses and are not hostNetwork, not Succeeded and not Failed.
type Pod struct {
	Namespace, Name string
	Node            string
	Labels          map[string]string
	IPs             []netip.Addr
	Ports           []NamedPort
}

// Namespace is what policy needs of a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Input is everything a Set is compiled from. Compile does not modify it
// and does not keep the slices (it may keep the pointed-to values, which
// the caller must not modify afterwards).
type Input struct {
	// Node is this node's name: pods whose Node it is get rule sets.
	Node       string
	Pods       []*Pod
	Namespaces []*Namespace
	Policies   []*networkingv1.NetworkPolicy
}

// ProblemReason says what of a policy could not be represented as
// written. It is a bounded set (a metrics label).
type ProblemReason uint8

// Reasons.
const (
	ProblemSCTP        ProblemReason = iota // a port of protocol SCTP: matches no traffic (SCTP is denied to isolated pods)
	ProblemBadProtocol                      // a port of an unknown protocol: matches no traffic
	ProblemBadCIDR                          // an ipBlock cidr or except that does not parse: the peer matches nothing
	ProblemBadSelector                      // a label selector that does not parse: the peer (or the policy's podSelector) matches nothing
	ProblemBadPort                          // a port that is neither a number in 1..65535 nor a name, or an endPort below its port: matches no traffic
	NumProblemReasons
)

var problemNames = [NumProblemReasons]string{"sctp", "bad-protocol", "bad-cidr", "bad-selector", "bad-port"}

func (r ProblemReason) String() string {
	if r < NumProblemReasons {
		return problemNames[r]
	}
	return "unknown"
}

// Problem is a part of a policy that could not be represented as written.
// Every problem errs on the side of denying: the part matches nothing, so
// it never allows more than the policy says.
type Problem struct {
	Namespace, Name string // the policy
	Reason          ProblemReason
	Detail          string // human readable: which rule, which value
}
