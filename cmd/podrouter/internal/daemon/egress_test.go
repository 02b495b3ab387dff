package daemon

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/route"
)

func TestEgressConfig(t *testing.T) {
	pfx := netip.MustParsePrefix
	checkValidate(t, []configCase{
		{"default netstack", withEgress(EgressConfig{}), ""},
		{"uplink", withEgress(EgressConfig{Mode: EgressUplink}), ""},
		{"limits", withEgress(EgressConfig{MaxFlows: 100, MaxFlowsPerPod: 10, MaxDials: 10, MaxDialsPerPod: 2, DialTimeout: time.Second,
			UplinkRoutes: []netip.Prefix{pfx("192.168.0.0/16")}}), ""},
		{"bad mode", withEgress(EgressConfig{Mode: "seven"}), "egress"},
		{"negative flows", withEgress(EgressConfig{MaxFlows: -1}), "egress-max-flows"},
		{"per pod above total", withEgress(EgressConfig{MaxFlows: 10, MaxFlowsPerPod: 11}), "egress-max-flows-per-pod"},
		{"dials per pod above total", withEgress(EgressConfig{MaxDials: 1, MaxDialsPerPod: 2}), "egress-max-dials-per-pod"},
		{"negative timeout", withEgress(EgressConfig{DialTimeout: -time.Second}), "egress-dial-timeout"},
		{"uplink route in cluster", withEgress(EgressConfig{UplinkRoutes: []netip.Prefix{pfx("10.0.0.0/8")}}), "uplink-route"},
		{"uplink route unmasked", withEgress(EgressConfig{UplinkRoutes: []netip.Prefix{pfx("192.168.1.1/16")}}), "uplink-route"},
	}, nil)
	for _, m := range []EgressMode{EgressNetstack, EgressUplink, EgressSNAT} {
		if got, err := ParseEgressMode(m.String()); err != nil || got != m {
			t.Errorf("ParseEgressMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseEgressMode("masquerade"); err == nil {
		t.Error("ParseEgressMode(masquerade): no error")
	}
}

// newEgressDaemon builds the part of a daemon that egress needs: its node,
// with the uplink on a pipe instead of a TUN.
func newEgressDaemon(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	cfg.Logger = zaptest.NewLogger(t)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc := cfg.nodeConfig()
	up, _ := linktest.Pipe(16, 2048, 8)
	nc.Uplink = node.UplinkConfig{Name: "podr0", Device: up}
	n, err := node.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	return &Daemon{cfg: cfg, log: cfg.Logger, node: n, eng: n.Engine()}
}

func routeTo(t *testing.T, d *Daemon, dst string) (route.Kind, string) {
	t.Helper()
	nh, ok := d.eng.Routes().Lookup(netip.MustParseAddr(dst))
	if !ok {
		return route.Unreachable, ""
	}
	name := ""
	if p := d.eng.PortByIndex(nh.Port); p != nil && (nh.Kind == route.Egress || nh.Kind == route.Local) {
		name = p.Name()
	}
	return nh.Kind, name
}

func TestEgressRoutes(t *testing.T) {
	pfx := netip.MustParsePrefix
	cfg := Config{
		PodCIDR: pfx("10.244.1.0/24"), PodCIDR6: pfx("fd00:10:244:1::/64"),
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")},
		NodeIPs:      []netip.Addr{netip.MustParseAddr("192.168.1.10")},
		Egress:       EgressConfig{UplinkRoutes: []netip.Prefix{pfx("172.16.0.0/12")}},
	}
	d := newEgressDaemon(t, cfg)
	for _, c := range []struct{ dst, port string }{
		{"93.184.216.34", node.EgressPortName},
		{"2001:db8::1", node.EgressPortName},
		{"192.168.1.10", "podr0"}, // the node
		{"172.16.5.5", "podr0"},   // an uplink route
		{"10.244.7.7", ""},        // the cluster's remainder: unreachable
		{"fd00:10:244:7::7", ""},  // likewise
	} {
		if _, name := routeTo(t, d, c.dst); name != c.port {
			t.Errorf("%s routes to %q, want %q", c.dst, name, c.port)
		}
	}
	if err := d.node.Ready(); err != nil {
		t.Errorf("egress readiness: %v", err)
	}
	// Removing it complains that the routes still point at it, and removes it.
	for _, p := range d.eng.Ports() {
		if p.Name() == node.EgressPortName {
			_ = d.eng.RemovePort(p)
		}
	}
	if err := d.node.Ready(); err == nil {
		t.Error("egress readiness with the port removed: nil")
	}

	// Uplink mode: no forwarder, today's routes.
	cfg.Egress = EgressConfig{Mode: EgressUplink}
	cfg.NodeIPs = nil
	u := newEgressDaemon(t, cfg)
	if u.node.Egress().Stats() != nil {
		t.Fatal("uplink mode started a forwarder")
	}
	if _, name := routeTo(t, u, "93.184.216.34"); name != "podr0" {
		t.Errorf("uplink mode: the outside routes to %q", name)
	}
	ct, err := (handler{u}).Conntrack(context.Background(), api.ConntrackRequest{})
	if err != nil || ct.Egress != "uplink" || len(ct.Flows) != 0 || ct.Stats != nil {
		t.Errorf("uplink mode Conntrack: %+v, %v", ct, err)
	}
}

func TestEgressConntrackAPI(t *testing.T) {
	pfx := netip.MustParsePrefix
	d := newEgressDaemon(t, Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}})
	d.pods.byID = map[api.AttachmentID]*pod{}
	ct, err := (handler{d}).Conntrack(context.Background(), api.ConntrackRequest{})
	if err != nil || ct.Egress != "netstack" || ct.Flows == nil || ct.Stats == nil || len(ct.Stats.Events) == 0 || len(ct.Stats.Drops) == 0 {
		t.Fatalf("Conntrack: %+v, %v", ct, err)
	}
	if _, err := (handler{d}).Conntrack(context.Background(), api.ConntrackRequest{Pod: "nosuchcontainer"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("unknown pod: %v", err)
	}
	if ct, err := (handler{d}).Conntrack(context.Background(), api.ConntrackRequest{Pod: "10.244.1.9"}); err != nil || len(ct.Flows) != 0 {
		t.Errorf("by address: %+v, %v", ct, err)
	}
	if _, err := (handler{d}).Conntrack(context.Background(), api.ConntrackRequest{Max: -1}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad max: %v", err)
	}
}
