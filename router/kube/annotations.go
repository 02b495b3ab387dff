package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/underlay"
)

// Node annotations podrouter writes and reads.
const (
	// AnnotationPrefix prefixes podrouter's own annotations.
	AnnotationPrefix = "podrouter.io/"
	// AnnotBackend is the node's backend: "udp", "vxlan" or "wireguard".
	AnnotBackend = AnnotationPrefix + "backend-type"
	// AnnotEndpoint is the node's underlay endpoint, IP:port ([IPv6]:port).
	// Without it, peers use the node's InternalIP and their own port.
	AnnotEndpoint = AnnotationPrefix + "underlay-endpoint"
	// AnnotVNI is the node's VXLAN VNI (vxlan only).
	AnnotVNI = AnnotationPrefix + "vni"
	// AnnotVTEPMAC is the node's VTEP MAC (vxlan only, required there).
	AnnotVTEPMAC = AnnotationPrefix + "vtep-mac"
	// AnnotPublicKey is the node's WireGuard public key in base64
	// (wireguard only, required there).
	AnnotPublicKey = AnnotationPrefix + "public-key"
)

// Flannel's annotations (kube subnet manager; vxlan and wireguard
// backends), read and, by a vxlan or wireguard node, written too.
const (
	FlannelPrefix            = "flannel.alpha.coreos.com/"
	FlannelBackendType       = FlannelPrefix + "backend-type"
	FlannelBackendData       = FlannelPrefix + "backend-data"
	FlannelPublicIP          = FlannelPrefix + "public-ip"
	FlannelBackendV6Data     = FlannelPrefix + "backend-v6-data"
	FlannelPublicIPv6        = FlannelPrefix + "public-ipv6"
	FlannelKubeSubnetManager = FlannelPrefix + "kube-subnet-manager"
)

// readAnnotations are the annotation keys the controller reads; the
// informer's transform keeps only these.
var readAnnotations = []string{
	AnnotBackend, AnnotEndpoint, AnnotVNI, AnnotVTEPMAC, AnnotPublicKey,
	FlannelBackendType, FlannelBackendData, FlannelPublicIP, FlannelBackendV6Data, FlannelPublicIPv6,
	FlannelKubeSubnetManager,
}

// Errors of a node's annotations.
var (
	// ErrNoAnnotations: the node has neither podrouter's nor flannel's
	// annotations (its network agent has not started yet).
	ErrNoAnnotations = errors.New("kube: node has no network annotations")
	// ErrBadAnnotation: an annotation is malformed.
	ErrBadAnnotation = errors.New("kube: bad node annotation")
	// ErrIncompatible: the node's backend cannot talk to ours (another
	// encapsulation, VNI or address family).
	ErrIncompatible = errors.New("kube: incompatible node backend")
	// ErrNoAddress: no underlay address (no annotation, no InternalIP of
	// the underlay's family).
	ErrNoAddress = errors.New("kube: node has no underlay address")
	// ErrNoPodCIDR: the node has no (valid) podCIDR yet.
	ErrNoPodCIDR = errors.New("kube: node has no podCIDR")
	// ErrForeignEndpoint: the node announces an underlay endpoint whose
	// address is none of its own (status.addresses).
	ErrForeignEndpoint = errors.New("kube: node announces an endpoint that is not its address")
)

// Local is this node's underlay identity as the cluster must see it.
type Local struct {
	// Backend is the node's backend (udp, vxlan or wireguard).
	Backend Backend
	// Endpoint is the underlay address and port peers send to.
	Endpoint netip.AddrPort
	// VNI and VTEPMAC are vxlan's.
	VNI     uint32
	VTEPMAC packet.MAC
	// PublicKey is wireguard's (the node's WireGuard public key).
	PublicKey underlay.Key
}

// Annotations returns the annotations that publish l: podrouter's, and for
// vxlan and wireguard also flannel's, so flannel nodes of the same backend
// see this node as a peer.
func (l Local) Annotations() map[string]string {
	m := map[string]string{
		AnnotBackend:  l.Backend.String(),
		AnnotEndpoint: l.Endpoint.String(),
	}
	var data []byte
	switch l.Backend {
	case BackendVXLAN:
		m[AnnotVNI] = strconv.FormatUint(uint64(l.VNI), 10)
		m[AnnotVTEPMAC] = l.VTEPMAC.String()
		data, _ = json.Marshal(flannelVXLANData{VNI: int64(l.VNI), VtepMAC: l.VTEPMAC.String()})
	case BackendWireGuard:
		m[AnnotPublicKey] = l.PublicKey.String()
		data, _ = json.Marshal(flannelWireGuardData{PublicKey: l.PublicKey.String()})
	case BackendHostGW:
		data = []byte("null") // flannel's host-gw publishes no backend data
	default:
		return m
	}
	m[FlannelKubeSubnetManager] = "true"
	m[FlannelBackendType] = l.Backend.String()
	if l.Endpoint.Addr().Is4() {
		m[FlannelBackendData] = string(data)
		m[FlannelPublicIP] = l.Endpoint.Addr().String()
	} else {
		m[FlannelBackendV6Data] = string(data)
		m[FlannelPublicIPv6] = l.Endpoint.Addr().String()
	}
	return m
}

// flannelVXLANData is the backend-data of flannel's vxlan backend.
type flannelVXLANData struct {
	VNI     int64  `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// flannelWireGuardData is the backend-data (and backend-v6-data) of
// flannel's wireguard backend.
type flannelWireGuardData struct {
	PublicKey string `json:"PublicKey"`
}

// NodeInfo is what the controller needs of a Node, before validation.
type NodeInfo struct {
	Name        string
	PodCIDRs    []string
	InternalIPs []string
	ExternalIPs []string
	Annotations map[string]string
}

// maxAnnotation bounds the length of one annotation value we parse.
const maxAnnotation = 1024

// ParsePeer validates a node's podCIDRs, addresses and annotations as a
// peer of local: podrouter's annotations first, else flannel's (vxlan,
// wireguard). The endpoint comes from the annotation (podrouter's endpoint, flannel's
// public-ip with local's port), else from the first InternalIP of the
// underlay's family with local's port. NodeAddrs are the node's other
// InternalIPs (inner sources of its hostNetwork traffic). Every error wraps one of the
// sentinel errors above. It never panics, whatever the input.
func ParsePeer(n NodeInfo, local Local) (underlay.Peer, error) {
	p := underlay.Peer{Name: n.Name}
	v6 := local.Endpoint.Addr().Is6()
	for _, s := range n.PodCIDRs {
		c, err := netip.ParsePrefix(s)
		if err != nil || c != c.Masked() || c.Addr().Zone() != "" || c.Addr().Is4In6() {
			return p, fmt.Errorf("%w: podCIDR %.64q", ErrNoPodCIDR, s)
		}
		if len(p.PodCIDRs) == 2 || (len(p.PodCIDRs) == 1 && p.PodCIDRs[0].Addr().Is4() == c.Addr().Is4()) {
			return p, fmt.Errorf("%w: podCIDRs %.128q: want at most one per family", ErrNoPodCIDR, n.PodCIDRs)
		}
		p.PodCIDRs = append(p.PodCIDRs, c)
	}
	if len(p.PodCIDRs) == 0 {
		return p, ErrNoPodCIDR
	}
	a := n.Annotations
	var addr netip.Addr
	var port uint16
	switch {
	case a[AnnotBackend] != "":
		e, err := ParseBackend(a[AnnotBackend])
		if err != nil {
			return p, fmt.Errorf("%w: %s %.64q", ErrBadAnnotation, AnnotBackend, a[AnnotBackend])
		}
		if e != local.Backend {
			return p, fmt.Errorf("%w: backend %s, ours %s", ErrIncompatible, e, local.Backend)
		}
		if s := a[AnnotEndpoint]; s != "" {
			ap, err := netip.ParseAddrPort(s)
			if err != nil || len(s) > maxAnnotation || (ap.Port() == 0 && e != BackendHostGW) || !validUnicast(ap.Addr()) {
				return p, fmt.Errorf("%w: %s %.64q: want IP:port", ErrBadAnnotation, AnnotEndpoint, s)
			}
			addr, port = ap.Addr(), ap.Port()
		}
		switch e {
		case BackendWireGuard:
			if p.PublicKey, err = parsePublicKey(a[AnnotPublicKey]); err != nil {
				return p, fmt.Errorf("%w: %s: %w", ErrBadAnnotation, AnnotPublicKey, err)
			}
		case BackendVXLAN:
			vni, err := strconv.ParseUint(a[AnnotVNI], 10, 24)
			if err != nil || vni == 0 {
				return p, fmt.Errorf("%w: %s %.64q: want 1..16777215", ErrBadAnnotation, AnnotVNI, a[AnnotVNI])
			}
			if uint32(vni) != local.VNI {
				return p, fmt.Errorf("%w: VNI %d, ours %d", ErrIncompatible, vni, local.VNI)
			}
			if p.VTEPMAC, err = parseMAC(a[AnnotVTEPMAC]); err != nil {
				return p, fmt.Errorf("%w: %s: %w", ErrBadAnnotation, AnnotVTEPMAC, err)
			}
		}
	case a[FlannelBackendType] != "":
		e, err := ParseBackend(a[FlannelBackendType])
		if err != nil || e == BackendUDP {
			return p, fmt.Errorf("%w: flannel backend %.32q (only vxlan, wireguard and host-gw interoperate)", ErrIncompatible, a[FlannelBackendType])
		}
		if e != local.Backend {
			return p, fmt.Errorf("%w: flannel %s node, our backend %s", ErrIncompatible, e, local.Backend)
		}
		dataKey, ipKey := FlannelBackendData, FlannelPublicIP
		if v6 {
			dataKey, ipKey = FlannelBackendV6Data, FlannelPublicIPv6
		}
		s := a[dataKey]
		if (s == "" && e != BackendHostGW) || len(s) > maxAnnotation {
			return p, fmt.Errorf("%w: %s missing or too long", ErrBadAnnotation, dataKey)
		}
		if s := a[ipKey]; s != "" {
			ip, err := netip.ParseAddr(s)
			if err != nil || !validUnicast(ip) {
				return p, fmt.Errorf("%w: %s %.64q: want an IP address", ErrBadAnnotation, ipKey, s)
			}
			addr = ip
		}
		if e == BackendHostGW {
			break // host routes via the node's address: no backend data
		}
		if e == BackendWireGuard {
			var d flannelWireGuardData
			if err := json.Unmarshal([]byte(s), &d); err != nil {
				return p, fmt.Errorf("%w: %s %.64q: want {\"PublicKey\":\"base64\"}", ErrBadAnnotation, dataKey, s)
			}
			if p.PublicKey, err = parsePublicKey(d.PublicKey); err != nil {
				return p, fmt.Errorf("%w: %s PublicKey: %w", ErrBadAnnotation, dataKey, err)
			}
			break
		}
		// A Linux vxlan device hashes the inner flow into its source port.
		p.AnySourcePort = true
		var d struct {
			VNI     *int64  `json:"VNI"`
			VtepMAC *string `json:"VtepMAC"`
		}
		if err := json.Unmarshal([]byte(s), &d); err != nil || d.VtepMAC == nil {
			return p, fmt.Errorf("%w: %s %.64q: want {\"VNI\":N,\"VtepMAC\":\"MAC\"}", ErrBadAnnotation, dataKey, s)
		}
		vni := int64(1) // flannel's default when absent
		if d.VNI != nil {
			vni = *d.VNI
		}
		if vni < 1 || vni > 1<<24-1 {
			return p, fmt.Errorf("%w: %s VNI %d", ErrBadAnnotation, dataKey, vni)
		}
		if uint32(vni) != local.VNI {
			return p, fmt.Errorf("%w: VNI %d, ours %d", ErrIncompatible, vni, local.VNI)
		}
		if p.VTEPMAC, err = parseMAC(*d.VtepMAC); err != nil {
			return p, fmt.Errorf("%w: %s VtepMAC: %w", ErrBadAnnotation, dataKey, err)
		}
	default:
		return p, ErrNoAnnotations
	}
	if !addr.IsValid() {
		for _, s := range n.InternalIPs {
			if ip, err := netip.ParseAddr(s); err == nil && validUnicast(ip) && ip.Is6() == v6 {
				addr = ip
				break
			}
		}
		if !addr.IsValid() {
			return p, ErrNoAddress
		}
	}
	if addr.Is6() != v6 {
		return p, fmt.Errorf("%w: underlay address %s, ours is IPv%d", ErrIncompatible, addr, map[bool]int{false: 4, true: 6}[v6])
	}
	if port == 0 {
		port = local.Endpoint.Port()
	}
	p.Addr = netip.AddrPortFrom(addr, port)
	for _, s := range n.InternalIPs {
		if ip, err := netip.ParseAddr(s); err == nil && validUnicast(ip) && ip != addr && !slices.Contains(p.NodeAddrs, ip) {
			p.NodeAddrs = append(p.NodeAddrs, ip)
		}
	}
	return p, nil
}

// CheckEndpoint returns nil when p's underlay address (as ParsePeer made it
// from n) is one of n's InternalIPs or ExternalIPs, else an error wrapping
// ErrForeignEndpoint. An annotation is written by whoever may patch the
// Node; its addresses are the kubelet's (or the cloud controller's) word.
func CheckEndpoint(n NodeInfo, p underlay.Peer) error {
	for _, ips := range [][]string{n.InternalIPs, n.ExternalIPs} {
		for _, s := range ips {
			if ip, err := netip.ParseAddr(s); err == nil && ip.Unmap() == p.Addr.Addr() {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %s is none of its InternalIPs %.128q or ExternalIPs %.128q", ErrForeignEndpoint, p.Addr.Addr(), n.InternalIPs, n.ExternalIPs)
}

func validUnicast(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && !a.Is4In6() && !a.IsUnspecified() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// parsePublicKey parses a WireGuard public key in base64; the zero key
// (no key) is refused.
func parsePublicKey(s string) (underlay.Key, error) {
	if s == "" {
		return underlay.Key{}, errors.New("missing: want a WireGuard public key in base64")
	}
	if len(s) > 64 {
		return underlay.Key{}, fmt.Errorf("%.16q...: too long for a WireGuard key", s)
	}
	k, err := underlay.ParseKey(s)
	if err != nil {
		return k, err
	}
	if k.IsZero() {
		return k, errors.New("the zero key: want a WireGuard public key")
	}
	return k, nil
}

// parseMAC parses a unicast 48-bit MAC, xx:xx:xx:xx:xx:xx.
func parseMAC(s string) (packet.MAC, error) {
	var m packet.MAC
	if len(s) != 17 || strings.Count(s, ":") != 5 {
		return m, fmt.Errorf("%.64q: want xx:xx:xx:xx:xx:xx", s)
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("%.64q: want xx:xx:xx:xx:xx:xx", s)
	}
	copy(m[:], hw)
	if m.IsMulticast() || m == (packet.MAC{}) {
		return m, fmt.Errorf("%q: want a unicast MAC", s)
	}
	return m, nil
}
