package conntrack_test

import (
	"net/netip"
	"testing"

	"github.com/podrouter/podrouter/router/conntrack"
)

func TestPolicyTranslates(t *testing.T) {
	if _, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}); err == nil {
		t.Fatal("a policy without node addresses and without HostSockets was accepted")
	}
	p, err := conntrack.NewPolicy(conntrack.PolicyConfig{
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")},
		NodeAddr:     netip.MustParseAddr("192.168.1.10"),
		HostSockets:  true,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	for _, c := range []struct {
		name     string
		src, dst string
		want     bool
	}{
		{"pod to outside", "10.244.1.5", "93.184.216.34", true},
		{"pod to pod", "10.244.1.5", "10.244.2.7", false},
		{"pod to node", "10.244.1.5", "192.168.1.10", false},
		{"node to outside", "192.168.1.10", "93.184.216.34", false},
		{"outside to pod", "93.184.216.34", "10.244.1.5", false},
		{"pod to multicast", "10.244.1.5", "239.1.1.1", false},
		{"pod6 to outside6 without a node IPv6 address", "fd00:10:244:1::5", "2001:db8::1", true},
		{"pod6 to pod6", "fd00:10:244:1::5", "fd00:10:244:2::5", false},
		{"mixed families", "10.244.1.5", "2001:db8::1", false},
	} {
		if got := p.Translates(a(c.src), a(c.dst)); got != c.want {
			t.Errorf("%s: Translates(%s, %s) = %v, want %v", c.name, c.src, c.dst, got, c.want)
		}
	}
	// Masquerade still needs the family's node address.
	if _, ok := p.Masquerade(a("fd00:10:244:1::5"), a("2001:db8::1")); ok {
		t.Error("IPv6 masqueraded without a node IPv6 address")
	}
}
