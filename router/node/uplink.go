package node

// The uplink is the node's side towards its host: a TUN device (podr0) in
// the node's network namespace, attached to the engine as its KindUplink
// port.
//
//	host: ip route <podCIDR> dev podr0 [src <node IP>]   (node -> pods)
//	engine: <node IP>/32 (or 0.0.0.0/0) -> uplink port  (pods -> node)
//
// Design notes. flannel gives cni0 the gateway address (10.244.x.1) and
// the node talks to its pods from it. Here the engine itself owns the
// gateway (it answers ARP/NDP and ping for it inside the pods' segment),
// so podr0 gets no address at all: node -> pod traffic leaves with the
// node's own address (the route's src when NodeIPs are given, else the
// kernel's choice, a node address on another interface), and the pods
// answer it through their default route, the gateway, which the engine
// routes to the uplink. The TUN is not persistent: when the node stops
// the kernel removes it with its routes, and a restart recreates both.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/tun"
	"github.com/podrouter/podrouter/router/route"
)

// UplinkConfig configures a node's uplink. The zero value means none.
type UplinkConfig struct {
	// Name is the host-side TUN to create (it must not exist).
	Name string
	// Device, when set, is used as the uplink instead of a TUN (tests, or
	// a device a broker handed over): no host routes are set and nothing
	// is probed. Name then only names the port (default "uplink").
	Device link.Device
}

func (c *UplinkConfig) enabled() bool { return c.Name != "" || c.Device != nil }

func (c *UplinkConfig) validate() error {
	if c.Name != "" {
		if err := api.ValidIfName(c.Name); err != nil {
			return configErr("uplink: %v", err)
		}
	}
	return nil
}

// Uplink is the node's host-side device and what the node configured on
// it.
type Uplink struct {
	dev   link.Device
	name  string
	index int // 0 for a handed-in device
	// nl is a netlink handle bound to the node's network namespace (the
	// one the uplink was created in), whichever thread uses it later:
	// readiness probes the uplink through it. Nil for a handed-in device.
	nl *netlink.Handle
}

// Name returns the uplink's name.
func (u *Uplink) Name() string { return u.name }

// Device returns the uplink's device (the engine's uplink port closes it).
func (u *Uplink) Device() link.Device { return u.dev }

// close releases the netlink handle; the device itself is the engine's
// (its port's) and closes with the engine.
func (u *Uplink) close() {
	if u.nl != nil {
		u.nl.Close()
	}
}

// openUplink creates the uplink TUN in the current network namespace, sets
// its MTU, brings it up and routes the podCIDRs to it (or takes the
// configured device as it is). On error nothing is left behind.
func openUplink(cfg UplinkConfig, mtu int, podCIDRs []netip.Prefix, nodeIPs []netip.Addr) (*Uplink, error) {
	if cfg.Device != nil {
		name := cfg.Name
		if name == "" {
			name = "uplink"
		}
		return &Uplink{dev: cfg.Device, name: name}, nil
	}
	name := cfg.Name
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
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: route.IPNet(p), Scope: netlink.SCOPE_LINK}
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
	return &Uplink{dev: dev, name: name, index: l.Attrs().Index, nl: nl}, nil
}

// probe returns the uplink's live state for readiness: an operator can set
// podr0 down, or delete it, under a running node.
func (u *Uplink) probe() error {
	if u.nl == nil {
		return nil
	}
	l, err := u.nl.LinkByIndex(u.index)
	if err != nil {
		return fmt.Errorf("uplink %s gone: %w", u.name, err)
	}
	a := l.Attrs()
	if a.Name != u.name {
		return fmt.Errorf("uplink %s gone (index %d is now %s)", u.name, u.index, a.Name)
	}
	if a.Flags&net.FlagUp == 0 {
		return fmt.Errorf("uplink %s is down", u.name)
	}
	return nil
}

// routeForeignAddr routes a to the uplink TUN on the host, after checking
// that no interface of the host has it (an address the node stands in
// for, such as a SNAT address).
func (u *Uplink) routeForeignAddr(a netip.Addr) error {
	if u.nl == nil {
		return nil // a handed-in device: its owner routes
	}
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	have, err := u.nl.AddrList(nil, fam)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, h := range have {
		if ha, ok := netip.AddrFromSlice(h.IP); ok && ha.Unmap() == a {
			return fmt.Errorf("snat-addr %s is assigned to this host (interface index %d); want an address routed to the node but not owned by it", a, h.LinkIndex)
		}
	}
	r := &netlink.Route{LinkIndex: u.index, Dst: route.IPNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
	if err := u.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", a, u.name, err)
	}
	return nil
}
