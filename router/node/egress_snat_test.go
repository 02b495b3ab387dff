package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

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
	s := &snatEgress{snat: engine.SNAT{Table: tab}, t0: t0}
	k := conntrack.MakeTuple(packet.ProtoTCP, netip.AddrPortFrom(pod, 40000), netip.AddrPortFrom(remote, 80))
	r, err := tab.Track(k, packet.TCPFlagSYN, snat, tab.Now())
	if err != nil {
		t.Fatal(err)
	}
	k2 := conntrack.MakeTuple(packet.ProtoUDP, netip.AddrPortFrom(pod2, 5353), netip.AddrPortFrom(remote, 53))
	if _, err := tab.Track(k2, 0, snat, tab.Now()); err != nil {
		t.Fatal(err)
	}
	flows, truncated := s.Flows([]netip.Addr{pod}, 10)
	if len(flows) != 1 || truncated {
		t.Fatalf("flows %+v truncated %v, want pod's one", flows, truncated)
	}
	f := flows[0]
	if f.Proto != "tcp" || f.Src != k.Src() || f.Dst != k.Dst() || f.ReplySrc != k.Dst() ||
		f.ReplyDst != netip.AddrPortFrom(snat, r.NATPort) || f.State != "syn-sent" {
		t.Fatalf("flow %+v", f)
	}
	if d := f.Expires.Sub(t0); d < 119*time.Second || d > 121*time.Second {
		t.Fatalf("expires %v after the table's start, want SYN_SENT's 120s", d)
	}
	if st := s.Stats(); st == nil || st.Flows != 2 || st.Inserts != 2 {
		t.Fatalf("stats %+v", st)
	}
	all, truncated := s.Flows(nil, 1)
	if len(all) != 1 || !truncated {
		t.Fatalf("max 1: %d flows, truncated %v", len(all), truncated)
	}
	all, _ = s.Flows(nil, 10)
	if len(all) != 2 {
		t.Fatalf("%d flows, want 2", len(all))
	}
	for _, f := range all {
		if f.Proto == "udp" && f.State != "unreplied" {
			t.Fatalf("udp flow state %q", f.State)
		}
	}
}

// TestNoMasquerade: with masquerade off every mode routes the outside to
// the uplink untranslated (no SNAT on the uplink port, no forwarder), and
// the node refuses to start where the host does not forward.
func TestNoMasquerade(t *testing.T) {
	dir := t.TempDir()
	v4 := filepath.Join(dir, "ip_forward")
	old4 := ipv4ForwardSysctl
	ipv4ForwardSysctl = v4
	t.Cleanup(func() { ipv4ForwardSysctl = old4 })
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	cfg := func(e EgressConfig) Config {
		up, _ := linktest.Pipe(16, 2048, 8)
		e.NoMasquerade = true
		return Config{
			PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
			NodeIPs: []netip.Addr{ip("192.168.1.10")},
			Uplink:  UplinkConfig{Name: "podr0", Device: up},
			Egress:  e, Logger: zaptest.NewLogger(t),
		}
	}
	if err := os.WriteFile(v4, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg(EgressConfig{Mode: EgressUplink})); err == nil || !strings.Contains(err.Error(), "masquerade off: net.ipv4.ip_forward is off") {
		t.Fatalf("ip_forward=0: %v", err)
	}
	if err := os.WriteFile(v4, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// --egress snat needs no --snat-addr with masquerade off: nothing is
	// translated.
	for _, e := range []EgressConfig{{Mode: EgressUplink}, {Mode: EgressSNAT, SNATAddr: ip("198.51.100.7")}, {Mode: EgressSNAT}} {
		t.Run(e.Mode.String(), func(t *testing.T) {
			n, err := New(cfg(e))
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			if n.EgressMode() != EgressUplink || n.Egress().Stats() != nil {
				t.Fatalf("mode %s, stats %+v: want uplink egress, no table", n.EgressMode(), n.Egress().Stats())
			}
			for _, dst := range []string{"93.184.216.34", "192.168.1.10", "198.51.100.7"} {
				nh, ok := n.Engine().Routes().Lookup(ip(dst))
				if !ok || nh.Kind != route.Egress || nh.Port != n.UplinkPort().Index() {
					t.Errorf("%s -> %+v, %v; want the uplink", dst, nh, ok)
				}
			}
			if nh, ok := n.Engine().Routes().Lookup(ip("10.244.7.7")); ok && nh.Kind != route.Unreachable {
				t.Errorf("the cluster's remainder -> %+v, want unreachable", nh)
			}
		})
	}
}
