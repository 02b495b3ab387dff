package node

import (
	"net/netip"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/route"
)

// fakeDirect is the udp backend with some peers "host-routed", as vxlan
// with DirectRouting makes those on the underlay's subnets.
type fakeDirect struct {
	Backend
	mu     sync.Mutex
	direct map[string]bool
}

func (f *fakeDirect) HostRouted(q Peer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.direct[q.Name]
}

var testDirect = &fakeDirect{direct: map[string]bool{}}

func init() {
	udp, _ := backendKind("udp")
	RegisterBackend(BackendKind{Name: "test-direct", Overhead: udp.Overhead, New: func(cfg UnderlayConfig, log *zap.Logger) (Backend, error) {
		b, err := udp.New(cfg, log)
		if err != nil {
			return nil, err
		}
		testDirect.Backend = b
		return testDirect, nil
	}})
}

// TestHostRoutedPeers: a host-routed peer's podCIDR and addresses route to
// the uplink with no peer port; the others keep their ports; a peer that
// moves between the two gets its port removed or added.
func TestHostRoutedPeers(t *testing.T) {
	pfx := netip.MustParsePrefix
	up, _ := linktest.Pipe(16, 2048, 8)
	n, err := New(Config{
		PodCIDR:      pfx("10.244.0.0/24"),
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")},
		Uplink:       UplinkConfig{Name: "podr0", Device: up},
		Egress:       EgressConfig{Mode: EgressUplink},
		Underlay:     UnderlayConfig{Backend: "test-direct", Listen: netip.MustParseAddrPort("127.0.0.1:0"), MTU: 1500},
		Logger:       zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	peers := []Peer{
		{Name: "near", Addr: netip.MustParseAddrPort("127.0.0.2:8285"), PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
		{Name: "far", Addr: netip.MustParseAddrPort("127.0.0.3:8285"), PodCIDRs: []netip.Prefix{pfx("10.244.2.0/24")}},
	}
	set := func(direct ...string) {
		t.Helper()
		testDirect.mu.Lock()
		testDirect.direct = map[string]bool{}
		for _, d := range direct {
			testDirect.direct[d] = true
		}
		testDirect.mu.Unlock()
		if err := n.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}
	check := func(dst, port string, kind route.Kind) {
		t.Helper()
		k, name := peerRoute(t, n, dst)
		if k != kind || name != port {
			t.Errorf("%s -> %v %q, want %v %q", dst, k, name, kind, port)
		}
	}
	set("near")
	check("10.244.1.5", "podr0", route.Egress)
	check("127.0.0.2", "podr0", route.Egress) // the peer's address: the host reaches it
	if k, name := peerRoute(t, n, "fd00:10:244:1::5"); k == route.Egress {
		t.Errorf("the IPv6 podCIDR of an IPv4 host-routed peer -> %v %q: the host has no route for it", k, name)
	}
	check("10.244.2.5", "peer-far", route.Peer)
	if n.PeerPort("near") != nil || n.PeerPort("far") == nil || peerPorts(n) != 1 {
		t.Fatalf("ports: near %v, far %v, %d peer ports", n.PeerPort("near"), n.PeerPort("far"), peerPorts(n))
	}
	set("far") // far moves onto the subnet, near off it
	check("10.244.1.5", "peer-near", route.Peer)
	check("10.244.2.5", "podr0", route.Egress)
	if n.PeerPort("near") == nil || n.PeerPort("far") != nil || peerPorts(n) != 1 {
		t.Fatalf("ports after the swap: near %v, far %v, %d peer ports", n.PeerPort("near"), n.PeerPort("far"), peerPorts(n))
	}
}
