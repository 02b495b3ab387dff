package kube

import (
	"fmt"

	"github.com/podrouter/podrouter/router/underlay"
)

// Backend is a node's underlay backend as the cluster names it (net-conf's
// Backend.Type, the backend-type annotations): one of router/node's
// backend kinds. The values of udp and vxlan are underlay.Encap's, so the
// persisted kube state (a number) reads the same as before wireguard.
type Backend uint8

// Backends.
const (
	// BackendUDP is router/underlay's udp encapsulation (flannel's udp).
	BackendUDP = Backend(underlay.EncapUDP)
	// BackendVXLAN is router/underlay's vxlan encapsulation (flannel's
	// vxlan).
	BackendVXLAN = Backend(underlay.EncapVXLAN)
	// BackendWireGuard is router/node's wireguard backend (wire-compatible
	// with flannel's wireguard backend without a pre-shared key).
	BackendWireGuard Backend = 3
	// BackendHostGW is router/node's host-gw backend: host routes to the
	// peers' podCIDRs via their addresses, no encapsulation (flannel's
	// host-gw).
	BackendHostGW Backend = 4
)

// DefaultWireGuardPort is WireGuard's (and flannel's IPv4) port.
const DefaultWireGuardPort = 51820

// String returns the backend's name: udp, vxlan or wireguard.
func (b Backend) String() string {
	switch b {
	case BackendUDP:
		return "udp"
	case BackendVXLAN:
		return "vxlan"
	case BackendWireGuard:
		return "wireguard"
	case BackendHostGW:
		return "host-gw"
	}
	return fmt.Sprintf("Backend(%d)", uint8(b))
}

// ParseBackend parses "udp", "vxlan", "wireguard" or "host-gw".
func ParseBackend(s string) (Backend, error) {
	for _, b := range []Backend{BackendUDP, BackendVXLAN, BackendWireGuard, BackendHostGW} {
		if s == b.String() {
			return b, nil
		}
	}
	return 0, fmt.Errorf("backend %.32q: want udp, vxlan, wireguard or host-gw", s)
}

// DefaultPort is the backend's well-known UDP port: 8285, 8472 or 51820
// (0 for host-gw: no socket).
func (b Backend) DefaultPort() uint16 {
	switch b {
	case BackendHostGW:
		return 0
	case BackendVXLAN:
		return underlay.DefaultVXLANPort
	case BackendWireGuard:
		return DefaultWireGuardPort
	}
	return underlay.DefaultUDPPort
}

func (b Backend) valid() bool { return b >= BackendUDP && b <= BackendHostGW }
