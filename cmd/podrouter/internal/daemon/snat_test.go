package daemon

import (
	"net/netip"
	"testing"
)

func TestSNATConfig(t *testing.T) {
	ip := netip.MustParseAddr
	checkValidate(t, []configCase{
		{"snat", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7")}), ""},
		{"snat dual stack", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7"), SNATAddr6: ip("2001:db8::7")}), ""},
		{"snat without address", withEgress(EgressConfig{Mode: EgressSNAT}), "snat-addr"},
		{"snat IPv6 as IPv4", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("2001:db8::7")}), "snat-addr"},
		{"snat in cluster", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("10.244.9.9")}), "snat-addr"},
		{"snat loopback", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("127.0.0.2")}), "snat-addr"},
		{"snat6 IPv4", withEgress(EgressConfig{Mode: EgressSNAT, SNATAddr: ip("198.51.100.7"), SNATAddr6: ip("::ffff:1.2.3.4")}), "snat-addr6"},
		{"address without snat", withEgress(EgressConfig{Mode: EgressUplink, SNATAddr: ip("198.51.100.7")}), "snat-addr"},
	}, nil)
}
