package daemon

import (
	"fmt"
	"testing"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/policy"
)

// TestPolicySeries: at most maxPolicySeries policies keep a series (the
// most denied first, ties by name); the rest are summed per direction
// under _other, and nothing is lost.
func TestPolicySeries(t *testing.T) {
	m := map[engine.PolicyKey]uint64{}
	var total uint64
	for i := range maxPolicySeries + 10 {
		n := uint64(1000 - i)
		m[engine.PolicyKey{Policy: fmt.Sprintf("ns/p%03d", i), Direction: policy.Ingress}] = n
		m[engine.PolicyKey{Policy: fmt.Sprintf("ns/p%03d", i), Direction: policy.Egress}] = 1
		total += n + 1
	}
	out := policySeries(m)
	names := map[string]bool{}
	var sum, other uint64
	for _, e := range out {
		names[e.key.Policy] = true
		sum += e.n
		if e.key.Policy == "_other" {
			other += e.n
		}
	}
	if len(names) != maxPolicySeries+1 || !names["_other"] || names[fmt.Sprintf("ns/p%03d", maxPolicySeries)] || !names["ns/p000"] {
		t.Fatalf("%d names: %v", len(names), names)
	}
	if sum != total {
		t.Fatalf("sum %d, want %d", sum, total)
	}
	var want uint64
	for i := maxPolicySeries; i < maxPolicySeries+10; i++ {
		want += uint64(1000-i) + 1
	}
	if other != want {
		t.Fatalf("_other %d, want %d", other, want)
	}
	if len(policySeries(nil)) != 0 {
		t.Fatal("series from nothing")
	}
}
