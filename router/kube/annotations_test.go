package kube

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/underlay"
)

var (
	localUDP   = Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")}
	localVXLAN = Local{Backend: BackendVXLAN, Endpoint: netip.MustParseAddrPort("192.0.2.1:8472"), VNI: 1,
		VTEPMAC: packet.MAC{0x0a, 0, 0, 0, 0, 1}}
	localWG = Local{Backend: BackendWireGuard, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PublicKey: underlay.Key{1}}
)

func TestParsePeer(t *testing.T) {
	mac := packet.MAC{0x0a, 0, 0, 0, 0, 2}
	wgKey := underlay.Key{0x42, 0x17}
	cases := []struct {
		name  string
		local Local
		n     NodeInfo
		want  underlay.Peer
		err   error
	}{
		{"podrouter udp", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"},
			Annotations: map[string]string{AnnotBackend: "udp", AnnotEndpoint: "192.0.2.9:9000"}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.9:9000"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
				NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}}, nil},
		{"internal ip fallback", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24", "fd00:1::/64"}, InternalIPs: []string{"fd00::2", "192.0.2.2"},
			Annotations: map[string]string{AnnotBackend: "udp"}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.2:8285"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:1::/64")},
				NodeAddrs: []netip.Addr{netip.MustParseAddr("fd00::2")}}, nil}, // the underlay address is not repeated
		{"node addrs: internal ips, deduplicated, invalid ones left out", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2", "192.0.2.5", "junk", "192.0.2.5", "0.0.0.0"},
			Annotations: map[string]string{AnnotBackend: "udp"}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.2:8285"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
				NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}}, nil},
		{"podrouter vxlan", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"},
			Annotations: map[string]string{AnnotBackend: "vxlan", AnnotEndpoint: "192.0.2.2:8472", AnnotVNI: "1", AnnotVTEPMAC: mac.String()}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.2:8472"), VTEPMAC: mac, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}, nil},
		{"flannel vxlan", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.7"},
			Annotations: map[string]string{FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, FlannelPublicIP: "192.0.2.3", FlannelKubeSubnetManager: "true"}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.3:8472"), AnySourcePort: true, VTEPMAC: mac, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
				NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.7")}}, nil},
		{"flannel no public ip", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.7"},
			Annotations: map[string]string{FlannelBackendType: "vxlan", FlannelBackendData: `{"VtepMAC":"0a:00:00:00:00:02"}`}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.7:8472"), AnySourcePort: true, VTEPMAC: mac, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}, nil},
		{"podrouter wireguard", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"},
			Annotations: map[string]string{AnnotBackend: "wireguard", AnnotEndpoint: "192.0.2.2:51820", AnnotPublicKey: wgKey.String()}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.2:51820"), PublicKey: wgKey, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}, nil},
		{"flannel wireguard", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.7"},
			Annotations: map[string]string{FlannelBackendType: "wireguard", FlannelBackendData: `{"PublicKey":"` + wgKey.String() + `"}`, FlannelPublicIP: "192.0.2.3", FlannelKubeSubnetManager: "true"}},
			underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort("192.0.2.3:51820"), PublicKey: wgKey, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
				NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.7")}}, nil},
		{"wireguard no key", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "wireguard"}}, underlay.Peer{}, ErrBadAnnotation},
		{"wireguard bad key", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "wireguard", AnnotPublicKey: "AAAA"}}, underlay.Peer{}, ErrBadAnnotation},
		{"wireguard zero key", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "wireguard", AnnotPublicKey: underlay.Key{}.String()}}, underlay.Peer{}, ErrBadAnnotation},
		{"wireguard, we vxlan", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "wireguard", AnnotPublicKey: wgKey.String()}}, underlay.Peer{}, ErrIncompatible},
		{"flannel wireguard no key", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{FlannelBackendType: "wireguard", FlannelBackendData: `{}`}}, underlay.Peer{}, ErrBadAnnotation},
		{"flannel wireguard bad json", localWG, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{FlannelBackendType: "wireguard", FlannelBackendData: `{"PublicKey":1}`}}, underlay.Peer{}, ErrBadAnnotation},
		{"flannel wireguard, we vxlan", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{FlannelBackendType: "wireguard", FlannelBackendData: `{"PublicKey":"` + wgKey.String() + `"}`}}, underlay.Peer{}, ErrIncompatible},
		{"no annotations", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}}, underlay.Peer{}, ErrNoAnnotations},
		{"no podcidr", localUDP, NodeInfo{Name: "n", Annotations: map[string]string{AnnotBackend: "udp"}}, underlay.Peer{}, ErrNoPodCIDR},
		{"bad podcidr", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.1/24"}, Annotations: map[string]string{AnnotBackend: "udp"}}, underlay.Peer{}, ErrNoPodCIDR},
		{"two v4 podcidrs", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24", "10.244.3.0/24"}, Annotations: map[string]string{AnnotBackend: "udp"}}, underlay.Peer{}, ErrNoPodCIDR},
		{"no address", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"fd00::1"}, Annotations: map[string]string{AnnotBackend: "udp"}}, underlay.Peer{}, ErrNoAddress},
		{"bad backend", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{AnnotBackend: "gre"}}, underlay.Peer{}, ErrBadAnnotation},
		{"other backend", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{AnnotBackend: "vxlan"}}, underlay.Peer{}, ErrIncompatible},
		{"bad endpoint", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{AnnotBackend: "udp", AnnotEndpoint: "192.0.2.2"}}, underlay.Peer{}, ErrBadAnnotation},
		{"multicast endpoint", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{AnnotBackend: "udp", AnnotEndpoint: "224.0.0.1:1"}}, underlay.Peer{}, ErrBadAnnotation},
		{"v6 endpoint", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{AnnotBackend: "udp", AnnotEndpoint: "[fd00::1]:1"}}, underlay.Peer{}, ErrIncompatible},
		{"vxlan no mac", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "vxlan", AnnotVNI: "1"}}, underlay.Peer{}, ErrBadAnnotation},
		{"vxlan multicast mac", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "vxlan", AnnotVNI: "1", AnnotVTEPMAC: "01:00:5e:00:00:01"}}, underlay.Peer{}, ErrBadAnnotation},
		{"vxlan other vni", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: map[string]string{AnnotBackend: "vxlan", AnnotVNI: "2", AnnotVTEPMAC: mac.String()}}, underlay.Peer{}, ErrIncompatible},
		{"flannel host-gw", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{FlannelBackendType: "host-gw"}}, underlay.Peer{}, ErrIncompatible},
		{"flannel vxlan, we udp", localUDP, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{FlannelBackendType: "vxlan"}}, underlay.Peer{}, ErrIncompatible},
		{"flannel bad json", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":1,`}}, underlay.Peer{}, ErrBadAnnotation},
		{"flannel vni 0", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":0,"VtepMAC":"0a:00:00:00:00:02"}`}}, underlay.Peer{}, ErrBadAnnotation},
		{"flannel bad ip", localVXLAN, NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, Annotations: map[string]string{FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, FlannelPublicIP: "0.0.0.0"}}, underlay.Peer{}, ErrBadAnnotation},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePeer(tc.n, tc.local)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !samePeer(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCheckEndpoint(t *testing.T) {
	peer := func(ep string) underlay.Peer { return underlay.Peer{Name: "n", Addr: netip.MustParseAddrPort(ep)} }
	n := NodeInfo{Name: "n", InternalIPs: []string{"192.0.2.2", "fd00::2"}, ExternalIPs: []string{"198.51.100.2"}}
	for _, tc := range []struct {
		ep string
		ok bool
	}{
		{"192.0.2.2:8285", true},
		{"[fd00::2]:8285", true},
		{"198.51.100.2:8472", true}, // an ExternalIP
		{"192.0.2.3:8285", false},   // someone else's
		{"127.0.0.1:8285", false},
	} {
		err := CheckEndpoint(n, peer(tc.ep))
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrForeignEndpoint)) {
			t.Errorf("%s: err %v, want ok=%v", tc.ep, err, tc.ok)
		}
	}
	if err := CheckEndpoint(NodeInfo{Name: "n"}, peer("192.0.2.2:1")); !errors.Is(err, ErrForeignEndpoint) {
		t.Errorf("node without addresses: %v", err)
	}
}

// TestAnnotationsRoundTrip: what a node publishes, another podrouter node
// parses back to the same peer; and a vxlan node's flannel annotations alone
// (what a flannel node reads) describe it too.
func TestAnnotationsRoundTrip(t *testing.T) {
	other := Local{Backend: BackendVXLAN, Endpoint: netip.MustParseAddrPort("192.0.2.5:8472"), VNI: 1, VTEPMAC: packet.MAC{0x0a, 1, 2, 3, 4, 5}}
	wg := Local{Backend: BackendWireGuard, Endpoint: netip.MustParseAddrPort("192.0.2.5:51820"), PublicKey: underlay.Key{9, 8, 7}}
	for _, l := range []Local{{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.5:8285")}, other, wg} {
		local := map[Backend]Local{BackendUDP: localUDP, BackendVXLAN: localVXLAN, BackendWireGuard: localWG}[l.Backend]
		n := NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, Annotations: l.Annotations()}
		p, err := ParsePeer(n, local)
		if err != nil {
			t.Fatalf("%s: %v", l.Backend, err)
		}
		if p.Addr != l.Endpoint || p.VTEPMAC != l.VTEPMAC || p.PublicKey != l.PublicKey {
			t.Fatalf("%s: got %+v from %v", l.Backend, p, n.Annotations)
		}
	}
	a := other.Annotations()
	flannelOnly := map[string]string{}
	for k, v := range a {
		if len(k) > len(FlannelPrefix) && k[:len(FlannelPrefix)] == FlannelPrefix {
			flannelOnly[k] = v
		}
	}
	if flannelOnly[FlannelBackendType] != "vxlan" || flannelOnly[FlannelBackendData] != `{"VNI":1,"VtepMAC":"0a:01:02:03:04:05"}` ||
		flannelOnly[FlannelPublicIP] != "192.0.2.5" || flannelOnly[FlannelKubeSubnetManager] != "true" {
		t.Fatalf("flannel annotations %v", flannelOnly)
	}
	p, err := ParsePeer(NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, Annotations: flannelOnly}, localVXLAN)
	if err != nil || p.Addr != other.Endpoint || p.VTEPMAC != other.VTEPMAC {
		t.Fatalf("flannel-only: %+v %v", p, err)
	}
	flannelOnly = map[string]string{}
	for k, v := range wg.Annotations() {
		if strings.HasPrefix(k, FlannelPrefix) {
			flannelOnly[k] = v
		}
	}
	if flannelOnly[FlannelBackendType] != "wireguard" || flannelOnly[FlannelBackendData] != `{"PublicKey":"`+wg.PublicKey.String()+`"}` ||
		flannelOnly[FlannelPublicIP] != "192.0.2.5" || flannelOnly[FlannelKubeSubnetManager] != "true" {
		t.Fatalf("flannel wireguard annotations %v", flannelOnly)
	}
	p, err = ParsePeer(NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, Annotations: flannelOnly}, localWG)
	if err != nil || p.Addr != wg.Endpoint || p.PublicKey != wg.PublicKey {
		t.Fatalf("flannel-only wireguard: %+v %v", p, err)
	}
}

// FuzzParsePeer: annotations are untrusted; ParsePeer must never panic, and
// what it accepts must be a peer the underlay takes.
func FuzzParsePeer(f *testing.F) {
	f.Add("10.244.2.0/24", "192.0.2.2", "vxlan", "192.0.2.2:8472", "1", "0a:00:00:00:00:02", "", "", "", false)
	f.Add("10.244.2.0/24", "192.0.2.2", "udp", "192.0.2.2:8285", "", "", "", "", "", false)
	f.Add("10.244.2.0/24", "192.0.2.2", "", "", "", "", "vxlan", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, "192.0.2.3", true)
	f.Add("fd00::/64", "fd00::2", "", "", "", "", "vxlan", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, "", true)
	f.Add("10.244.2.0/24", "", "vxlan", "[::]:1", "16777216", "zz:00:00:00:00:02", "", `{"VNI":-1}`, "x", false)
	f.Fuzz(func(t *testing.T, cidr, ip, backend, endpoint, vni, mac, fbackend, fdata, fip string, useVXLAN bool) {
		a := map[string]string{}
		for k, v := range map[string]string{AnnotBackend: backend, AnnotEndpoint: endpoint, AnnotVNI: vni, AnnotVTEPMAC: mac,
			FlannelBackendType: fbackend, FlannelBackendData: fdata, FlannelPublicIP: fip} {
			if v != "" {
				a[k] = v
			}
		}
		local := localUDP
		if useVXLAN {
			local = localVXLAN
		}
		p, err := ParsePeer(NodeInfo{Name: "n", PodCIDRs: []string{cidr}, InternalIPs: []string{ip}, Annotations: a}, local)
		if err != nil {
			return
		}
		if !p.Addr.IsValid() || p.Addr.Port() == 0 || p.Addr.Addr().Is6() != local.Endpoint.Addr().Is6() || len(p.PodCIDRs) != 1 {
			t.Fatalf("accepted an invalid peer %+v", p)
		}
		if local.Backend == BackendVXLAN && (p.VTEPMAC.IsMulticast() || p.VTEPMAC == packet.MAC{}) {
			t.Fatalf("accepted VTEP MAC %v", p.VTEPMAC)
		}
	})
}

// FuzzParsePeerWireGuard: a wireguard node's key annotations, podrouter's
// and flannel's, are untrusted; what ParsePeer accepts carries a non-zero
// key that round-trips through its base64.
func FuzzParsePeerWireGuard(f *testing.F) {
	key := underlay.Key{0x42}.String()
	f.Add("wireguard", key, "", "")
	f.Add("", "", "wireguard", `{"PublicKey":"`+key+`"}`)
	f.Add("wireguard", "AAAA", "", "")
	f.Add("", "", "wireguard", `{"PublicKey":null}`)
	f.Add("", "", "wireguard", `{"PublicKey":"`+underlay.Key{}.String()+`"}`)
	f.Fuzz(func(t *testing.T, backend, pub, fbackend, fdata string) {
		a := map[string]string{}
		for k, v := range map[string]string{AnnotBackend: backend, AnnotPublicKey: pub, FlannelBackendType: fbackend, FlannelBackendData: fdata} {
			if v != "" {
				a[k] = v
			}
		}
		p, err := ParsePeer(NodeInfo{Name: "n", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"192.0.2.2"}, Annotations: a}, localWG)
		if err != nil {
			return
		}
		if p.PublicKey.IsZero() {
			t.Fatalf("accepted the zero key from %v", a)
		}
		if k, err := underlay.ParseKey(p.PublicKey.String()); err != nil || k != p.PublicKey {
			t.Fatalf("key %v does not round-trip: %v %v", p.PublicKey, k, err)
		}
	})
}

// TestHostGWAnnotations: a host-gw node publishes its address (port 0) in
// podrouter's annotations and flannel's host-gw ones (backend-data null,
// public-ip); both read back as a peer, and a flannel host-gw node's own
// annotations (no backend data at all) too.
func TestHostGWAnnotations(t *testing.T) {
	local := Local{Backend: BackendHostGW, Endpoint: netip.MustParseAddrPort("192.0.2.1:0")}
	l := Local{Backend: BackendHostGW, Endpoint: netip.MustParseAddrPort("192.0.2.5:0")}
	a := l.Annotations()
	if a[AnnotBackend] != "host-gw" || a[AnnotEndpoint] != "192.0.2.5:0" || a[FlannelBackendType] != "host-gw" ||
		a[FlannelBackendData] != "null" || a[FlannelPublicIP] != "192.0.2.5" {
		t.Fatalf("annotations %v", a)
	}
	want := netip.MustParseAddrPort("192.0.2.5:0")
	for name, ann := range map[string]map[string]string{
		"podrouter":            a,
		"flannel":              {FlannelBackendType: "host-gw", FlannelBackendData: "null", FlannelPublicIP: "192.0.2.5", FlannelKubeSubnetManager: "true"},
		"flannel without data": {FlannelBackendType: "host-gw", FlannelPublicIP: "192.0.2.5"},
	} {
		p, err := ParsePeer(NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, InternalIPs: []string{"192.0.2.5"}, Annotations: ann}, local)
		if err != nil || p.Addr != want {
			t.Errorf("%s: %+v, %v; want %v", name, p, err, want)
		}
	}
	// Another backend's node is no host-gw peer, nor the other way round.
	if _, err := ParsePeer(NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, Annotations: a}, localVXLAN); !errors.Is(err, ErrIncompatible) {
		t.Errorf("host-gw node as a vxlan peer: %v", err)
	}
	if _, err := ParsePeer(NodeInfo{Name: "x", PodCIDRs: []string{"10.244.9.0/24"}, Annotations: map[string]string{AnnotBackend: "udp", AnnotEndpoint: "192.0.2.5:0"}}, localUDP); !errors.Is(err, ErrBadAnnotation) {
		t.Errorf("udp endpoint with port 0: %v", err)
	}
}
