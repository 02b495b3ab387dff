package node

// Backends: how a node's packets for another node's podCIDR reach that
// node. udp and vxlan (backend_underlay.go) are router/underlay's batched
// UDP encapsulations, wireguard (backend_wireguard.go) userspace
// WireGuard, host-gw (backend_hostgw.go) host routes with no
// encapsulation; each one file that implements Backend and registers
// itself.

import (
	"fmt"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/underlay"
)

// Peer is another node as the backends know it: its name, underlay
// endpoint, vxlan VTEP MAC and podCIDRs.
type Peer = underlay.Peer

// Backend is a node's underlay: it carries packets routed to a peer's
// podCIDR to that peer, and hands the node what its peers send.
//
// RxDevice is the port every peer's packets arrive on (nil: the backend
// delivers through the peer devices, or through the host); the node
// attaches it once, at New. SetPeers replaces the peer table as a whole
// (receivers see the old or the new table, never a mix) and must leave the
// previous table in force when it fails; PeerDevice then returns the
// device that sends to one listed peer (the node attaches one engine port
// per peer; the device stays valid until the peer leaves the table). MTU is
// the largest inner packet a peer device takes; LocalAddr the endpoint
// peers send to; Announce what the node publishes for its peers (Node
// annotations). Stats and PeerStats are the counters, PeerStats false for
// a name not in the table. Close closes the socket and every device;
// the node calls it once, after the engine closed its ports. All methods
// are safe for concurrent use.
type Backend interface {
	RxDevice() link.Device
	SetPeers(peers []Peer) error
	Peers() []Peer
	PeerDevice(name string) link.Device
	MTU() int
	LocalAddr() netip.AddrPort
	Announce() Announcement
	Stats() underlay.Stats
	PeerStats(name string) (underlay.PeerStats, bool)
	Close() error
}

// Announcement is what a node tells its peers about its underlay.
type Announcement struct {
	// Backend is the kind's name.
	Backend string
	// Endpoint is where peers send to.
	Endpoint netip.AddrPort
	// VNI and VTEPMAC are vxlan's (zero for the others).
	VNI     uint32
	VTEPMAC packet.MAC
	// PublicKey is wireguard's (zero for the others).
	PublicKey Key
}

// Key is a WireGuard key (GenerateKey, PublicKey, underlay.ParseKey).
type Key = underlay.Key

// UnderlayConfig configures a node's backend. The zero value means none:
// a single node without peers.
type UnderlayConfig struct {
	// Backend is the kind (a registered name: udp, vxlan); "" means none.
	Backend string
	// Listen is the local underlay address and port (required with a
	// backend): the node's address peers send to. Port 0 lets the kernel
	// pick one (the lab).
	Listen netip.AddrPort
	// VNI and VTEPMAC are vxlan's (defaults: 1, derived from Listen).
	VNI     uint32
	VTEPMAC packet.MAC
	// PrivateKey is the node's WireGuard private key (required by the
	// wireguard backend, which checks it; GenerateKey makes one).
	PrivateKey Key
	// MTU is the underlay MTU (default: Interface's, else the MTU of the
	// interface holding Listen's address, else 1500); Interface names that
	// interface.
	MTU       int
	Interface string
	// DirectRouting (vxlan): peers on a subnet of the underlay interface
	// are reached through host routes, unencapsulated (flannel's vxlan
	// DirectRouting; backend_hostgw.go).
	DirectRouting bool
	// Peers is a static peer set applied by Start (optional; a control
	// plane replaces it through SetPeers).
	Peers []Peer
}

func (u *UnderlayConfig) validate() error {
	if u.Backend == "" {
		if len(u.Peers) > 0 {
			return configErr("peers: need an underlay backend")
		}
		return nil
	}
	if _, ok := backendKind(u.Backend); !ok {
		return configErr("backend %s: want one of %s", u.Backend, strings.Join(BackendNames(), ", "))
	}
	if !u.Listen.IsValid() {
		return configErr("underlay address: required with backend %s (this node's underlay IP:port)", u.Backend)
	}
	if u.Listen.Addr().Zone() != "" || u.Listen.Addr().Is4In6() {
		return configErr("underlay address %s: want a plain IP and a port", u.Listen)
	}
	if u.MTU != 0 && (u.MTU < 576 || u.MTU > 65535) {
		return configErr("underlay mtu %d: out of range 576..65535", u.MTU)
	}
	return nil
}

// BackendKind is one registered kind of backend.
type BackendKind struct {
	Name string
	// Overhead is what the backend adds to each packet on the underlay
	// link (outer headers), over IPv6 when ipv6.
	Overhead func(ipv6 bool) int
	// DefaultPort is the kind's well-known UDP port (0: none).
	DefaultPort uint16
	// New opens the backend.
	New func(cfg UnderlayConfig, log *zap.Logger) (Backend, error)
}

var backendKinds = registry[string, BackendKind]{what: "backend"}

// RegisterBackend adds a kind of backend (typically from an init function
// in the kind's own file). It panics when the name is empty or taken.
func RegisterBackend(k BackendKind) {
	if k.Name == "" || k.New == nil || k.Overhead == nil {
		panic("node: RegisterBackend: name, Overhead and New are required")
	}
	backendKinds.add(k.Name, k)
}

func backendKind(name string) (BackendKind, bool) { return backendKinds.get(name) }

// BackendNames returns the registered backends, sorted.
func BackendNames() []string { return backendKinds.names() }

// LookupBackend returns the registered kind called name.
func LookupBackend(name string) (BackendKind, error) {
	k, ok := backendKind(name)
	if !ok {
		return BackendKind{}, fmt.Errorf("backend %q: want one of %s", name, strings.Join(BackendNames(), ", "))
	}
	return k, nil
}

// PodMTU is the pod MTU rule, the one place it is written: the underlay
// MTU less the backend's overhead (over IPv6 when ipv6), so that no pod
// packet needs fragmenting or PMTUD on the underlay, and never below
// IPv6's minimum of 1280.
func PodMTU(underlayMTU int, k BackendKind, ipv6 bool) int {
	return max(underlayMTU-k.Overhead(ipv6), 1280)
}

func openBackend(cfg UnderlayConfig, log *zap.Logger) (Backend, error) {
	k, err := LookupBackend(cfg.Backend)
	if err != nil {
		return nil, err
	}
	return k.New(cfg, log)
}
