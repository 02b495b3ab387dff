// Package cni is the podrouter CNI plugin's logic, as plain functions that
// cmd/podrouter-cni hands to skel.PluginMainFuncs (spec 1.0.0 and 1.1.0).
//
//	ADD:   config ─► daemon status (podCIDRs, gateway, MTU) ─► IPAM ADD (host-local,
//	       ranges filled in from the podCIDRs) ─► pod netns: lo up, eth0 = persistent
//	       TAP (MAC, MTU, addresses, default routes via the gateway)
//	       ─► daemon attach (the TAP fd by SCM_RIGHTS) ─► result
//	DEL:   netns (CNI_NETNS, else the daemon's record, else prevResult) ─► daemon
//	       detach ─► TAP deleted ─► IPAM DEL; each step tolerates what is gone
//	CHECK: IPAM CHECK ─► interface, addresses, routes ─► the daemon's attachment
//	STATUS: the daemon answers ready (else code 50)
//	GC:    attachments and host-local reservations not in cni.dev/valid-attachments
//	       are detached, their TAPs deleted and their addresses released
//
// Design notes. Node IPAM is kube-controller-manager's (the podCIDR); the
// address within it comes from the standard host-local plugin, which keeps
// its reservations on disk under a lock. The conflist need not name the
// podCIDR: when its ipam section has neither "subnet" nor "ranges", ADD
// fills them in from the daemon (flannel does the same with subnet.env), so
// one conflist serves every node. ADD rolls back through an explicit
// success flag, as the CNI bridge plugin does, undoing only the steps
// that succeeded (an interface of the same name that was there before is
// not ADD's to delete). Main turns a panic into a CNI error: a crashed
// plugin's exit 2 and stack trace leave the runtime retrying forever.
package cni

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/packet"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"1.0.0", "1.1.0"}

// NetConf is the plugin's network configuration (the conflist entry).
type NetConf struct {
	types.PluginConf
	// Socket is the daemon's API socket (default api.DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// MTU of the pod interface (default: the daemon's --mtu).
	MTU int `json:"mtu,omitempty"`
	// RuntimeConfig carries the "mac" and "portMappings" capabilities.
	RuntimeConfig struct {
		MAC          string           `json:"mac,omitempty"`
		PortMappings []cniPortMapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitzero"`

	// mac is RuntimeConfig.MAC, validated (zero: derive from the IPv4
	// address).
	mac packet.MAC
	// portMappings are RuntimeConfig.PortMappings, validated.
	portMappings []api.PortMapping
}

// cniPortMapping is one entry of the portMappings capability, as the
// runtime writes it (kubelet: one per container port with a hostPort).
type cniPortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// parsePortMapping validates m: ports in 1..65535, protocol tcp or udp
// (any case; default tcp), host IP empty or an address.
func parsePortMapping(m cniPortMapping) (api.PortMapping, error) {
	if m.HostPort < 1 || m.HostPort > 65535 || m.ContainerPort < 1 || m.ContainerPort > 65535 {
		return api.PortMapping{}, fmt.Errorf("ports %d->%d: want 1..65535", m.HostPort, m.ContainerPort)
	}
	pm := api.PortMapping{HostPort: uint16(m.HostPort), ContainerPort: uint16(m.ContainerPort), Protocol: strings.ToLower(m.Protocol)}
	if pm.Protocol == "" {
		pm.Protocol = "tcp"
	}
	if m.HostIP != "" {
		a, err := netip.ParseAddr(m.HostIP)
		if err != nil {
			return api.PortMapping{}, fmt.Errorf("host IP %q: %w", m.HostIP, err)
		}
		if a.IsUnspecified() {
			a = netip.Addr{} // 0.0.0.0 as the runtime may write it: all addresses
		}
		pm.HostIP = a.Unmap()
	}
	if err := pm.Validate(); err != nil {
		return api.PortMapping{}, err
	}
	return pm, nil
}

// ipamConf is what the plugin reads of the ipam section.
type ipamConf struct {
	Type    string          `json:"type"`
	Subnet  string          `json:"subnet"`
	Ranges  json.RawMessage `json:"ranges"`
	DataDir string          `json:"dataDir"`
}

// configError returns a CNI "invalid network config" (7) error naming field.
func configError(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("podrouter-cni: field %s: %s", field, fmt.Sprintf(format, a...)), "")
}

// ParseConf decodes and validates a network configuration. A JSON error is
// a CNI decoding failure (6); a bad field is an invalid network config (7)
// whose message names the field.
func ParseConf(b []byte) (*NetConf, *ipamConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(b, conf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "podrouter-cni: decoding network config", err.Error())
	}
	var raw struct {
		IPAM ipamConf `json:"ipam"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "podrouter-cni: decoding network config", "field ipam: "+err.Error())
	}
	if conf.CNIVersion == "" {
		return nil, nil, configError("cniVersion", "missing")
	}
	if conf.Name == "" {
		return nil, nil, configError("name", "missing")
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	if !filepath.IsAbs(conf.Socket) {
		return nil, nil, configError("socket", "%q is not an absolute path", conf.Socket)
	}
	if conf.MTU != 0 && (conf.MTU < 1280 || conf.MTU > 65535) {
		return nil, nil, configError("mtu", "%d out of range 1280..65535", conf.MTU)
	}
	if raw.IPAM.Type == "" {
		return nil, nil, configError("ipam.type", "missing (host-local is the usual choice)")
	}
	if raw.IPAM.DataDir != "" && !filepath.IsAbs(raw.IPAM.DataDir) {
		return nil, nil, configError("ipam.dataDir", "%q is not an absolute path", raw.IPAM.DataDir)
	}
	if m := conf.RuntimeConfig.MAC; m != "" {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return nil, nil, configError("runtimeConfig.mac", "%q is not a unicast Ethernet address", m)
		}
		copy(conf.mac[:], hw)
	}
	for i, m := range conf.RuntimeConfig.PortMappings {
		pm, err := parsePortMapping(m)
		if err != nil {
			return nil, nil, configError(fmt.Sprintf("runtimeConfig.portMappings[%d]", i), "%v", err)
		}
		conf.portMappings = append(conf.portMappings, pm)
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, nil, types.NewError(types.ErrDecodingFailure, "podrouter-cni: decoding prevResult", err.Error())
		}
	}
	return conf, &raw.IPAM, nil
}

// ipamStdin returns the network config to hand to the IPAM plugin: stdin
// itself when its ipam section names a subnet or ranges, else stdin with
// "ranges" filled in from podCIDRs (one range set per family, the gateway
// being the first address). With no podCIDRs (the daemon is gone and no
// previous result says more) it fills in a placeholder range: host-local
// releases by container ID and only needs a valid config to do so.
func ipamStdin(stdin []byte, ic *ipamConf, podCIDRs []netip.Prefix) ([]byte, error) {
	if ic.Subnet != "" || len(ic.Ranges) > 0 && string(ic.Ranges) != "null" {
		return stdin, nil
	}
	var m map[string]any
	if err := json.Unmarshal(stdin, &m); err != nil {
		return nil, err
	}
	ipamSec, _ := m["ipam"].(map[string]any)
	if ipamSec == nil {
		ipamSec = map[string]any{}
		m["ipam"] = ipamSec
	}
	if len(podCIDRs) == 0 {
		// RFC 5737 documentation space: never handed out, only parsed.
		podCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	}
	var ranges [][]map[string]string
	for _, p := range podCIDRs {
		ranges = append(ranges, []map[string]string{{"subnet": p.String(), "gateway": p.Addr().Next().String()}})
	}
	ipamSec["ranges"] = ranges
	return json.Marshal(m)
}
