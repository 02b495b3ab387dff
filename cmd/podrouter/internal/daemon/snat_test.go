package daemon

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
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

func TestCheckForwarding(t *testing.T) {
	dir := t.TempDir()
	v4, v6 := filepath.Join(dir, "ip_forward"), filepath.Join(dir, "forwarding")
	old4, old6 := ipv4ForwardSysctl, ipv6ForwardSysctl
	ipv4ForwardSysctl, ipv6ForwardSysctl = v4, v6
	t.Cleanup(func() { ipv4ForwardSysctl, ipv6ForwardSysctl = old4, old6 })
	write := func(p, v string) {
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(v4, "0\n")
	write(v6, "1\n")
	if err := checkForwarding(false); err == nil || !strings.Contains(err.Error(), "net.ipv4.ip_forward is off") {
		t.Fatalf("ip_forward=0: %v", err)
	}
	write(v4, "1\n")
	if err := checkForwarding(true); err != nil {
		t.Fatal(err)
	}
	write(v6, "0\n")
	if err := checkForwarding(false); err != nil {
		t.Fatalf("IPv6 forwarding checked without an IPv6 SNAT address: %v", err)
	}
	if err := checkForwarding(true); err == nil || !strings.Contains(err.Error(), "net.ipv6.conf.all.forwarding") {
		t.Fatalf("forwarding=0: %v", err)
	}
}

func TestSNATConntrackList(t *testing.T) {
	snat, pod, pod2, remote := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("192.0.2.1")
	t0 := time.Now()
	tab, err := conntrack.New(conntrack.Config{SNAT: []conntrack.SNATAddr{{Addr: snat}}})
	if err != nil {
		t.Fatal(err)
	}
	s := &snatEgress{table: tab, t0: t0}
	k := conntrack.MakeTuple(packet.ProtoTCP, netip.AddrPortFrom(pod, 40000), netip.AddrPortFrom(remote, 80))
	r, err := tab.Track(k, packet.TCPFlagSYN, snat, tab.Now())
	if err != nil {
		t.Fatal(err)
	}
	k2 := conntrack.MakeTuple(packet.ProtoUDP, netip.AddrPortFrom(pod2, 5353), netip.AddrPortFrom(remote, 53))
	if _, err := tab.Track(k2, 0, snat, tab.Now()); err != nil {
		t.Fatal(err)
	}
	names := map[netip.Addr]string{pod: "c1/eth0"}
	out := s.conntrack(api.Conntrack{Egress: "snat"}, []netip.Addr{pod}, 10, names)
	if len(out.Flows) != 1 || out.Truncated {
		t.Fatalf("flows %+v truncated %v, want pod's one", out.Flows, out.Truncated)
	}
	f := out.Flows[0]
	if f.Proto != "tcp" || f.Src != k.Src() || f.Dst != k.Dst() || f.ReplySrc != k.Dst() ||
		f.ReplyDst != netip.AddrPortFrom(snat, r.NATPort) || f.State != "syn-sent" || f.Pod != "c1/eth0" {
		t.Fatalf("flow %+v", f)
	}
	if d := f.Expires.Sub(t0); d < 119*time.Second || d > 121*time.Second {
		t.Fatalf("expires %v after the table's start, want SYN_SENT's 120s", d)
	}
	if out.Stats == nil || out.Stats.Flows != 2 || out.Stats.Inserts != 2 {
		t.Fatalf("stats %+v", out.Stats)
	}
	all := s.conntrack(api.Conntrack{}, nil, 1, names)
	if len(all.Flows) != 1 || !all.Truncated {
		t.Fatalf("max 1: %d flows, truncated %v", len(all.Flows), all.Truncated)
	}
	all = s.conntrack(api.Conntrack{}, nil, 10, names)
	if len(all.Flows) != 2 {
		t.Fatalf("%d flows, want 2", len(all.Flows))
	}
	for _, f := range all.Flows {
		if f.Proto == "udp" && f.State != "unreplied" {
			t.Fatalf("udp flow state %q", f.State)
		}
	}
}
