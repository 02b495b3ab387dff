package node

// The host-gw backend, and vxlan's DirectRouting: peers on the same L2
// subnet as this node are reached through the host kernel, with no
// encapsulation (flannel's host-gw, its fastest backend).
//
//	pod ─► engine: route <peer podCIDR> ─► uplink port ─► podr0 ─► host:
//	    route <peer podCIDR> via <peer's address> dev <underlay interface>
//	    ─► the wire, the pod's packet as it is ─► peer host: route
//	    <its podCIDR> dev podr0 ─► its engine's uplink port ─► its pod
//
// Design notes. The backend owns one host route per peer podCIDR (netlink,
// the same routes flannel's host-gw writes) and nothing else: no socket,
// no engine port. The node routes a host-routed peer's podCIDRs to the
// uplink (HostRouter) instead of attaching a peer port. A peer whose
// address is not on a subnet of the underlay interface cannot be reached
// this way: host-gw leaves it out (logged; its podCIDR then is part of the
// cluster's unreachable remainder, never leaked to the host's default
// route), and vxlan with DirectRouting encapsulates to it as usual. Both
// hosts must forward (net.ipv4.ip_forward; the daemon refuses to start
// without it). The routes carry their own protocol number, so Close
// removes exactly what the backend added.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// BackendHostGW is the host-gw backend's name.
const BackendHostGW = "host-gw"

// hostRouteProto marks the host routes a backend adds (rtnetlink protocol
// numbers above 4 are free for routing daemons; flannel leaves the
// default).
const hostRouteProto = netlink.RouteProtocol(0x70)

func init() {
	RegisterBackend(BackendKind{
		Name:     BackendHostGW,
		Overhead: func(bool) int { return 0 },
		New:      newHostGW,
	})
}

// HostRouter is implemented by a Backend that reaches some peers through
// the host's routing table rather than a peer device: the node routes a
// peer for which HostRouted is true (after SetPeers listed it) to the
// uplink and attaches no port for it. A peer that is neither host-routed
// nor has a PeerDevice is left unrouted.
type HostRouter interface {
	HostRouted(q Peer) bool
}

// hostRoutes keeps one host route per podCIDR of the on-link peers, via
// the peer's address on the underlay interface.
type hostRoutes struct {
	nl    *netlink.Handle
	index int            // the underlay interface
	name  string         // its name
	nets  []netip.Prefix // its subnets: who is on-link
	log   *zap.Logger

	mu     sync.Mutex
	routed map[string]bool             // peers with routes
	have   map[netip.Prefix]netip.Addr // installed: podCIDR -> gateway
}

// openHostRoutes finds the interface holding addr (or named ifname) and
// its subnets.
func openHostRoutes(ifname string, addr netip.Addr, log *zap.Logger) (*hostRoutes, error) {
	if err := checkForwarding(addr.Is6()); err != nil {
		return nil, err
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	h := &hostRoutes{nl: nl, log: log, routed: map[string]bool{}, have: map[netip.Prefix]netip.Addr{}}
	links, err := nl.LinkList()
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if ifname != "" && l.Attrs().Name != ifname {
			continue
		}
		addrs, err := nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		var nets []netip.Prefix
		mine := ifname != ""
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ones, _ := a.Mask.Size()
			nets = append(nets, netip.PrefixFrom(ip.Unmap(), ones).Masked())
			mine = mine || ip.Unmap() == addr
		}
		if mine {
			h.index, h.name, h.nets = l.Attrs().Index, l.Attrs().Name, nets
			break
		}
	}
	if h.index == 0 {
		nl.Close()
		if ifname != "" {
			return nil, fmt.Errorf("interface %q not found", ifname)
		}
		return nil, fmt.Errorf("no interface holds %s (direct routes need the node's underlay interface)", addr)
	}
	return h, nil
}

// onLink reports whether a is on one of the underlay interface's subnets.
func (h *hostRoutes) onLink(a netip.Addr) bool {
	return slices.ContainsFunc(h.nets, func(p netip.Prefix) bool { return p.Contains(a.Unmap()) })
}

// set replaces the routes with those of peers' on-link members (podCIDRs
// of the gateway's family); on error the previous routes are restored.
func (h *hostRoutes) set(peers []Peer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	want := map[netip.Prefix]netip.Addr{}
	routed := map[string]bool{}
	for _, q := range peers {
		gw := q.Addr.Addr().Unmap()
		if !h.onLink(gw) {
			continue
		}
		for _, c := range q.PodCIDRs {
			if c.Addr().Is4() == gw.Is4() {
				want[c] = gw
				routed[q.Name] = true
			}
		}
	}
	r := func(c netip.Prefix, gw netip.Addr) *netlink.Route {
		return &netlink.Route{LinkIndex: h.index, Dst: route.IPNet(c), Gw: net.IP(gw.AsSlice()), Protocol: hostRouteProto}
	}
	var done []netip.Prefix
	for c, gw := range want {
		if h.have[c] == gw {
			continue
		}
		if err := h.nl.RouteReplace(r(c, gw)); err != nil {
			for _, d := range done { // back to the previous table
				if old, ok := h.have[d]; ok {
					_ = h.nl.RouteReplace(r(d, old))
				} else {
					_ = h.nl.RouteDel(r(d, want[d]))
				}
			}
			return fmt.Errorf("route %s via %s dev %s: %w", c, gw, h.name, err)
		}
		done = append(done, c)
	}
	for c, gw := range h.have {
		if _, ok := want[c]; !ok {
			if err := h.nl.RouteDel(r(c, gw)); err != nil {
				h.log.Warn("removing a direct route failed", zap.Stringer("podCIDR", c), zap.Error(err))
			}
		}
	}
	h.have, h.routed = want, routed
	return nil
}

func (h *hostRoutes) isRouted(q Peer) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.routed[q.Name]
}

// close removes the routes and releases the handle.
func (h *hostRoutes) close() error {
	err := h.set(nil)
	h.nl.Close()
	return err
}

// hostGW is the host-gw backend: host routes only.
type hostGW struct {
	local netip.AddrPort
	mtu   int
	h     *hostRoutes
	log   *zap.Logger

	mu    sync.Mutex
	peers []Peer
}

var (
	_ Backend    = (*hostGW)(nil)
	_ HostRouter = (*hostGW)(nil)
)

func newHostGW(cfg UnderlayConfig, log *zap.Logger) (Backend, error) {
	log = log.Named("host-gw")
	a := cfg.Listen.Addr()
	if a.IsUnspecified() {
		return nil, errors.New("host-gw: the node's underlay address is required (peers route to it)")
	}
	h, err := openHostRoutes(cfg.Interface, a, log)
	if err != nil {
		return nil, fmt.Errorf("host-gw: %w", err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		if m, err := underlay.MTUFromInterface(h.name); err == nil {
			mtu = m
		} else {
			mtu = 1500
		}
	}
	log.Info("host-gw: peers' podCIDRs routed by the host via their node addresses", zap.String("interface", h.name),
		zap.Stringers("subnets", h.nets), zap.Int("mtu", mtu))
	return &hostGW{local: netip.AddrPortFrom(a, 0), mtu: mtu, h: h, log: log}, nil
}

func (g *hostGW) RxDevice() link.Device { return nil }

// SetPeers routes the on-link peers' podCIDRs via their addresses; the
// others are left out, logged.
func (g *hostGW) SetPeers(peers []Peer) error {
	if err := g.h.set(peers); err != nil {
		return fmt.Errorf("host-gw: %w", err)
	}
	for _, q := range peers {
		if !g.h.onLink(q.Addr.Addr()) {
			g.log.Warn("peer not on the underlay's subnets: host-gw cannot reach it (flannel's host-gw needs direct L2 between nodes)",
				zap.String("peer", q.Name), zap.Stringer("addr", q.Addr.Addr()), zap.String("interface", g.h.name))
		}
	}
	g.mu.Lock()
	g.peers = slices.Clone(peers)
	g.mu.Unlock()
	return nil
}

func (g *hostGW) Peers() []Peer {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.peers)
}

func (g *hostGW) HostRouted(q Peer) bool { return g.h.isRouted(q) }

func (g *hostGW) PeerDevice(string) link.Device { return nil }

func (g *hostGW) MTU() int { return g.mtu }

func (g *hostGW) LocalAddr() netip.AddrPort { return g.local }

func (g *hostGW) Announce() Announcement {
	return Announcement{Backend: BackendHostGW, Endpoint: g.local}
}

// Stats is empty: the host kernel carries the packets (its interface
// counters count them).
func (g *hostGW) Stats() underlay.Stats { return underlay.Stats{} }

func (g *hostGW) PeerStats(string) (underlay.PeerStats, bool) { return underlay.PeerStats{}, false }

func (g *hostGW) Close() error { return g.h.close() }

// directBackend is vxlan with DirectRouting: on-link peers through host
// routes, the others encapsulated.
type directBackend struct {
	underlayBackend
	h *hostRoutes
}

var _ HostRouter = directBackend{}

// SetPeers gives every peer to vxlan (an on-link peer's device stays
// unused) and routes the on-link ones through the host; when the routes
// fail, vxlan gets its previous table back.
func (d directBackend) SetPeers(peers []Peer) error {
	old := d.underlayBackend.Peers()
	if err := d.underlayBackend.SetPeers(peers); err != nil {
		return err
	}
	if err := d.h.set(peers); err != nil {
		_ = d.underlayBackend.SetPeers(old)
		return fmt.Errorf("direct routing: %w", err)
	}
	return nil
}

func (d directBackend) HostRouted(q Peer) bool { return d.h.isRouted(q) }

func (d directBackend) Close() error {
	return errors.Join(d.h.close(), d.underlayBackend.Close())
}
