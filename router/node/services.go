package node

// The node's load balancer: Services without kube-proxy, in the engine
// (router/engine svc.go), fed by whoever watches Services (the daemon's
// Kubernetes mode, or a test).
//
//	New: conntrack table for Service flows (SNAT: the gateways, for
//	     hairpins) ─► engine.EnableServices ─► host routes the Service
//	     CIDRs to the uplink (hostNetwork pods, the kubelet) ─► reaper
//	SetServices(services) ─► service.NewTable(node addresses, previous)
//	     ─► engine.SetServices (UDP flows of gone backends flushed)
//	Close: reaper stops (the engine goes with the node)

import (
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/service"
)

// ServicesConfig turns the node's load balancer on. The zero value means
// off (an existing kube-proxy handles Services).
type ServicesConfig struct {
	// CIDRs are the Service address ranges (kube-apiserver's
	// --service-cluster-ip-range), one per family at most.
	CIDRs []netip.Prefix
	// MaxFlows bounds the Service flows (default conntrack's).
	MaxFlows int
}

func (c *ServicesConfig) enabled() bool { return len(c.CIDRs) > 0 }

func (c *ServicesConfig) validate(cluster []netip.Prefix) error {
	for _, p := range c.CIDRs {
		if !p.IsValid() {
			return configErr("service-cidr: an unset prefix in the list")
		}
		if p != p.Masked() || p.Addr().Is4In6() {
			return configErr("service-cidr %s: want a masked prefix", p)
		}
		for _, cc := range cluster {
			if cc.Overlaps(p) {
				return configErr("service-cidr %s overlaps cluster-cidr %s", p, cc)
			}
		}
	}
	if c.MaxFlows < 0 {
		return configErr("service max-flows %d: negative", c.MaxFlows)
	}
	return nil
}

// serviceLB is the node's part of the load balancer.
type serviceLB struct {
	tableReaper
	mu sync.Mutex // serializes SetServices
}

// tableReaper reaps a conntrack table's expired flows until close.
type tableReaper struct {
	table *conntrack.Table
	stop  chan struct{}
	done  chan struct{}
}

// startServices builds the Service flow table and turns the engine's load
// balancer on.
func (n *Node) startServices() error {
	var snat []conntrack.SNATAddr
	for _, g := range []netip.Addr{n.eng.Gateway(), n.eng.Gateway6()} {
		if g.IsValid() {
			snat = append(snat, conntrack.SNATAddr{Addr: g, PortMin: engine.HairpinPortMin, PortMax: engine.HairpinPortMax})
		}
	}
	tab, err := conntrack.New(conntrack.Config{MaxEntries: n.cfg.Services.MaxFlows, SNAT: snat, Logger: n.cfg.Logger.Named("services")})
	if err != nil {
		return err
	}
	if err := n.eng.EnableServices(engine.ServicesConfig{CIDRs: n.cfg.Services.CIDRs, Table: tab}); err != nil {
		return err
	}
	n.svc = &serviceLB{tableReaper: tableReaper{table: tab, stop: make(chan struct{}), done: make(chan struct{})}}
	go n.svc.reap()
	return nil
}

func (s *tableReaper) reap() {
	defer close(s.done)
	t := time.NewTicker(snatReapInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			const max = 65536
			for s.table.Reap(s.table.Now(), max) == max {
			}
		}
	}
}

func (s *tableReaper) close() {
	close(s.stop)
	<-s.done
}

// SetServices makes svcs the node's Services: new flows use them at once.
// It fails with ErrConfig when the node's load balancer is off.
func (n *Node) SetServices(svcs []service.Service) error {
	if n.svc == nil {
		return configErr("services: the load balancer is off (no service-cidr)")
	}
	if n.closed.Load() {
		return ErrClosed
	}
	n.svc.mu.Lock()
	defer n.svc.mu.Unlock()
	t := service.NewTable(svcs, service.Options{NodeAddrs: n.cfg.NodeIPs, Prev: n.eng.Services()})
	if err := n.eng.SetServices(t); err != nil {
		return err
	}
	if len(t.Gone) > 0 {
		n.log.Debug("udp backends gone", zap.Int("count", len(t.Gone)))
	}
	return nil
}

// Services returns the Service table in force, or nil when the load
// balancer is off.
func (n *Node) Services() *service.Table { return n.eng.Services() }

// ServiceFlows returns the Service flow table, or nil when off.
func (n *Node) ServiceFlows() *conntrack.Table {
	if n.svc == nil {
		return nil
	}
	return n.svc.table
}
