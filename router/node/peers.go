package node

// Peers: the other nodes, through the backend.
//
//	New: backend ─► RX port (kind peer, receives from every peer)
//	SetPeers(snapshot): filter ─► backend peer table swapped ─► a peer port
//	     per new peer ─► routes = egress routes + peer podCIDRs -> peer port
//	     ─► ports of peers gone are detached (after no route names them)
//
// Design notes. Peer ports are engine ports (one per peer) so `podrouter
// peers` and the port counters show each node. A snapshot is applied as a
// whole: the engine publishes the new route table in one swap. Peers that
// cannot be routed (podCIDR overlapping ours or another peer's, outside the
// cluster CIDRs, address shared with another peer or ours) are left out
// and logged, never failing the rest of the snapshot.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
)

// ErrNoUnderlay: SetPeers on a node configured without a backend.
var ErrNoUnderlay = errors.New("node: no underlay configured")

// SetPeers replaces the node's peer set with peers (peers are not
// modified). Peers that cannot be routed are left out with a warning; an
// error means the engine or the backend refused the rest, and the previous
// set stays in force.
func (n *Node) SetPeers(peers []Peer) error {
	p := &n.peers
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.b == nil {
		return ErrNoUnderlay
	}
	if n.closed.Load() {
		return ErrClosed
	}
	keep := n.usablePeers(peers)
	if err := p.b.SetPeers(keep); err != nil {
		return fmt.Errorf("node: peers: %w", err)
	}
	added := map[string]*engine.Port{}
	rollback := func() {
		for _, port := range added {
			_ = n.eng.RemovePort(port)
		}
	}
	var rs []route.Route
	hr, _ := p.b.(HostRouter)
	routed := keep[:0:0]
	for _, q := range keep {
		if hr != nil && hr.HostRouted(q) {
			// Through the host (host-gw, vxlan DirectRouting): the
			// podCIDRs and the peer's addresses go to the uplink, and
			// the host routes them via the peer's address.
			if n.upPort == nil {
				n.log.Warn("peer left out: direct routes need the uplink", zap.String("peer", q.Name))
				continue
			}
			for _, c := range q.PodCIDRs {
				// Host routes go via the peer's address: a podCIDR of
				// the other family has none, and stays unrouted rather
				// than follow the host's default route.
				if c.Addr().Is4() == q.Addr.Addr().Unmap().Is4() {
					rs = append(rs, route.Route{Prefix: c, NextHop: route.ToEgress(n.upPort.Index())})
				}
			}
			for _, a := range peerHostAddrs(q) {
				rs = append(rs, route.Route{Prefix: netip.PrefixFrom(a, a.BitLen()), NextHop: route.ToEgress(n.upPort.Index())})
			}
			routed = append(routed, q)
			continue
		}
		port := p.ports[q.Name]
		if port == nil {
			dev := p.b.PeerDevice(q.Name)
			if dev == nil {
				continue // the backend cannot reach it (logged by the backend)
			}
			var err error
			port, err = n.eng.AddPort(dev, engine.PortConfig{Name: "peer-" + q.Name, Kind: engine.KindPeer, MTU: p.b.MTU()})
			if err != nil {
				rollback()
				return fmt.Errorf("node: peer %s: %w", q.Name, err)
			}
			added[q.Name] = port
		}
		routed = append(routed, q)
		for _, c := range q.PodCIDRs {
			rs = append(rs, route.Route{Prefix: c, NextHop: route.ToPeer(port.Index())})
		}
		// The peer's own addresses go through it too: its host and
		// hostNetwork pods talk to this node's pods without NAT, in both
		// directions (the host routes the cluster CIDRs to the uplink),
		// and the peer admits its node addresses as inner sources.
		for _, a := range peerHostAddrs(q) {
			rs = append(rs, route.Route{Prefix: netip.PrefixFrom(a, a.BitLen()), NextHop: route.ToPeer(port.Index())})
		}
	}
	oldRoutes := p.routes
	p.routes = rs
	if err := n.applyRoutes(); err != nil {
		p.routes = oldRoutes
		rollback()
		return fmt.Errorf("node: peer routes: %w", err)
	}
	var gone []string
	for name, port := range p.ports {
		if !slices.ContainsFunc(routed, func(q Peer) bool { return q.Name == name && (hr == nil || !hr.HostRouted(q)) }) {
			gone = append(gone, name)
			_ = n.eng.RemovePort(port)
		}
	}
	for _, name := range gone {
		delete(p.ports, name)
	}
	for name, port := range added {
		p.ports[name] = port
	}
	n.setEndpoints(keep)
	n.log.Info("peers set", zap.Int("peers", len(routed)), zap.Int("added", len(added)), zap.Int("removed", len(gone)),
		zap.Int("skipped", len(peers)-len(routed)))
	return nil
}

// PeerPort returns the engine port of the named peer, or nil.
func (n *Node) PeerPort(name string) *engine.Port {
	n.peers.mu.Lock()
	defer n.peers.mu.Unlock()
	return n.peers.ports[name]
}

// usablePeers returns the peers that can be routed, in order, logging the
// others.
func (n *Node) usablePeers(peers []Peer) []Peer {
	own := n.cfg.PodCIDRs()
	local := n.peers.b.LocalAddr()
	keep := make([]Peer, 0, len(peers))
	seenAddr := map[netip.AddrPort]string{}
	seenName := map[string]bool{}
	var used []netip.Prefix
	for _, q := range peers {
		why := ""
		switch {
		case seenName[q.Name]:
			why = "name listed twice"
		case q.Addr == local:
			why = "our own underlay address"
		case seenAddr[q.Addr] != "":
			why = "address shared with " + seenAddr[q.Addr]
		}
		for _, c := range q.PodCIDRs {
			if why != "" {
				break
			}
			switch {
			case !InCluster(n.cfg.ClusterCIDRs, c):
				why = "podCIDR " + c.String() + " outside the cluster CIDRs"
			case slices.ContainsFunc(own, c.Overlaps):
				why = "podCIDR " + c.String() + " overlaps ours"
			case slices.ContainsFunc(used, c.Overlaps):
				why = "podCIDR " + c.String() + " overlaps another peer's"
			}
		}
		if why != "" {
			n.log.Warn("peer left out", zap.String("peer", q.Name), zap.String("reason", why))
			continue
		}
		seenName[q.Name] = true
		seenAddr[q.Addr] = q.Name
		used = append(used, q.PodCIDRs...)
		keep = append(keep, q)
	}
	return keep
}

// UnderlayCounters returns the backend's counters behind port p: a peer's
// (on that peer's port), the backend's totals (on the underlay port), or
// nil for any other port and on a node without a backend.
func (n *Node) UnderlayCounters(p *engine.Port) *api.UnderlayCounters {
	b := n.peers.b
	if b == nil || p == nil {
		return nil
	}
	if p == n.peers.rx {
		s := b.Stats()
		return &api.UnderlayCounters{Addr: b.LocalAddr(), RxPackets: s.RxPackets, RxBytes: s.RxBytes,
			TxPackets: s.TxPackets, TxBytes: s.TxBytes, Drops: dropNames(s.Drops)}
	}
	n.peers.mu.Lock()
	name := ""
	for nm, q := range n.peers.ports {
		if q == p {
			name = nm
		}
	}
	n.peers.mu.Unlock()
	if name == "" {
		return nil
	}
	ps, ok := b.PeerStats(name)
	if !ok {
		return nil
	}
	c := &api.UnderlayCounters{Peer: name, RxPackets: ps.RxPackets, RxBytes: ps.RxBytes,
		TxPackets: ps.TxPackets, TxBytes: ps.TxBytes, Drops: dropNames(ps.Drops)}
	for _, q := range b.Peers() {
		if q.Name == name {
			c.Addr = q.Addr
		}
	}
	return c
}

// dropNames keys drop counts by the reason's name (nil when none).
func dropNames[R interface {
	comparable
	fmt.Stringer
}](m map[R]uint64) map[string]uint64 {
	var out map[string]uint64
	for r, v := range m {
		if v == 0 {
			continue
		}
		if out == nil {
			out = map[string]uint64{}
		}
		out[r.String()] = v
	}
	return out
}

// peerHostAddrs returns a peer's node addresses and underlay address,
// once each.
func peerHostAddrs(q Peer) []netip.Addr {
	var out []netip.Addr
	for _, a := range append([]netip.Addr{q.Addr.Addr().Unmap()}, q.NodeAddrs...) {
		if a.IsValid() && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}
