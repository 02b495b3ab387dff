package daemon

// The operator's view of NetworkPolicy enforcement: the local API's
// OpPolicy (`podrouter policy [POD]`).
//
//	OpPolicy: node.Policy() (the set in force) ─► local pods, each
//	    Explain'ed (isolation per direction, isolating policies; rules for
//	    the one pod asked) ─► + node.PolicyStats (counters, denials per
//	    policy), the policy flow table's size, node.PolicyRecent (newest
//	    first, ends named by the set, bounded by the request)

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/policy"
)

var _ api.PolicyHandler = handler{}

// Policy implements api.PolicyHandler.
func (d handler) Policy(_ context.Context, req api.PolicyRequest) (api.Policy, error) {
	if err := req.Normalize(); err != nil {
		return api.Policy{}, err
	}
	out := api.Policy{Pods: []api.PolicyPod{}, Recent: []api.PolicyFlow{}}
	if !d.node.PolicyEnabled() {
		return out, nil
	}
	out.Enabled = true
	set := d.node.Policy()
	var only []netip.Addr // the pod asked for's addresses
	if req.Pod != "" {
		ns, name, _ := strings.Cut(req.Pod, "/")
		pr, ok := set.Explain(ns, name)
		if !ok {
			return api.Policy{}, fmt.Errorf("%w: no pod %s of this node in the policy set in force", api.ErrNotFound, req.Pod)
		}
		out.Pods = append(out.Pods, policyPod(pr, true))
		only = pr.IPs
	} else {
		for _, ref := range set.LocalPods() {
			if pr, ok := set.Explain(ref.Namespace, ref.Name); ok {
				out.Pods = append(out.Pods, policyPod(pr, false))
			}
		}
	}
	st := d.node.PolicyStats()
	out.Policies, out.IsolatedPods = st.Policies, st.IsolatedPorts
	out.Stats = policyStats(st)
	if t := d.node.PolicyFlows(); t != nil {
		out.TrackedFlows = t.Len()
	}
	for _, v := range d.node.PolicyRecent(netip.Addr{}) {
		if len(out.Recent) == req.Recent {
			break
		}
		if only != nil && !slices.Contains(only, v.Src) && !slices.Contains(only, v.Dst) {
			continue
		}
		out.Recent = append(out.Recent, policyFlow(v, set))
	}
	return out, nil
}

// policyPod is the API's view of pr; its rules only when withRules.
func policyPod(pr policy.PodRules, withRules bool) api.PolicyPod {
	dir := func(r policy.DirectionRules) api.PolicyRules {
		out := api.PolicyRules{Isolated: r.Isolated, Policies: r.Policies}
		if withRules {
			for _, ri := range r.Rules {
				out.Rules = append(out.Rules, api.PolicyRule{Policy: ri.Policy, Rule: ri.Rule, Peers: ri.Peers, Ports: ri.Ports})
			}
		}
		return out
	}
	return api.PolicyPod{Namespace: pr.Namespace, Name: pr.Name, IPs: pr.IPs, Ingress: dir(pr.Ingress), Egress: dir(pr.Egress)}
}

// policyFlow is the API's view of v, its ends named by set where it lists
// them.
func policyFlow(v engine.PolicyVerdict, set *policy.Set) api.PolicyFlow {
	name := func(a netip.Addr) string {
		if ns, n, ok := set.PodAt(a); ok {
			return ns + "/" + n
		}
		return ""
	}
	verdict := "denied"
	if v.Allowed {
		verdict = "allowed"
	}
	return api.PolicyFlow{Time: v.At, Src: v.Src, Dst: v.Dst, SrcPod: name(v.Src), DstPod: name(v.Dst),
		Proto: conntrack.ProtoName(v.Proto), Port: v.Port, Verdict: verdict, Direction: v.Direction.String(), Policy: v.Policy}
}

// policyStats converts the engine's counters, the per-policy denials
// sorted by policy then direction.
func policyStats(s engine.PolicyStats) api.PolicyStats {
	out := api.PolicyStats{Allowed: s.Allowed, AllowedUntracked: s.AllowedUntraced, DeniedIngress: s.DeniedIngress,
		DeniedEgress: s.DeniedEgress, Cut: s.Cut, DeniedByPolicy: []api.PolicyDenied{}}
	keys := make([]engine.PolicyKey, 0, len(s.DeniedByPolicy))
	for k, n := range s.DeniedByPolicy {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b engine.PolicyKey) int {
		return cmp.Or(strings.Compare(a.Policy, b.Policy), cmp.Compare(a.Direction, b.Direction))
	})
	for _, k := range keys {
		out.DeniedByPolicy = append(out.DeniedByPolicy, api.PolicyDenied{Policy: k.Policy, Direction: k.Direction.String(), Packets: s.DeniedByPolicy[k]})
	}
	return out
}
