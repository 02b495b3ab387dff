package kube

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseNetConf(t *testing.T) {
	ok := []struct {
		name string
		in   string
		want NetConf
	}{
		{"flannel default", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}},
		{"udp", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000},"MTU":1400,"masquerade":false}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendUDP, Port: 9000, MTU: 1400}},
		{"no backend", `{"Network":"10.244.0.0/16"}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}},
		{"dual stack vni", `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","VNI":42}}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), Backend: BackendVXLAN, Port: 8472, VNI: 42, Masquerade: true}},
		{"v6 only", `{"EnableIPv4":false,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}`,
			NetConf{IPv6Network: netip.MustParsePrefix("fd00::/48"), Backend: BackendVXLAN, Port: 8472, VNI: 1, Masquerade: true}},
		{"wireguard", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendWireGuard, Port: 51820, Masquerade: true}},
		{"flannel wireguard listen port", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51900}}`,
			NetConf{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: BackendWireGuard, Port: 51900, Masquerade: true}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNetConf([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	bad := []struct{ name, in, field string }{
		{"no network", `{}`, "Network"},
		{"bad network", `{"Network":"10.244.0.1/16"}`, "Network"},
		{"v6 as network", `{"Network":"fd00::/48"}`, "Network"},
		{"tiny network", `{"Network":"10.244.0.0/30"}`, "Network"},
		{"bad v6", `{"IPv6Network":"10.0.0.0/8"}`, "IPv6Network"},
		{"backend", `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`, "Backend.Type"},
		{"port", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}`, "Backend.Port"},
		{"vni udp", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","VNI":2}}`, "Backend.VNI"},
		{"vni range", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI"},
		{"mtu", `{"Network":"10.244.0.0/16","MTU":500}`, "MTU"},
		{"wireguard psk", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"x"}}`, "Backend.PSK"},
		{"listen port vxlan", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","ListenPort":1}}`, "Backend.ListenPort"},
		{"vni wireguard", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","VNI":1}}`, "Backend.VNI"},
		{"unknown", `{"Network":"10.244.0.0/16","Netwrok":"x"}`, "Netwrok"},
		{"type", `{"Network":16}`, "Network"},
		{"trailing", `{"Network":"10.244.0.0/16"} {}`, "trailing"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseNetConf([]byte(tc.in))
			if !errors.Is(err, ErrNetConf) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v: want ErrNetConf naming %s", err, tc.field)
			}
		})
	}
}

func TestLoadNetConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(p, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := LoadNetConf(p)
	if err != nil || n.Backend != BackendUDP || n.Port != 8285 || len(n.ClusterCIDRs()) != 1 {
		t.Fatalf("%+v %v", n, err)
	}
	if _, err := LoadNetConf(p + ".absent"); !errors.Is(err, ErrNetConf) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file: %v", err)
	}
}
