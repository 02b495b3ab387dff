package daemon

// The uplink is the node's side of the pod network: a TUN device (podr0) in
// the daemon's network namespace, attached to the engine as its KindUplink
// port.
//
//	host: ip route <podCIDR> dev podr0 [src <node IP>]   (node -> pods)
//	engine: <node IP>/32 (or 0.0.0.0/0) -> uplink port  (pods -> node)
//
// Design notes. flannel gives cni0 the gateway address (10.244.x.1) and
// the node talks to its pods from it. Here the engine itself owns the
// gateway (it answers ARP/NDP and ping for it inside the pods' segment),
// so podr0 gets no address at all: node -> pod traffic leaves with the
// node's own address (the route's src when --node-ip is given, else the
// kernel's choice, a node address on another interface), and the pods
// answer it through their default route, the gateway, which the engine
// routes to the uplink. The TUN is not persistent: when the daemon stops
// the kernel removes it with its routes, and a restart recreates both.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/tun"
)

// uplink is the host-side TUN and what the daemon configured on it.
type uplink struct {
	dev   *tun.Device
	name  string
	index int
	// nl is a netlink handle bound to the daemon's network namespace (the
	// one the uplink was created in), whichever thread uses it later:
	// readiness probes the uplink through it.
	nl *netlink.Handle
}

// flagUp is IFF_UP as netlink's link attributes report it.
const flagUp = net.FlagUp

// close releases the netlink handle; the TUN itself is the engine's (its
// port's device) and closes with the engine.
func (u *uplink) close() { u.nl.Close() }

// createUplink creates the TUN name in the current network namespace, sets
// its MTU, brings it up and routes the podCIDRs to it. On error nothing is
// left behind.
func createUplink(name string, mtu int, podCIDRs []netip.Prefix, nodeIPs []netip.Addr) (*uplink, error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("uplink %s: netlink: %w", name, err)
	}
	if _, err := nl.LinkByName(name); err == nil {
		nl.Close()
		return nil, fmt.Errorf("uplink %s: a device of that name already exists", name)
	}
	dev, err := tun.Create(name, mtu)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("uplink %s: create TUN: %w", name, err)
	}
	success := false
	defer func() {
		if !success {
			_ = dev.Close()
			nl.Close()
		}
	}()
	l, err := nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("uplink %s: %w", name, err)
	}
	if err := nl.LinkSetMTU(l, mtu); err != nil {
		return nil, fmt.Errorf("uplink %s: set MTU %d: %w", name, mtu, err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("uplink %s: set up: %w", name, err)
	}
	for _, p := range podCIDRs {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(p), Scope: netlink.SCOPE_LINK}
		for _, a := range nodeIPs {
			if a.Is4() == p.Addr().Is4() {
				r.Src = a.AsSlice()
				break
			}
		}
		if err := nl.RouteReplace(r); err != nil {
			// An IPv6 route fails when IPv6 is disabled on the node;
			// only the IPv4 podCIDR is essential.
			if p.Addr().Is6() && errors.Is(err, unix.EACCES) {
				continue
			}
			return nil, fmt.Errorf("uplink %s: route %s: %w", name, p, err)
		}
	}
	success = true
	return &uplink{dev: dev, name: name, index: l.Attrs().Index, nl: nl}, nil
}

// prefixNet converts p for netlink.
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
