package node

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// newPeerNode builds a node with an uplink on a pipe (uplink egress) and
// the underlay on loopback.
func newPeerNode(t *testing.T, backend string) *Node {
	t.Helper()
	up, _ := linktest.Pipe(16, 2048, 8)
	n, err := New(Config{
		PodCIDR:      netip.MustParsePrefix("10.244.0.0/24"),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Uplink:       UplinkConfig{Name: "podr0", Device: up},
		Egress:       EgressConfig{Mode: EgressUplink},
		Underlay:     UnderlayConfig{Backend: backend, Listen: netip.MustParseAddrPort("127.0.0.1:0"), MTU: 1500},
		Logger:       zaptest.NewLogger(t),
	})
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
	return n
}

// peerPorts counts the peer ports (not the RX port).
func peerPorts(n *Node) int {
	c := 0
	for _, p := range n.Engine().Ports() {
		if p.Config().Kind == engine.KindPeer && p.Name() != "underlay" {
			c++
		}
	}
	return c
}

func peerRoute(t *testing.T, d *Node, dst string) (route.Kind, string) {
	t.Helper()
	nh, ok := d.Engine().Routes().Lookup(netip.MustParseAddr(dst))
	if !ok {
		return route.Unreachable, ""
	}
	idx := nh.Port
	if nh.Kind == route.Peer {
		idx = nh.Peer
	}
	if p := d.Engine().PortByIndex(idx); p != nil && nh.Kind != route.Unreachable {
		return nh.Kind, p.Name()
	}
	return nh.Kind, ""
}

func TestSetPeers(t *testing.T) {
	d := newPeerNode(t, "udp")
	pr := func(name, addr string, cidrs ...string) underlay.Peer {
		p := underlay.Peer{Name: name, Addr: netip.MustParseAddrPort(addr)}
		for _, c := range cidrs {
			p.PodCIDRs = append(p.PodCIDRs, netip.MustParsePrefix(c))
		}
		return p
	}
	if err := d.SetPeers([]underlay.Peer{
		pr("a", "127.0.0.2:8285", "10.244.1.0/24"),
		pr("b", "127.0.0.3:8285", "10.244.2.0/24"),
		pr("own", "127.0.0.4:8285", "10.244.0.0/24"),   // our podCIDR: left out
		pr("out", "127.0.0.5:8285", "10.99.0.0/24"),    // outside the cluster
		pr("dup", "127.0.0.2:8285", "10.244.9.0/24"),   // a's address
		pr("ovl", "127.0.0.6:8285", "10.244.1.128/25"), // inside a's
	}); err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[string]string{"10.244.1.7": "peer-a", "10.244.2.7": "peer-b"} {
		if k, name := peerRoute(t, d, dst); k != route.Peer || name != want {
			t.Errorf("%s -> %v %s, want peer %s", dst, k, name, want)
		}
	}
	for _, dst := range []string{"10.244.9.1", "10.244.3.1"} {
		if k, _ := peerRoute(t, d, dst); k != route.Unreachable {
			t.Errorf("%s -> %v, want unreachable", dst, k)
		}
	}
	if k, _ := peerRoute(t, d, "1.1.1.1"); k != route.Egress {
		t.Errorf("outside -> %v: the outside routes must stay", k)
	}
	if got := d.Backend().Peers(); len(got) != 2 {
		t.Fatalf("underlay peers %v", got)
	}
	aPort := d.PeerPort("a")
	// b leaves, c joins, a keeps its port.
	if err := d.SetPeers([]underlay.Peer{pr("a", "127.0.0.2:8285", "10.244.1.0/24"), pr("c", "127.0.0.7:8285", "10.244.3.0/24")}); err != nil {
		t.Fatal(err)
	}
	if k, _ := peerRoute(t, d, "10.244.2.7"); k != route.Unreachable {
		t.Errorf("b's pods -> %v after b left", k)
	}
	if k, name := peerRoute(t, d, "10.244.3.7"); k != route.Peer || name != "peer-c" {
		t.Errorf("c's pods -> %v %s", k, name)
	}
	if d.PeerPort("a") != aPort || peerPorts(d) != 2 {
		t.Errorf("%d peer ports: a's port must stay", peerPorts(d))
	}
	n := 0
	for _, p := range d.Engine().Ports() {
		if p.Config().Kind == engine.KindPeer {
			n++
		}
	}
	if n != 3 { // the RX port, a, c
		t.Errorf("%d peer-kind ports, want 3", n)
	}
	if err := d.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if peerPorts(d) != 0 || len(d.Backend().Peers()) != 0 {
		t.Fatal("peers left after an empty set")
	}
}

func TestSetPeersWithoutUnderlay(t *testing.T) {
	d, err := New(Config{PodCIDR: netip.MustParsePrefix("10.244.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetPeers(nil); !errors.Is(err, ErrNoUnderlay) {
		t.Fatal(err)
	}
	cfg := Config{PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), Underlay: UnderlayConfig{Peers: []underlay.Peer{{Name: "a"}}}}
	if err := cfg.Validate(); !errors.Is(err, ErrConfig) {
		t.Fatalf("peers without backend: %v", err)
	}
}

// TestUnderlayCounters: the underlay port shows the backend's totals (a
// stranger's datagram among its drops), a peer's port that peer's counters,
// any other port none.
func TestUnderlayCounters(t *testing.T) {
	d := newPeerNode(t, "udp")
	if err := d.SetPeers([]underlay.Peer{{Name: "a", Addr: netip.MustParseAddrPort("127.0.0.2:8285"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", d.Backend().LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 40)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rx := d.UnderlayCounters(d.UnderlayPort())
		if rx == nil || rx.Peer != "" || rx.Addr != d.Backend().LocalAddr() {
			t.Fatalf("underlay port: %+v", rx)
		}
		if rx.Drops["unknown-sender"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("underlay drops %v, want unknown-sender 1", rx.Drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
	pc := d.UnderlayCounters(d.PeerPort("a"))
	if pc == nil || pc.Peer != "a" || pc.Addr != netip.MustParseAddrPort("127.0.0.2:8285") {
		t.Fatalf("peer port: %+v", pc)
	}
	if uc := d.UnderlayCounters(d.UplinkPort()); uc != nil {
		t.Fatalf("uplink port: %+v", uc)
	}
}

// TestUnderlayEndpoints: ours and the current peers' endpoints are what
// egress must refuse; a peer that leaves is no longer refused.
func TestUnderlayEndpoints(t *testing.T) {
	d := newPeerNode(t, "udp")
	a := netip.MustParseAddrPort("127.0.0.2:8285")
	if !d.UnderlayEndpoint(d.Backend().LocalAddr()) || d.UnderlayEndpoint(a) {
		t.Fatal("before peers: want only our own endpoint")
	}
	if err := d.SetPeers([]underlay.Peer{{Name: "a", Addr: a, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	if !d.UnderlayEndpoint(a) || d.UnderlayEndpoint(netip.MustParseAddrPort("127.0.0.2:53")) {
		t.Fatal("with peer a: want a's endpoint, and only its port")
	}
	if err := d.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if d.UnderlayEndpoint(a) {
		t.Fatal("a left: still refused")
	}
}
