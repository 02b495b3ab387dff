package node

import (
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/route"
)

func TestUplinkEgressRoutes(t *testing.T) {
	cfg := Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	e := &uplinkEgress{cfg: &cfg}
	up := &engine.Port{}
	rs := e.Routes(up)
	if len(rs) != 1 || rs[0].Prefix.String() != "0.0.0.0/0" || rs[0].NextHop.Port != up.Index() {
		t.Fatalf("without node IPs: %v", rs)
	}
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")}
	rs = e.Routes(up)
	if len(rs) != 2 || rs[0].Prefix.String() != "192.168.1.10/32" || rs[1].Prefix.String() != "fd00::10/128" {
		t.Fatalf("with node IPs: %v", rs)
	}
}

func TestConfig(t *testing.T) {
	pfx := netip.MustParsePrefix
	up, _ := linktest.Pipe(1, 2048, 0)
	base := func(f func(*Config)) Config {
		c := Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}}
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"minimal", base(func(*Config) {}), ""},
		{"no podCIDR", Config{}, "pod-cidr"},
		{"podCIDR outside", base(func(c *Config) { c.PodCIDR = pfx("10.9.0.0/24") }), "pod-cidr"},
		{"node IP in cluster", base(func(c *Config) { c.NodeIPs = []netip.Addr{netip.MustParseAddr("10.244.9.9")} }), "node-ip"},
		{"mtu", base(func(c *Config) { c.MTU = 1000 }), "mtu"},
		{"uplink name", base(func(c *Config) { c.Uplink.Name = "a/b" }), "uplink"},
		{"uplink device", base(func(c *Config) { c.Uplink.Device = up }), ""},
		{"egress kind", base(func(c *Config) { c.Egress.Mode = "masquerade" }), "egress"},
		{"snat without snat", base(func(c *Config) {
			c.Egress = EgressConfig{Mode: EgressUplink, SNATAddr: netip.MustParseAddr("192.0.2.1")}
		}), "snat-addr"},
		{"snat address in cluster", base(func(c *Config) {
			c.Egress = EgressConfig{Mode: EgressSNAT, SNATAddr: netip.MustParseAddr("10.244.9.9")}
		}), "snat-addr"},
		{"backend kind", base(func(c *Config) {
			c.Underlay = UnderlayConfig{Backend: "gre", Listen: netip.MustParseAddrPort("127.0.0.1:0")}
		}), "backend"},
		{"backend without address", base(func(c *Config) { c.Underlay = UnderlayConfig{Backend: "udp"} }), "underlay address"},
		{"underlay mtu", base(func(c *Config) {
			c.Underlay = UnderlayConfig{Backend: "udp", Listen: netip.MustParseAddrPort("127.0.0.1:0"), MTU: 100}
		}), "underlay mtu"},
		{"negative flows", base(func(c *Config) { c.Egress = EgressConfig{Mode: EgressUplink, MaxFlows: -1} }), "egress-max-flows -1"},
		// Unset values are said to be missing, never printed as a Go zero
		// value (checked for every case below).
		{"no podCIDR is required", Config{}, "pod-cidr: required"},
		{"unset cluster CIDR", base(func(c *Config) { c.ClusterCIDRs = []netip.Prefix{{}} }), "cluster-cidr: an unset prefix"},
		{"unset node IP", base(func(c *Config) { c.NodeIPs = []netip.Addr{{}} }), "node-ip: an unset address"},
		{"snat without address", base(func(c *Config) { c.Egress = EgressConfig{Mode: EgressSNAT} }), "snat-addr: required with --egress snat"},
		{"unset service CIDR", base(func(c *Config) { c.Services.CIDRs = []netip.Prefix{{}} }), "service-cidr: an unset prefix"},

		{"backend without address names it", base(func(c *Config) { c.Underlay = UnderlayConfig{Backend: "vxlan"} }), "underlay address: required with backend vxlan"},
		// The netstack forwarder's limits mean nothing to another kind.
		{"flow limit with uplink egress", base(func(c *Config) { c.Egress = EgressConfig{Mode: EgressUplink, MaxFlows: 10} }), "egress-max-flows 10: only with --egress netstack (egress is uplink)"},
		{"dial timeout with snat egress", base(func(c *Config) {
			c.Egress = EgressConfig{Mode: EgressSNAT, SNATAddr: netip.MustParseAddr("192.0.2.1"), DialTimeout: time.Second}
		}), "egress-dial-timeout 1s: only with --egress netstack (egress is snat)"},
		{"uplink route with uplink egress", base(func(c *Config) {
			c.Egress = EgressConfig{Mode: EgressUplink, UplinkRoutes: []netip.Prefix{pfx("192.168.0.0/16")}}
		}), "uplink-route [192.168.0.0/16]: only with --egress netstack"},
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
			for _, zero := range []string{"invalid Prefix", "invalid IP", "invalid AddrPort"} {
				if strings.Contains(err.Error(), zero) {
					t.Fatalf("Validate = %v: prints a Go zero value", err)
				}
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	for _, m := range []EgressMode{EgressUplink, EgressSNAT} {
		if got, err := ParseEgressMode(string(m)); err != nil || got != m {
			t.Errorf("ParseEgressMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseEgressMode("masquerade"); err == nil || !strings.Contains(err.Error(), "snat") {
		t.Errorf("ParseEgressMode(masquerade) = %v, want the list of modes", err)
	}
	for _, name := range []string{"udp", "vxlan"} {
		if k, err := LookupBackend(name); err != nil || k.Name != name {
			t.Errorf("LookupBackend(%s) = %v, %v", name, k.Name, err)
		}
	}
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	mustPanic("egress twice", func() { RegisterEgress(EgressKind{Mode: EgressUplink, New: newUplinkEgress}) })
	mustPanic("egress without New", func() { RegisterEgress(EgressKind{Mode: "x"}) })
	mustPanic("backend twice", func() {
		k, _ := LookupBackend("udp")
		RegisterBackend(k)
	})
}

func TestPodMTU(t *testing.T) {
	udp, _ := LookupBackend("udp")
	vxlan, _ := LookupBackend("vxlan")
	for _, tc := range []struct {
		k          BackendKind
		under      int
		v6         bool
		want       int
		wantInner  int
		checkInner bool
	}{
		{udp, 1500, false, 1472, 1472, true},
		{vxlan, 1500, false, 1450, 1450, true},
		{vxlan, 1500, true, 1430, 0, false},
		{vxlan, 1300, false, 1280, 0, false}, // never below IPv6's minimum
		{udp, 9000, false, 8972, 8972, true},
	} {
		if got := PodMTU(tc.under, tc.k, tc.v6); got != tc.want {
			t.Errorf("PodMTU(%d, %s, v6 %v) = %d, want %d", tc.under, tc.k.Name, tc.v6, got, tc.want)
		}
		if !tc.checkInner {
			continue
		}
		// The node gives its pods the same MTU its backend carries.
		n, err := New(Config{
			PodCIDR:  netip.MustParsePrefix("10.244.1.0/24"),
			Underlay: UnderlayConfig{Backend: tc.k.Name, Listen: netip.MustParseAddrPort("127.0.0.1:0"), MTU: tc.under},
			Logger:   zaptest.NewLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		if n.MTU() != tc.wantInner || n.Backend().MTU() != tc.wantInner {
			t.Errorf("%s over %d: node MTU %d, backend %d, want %d", tc.k.Name, tc.under, n.MTU(), n.Backend().MTU(), tc.wantInner)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNewRollback: a node that fails half-way leaves nothing running.
func TestNewRollback(t *testing.T) {
	g0 := runtime.NumGoroutine()
	up, _ := linktest.Pipe(16, 2048, 8)
	_, err := New(Config{
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"),
		Uplink:  UplinkConfig{Name: "podr0", Device: up},
		Egress:  EgressConfig{Mode: EgressSNAT, SNATAddr: netip.MustParseAddr("198.51.100.7")},
		// The underlay cannot bind an address this host does not have.
		Underlay: UnderlayConfig{Backend: "udp", Listen: netip.MustParseAddrPort("192.0.2.1:8285")},
		Logger:   zaptest.NewLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "underlay") {
		t.Fatalf("New = %v, want an underlay error", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > g0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > g0 {
		t.Fatalf("%d goroutines after a failed New, %d before", n, g0)
	}
}

// TestNodeLifecycle: routes from Start, readiness, an idempotent Close.
func TestNodeLifecycle(t *testing.T) {
	up, _ := linktest.Pipe(16, 2048, 8)
	n, err := New(Config{
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.1.10")},
		Uplink:  UplinkConfig{Name: "podr0", Device: up},
		Egress:  EgressConfig{Mode: EgressUplink},
		Logger:  zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Engine().Routes().Lookup(netip.MustParseAddr("192.168.1.10")); ok {
		t.Fatal("routes before Start")
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if nh, ok := n.Engine().Routes().Lookup(netip.MustParseAddr("192.168.1.10")); !ok || nh.Kind != route.Egress || nh.Port != n.UplinkPort().Index() {
		t.Fatalf("node address -> %+v, %v; want the uplink", nh, ok)
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	if n.MTU() != DefaultMTU || n.Egress().Stats() != nil || n.Backend() != nil {
		t.Fatalf("MTU %d, stats %v, backend %v", n.MTU(), n.Egress().Stats(), n.Backend())
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.Ready(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ready after Close: %v", err)
	}
}

// TestAttachIngress: the ingress port is the engine's gateway port, the
// gateway addresses route to it, and a node has one at most.
func TestAttachIngress(t *testing.T) {
	n, err := New(Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, dev := linktest.Pipe(4, 2048, 4)
	p, err := n.AttachIngress(dev)
	if err != nil {
		t.Fatal(err)
	}
	if pc := p.Config(); !pc.Gateway || pc.Kind != engine.KindNetstack || pc.MTU != n.MTU() || pc.Name != IngressPortName {
		t.Fatalf("port config %+v", pc)
	}
	nh, ok := n.Engine().Routes().Lookup(n.Engine().Gateway())
	if !ok || nh.Kind != route.Local || nh.Port != p.Index() {
		t.Fatalf("gateway route %+v %v", nh, ok)
	}
	_, dev2 := linktest.Pipe(4, 2048, 4)
	if _, err := n.AttachIngress(dev2); err == nil {
		t.Fatal("second ingress attached")
	}
}
