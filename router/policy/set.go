package policy

import "net/netip"

// PLACEHOLDER: the branch "policy" replaces this file with the compiler;
// it only fixes the API the engine and the watcher build against.

// Set is a compiled, immutable policy set, safe for concurrent use.
type Set struct{}

// Rules is one local pod's rules for one direction.
type Rules struct{}

// Verdict is a Check's answer.
type Verdict struct {
	Allowed bool
	// Policy is the index (Set.Policy) of the policy whose rule allowed
	// the flow, or -1 when it was denied.
	Policy int32
}

// Compile compiles in; see the package comment.
func Compile(in Input) (*Set, []Problem) { panic("policy: Compile: not built yet") }

// Rules returns the rules of the local pod with address local for d, or
// nil when that pod is not isolated for d (or is not a local pod).
func (s *Set) Rules(d Direction, local netip.Addr) *Rules { return nil }

// NumPolicies is the number of policies in the set.
func (s *Set) NumPolicies() int { return 0 }

// Policy is the namespace and name of policy i.
func (s *Set) Policy(i int32) (namespace, name string) { return "", "" }

// Check judges a flow between the rules' pod and peer: proto is the IP
// protocol, port the destination port (0 for protocols without ports).
func (r *Rules) Check(peer netip.Addr, proto uint8, port uint16) Verdict {
	return Verdict{Policy: -1}
}

// Policies are the indexes of the policies that isolate the pod in this
// direction, ascending.
func (r *Rules) Policies() []int32 { return nil }
