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

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/underlay"
)

// ErrNetConf is wrapped by every net-conf.json error.
var ErrNetConf = errors.New("kube: invalid net-conf.json")

// NetConf is the cluster network configuration (the ConfigMap's
// net-conf.json), validated. Field names follow flannel's; every key of
// flannel's net-conf.json is read (README "net-conf.json" lists what each
// one does here).
type NetConf struct {
	// Network is the IPv4 cluster CIDR (required unless IPv6Network is set).
	Network netip.Prefix
	// IPv6Network is the IPv6 cluster CIDR (optional).
	IPv6Network netip.Prefix
	// SubnetLen, SubnetMin and SubnetMax (and their IPv6 twins) are
	// flannel's subnet allocation. Node IPAM is kube-controller-manager's
	// here, so they are what the operator expects of the node's podCIDR:
	// CheckPodCIDR compares. Zero: not given.
	SubnetLen, IPv6SubnetLen int
	SubnetMin, SubnetMax     netip.Addr
	IPv6SubnetMin            netip.Addr
	IPv6SubnetMax            netip.Addr
	// Backend is the underlay backend (default vxlan).
	Backend Backend
	// Port is the underlay UDP port (default: the backend's, 8472, 8285
	// or 51820).
	Port uint16
	// VNI is the VXLAN network identifier (default 1; vxlan only).
	VNI uint32
	// MTU is the pods' MTU; 0 means underlay MTU minus the overhead.
	MTU int
	// UnderlayMTU is flannel's Backend.MTU: the MTU of the underlay (the
	// pods' is this less the encapsulation); 0: the interface's.
	UnderlayMTU int
	// DirectRouting (vxlan, flannel's Backend.DirectRouting): peers on a
	// subnet of the underlay interface are reached through host routes,
	// unencapsulated.
	DirectRouting bool
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

// CheckPodCIDR compares a node's podCIDR with SubnetLen, SubnetMin and
// SubnetMax (or the IPv6 ones): kube-controller-manager assigns podCIDRs
// (--node-cidr-mask-size, --cluster-cidr), and flannel's kube subnet
// manager ignores these keys too, so a mismatch is the operator's to
// know, not a reason to stop. The error names the key, its value and the
// podCIDR; nil when they agree or the keys are not given.
func (n NetConf) CheckPodCIDR(p netip.Prefix) error {
	pre, l, lo, hi := "", n.SubnetLen, n.SubnetMin, n.SubnetMax
	if p.Addr().Is6() {
		pre, l, lo, hi = "IPv6", n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax
	}
	switch {
	case l != 0 && p.Bits() != l:
		return fmt.Errorf("%sSubnetLen %d: the node's podCIDR %s is a /%d (kube-controller-manager's --node-cidr-mask-size decides)", pre, l, p, p.Bits())
	case lo.IsValid() && p.Addr().Less(lo):
		return fmt.Errorf("%sSubnetMin %s: the node's podCIDR %s lies below it", pre, lo, p)
	case hi.IsValid() && hi.Less(p.Addr()):
		return fmt.Errorf("%sSubnetMax %s: the node's podCIDR %s lies above it", pre, hi, p)
	}
	return nil
}

// Warning is a net-conf.json key that is accepted but has no effect here
// (or not flannel's): Key is its path (Backend.GBP), Reason says why.
type Warning struct{ Key, Reason string }

func (w Warning) String() string { return w.Key + ": " + w.Reason }

type netConfJSON struct {
	Network        *string         `json:"Network"`
	IPv6Network    *string         `json:"IPv6Network"`
	EnableIPv4     *bool           `json:"EnableIPv4"`
	EnableIPv6     *bool           `json:"EnableIPv6"`
	EnableNFTables *bool           `json:"EnableNFTables"`
	SubnetLen      *int            `json:"SubnetLen"`
	SubnetMin      *string         `json:"SubnetMin"`
	SubnetMax      *string         `json:"SubnetMax"`
	IPv6SubnetLen  *int            `json:"IPv6SubnetLen"`
	IPv6SubnetMin  *string         `json:"IPv6SubnetMin"`
	IPv6SubnetMax  *string         `json:"IPv6SubnetMax"`
	Backend        json.RawMessage `json:"Backend"`
	// MTU and masquerade are podrouter's own keys.
	MTU        *int  `json:"MTU"`
	Masquerade *bool `json:"masquerade"`
}

// backendJSON holds the keys of flannel's backends (backends.md, and the
// vxlan backend's Learning): vxlan, udp, wireguard, host-gw, and the
// experimental ipip, ipsec and tencent-vpc.
type backendJSON struct {
	Type          string  `json:"Type"`
	Port          *int    `json:"Port"`
	VNI           *int64  `json:"VNI"`
	MTU           *int    `json:"MTU"`
	GBP           *bool   `json:"GBP"`
	Learning      *bool   `json:"Learning"`
	DirectRouting *bool   `json:"DirectRouting"`
	MacPrefix     *string `json:"MacPrefix"`
	// wireguard's.
	ListenPort                  *int    `json:"ListenPort"`
	ListenPortV6                *int    `json:"ListenPortV6"`
	PSK                         *string `json:"PSK"`
	Mode                        *string `json:"Mode"`
	PersistentKeepaliveInterval *int64  `json:"PersistentKeepaliveInterval"`
	// ipsec's and tencent-vpc's (experimental backends).
	UDPEncap        *bool   `json:"UDPEncap"`
	ESPProposal     *string `json:"ESPProposal"`
	AccessKeyID     *string `json:"AccessKeyID"`
	AccessKeySecret *string `json:"AccessKeySecret"`
}

// ParseNetConf parses and validates net-conf.json, and logs each key it
// accepts without honouring (Warning) once on log (nil: not logged).
// Unknown keys are rejected (a typo must not silently select a default);
// keys are matched without regard to case, as flannel's encoding/json
// does. Errors wrap ErrNetConf and name the key.
func ParseNetConf(b []byte, log *zap.Logger) (NetConf, error) {
	n, warns, err := parseNetConf(b)
	if err != nil {
		return NetConf{}, err
	}
	if log != nil {
		for _, w := range warns {
			log.Warn("net-conf.json key accepted but not honoured", zap.String("key", w.Key), zap.String("reason", w.Reason))
		}
	}
	return n, nil
}

// decodeStrict decodes one JSON object into v, refusing unknown keys and
// trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the object")
	}
	return nil
}

// defaultSubnetLen is flannel's SubnetLen rule: /24 (/64) unless the
// network is smaller than a /22 (/62), then two bits longer than it.
func defaultSubnetLen(network netip.Prefix) int {
	if network.Addr().Is4() {
		return max(24, network.Bits()+2)
	}
	return max(64, network.Bits()+2)
}

func parseNetConf(b []byte) (NetConf, []Warning, error) {
	bad := func(format string, a ...any) (NetConf, []Warning, error) {
		return NetConf{}, nil, fmt.Errorf("%w: "+format, append([]any{ErrNetConf}, a...)...)
	}
	var warns []Warning
	warn := func(key, format string, a ...any) { warns = append(warns, Warning{key, fmt.Sprintf(format, a...)}) }
	var j netConfJSON
	if err := decodeStrict(b, &j); err != nil {
		return bad("%v", err)
	}
	n := NetConf{Backend: BackendVXLAN, Masquerade: true}

	// The networks: EnableIPv4 defaults to true, as flannel's. flannel
	// uses IPv6Network only with EnableIPv6: true; podrouter has always
	// used a given IPv6Network, and says so when EnableIPv6 is absent.
	family := func(field string, s *string, v6 bool, maxBits int) (netip.Prefix, error) {
		if s == nil || *s == "" {
			return netip.Prefix{}, nil
		}
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		p, err := netip.ParsePrefix(*s)
		if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() || p != p.Masked() || p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%w: %s %q: want a masked %s prefix", ErrNetConf, field, *s, fam)
		}
		if p.Bits() > maxBits {
			return netip.Prefix{}, fmt.Errorf("%w: %s %s: too small for node podCIDRs (at most a /%d)", ErrNetConf, field, p, maxBits)
		}
		return p, nil
	}
	v4, err := family("Network", j.Network, false, 28)
	if err != nil {
		return NetConf{}, nil, err
	}
	v6, err := family("IPv6Network", j.IPv6Network, true, 124)
	if err != nil {
		return NetConf{}, nil, err
	}
	if j.EnableIPv4 == nil || *j.EnableIPv4 {
		if j.EnableIPv4 != nil && !v4.IsValid() {
			return bad("Network: required with EnableIPv4 true")
		}
		n.Network = v4
	}
	switch {
	case j.EnableIPv6 != nil && *j.EnableIPv6:
		if !v6.IsValid() {
			return bad("IPv6Network: required with EnableIPv6 true")
		}
		n.IPv6Network = v6
	case j.EnableIPv6 == nil && v6.IsValid():
		n.IPv6Network = v6
		warn("EnableIPv6", "absent: flannel ignores IPv6Network unless EnableIPv6 is true, podrouter uses it (dual stack); give EnableIPv6 to say which")
	}
	if !n.Network.IsValid() && !n.IPv6Network.IsValid() {
		return bad("Network: required (or IPv6Network with EnableIPv6)")
	}
	if j.EnableNFTables != nil {
		warn("EnableNFTables", "podrouter uses no packet filter (neither iptables nor nftables): masquerade is done in the daemon")
	}

	// Subnet allocation keys: checked as flannel checks them, against
	// their network whether or not its family is enabled.
	subnets := func(pre string, network netip.Prefix, l *int, lo, hi *string, maxLen int) (int, netip.Addr, netip.Addr, error) {
		fail := func(format string, a ...any) (int, netip.Addr, netip.Addr, error) {
			return 0, netip.Addr{}, netip.Addr{}, fmt.Errorf("%w: "+format, append([]any{ErrNetConf}, a...)...)
		}
		netKey := "Network"
		if pre != "" {
			netKey = "IPv6Network"
		}
		if (l != nil || lo != nil || hi != nil) && !network.IsValid() {
			key := pre + "SubnetLen"
			if l == nil {
				key = pre + "SubnetMin"
				if lo == nil {
					key = pre + "SubnetMax"
				}
			}
			return fail("%s: needs %s", key, netKey)
		}
		bits := defaultSubnetLen(network)
		if l != nil {
			if *l > maxLen || *l < network.Bits()+2 {
				return fail("%sSubnetLen %d: want %d..%d (at least four subnets of %s %s)", pre, *l, network.Bits()+2, maxLen, netKey, network)
			}
			bits = *l
		}
		addr := func(key string, s *string) (netip.Addr, error) {
			if s == nil {
				return netip.Addr{}, nil
			}
			a, err := netip.ParseAddr(*s)
			if err != nil || a.Is4() != network.Addr().Is4() || a.Is4In6() || a.Zone() != "" {
				return netip.Addr{}, fmt.Errorf("%w: %s %q: want an address of %s %s", ErrNetConf, key, *s, netKey, network)
			}
			if !network.Contains(a) {
				return netip.Addr{}, fmt.Errorf("%w: %s %s: not in %s %s", ErrNetConf, key, a, netKey, network)
			}
			if netip.PrefixFrom(a, bits).Masked().Addr() != a {
				return netip.Addr{}, fmt.Errorf("%w: %s %s: not on a /%d boundary (%sSubnetLen)", ErrNetConf, key, a, bits, pre)
			}
			return a, nil
		}
		first, err := addr(pre+"SubnetMin", lo)
		if err != nil {
			return 0, netip.Addr{}, netip.Addr{}, err
		}
		last, err := addr(pre+"SubnetMax", hi)
		if err != nil {
			return 0, netip.Addr{}, netip.Addr{}, err
		}
		if first.IsValid() && last.IsValid() && last.Less(first) {
			return fail("%sSubnetMax %s: below %sSubnetMin %s", pre, last, pre, first)
		}
		given := 0
		if l != nil {
			given = *l
		}
		return given, first, last, nil
	}
	if n.SubnetLen, n.SubnetMin, n.SubnetMax, err = subnets("", v4, j.SubnetLen, j.SubnetMin, j.SubnetMax, 30); err != nil {
		return NetConf{}, nil, err
	}
	if n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax, err = subnets("IPv6", v6, j.IPv6SubnetLen, j.IPv6SubnetMin, j.IPv6SubnetMax, 126); err != nil {
		return NetConf{}, nil, err
	}
	if !n.Network.IsValid() {
		n.SubnetLen, n.SubnetMin, n.SubnetMax = 0, netip.Addr{}, netip.Addr{}
	}
	if !n.IPv6Network.IsValid() {
		n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax = 0, netip.Addr{}, netip.Addr{}
	}

	if len(j.Backend) > 0 && string(j.Backend) != "null" {
		var be backendJSON
		if err := decodeStrict(j.Backend, &be); err != nil {
			return bad("Backend: %v", err)
		}
		ws, err := n.parseBackend(&be)
		if err != nil {
			return NetConf{}, nil, fmt.Errorf("%w: %w", ErrNetConf, err)
		}
		warns = append(warns, ws...)
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
	if n.MTU != 0 && n.UnderlayMTU != 0 {
		return bad("MTU %d and Backend.MTU %d: give one (MTU is the pods', Backend.MTU flannel's underlay MTU)", n.MTU, n.UnderlayMTU)
	}
	if j.Masquerade != nil {
		n.Masquerade = *j.Masquerade
	}
	return n, warns, nil
}

// parseBackend fills n from the Backend object: its type and the keys
// that type honours; the keys of other backends, and the ones podrouter
// has no use for, are warnings.
func (n *NetConf) parseBackend(be *backendJSON) ([]Warning, error) {
	var warns []Warning
	warn := func(key, format string, a ...any) {
		warns = append(warns, Warning{"Backend." + key, fmt.Sprintf(format, a...)})
	}
	if be.Type != "" {
		t := strings.ToLower(be.Type)
		e, err := ParseBackend(t)
		if err != nil {
			return nil, fmt.Errorf("Backend.Type %.32q: want udp, vxlan, wireguard or host-gw", be.Type)
		}
		n.Backend = e
	}
	wg, vx := n.Backend == BackendWireGuard, n.Backend == BackendVXLAN
	other := func(key, owner string) {
		warn(key, "ignored: only flannel's %s backend uses it (backend is %s)", owner, n.Backend)
	}
	port := be.Port
	if be.ListenPort != nil {
		if !wg {
			other("ListenPort", "wireguard")
		} else if be.Port != nil {
			return nil, errors.New("Backend.ListenPort and Backend.Port: give one")
		} else {
			port = be.ListenPort
		}
	}
	if port != nil {
		key := "Port"
		if port == be.ListenPort {
			key = "ListenPort"
		}
		if *port < 0 || *port > 65535 {
			return nil, fmt.Errorf("Backend.%s %d: out of range 0..65535 (0: the backend's default)", key, *port)
		}
		n.Port = uint16(*port)
	}
	if be.VNI != nil {
		if !vx {
			other("VNI", "vxlan")
		} else if *be.VNI < 1 || *be.VNI > 1<<24-1 {
			return nil, fmt.Errorf("Backend.VNI %d: out of range 1..16777215", *be.VNI)
		} else {
			n.VNI = uint32(*be.VNI)
		}
	}
	if be.MTU != nil {
		if *be.MTU != 0 && (*be.MTU < 576 || *be.MTU > 65535) {
			return nil, fmt.Errorf("Backend.MTU %d: out of range 576..65535 (or 0: the interface's)", *be.MTU)
		}
		n.UnderlayMTU = *be.MTU
	}
	if be.GBP != nil {
		if vx {
			warn("GBP", "ignored: podrouter's vxlan neither sends nor reads the Group Based Policy extension")
		} else {
			other("GBP", "vxlan")
		}
	}
	if be.Learning != nil {
		warn("Learning", "ignored: podrouter's vxlan takes peers' VTEP MACs from their Node annotations, never learns them")
	}
	if be.DirectRouting != nil {
		switch {
		case vx:
			n.DirectRouting = *be.DirectRouting
		case n.Backend == BackendHostGW:
			// host-gw is direct routing already.
		default:
			other("DirectRouting", "vxlan (and ipip)")
		}
	}
	if be.MacPrefix != nil {
		warn("MacPrefix", "ignored: flannel uses it on Windows only")
	}
	if be.ListenPortV6 != nil {
		if wg {
			warn("ListenPortV6", "ignored: podrouter runs one WireGuard underlay, on the underlay address's family, for both families")
		} else {
			other("ListenPortV6", "wireguard")
		}
	}
	if be.PSK != nil {
		switch {
		case wg && *be.PSK != "":
			return nil, errors.New("Backend.PSK: pre-shared keys are not supported (podrouter's WireGuard would not protect traffic as the key promises)")
		case !wg:
			other("PSK", "wireguard (or ipsec)")
		}
	}
	if be.Mode != nil {
		switch m := strings.ToLower(*be.Mode); {
		case !wg:
			other("Mode", "wireguard")
		case m != "separate" && m != "auto" && m != "ipv4" && m != "ipv6":
			return nil, fmt.Errorf("Backend.Mode %.32q: want separate, auto, ipv4 or ipv6", *be.Mode)
		default:
			warn("Mode", "ignored: podrouter runs one WireGuard underlay on the underlay address's family for both families (flannel's ipv4/ipv6 modes)")
		}
	}
	if be.PersistentKeepaliveInterval != nil {
		if wg {
			warn("PersistentKeepaliveInterval", "ignored: podrouter's WireGuard sends no persistent keepalives")
		} else {
			other("PersistentKeepaliveInterval", "wireguard")
		}
	}
	for _, k := range []struct {
		key, owner string
		set        bool
	}{{"UDPEncap", "ipsec", be.UDPEncap != nil}, {"ESPProposal", "ipsec", be.ESPProposal != nil},
		{"AccessKeyID", "tencent-vpc", be.AccessKeyID != nil}, {"AccessKeySecret", "tencent-vpc", be.AccessKeySecret != nil}} {
		if k.set {
			other(k.key, k.owner)
		}
	}
	return warns, nil
}

// LoadNetConf reads and parses a net-conf.json file (ParseNetConf).
func LoadNetConf(path string, log *zap.Logger) (NetConf, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return NetConf{}, fmt.Errorf("%w: %w", ErrNetConf, err)
	}
	n, err := ParseNetConf(b, log)
	if err != nil {
		return NetConf{}, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}
