package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestSNATConfig(t *testing.T) {
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	base := func(e EgressConfig) Config {
		return Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Egress: e}
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"snat", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7")}), ""},
		{"snat dual stack", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7"), SNATAddr6: ip("2001:db8::7")}), ""},
		{"snat without address", base(EgressConfig{Mode: EgressSNAT}), "snat-addr"},
		{"snat IPv6 as IPv4", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("2001:db8::7")}), "snat-addr"},
		{"snat in cluster", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("10.244.9.9")}), "snat-addr"},
		{"snat loopback", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("127.0.0.2")}), "snat-addr"},
		{"snat6 IPv4", base(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7"), SNATAddr6: ip("::ffff:1.2.3.4")}), "snat-addr6"},
		{"address without snat", base(EgressConfig{Mode: EgressUplink, SNATAddr: ip("198.51.100.7")}), "snat-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want ErrConfig naming %q", err, tc.field)
			}
		})
	}
}
