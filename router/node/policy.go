package node

// The node's NetworkPolicy enforcement (router/engine policy.go), fed by
// whoever watches policies (the daemon's Kubernetes mode, or a test).
//
//	New: conntrack table for isolated pods' flows ─► engine.EnablePolicy
//	     ─► reaper
//	SetPolicy(set) ─► engine.SetPolicy (established flows it denies cut)
//	Close: reaper stops (the engine goes with the node)

import (
	"net/netip"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/policy"
)

// PolicyConfig turns NetworkPolicy enforcement on. The zero value means
// off (every pod may reach every other, as with flannel alone).
type PolicyConfig struct {
	Enabled bool
	// MaxFlows bounds the tracked flows of isolated pods (default
	// conntrack's).
	MaxFlows int
	// LogDenied logs denied flows' first packets, at most LogRate a
	// second (default 10).
	LogDenied bool
	LogRate   int
}

func (c *PolicyConfig) validate() error {
	if c.MaxFlows < 0 {
		return configErr("policy max-flows %d: negative", c.MaxFlows)
	}
	if c.LogRate < 0 {
		return configErr("policy log-rate %d: negative", c.LogRate)
	}
	return nil
}

// startPolicy builds the policy flow table and turns enforcement on.
func (n *Node) startPolicy() error {
	c := n.cfg.Policy
	tab, err := conntrack.New(conntrack.Config{MaxEntries: c.MaxFlows, Logger: n.cfg.Logger.Named("policy")})
	if err != nil {
		return err
	}
	if err := n.eng.EnablePolicy(engine.PolicyConfig{Table: tab, LogDenied: c.LogDenied, LogRate: c.LogRate}); err != nil {
		return err
	}
	n.pol = &tableReaper{table: tab, stop: make(chan struct{}), done: make(chan struct{})}
	go n.pol.reap()
	return nil
}

// SetPolicy makes s the node's policy set (nil: none): new flows are
// judged by it at once, established flows it denies are cut. It fails with
// ErrConfig when enforcement is off.
func (n *Node) SetPolicy(s *policy.Set) error {
	if n.pol == nil {
		return configErr("policy: enforcement is off")
	}
	if n.closed.Load() {
		return ErrClosed
	}
	return n.eng.SetPolicy(s)
}

// Policy returns the policy set in force (nil: none, or off).
func (n *Node) Policy() *policy.Set { return n.eng.Policy() }

// PolicyEnabled reports whether the node enforces NetworkPolicy.
func (n *Node) PolicyEnabled() bool { return n.pol != nil }

// PolicyStats returns the enforcement's counters (zero when off).
func (n *Node) PolicyStats() engine.PolicyStats { return n.eng.PolicyStats() }

// PolicyRecent returns the flows judged most recently, newest first, of
// the pod with address a (every pod when a is the zero Addr).
func (n *Node) PolicyRecent(a netip.Addr) []engine.PolicyVerdict { return n.eng.PolicyRecent(a) }

// PolicyFlows returns the table of isolated pods' flows, or nil when off.
func (n *Node) PolicyFlows() *conntrack.Table {
	if n.pol == nil {
		return nil
	}
	return n.pol.table
}
