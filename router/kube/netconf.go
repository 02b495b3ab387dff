// Package kube is podrouter's Kubernetes control plane: the cluster network
// configuration (net-conf.json), the Node annotations a node publishes and
// reads, and the node controller that turns the cluster's Nodes into
// peer-table snapshots for the daemon.
//
//	Node informer (trimmed objects) ─► rate-limited workqueue (node names)
//	  ─► parse + validate annotations (bad nodes skipped, logged once)
//	  ─► queue drained: one immutable []underlay.Peer snapshot ─► PeerSink
//	own Node: annotations patched when they differ; NetworkUnavailable=False
//	  once the first snapshot is applied.
//
// Design notes: Node IPAM stays with kube-controller-manager; this package
// only reads spec.podCIDR(s). Flannel's annotation names and net-conf.json
// field names are used where they mean the same, so a podrouter vxlan node
// and a flannel vxlan node form one cluster.
package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/podrouter/podrouter/router/underlay"
)

// ErrNetConf is wrapped by every net-conf.json error.
var ErrNetConf = errors.New("kube: invalid net-conf.json")

// NetConf is the cluster network configuration (the ConfigMap's
// net-conf.json), validated. Field names follow flannel's.
type NetConf struct {
	// Network is the IPv4 cluster CIDR (required unless IPv6Network is set).
	Network netip.Prefix
	// IPv6Network is the IPv6 cluster CIDR (optional).
	IPv6Network netip.Prefix
	// Backend is the underlay backend (default vxlan).
	Backend Backend
	// Port is the underlay UDP port (default: the backend's, 8472, 8285
	// or 51820).
	Port uint16
	// VNI is the VXLAN network identifier (default 1; vxlan only).
	VNI uint32
	// MTU is the pods' MTU; 0 means underlay MTU minus the overhead.
	MTU int
	// Masquerade: SNAT traffic leaving the cluster (default true).
	Masquerade bool
}

// ClusterCIDRs returns the configured cluster CIDRs, IPv4 first.
func (n NetConf) ClusterCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{n.Network, n.IPv6Network} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

type netConfJSON struct {
	Network     string `json:"Network"`
	IPv6Network string `json:"IPv6Network"`
	EnableIPv4  *bool  `json:"EnableIPv4"`
	EnableIPv6  *bool  `json:"EnableIPv6"`
	Backend     *struct {
		Type string `json:"Type"`
		Port *int   `json:"Port"`
		VNI  *int64 `json:"VNI"`
		// ListenPort and PSK are flannel's wireguard fields: ListenPort
		// is taken as Port; a PSK is refused (not supported).
		ListenPort *int   `json:"ListenPort"`
		PSK        string `json:"PSK"`
	} `json:"Backend"`
	MTU        *int  `json:"MTU"`
	Masquerade *bool `json:"masquerade"`
}

// ParseNetConf parses and validates net-conf.json. Unknown fields are
// rejected (a typo must not silently select a default); errors wrap
// ErrNetConf and name the field.
func ParseNetConf(b []byte) (NetConf, error) {
	bad := func(format string, a ...any) (NetConf, error) {
		return NetConf{}, fmt.Errorf("%w: "+format, append([]any{ErrNetConf}, a...)...)
	}
	var j netConfJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return bad("%v", err)
	}
	if dec.More() {
		return bad("trailing data after the object")
	}
	n := NetConf{Backend: BackendVXLAN, Masquerade: true}
	prefix := func(field, s string, v6 bool) (netip.Prefix, error) {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Is6() != v6 || p != p.Masked() || p.Addr().Zone() != "" {
			fam := "IPv4"
			if v6 {
				fam = "IPv6"
			}
			_, err := bad("%s %q: want a masked %s prefix", field, s, fam)
			return netip.Prefix{}, err
		}
		return p, nil
	}
	var err error
	if j.Network != "" && (j.EnableIPv4 == nil || *j.EnableIPv4) {
		if n.Network, err = prefix("Network", j.Network, false); err != nil {
			return NetConf{}, err
		}
		if n.Network.Bits() > 28 {
			return bad("Network %s: too small for node podCIDRs", n.Network)
		}
	}
	if j.IPv6Network != "" && (j.EnableIPv6 == nil || *j.EnableIPv6) {
		if n.IPv6Network, err = prefix("IPv6Network", j.IPv6Network, true); err != nil {
			return NetConf{}, err
		}
		if n.IPv6Network.Bits() > 124 {
			return bad("IPv6Network %s: too small for node podCIDRs", n.IPv6Network)
		}
	}
	if !n.Network.IsValid() && !n.IPv6Network.IsValid() {
		return bad("Network: required (or IPv6Network)")
	}
	if b := j.Backend; b != nil {
		if b.Type != "" {
			e, err := ParseBackend(strings.ToLower(b.Type))
			if err != nil {
				return bad("Backend.Type %q: want udp, vxlan or wireguard", b.Type)
			}
			n.Backend = e
		}
		if b.ListenPort != nil {
			if n.Backend != BackendWireGuard {
				return bad("Backend.ListenPort: only for the wireguard backend (else Port)")
			}
			if b.Port != nil {
				return bad("Backend.ListenPort and Backend.Port: give one")
			}
			b.Port = b.ListenPort
		}
		if b.PSK != "" {
			return bad("Backend.PSK: pre-shared keys are not supported")
		}
		if b.Port != nil {
			if *b.Port < 0 || *b.Port > 65535 {
				return bad("Backend.Port %d: out of range 0..65535", *b.Port)
			}
			n.Port = uint16(*b.Port)
		}
		if b.VNI != nil {
			if n.Backend != BackendVXLAN {
				return bad("Backend.VNI: only for the vxlan backend")
			}
			if *b.VNI < 1 || *b.VNI > 1<<24-1 {
				return bad("Backend.VNI %d: out of range 1..16777215", *b.VNI)
			}
			n.VNI = uint32(*b.VNI)
		}
	}
	if n.Port == 0 {
		n.Port = n.Backend.DefaultPort()
	}
	if n.Backend == BackendVXLAN && n.VNI == 0 {
		n.VNI = underlay.DefaultVNI
	}
	if j.MTU != nil {
		if *j.MTU != 0 && (*j.MTU < 1280 || *j.MTU > 65535) {
			return bad("MTU %d: out of range 1280..65535 (or 0: derived)", *j.MTU)
		}
		n.MTU = *j.MTU
	}
	if j.Masquerade != nil {
		n.Masquerade = *j.Masquerade
	}
	return n, nil
}

// LoadNetConf reads and parses a net-conf.json file.
func LoadNetConf(path string) (NetConf, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return NetConf{}, fmt.Errorf("%w: %w", ErrNetConf, err)
	}
	n, err := ParseNetConf(b)
	if err != nil {
		return NetConf{}, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}
