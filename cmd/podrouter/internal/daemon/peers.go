package daemon

// Peers: the other nodes, through the UDP underlay.
//
//	startUnderlay: underlay socket ─► RX port (kind peer, receives from every peer)
//	SetPeers(snapshot): filter ─► underlay peer table swapped ─► a peer port
//	     per new peer ─► routes = outside routes + peer podCIDRs -> peer port
//	     ─► ports of peers gone are detached (after no route names them)
//
// Design notes. Peer ports are engine ports (one per peer, as in the lab)
// so `podrouter peers` and the port counters show each node. A snapshot is
// applied as a whole: the engine publishes the new route table in one swap.
// Peers that cannot be routed (podCIDR overlapping ours or another peer's,
// outside the cluster CIDRs, address shared with another peer or ours) are
// left out and logged, never failing the rest of the snapshot.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// UnderlayConfig configures the daemon's underlay. The zero value (Encap 0)
// means none: a single-node daemon without peers.
type UnderlayConfig struct {
	// Encap is udp or vxlan; 0 means no underlay.
	Encap underlay.Encap
	// Listen is the local underlay address and port (required with
	// Encap): the node's address peers send to.
	Listen netip.AddrPort
	// VNI and VTEPMAC are vxlan's (defaults: 1, derived from Listen).
	VNI     uint32
	VTEPMAC packet.MAC
	// MTU is the underlay MTU (default: the interface's, see
	// underlay.Config.MTU); Interface names that interface.
	MTU       int
	Interface string
	// Peers is a static peer set applied at start (optional; the Kubernetes
	// controller replaces it through SetPeers).
	Peers []underlay.Peer
}

// ErrNoUnderlay: SetPeers on a daemon configured without an underlay.
var ErrNoUnderlay = errors.New("daemon: no underlay configured")

func (u *UnderlayConfig) validate(bad func(string, ...any) error) error {
	if u.Encap == 0 {
		if len(u.Peers) > 0 {
			return bad("peers: need an underlay backend")
		}
		return nil
	}
	if u.Encap != underlay.EncapUDP && u.Encap != underlay.EncapVXLAN {
		return bad("backend %v: want udp or vxlan", u.Encap)
	}
	if !u.Listen.IsValid() || u.Listen.Addr().Zone() != "" || u.Listen.Addr().Is4In6() {
		return bad("underlay address %s: want IP:port", u.Listen)
	}
	if u.MTU != 0 && (u.MTU < 576 || u.MTU > 65535) {
		return bad("underlay mtu %d: out of range 576..65535", u.MTU)
	}
	return nil
}

// peering is the daemon's underlay and its peer ports.
type peering struct {
	mu     sync.Mutex // serializes SetPeers and route updates
	u      *underlay.Underlay
	rx     *engine.Port
	ports  map[string]*engine.Port // by peer name
	routes []route.Route           // the peers' routes, in the current table
}

// startUnderlay opens the underlay and attaches its RX port (no-op without
// an underlay configured).
func (d *Daemon) startUnderlay() error {
	uc := d.cfg.Underlay
	if uc.Encap == 0 {
		return nil
	}
	u, err := underlay.New(underlay.Config{
		Encap: uc.Encap, Listen: uc.Listen, VNI: uc.VNI, VTEPMAC: uc.VTEPMAC,
		MTU: uc.MTU, Interface: uc.Interface, Logger: d.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("daemon: underlay: %w", err)
	}
	d.peering.u = u
	d.peering.ports = map[string]*engine.Port{}
	if d.peering.rx, err = d.eng.AddPort(u.RxDevice(), engine.PortConfig{Name: "underlay", Kind: engine.KindPeer, MTU: u.MTU()}); err != nil {
		return fmt.Errorf("daemon: underlay port: %w", err)
	}
	d.log.Info("underlay up", zap.Stringer("encap", u.Encap()), zap.Stringer("local", u.LocalAddr()),
		zap.Int("underlayMTU", u.UnderlayMTU()), zap.Int("innerMTU", u.MTU()))
	return nil
}

// Underlay returns the daemon's underlay, or nil without one.
func (d *Daemon) Underlay() *underlay.Underlay { return d.peering.u }

// applyRoutes sets the engine's table: the outside routes and the peers'.
// Callers hold peering.mu (or run before the daemon is shared).
func (d *Daemon) applyRoutes() error {
	rs := slices.Concat(d.outsideRoutes(), d.peering.routes)
	return d.eng.SetRoutes(rs)
}

// SetPeers replaces the daemon's peer set with peers (it implements the
// Kubernetes controller's sink; peers are not modified). Peers that cannot
// be routed are left out with a warning; an error means the engine or the
// underlay refused the rest, and the previous set stays in force.
func (d *Daemon) SetPeers(peers []underlay.Peer) error {
	p := &d.peering
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.u == nil {
		return ErrNoUnderlay
	}
	if d.closed.Load() {
		return errors.New("daemon: closed")
	}
	keep := d.usablePeers(peers)
	if err := p.u.SetPeers(keep); err != nil {
		return fmt.Errorf("daemon: peers: %w", err)
	}
	added := map[string]*engine.Port{}
	rollback := func() {
		for _, port := range added {
			_ = d.eng.RemovePort(port)
		}
	}
	var rs []route.Route
	for _, q := range keep {
		port := p.ports[q.Name]
		if port == nil {
			var err error
			port, err = d.eng.AddPort(p.u.PeerDevice(q.Name), engine.PortConfig{Name: "peer-" + q.Name, Kind: engine.KindPeer, MTU: p.u.MTU()})
			if err != nil {
				rollback()
				return fmt.Errorf("daemon: peer %s: %w", q.Name, err)
			}
			added[q.Name] = port
		}
		for _, c := range q.PodCIDRs {
			rs = append(rs, route.Route{Prefix: c, NextHop: route.ToPeer(port.Index())})
		}
	}
	oldRoutes := p.routes
	p.routes = rs
	if err := d.applyRoutes(); err != nil {
		p.routes = oldRoutes
		rollback()
		return fmt.Errorf("daemon: peer routes: %w", err)
	}
	var gone []string
	for name, port := range p.ports {
		if !slices.ContainsFunc(keep, func(q underlay.Peer) bool { return q.Name == name }) {
			gone = append(gone, name)
			_ = d.eng.RemovePort(port)
		}
	}
	for _, name := range gone {
		delete(p.ports, name)
	}
	for name, port := range added {
		p.ports[name] = port
	}
	d.log.Info("peers set", zap.Int("peers", len(keep)), zap.Int("added", len(added)), zap.Int("removed", len(gone)),
		zap.Int("skipped", len(peers)-len(keep)))
	return nil
}

// usablePeers returns the peers that can be routed, in order, logging the
// others.
func (d *Daemon) usablePeers(peers []underlay.Peer) []underlay.Peer {
	own := d.cfg.PodCIDRs()
	local := d.peering.u.LocalAddr()
	keep := make([]underlay.Peer, 0, len(peers))
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
			inside := false
			for _, cc := range d.cfg.ClusterCIDRs {
				if cc.Addr().BitLen() == c.Addr().BitLen() && cc.Bits() <= c.Bits() && cc.Contains(c.Addr()) {
					inside = true
				}
			}
			switch {
			case !inside:
				why = "podCIDR " + c.String() + " outside the cluster CIDRs"
			case slices.ContainsFunc(own, c.Overlaps):
				why = "podCIDR " + c.String() + " overlaps ours"
			case slices.ContainsFunc(used, c.Overlaps):
				why = "podCIDR " + c.String() + " overlaps another peer's"
			}
		}
		if why != "" {
			d.log.Warn("peer left out", zap.String("peer", q.Name), zap.String("reason", why))
			continue
		}
		seenName[q.Name] = true
		seenAddr[q.Addr] = q.Name
		used = append(used, q.PodCIDRs...)
		keep = append(keep, q)
	}
	return keep
}

// closeUnderlay closes the underlay socket (after the engine closed its
// ports).
func (d *Daemon) closeUnderlay() error {
	if d.peering.u == nil {
		return nil
	}
	return d.peering.u.Close()
}
