package daemon

// The podrouter_policy_* metrics: NetworkPolicy enforcement's totals, and
// denials per policy and direction. A cluster's policies are unbounded
// label values: at most maxPolicySeries policies get a series of their
// own (those with the most denials), the rest are summed under
// policy="_other".

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/policy"
)

// maxPolicySeries bounds podrouter_policy_denied_packets_total's series.
const maxPolicySeries = 50

var (
	descPolicyPolicies = prometheus.NewDesc("podrouter_policy_policies",
		"NetworkPolicies in the set in force.", nil, nil)
	descPolicyIsolated = prometheus.NewDesc("podrouter_policy_isolated_pods",
		"This node's pods isolated by a NetworkPolicy in at least one direction.", nil, nil)
	descPolicyFlows = prometheus.NewDesc("podrouter_policy_allowed_total",
		"First packets the policy stage allowed, by outcome: tracked (a flow was created; the rest of it passes at conntrack cost), "+
			"untracked (allowed but no flow made: TCP without SYN, a protocol without ports, a full table).", []string{"outcome"}, nil)
	descPolicyDenied = prometheus.NewDesc("podrouter_policy_denied_packets_total",
		"Packets a NetworkPolicy denied, by direction (ingress: the receiver's rules, egress: the sender's) and isolating policy "+
			"(namespace/name; a packet counts once for each policy isolating its pod that way; at most "+
			"50 policies by count, the rest as _other).", []string{"direction", "policy"}, nil)
	descPolicyCut = prometheus.NewDesc("podrouter_policy_cut_flows_total",
		"Established flows cut because a changed policy denies them.", nil, nil)
	descPolicyTracked = prometheus.NewDesc("podrouter_policy_tracked_flows",
		"Live flows of isolated pods (the policy flow table's entries).", nil, nil)
	descPolicyProblems = prometheus.NewDesc("podrouter_policy_problems",
		"Parts of the current NetworkPolicies the engine cannot represent as written, by reason (each matches no traffic: "+
			"it never allows more than written; each is also a Warning Event PolicyNotEnforceable on its policy).", []string{"reason"}, nil)
	descPolicyCompile = prometheus.NewDesc("podrouter_policy_compile_seconds",
		"How long the last compile of the cluster's NetworkPolicies over its pods took.", nil, nil)
	descPolicySets = prometheus.NewDesc("podrouter_policy_sets_total",
		"Compiled policy sets handed to the engine (one per batch of changes).", nil, nil)
)

func describePolicy(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPolicyPolicies, descPolicyIsolated, descPolicyFlows, descPolicyDenied, descPolicyCut, descPolicyTracked,
		descPolicyProblems, descPolicyCompile, descPolicySets} {
		ch <- d
	}
}

// collectPolicy sends the enforcement's metrics; none when it is off.
func (d *Daemon) collectPolicy(ch chan<- prometheus.Metric) {
	if !d.node.PolicyEnabled() {
		return
	}
	s := d.node.PolicyStats()
	ch <- prometheus.MustNewConstMetric(descPolicyPolicies, prometheus.GaugeValue, float64(s.Policies))
	ch <- prometheus.MustNewConstMetric(descPolicyIsolated, prometheus.GaugeValue, float64(s.IsolatedPorts))
	ch <- prometheus.MustNewConstMetric(descPolicyFlows, prometheus.CounterValue, float64(s.Allowed), "tracked")
	ch <- prometheus.MustNewConstMetric(descPolicyFlows, prometheus.CounterValue, float64(s.AllowedUntraced), "untracked")
	ch <- prometheus.MustNewConstMetric(descPolicyCut, prometheus.CounterValue, float64(s.Cut))
	if t := d.node.PolicyFlows(); t != nil {
		ch <- prometheus.MustNewConstMetric(descPolicyTracked, prometheus.GaugeValue, float64(t.Len()))
	}
	for _, e := range policySeries(s.DeniedByPolicy) {
		ch <- prometheus.MustNewConstMetric(descPolicyDenied, prometheus.CounterValue, float64(e.n), e.key.Direction.String(), e.key.Policy)
	}
	if w := d.policies.Load(); w != nil {
		ws := w.Stats()
		for r := range policy.NumProblemReasons {
			ch <- prometheus.MustNewConstMetric(descPolicyProblems, prometheus.GaugeValue, float64(ws.Problems[r]), r.String())
		}
		ch <- prometheus.MustNewConstMetric(descPolicyCompile, prometheus.GaugeValue, ws.CompileTime.Seconds())
		ch <- prometheus.MustNewConstMetric(descPolicySets, prometheus.CounterValue, float64(ws.Snapshots))
	}
}

type policyCount struct {
	key engine.PolicyKey
	n   uint64
}

// policySeries bounds m to maxPolicySeries policies (by their total
// count, then name), the rest summed per direction under "_other". A
// policy keeps its series in both directions when it has one.
func policySeries(m map[engine.PolicyKey]uint64) []policyCount {
	total := map[string]uint64{}
	for k, n := range m {
		total[k.Policy] += n
	}
	names := make([]string, 0, len(total))
	for p := range total {
		names = append(names, p)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := cmp.Compare(total[b], total[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	kept := map[string]bool{}
	for _, p := range names[:min(len(names), maxPolicySeries)] {
		kept[p] = true
	}
	var out []policyCount
	other := map[engine.PolicyKey]uint64{}
	for k, n := range m {
		if kept[k.Policy] {
			out = append(out, policyCount{k, n})
		} else {
			other[engine.PolicyKey{Policy: "_other", Direction: k.Direction}] += n
		}
	}
	for k, n := range other {
		out = append(out, policyCount{k, n})
	}
	slices.SortFunc(out, func(a, b policyCount) int {
		if c := cmp.Compare(a.key.Policy, b.key.Policy); c != 0 {
			return c
		}
		return cmp.Compare(a.key.Direction, b.key.Direction)
	})
	return out
}
