package api

// OpPolicy: NetworkPolicy enforcement as the engine does it, for
// `podrouter policy [POD]`: the set in force (policies, isolated pods),
// each local pod's isolation per direction and, for one pod, the rules
// that decide its flows, then the enforcement's counters and the flows it
// judged most recently.
//
// Design notes. The rules travel as the text router/policy renders them
// (peers, ports), in types of this package rather than policy.PodRules
// itself: router/policy pulls in k8s.io/api, and the CNI plugin, which
// links this package, must stay small. The JSON shape is policy.PodRules'.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// OpPolicy shows NetworkPolicy enforcement: PolicyRequest -> Policy.
const OpPolicy Op = "policy"

// Bounds of PolicyRequest.Recent.
const (
	DefaultPolicyRecent = 20
	MaxPolicyRecent     = 256
)

// PolicyHandler is a Handler that also serves OpPolicy; a Server whose
// Handler is not one answers policy requests with ErrBadRequest.
type PolicyHandler interface {
	Handler
	// Policy describes the enforcement (of req.Pod only, when set). req is
	// normalized (PolicyRequest.Normalize). A pod that is not a local pod
	// of the policy set in force is ErrNotFound; a node that does not
	// enforce NetworkPolicy answers Policy.Enabled false, whatever the pod.
	Policy(ctx context.Context, req PolicyRequest) (Policy, error)
}

// PolicyRequest asks for the node's NetworkPolicy enforcement.
type PolicyRequest struct {
	// Pod, when set, is "namespace/name" of a pod of this node: the reply
	// lists it alone, with its rules, and only its recent flows.
	Pod string `json:"pod,omitempty"`
	// Recent bounds the recent flows listed, 1..MaxPolicyRecent (0:
	// DefaultPolicyRecent).
	Recent int `json:"recent,omitempty"`
}

// Normalize fills in Recent and checks every field; errors wrap
// ErrBadRequest.
func (r *PolicyRequest) Normalize() error {
	if r.Pod != "" {
		ns, name, ok := strings.Cut(r.Pod, "/")
		if !ok {
			return fmt.Errorf("%w: policy: pod %.40q: want namespace/name", ErrBadRequest, r.Pod)
		}
		if err := (PodRef{Namespace: ns, Name: name}).Validate(); err != nil {
			return fmt.Errorf("policy: %w", err)
		}
	}
	if r.Recent < 0 || r.Recent > MaxPolicyRecent {
		return fmt.Errorf("%w: policy: recent %d out of range 0..%d", ErrBadRequest, r.Recent, MaxPolicyRecent)
	}
	if r.Recent == 0 {
		r.Recent = DefaultPolicyRecent
	}
	return nil
}

// Policy is the reply to OpPolicy.
type Policy struct {
	// Enabled is false when the node does not enforce NetworkPolicy
	// (the daemon's --network-policy is off); the rest is then empty.
	Enabled bool `json:"enabled"`
	// Policies are the NetworkPolicies in the set in force (the cluster's,
	// not only those selecting a pod here); IsolatedPods this node's
	// attached pods isolated in at least one direction; TrackedFlows the
	// live flows of isolated pods (the policy flow table's entries).
	Policies     int `json:"policies"`
	IsolatedPods int `json:"isolatedPods"`
	TrackedFlows int `json:"trackedFlows"`
	// Stats are the enforcement's counters since the daemon started.
	Stats PolicyStats `json:"stats"`
	// Pods are this node's pods as the set in force knows them, sorted by
	// namespace and name (the one asked for, with its rules, when the
	// request names one).
	Pods []PolicyPod `json:"pods"`
	// Recent are the flows judged most recently, newest first, at most
	// the request's Recent (those to or from the pod asked for).
	Recent []PolicyFlow `json:"recent"`
}

// PolicyStats are the enforcement's counters (engine.PolicyStats).
type PolicyStats struct {
	// Allowed: flows allowed and tracked (their later packets and replies
	// pass at conntrack cost). AllowedUntracked: packets allowed that
	// started no flow (TCP without SYN, protocols without ports, a full
	// table).
	Allowed          uint64 `json:"allowed"`
	AllowedUntracked uint64 `json:"allowedUntracked"`
	// DeniedIngress and DeniedEgress: packets denied by the receiver's
	// ingress rules, by the sender's egress rules.
	DeniedIngress uint64 `json:"deniedIngress"`
	DeniedEgress  uint64 `json:"deniedEgress"`
	// Cut: established flows deleted because a changed policy denies them.
	Cut uint64 `json:"cut"`
	// DeniedByPolicy are the denied packets per isolating policy and
	// direction (a packet counts once for each policy isolating its pod
	// that way), over every set that was in force, sorted by policy then
	// direction (ingress first). Only non-zero ones.
	DeniedByPolicy []PolicyDenied `json:"deniedByPolicy"`
}

// PolicyDenied counts the packets one policy's isolation denied.
type PolicyDenied struct {
	Policy    string `json:"policy"`    // namespace/name
	Direction string `json:"direction"` // ingress or egress
	Packets   uint64 `json:"packets"`
}

// PolicyPod is one local pod's isolation (policy.PodRules).
type PolicyPod struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	IPs       []netip.Addr `json:"ips"`
	Ingress   PolicyRules  `json:"ingress"`
	Egress    PolicyRules  `json:"egress"`
}

// String returns "namespace/name".
func (p *PolicyPod) String() string { return p.Namespace + "/" + p.Name }

// PolicyRules are a pod's rules for one direction (policy.DirectionRules).
// A flow is allowed when the pod is not isolated or when any rule allows
// it.
type PolicyRules struct {
	Isolated bool `json:"isolated"`
	// Policies isolating the pod this way, "namespace/name".
	Policies []string `json:"policies,omitempty"`
	// Rules of those policies in the order they are tried; only in a
	// reply to a request that names the pod. An isolating policy without
	// rules of this direction (default deny) has none here.
	Rules []PolicyRule `json:"rules,omitempty"`
}

// PolicyRule is one rule as written (policy.RuleInfo).
type PolicyRule struct {
	Policy string `json:"policy"` // namespace/name
	Rule   int    `json:"rule"`   // index in the policy's spec.ingress or spec.egress
	// Peers, one per from/to entry: "any", "pods{app=a} in namespace ns",
	// "ipBlock 10.0.0.0/8 except 10.1.0.0/16", ...
	Peers []string `json:"peers"`
	// Ports: "any", "TCP/80", "UDP/1000-2000", "TCP/http (=8080)", ...
	Ports []string `json:"ports"`
}

// PolicyFlow is a flow the enforcement judged (engine.PolicyVerdict).
type PolicyFlow struct {
	Time time.Time  `json:"time"`
	Src  netip.Addr `json:"src"`
	Dst  netip.Addr `json:"dst"`
	// SrcPod and DstPod name the ends ("namespace/name") that the set in
	// force lists, local or not; empty otherwise.
	SrcPod string `json:"srcPod,omitempty"`
	DstPod string `json:"dstPod,omitempty"`
	// Proto is "tcp", "udp", "icmp", "icmpv6" or "proto-N"; Port the
	// destination port (0: none).
	Proto string `json:"proto"`
	Port  uint16 `json:"port,omitempty"`
	// Verdict is "allowed" or "denied"; Direction the side that decided
	// ("ingress" or "egress": the denying one, ingress when allowed both
	// ways).
	Verdict   string `json:"verdict"`
	Direction string `json:"direction"`
	// Policy is the policy whose rule allowed the flow (empty when no rule
	// decided: the pod was not isolated that way, or the peer was the
	// node), or for a denied flow the isolating policies, joined by ",".
	Policy string `json:"policy,omitempty"`
}

// Policy describes the node's NetworkPolicy enforcement.
func (c *Client) Policy(ctx context.Context, req PolicyRequest) (Policy, error) {
	if err := req.Normalize(); err != nil {
		return Policy{}, err
	}
	rep, err := c.do(ctx, request{Op: OpPolicy, Policy: &req}, nil)
	return answer(rep.Policy, err, "policy reply without the policy")
}

// servePolicy is dispatch's OpPolicy.
func (s *Server) servePolicy(ctx context.Context, req request, rep *reply) error {
	if req.Policy == nil {
		return fmt.Errorf("%w: policy without its request", ErrBadRequest)
	}
	ph, ok := s.h.(PolicyHandler)
	if !ok {
		return fmt.Errorf("%w: this daemon does not show NetworkPolicy", ErrBadRequest)
	}
	if err := req.Policy.Normalize(); err != nil {
		return err
	}
	p, err := ph.Policy(ctx, *req.Policy)
	if err != nil {
		return err
	}
	if p.Pods == nil {
		p.Pods = []PolicyPod{}
	}
	if p.Recent == nil {
		p.Recent = []PolicyFlow{}
	}
	if p.Stats.DeniedByPolicy == nil {
		p.Stats.DeniedByPolicy = []PolicyDenied{}
	}
	rep.Policy = &p
	return nil
}
