package kube

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestParseNetConf(t *testing.T) {
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	v4 := pfx("10.244.0.0/16")
	vxlan := NetConf{Network: v4, Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}
	with := func(f func(*NetConf)) NetConf { n := vxlan; f(&n); return n }
	const net = `"Network":"10.244.0.0/16",`
	// Accepted configurations: what they parse to, and the keys warned
	// about (each once).
	ok := []struct {
		name string
		in   string
		want NetConf
		warn []string
	}{
		{"flannel default", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, vxlan, nil},
		{"udp", `{` + net + `"Backend":{"Type":"udp","Port":9000},"MTU":1400,"masquerade":false}`,
			NetConf{Network: v4, Backend: BackendUDP, Port: 9000, MTU: 1400}, nil},
		{"no backend", `{"Network":"10.244.0.0/16"}`, vxlan, nil},
		{"null backend", `{` + net + `"Backend":null}`, vxlan, nil},
		{"type case", `{` + net + `"Backend":{"Type":"VXLAN"}}`, vxlan, nil},
		{"key case as flannel's json", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":7}}`, with(func(n *NetConf) { n.VNI = 7 }), nil},
		{"dual stack vni", `{` + net + `"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","VNI":42}}`,
			with(func(n *NetConf) { n.IPv6Network, n.VNI = pfx("fd00:10:244::/56"), 42 }), nil},
		{"IPv6Network without EnableIPv6", `{` + net + `"IPv6Network":"fd00:10:244::/56"}`,
			with(func(n *NetConf) { n.IPv6Network = pfx("fd00:10:244::/56") }), []string{"EnableIPv6"}},
		{"EnableIPv6 false", `{` + net + `"EnableIPv6":false,"IPv6Network":"fd00:10:244::/56"}`, vxlan, nil},
		{"EnableIPv4 true", `{` + net + `"EnableIPv4":true}`, vxlan, nil},
		{"v6 only", `{"EnableIPv4":false,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}`,
			NetConf{IPv6Network: pfx("fd00::/48"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}, nil},
		{"EnableNFTables false", `{` + net + `"EnableNFTables":false}`, vxlan, []string{"EnableNFTables"}},
		{"EnableNFTables true", `{` + net + `"EnableNFTables":true}`, vxlan, []string{"EnableNFTables"}},
		{"subnets", `{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}`,
			NetConf{Network: pfx("10.0.0.0/8"), SubnetLen: 20, SubnetMin: ip("10.10.0.0"), SubnetMax: ip("10.99.0.0"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}, nil},
		{"subnet min on default /24", `{` + net + `"SubnetMin":"10.244.10.0"}`, with(func(n *NetConf) { n.SubnetMin = ip("10.244.10.0") }), nil},
		{"ipv6 subnets", `{` + net + `"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:0:0:10::","IPv6SubnetMax":"fd00:0:0:ff::"}`,
			with(func(n *NetConf) {
				n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax = pfx("fd00::/48"), 64, ip("fd00:0:0:10::"), ip("fd00:0:0:ff::")
			}), nil},
		{"disabled family's subnets dropped", `{` + net + `"EnableIPv4":false,"SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00::/48"}`,
			NetConf{IPv6Network: pfx("fd00::/48"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}, nil},
		{"backend mtu", `{` + net + `"Backend":{"Type":"vxlan","MTU":9000}}`, with(func(n *NetConf) { n.UnderlayMTU = 9000 }), nil},
		{"vxlan flannel keys", `{` + net + `"Backend":{"Type":"vxlan","Port":4789,"VNI":4096,"GBP":false,"DirectRouting":true,"Learning":false,"MacPrefix":"0E-2A"}}`,
			with(func(n *NetConf) { n.Port, n.VNI, n.DirectRouting = 4789, 4096, true }), []string{"Backend.GBP", "Backend.Learning", "Backend.MacPrefix"}},
		{"host-gw", `{` + net + `"Backend":{"Type":"host-gw"}}`, NetConf{Network: v4, Backend: BackendHostGW, Masquerade: true}, nil},
		{"host-gw direct routing", `{` + net + `"Backend":{"Type":"host-gw","DirectRouting":true}}`, NetConf{Network: v4, Backend: BackendHostGW, Masquerade: true}, nil},
		{"udp direct routing", `{` + net + `"Backend":{"Type":"udp","DirectRouting":true}}`, NetConf{Network: v4, Backend: BackendUDP, Port: 8285, Masquerade: true}, []string{"Backend.DirectRouting"}},
		{"gbp true", `{` + net + `"Backend":{"Type":"vxlan","GBP":true}}`, vxlan, []string{"Backend.GBP"}},
		{"wireguard", `{` + net + `"Backend":{"Type":"wireguard"}}`,
			NetConf{Network: v4, Backend: BackendWireGuard, Port: 51820, Masquerade: true}, nil},
		{"flannel wireguard keys", `{` + net + `"Backend":{"Type":"wireguard","ListenPort":51900,"ListenPortV6":51901,"PSK":"","MTU":1420,"Mode":"separate","PersistentKeepaliveInterval":25}}`,
			NetConf{Network: v4, Backend: BackendWireGuard, Port: 51900, UnderlayMTU: 1420, Masquerade: true},
			[]string{"Backend.ListenPortV6", "Backend.Mode", "Backend.PersistentKeepaliveInterval"}},
		{"udp with other backends' keys", `{` + net + `"Backend":{"Type":"udp","VNI":2,"ListenPort":1,"PSK":"x","Mode":"auto","GBP":true,"UDPEncap":true,"ESPProposal":"x","AccessKeyID":"a","AccessKeySecret":"s"}}`,
			NetConf{Network: v4, Backend: BackendUDP, Port: 8285, Masquerade: true},
			[]string{"Backend.ListenPort", "Backend.VNI", "Backend.GBP", "Backend.PSK", "Backend.Mode", "Backend.UDPEncap", "Backend.ESPProposal", "Backend.AccessKeyID", "Backend.AccessKeySecret"}},
		{"flannel's configuration.md example", `{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}`,
			NetConf{Network: pfx("10.0.0.0/8"), SubnetLen: 20, SubnetMin: ip("10.10.0.0"), SubnetMax: ip("10.99.0.0"), Backend: BackendUDP, Port: 7890, Masquerade: true}, nil},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, warns, err := parseNetConf([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			var keys []string
			for _, w := range warns {
				keys = append(keys, w.Key)
				if w.Reason == "" {
					t.Errorf("warning %s without a reason", w.Key)
				}
			}
			if !slices.Equal(keys, tc.warn) {
				t.Fatalf("warnings %v, want one each for %v", warns, tc.warn)
			}
		})
	}
	bad := []struct{ name, in, field string }{
		{"no network", `{}`, "Network"},
		{"bad network", `{"Network":"10.244.0.1/16"}`, "Network"},
		{"v6 as network", `{"Network":"fd00::/48"}`, "Network"},
		{"tiny network", `{"Network":"10.244.0.0/30"}`, "Network"},
		{"bad v6", `{"IPv6Network":"10.0.0.0/8"}`, "IPv6Network"},
		{"bad disabled network", `{"EnableIPv4":false,"Network":"x","EnableIPv6":true,"IPv6Network":"fd00::/48"}`, "Network"},
		{"EnableIPv4 without Network", `{"EnableIPv4":true,"EnableIPv6":true,"IPv6Network":"fd00::/48"}`, "Network"},
		{"EnableIPv6 without IPv6Network", `{` + net + `"EnableIPv6":true}`, "IPv6Network"},
		{"both families off", `{` + net + `"EnableIPv4":false}`, "Network"},
		{"EnableIPv4 type", `{` + net + `"EnableIPv4":"yes"}`, "EnableIPv4"},
		{"EnableNFTables type", `{` + net + `"EnableNFTables":"no"}`, "EnableNFTables"},
		{"SubnetLen too long", `{` + net + `"SubnetLen":31}`, "SubnetLen 31"},
		{"SubnetLen too short", `{` + net + `"SubnetLen":17}`, "SubnetLen 17"},
		{"SubnetLen type", `{` + net + `"SubnetLen":"24"}`, "SubnetLen"},
		{"SubnetMin outside", `{` + net + `"SubnetMin":"10.245.0.0"}`, "SubnetMin 10.245.0.0"},
		{"SubnetMin unaligned", `{` + net + `"SubnetMin":"10.244.1.128"}`, "SubnetMin 10.244.1.128"},
		{"SubnetMin unaligned to SubnetLen", `{` + net + `"SubnetLen":20,"SubnetMin":"10.244.1.0"}`, "SubnetMin 10.244.1.0"},
		{"SubnetMax not an address", `{` + net + `"SubnetMax":"ten"}`, "SubnetMax"},
		{"SubnetMax v6", `{` + net + `"SubnetMax":"fd00::"}`, "SubnetMax"},
		{"SubnetMax below SubnetMin", `{` + net + `"SubnetMin":"10.244.9.0","SubnetMax":"10.244.8.0"}`, "SubnetMax 10.244.8.0"},
		{"SubnetLen without Network", `{"EnableIPv6":true,"IPv6Network":"fd00::/48","SubnetLen":24}`, "SubnetLen"},
		{"IPv6SubnetLen", `{` + net + `"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}`, "IPv6SubnetLen 127"},
		{"IPv6SubnetMin", `{` + net + `"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}`, "IPv6SubnetMin"},
		{"IPv6SubnetMax without IPv6Network", `{` + net + `"IPv6SubnetMax":"fd00::"}`, "IPv6SubnetMax"},
		{"experimental backend", `{` + net + `"Backend":{"Type":"ipsec"}}`, "Backend.Type"},
		{"port", `{` + net + `"Backend":{"Type":"udp","Port":70000}}`, "Backend.Port 70000"},
		{"vni range", `{` + net + `"Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI"},
		{"vni zero", `{` + net + `"Backend":{"Type":"vxlan","VNI":0}}`, "Backend.VNI"},
		{"backend mtu", `{` + net + `"Backend":{"Type":"vxlan","MTU":100}}`, "Backend.MTU 100"},
		{"both mtus", `{` + net + `"MTU":1400,"Backend":{"Type":"vxlan","MTU":1500}}`, "Backend.MTU"},
		{"mtu", `{` + net + `"MTU":500}`, "MTU"},
		{"wireguard psk", `{` + net + `"Backend":{"Type":"wireguard","PSK":"x"}}`, "Backend.PSK"},
		{"wireguard mode", `{` + net + `"Backend":{"Type":"wireguard","Mode":"both"}}`, "Backend.Mode"},
		{"wireguard ports", `{` + net + `"Backend":{"Type":"wireguard","Port":1,"ListenPort":2}}`, "Backend.ListenPort"},
		{"wireguard listen port", `{` + net + `"Backend":{"Type":"wireguard","ListenPort":-1}}`, "Backend.ListenPort -1"},
		{"GBP type", `{` + net + `"Backend":{"Type":"vxlan","GBP":"on"}}`, "GBP"},
		{"unknown", `{` + net + `"Netwrok":"x"}`, "Netwrok"},
		{"typo of a flannel key", `{` + net + `"EnableNFTable":false}`, "EnableNFTable"},
		{"unknown backend key", `{` + net + `"Backend":{"Type":"vxlan","VIN":2}}`, "VIN"},
		{"masquerade typo", `{` + net + `"masquarade":false}`, "masquarade"},
		{"type", `{"Network":16}`, "Network"},
		{"trailing", `{"Network":"10.244.0.0/16"} {}`, "trailing"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseNetConf([]byte(tc.in))
			if !errors.Is(err, ErrNetConf) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v: want ErrNetConf naming %s", err, tc.field)
			}
		})
	}
}

// TestKubeFlannelNetConf: flannel's own kube-flannel.yml (v0.28.0) ships
// this net-conf.json; it is accepted unchanged, EnableNFTables logged once.
func TestKubeFlannelNetConf(t *testing.T) {
	const kubeFlannel = `{
  "Network": "10.244.0.0/16",
  "EnableNFTables": false,
  "Backend": {
    "Type": "vxlan"
  }
}
`
	core, logs := observer.New(zap.WarnLevel)
	n, err := ParseNetConf([]byte(kubeFlannel), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	want := NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}
	if n != want {
		t.Fatalf("got %+v, want %+v", n, want)
	}
	all := logs.All()
	if len(all) != 1 || all[0].ContextMap()["key"] != "EnableNFTables" || all[0].Level != zap.WarnLevel {
		t.Fatalf("logged %+v, want one warning naming EnableNFTables", all)
	}
}

func TestCheckPodCIDR(t *testing.T) {
	pfx := netip.MustParsePrefix
	n, _, err := parseNetConf([]byte(`{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0",
		"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    string
		want string // "" agrees
	}{
		{"10.244.10.0/24", ""}, {"10.244.20.0/24", ""}, {"10.244.15.0/24", ""},
		{"10.244.9.0/24", "SubnetMin 10.244.10.0"}, {"10.244.21.0/24", "SubnetMax 10.244.20.0"},
		{"10.244.12.0/26", "SubnetLen 24: the node's podCIDR 10.244.12.0/26 is a /26"},
		{"fd00:0:0:5::/64", ""}, {"fd00:0:0:5::/80", "IPv6SubnetLen 64"},
	} {
		err := n.CheckPodCIDR(pfx(c.p))
		if (c.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("CheckPodCIDR(%s) = %v, want %q", c.p, err, c.want)
		}
	}
	if err := (NetConf{Network: pfx("10.244.0.0/16")}).CheckPodCIDR(pfx("10.244.3.0/26")); err != nil {
		t.Errorf("no SubnetLen given: %v", err)
	}
}

func TestLoadNetConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(p, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := LoadNetConf(p, nil)
	if err != nil || n.Backend != BackendUDP || n.Port != 8285 || len(n.ClusterCIDRs()) != 1 {
		t.Fatalf("%+v %v", n, err)
	}
	if _, err := LoadNetConf(p+".absent", nil); !errors.Is(err, ErrNetConf) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file: %v", err)
	}
}
