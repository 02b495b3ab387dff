package lab

// Unprivileged end-to-end tests: two- and three-node labs of virtual pods
// whose underlays talk over loopback.

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/node"
)

// checkGoroutines fails t if goroutines it started outlive its cleanups.
func checkGoroutines(t *testing.T) { t.Helper(); leaktest.Check(t, 3*time.Second) }

func startLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	checkGoroutines(t)
	cfg.Logger = zaptest.NewLogger(t)
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	l, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func vpod(t *testing.T, p Pod) *netstackx.Pod {
	t.Helper()
	vp, ok := p.(*netstackx.Pod)
	if !ok {
		t.Fatalf("%s is not a virtual pod", p.Name())
	}
	return vp
}

func allPairsOK(t *testing.T, l *Lab) {
	t.Helper()
	pairs := l.CheckPairs(context.Background())
	n := len(l.Pods())
	if len(pairs) != n*(n-1) {
		t.Fatalf("%d pairs for %d pods", len(pairs), n)
	}
	for _, p := range pairs {
		for _, c := range p.Failed() {
			t.Errorf("%s -> %s: %s: %v", p.Src, p.Dst, c.Name, c.Err)
		}
		if len(p.Checks) != 5 {
			t.Errorf("%s -> %s: %d checks, want 5 (IPv4 and IPv6)", p.Src, p.Dst, len(p.Checks))
		}
	}
}

// udpTTL sends a datagram from src to dst's port and returns the TTL (or
// hop limit) and source address it arrives with.
func udpTTL(t *testing.T, src, dst *netstackx.Pod, to netip.Addr) (uint8, netip.Addr) {
	t.Helper()
	type seen struct {
		ttl uint8
		src netip.Addr
	}
	const port = 40000
	ch := make(chan seen, 16)
	stop := dst.Sniff(func(pkt []byte) {
		if len(pkt) == 0 {
			return
		}
		switch pkt[0] >> 4 {
		case 4:
			ip := header.IPv4(pkt)
			if len(pkt) >= header.IPv4MinimumSize+header.UDPMinimumSize && ip.Protocol() == uint8(header.UDPProtocolNumber) &&
				header.UDP(ip.Payload()).DestinationPort() == port {
				ch <- seen{ip.TTL(), netip.AddrFrom4(ip.SourceAddress().As4())}
			}
		case 6:
			ip := header.IPv6(pkt)
			if len(pkt) >= header.IPv6MinimumSize+header.UDPMinimumSize && ip.TransportProtocol() == header.UDPProtocolNumber &&
				header.UDP(ip.Payload()).DestinationPort() == port {
				ch <- seen{ip.HopLimit(), netip.AddrFrom16(ip.SourceAddress().As16())}
			}
		}
	})
	defer stop()
	if err := src.SendUDPWithTTL(netip.AddrPortFrom(to, port), 64, []byte("ttl")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-ch:
		return s.ttl, s.src
	case <-time.After(5 * time.Second):
		t.Fatalf("%s -> %s: datagram not delivered", src.Name(), to)
	}
	return 0, netip.Addr{}
}

func TestTwoNodes(t *testing.T) {
	for _, backend := range []string{"udp", "vxlan", node.BackendWireGuard} {
		t.Run(backend, func(t *testing.T) {
			l := startLab(t, Config{Nodes: 2, Pods: 2, Backend: backend})
			kind, err := node.LookupBackend(backend)
			if err != nil {
				t.Fatal(err)
			}
			wantMTU := 1500 - kind.Overhead(false)
			if peerMTU := l.Nodes[0].Node.Backend().MTU(); l.Config().MTU != wantMTU || peerMTU != wantMTU {
				t.Fatalf("pod MTU %d, peer MTU %d; want both %d", l.Config().MTU, peerMTU, wantMTU)
			}
			if l.Nodes[1].PodCIDR != netip.MustParsePrefix("10.244.1.0/24") || l.Nodes[1].PodCIDR6 != netip.MustParsePrefix("fd00:10:244:1::/64") {
				t.Fatalf("node 1 podCIDRs %s %s", l.Nodes[1].PodCIDR, l.Nodes[1].PodCIDR6)
			}
			allPairsOK(t, l)

			n0p0, n0p1 := vpod(t, l.Nodes[0].Pods[0]), vpod(t, l.Nodes[0].Pods[1])
			n1p0 := vpod(t, l.Nodes[1].Pods[0])
			// Same node: switched, TTL untouched. Across nodes: two routed
			// hops (out of n0, into n1), and the receiver sees the
			// sender's pod address: no NAT.
			for _, tc := range []struct {
				name     string
				dst      *netstackx.Pod
				to       netip.Addr
				from     netip.Addr
				wantTTL  uint8
				wantFrom netip.Addr
			}{
				{"same node v4", n0p1, n0p1.Addr(), n0p0.Addr(), 64, n0p0.Addr()},
				{"cross node v4", n1p0, n1p0.Addr(), n0p0.Addr(), 62, n0p0.Addr()},
				{"cross node v6", n1p0, n1p0.Addr6(), n0p0.Addr6(), 62, n0p0.Addr6()},
			} {
				ttl, from := udpTTL(t, n0p0, tc.dst, tc.to)
				if ttl != tc.wantTTL || from != tc.wantFrom {
					t.Errorf("%s: arrived with TTL %d from %s, want %d from %s", tc.name, ttl, from, tc.wantTTL, tc.wantFrom)
				}
			}
			st, _ := l.Nodes[0].Node.Backend().PeerStats("n1")
			if st.TxPackets == 0 || st.RxPackets == 0 {
				t.Errorf("no traffic counted for peer n1: %+v", st)
			}
		})
	}
}

// icmpFrom waits for an ICMP error of type typ arriving at pod from src.
func icmpFrom(pod *netstackx.Pod, v6 bool, typ uint8) (wait func(t *testing.T, from netip.Addr), stop func()) {
	ch := make(chan netip.Addr, 16)
	stop = pod.Sniff(func(pkt []byte) {
		if !v6 && len(pkt) >= header.IPv4MinimumSize+header.ICMPv4MinimumSize && pkt[0]>>4 == 4 {
			ip := header.IPv4(pkt)
			if ip.Protocol() == uint8(header.ICMPv4ProtocolNumber) && header.ICMPv4(ip.Payload()).Type() == header.ICMPv4Type(typ) {
				ch <- netip.AddrFrom4(ip.SourceAddress().As4())
			}
		}
		if v6 && len(pkt) >= header.IPv6MinimumSize+header.ICMPv6MinimumSize && pkt[0]>>4 == 6 {
			ip := header.IPv6(pkt)
			if ip.TransportProtocol() == header.ICMPv6ProtocolNumber && header.ICMPv6(ip.Payload()).Type() == header.ICMPv6Type(typ) {
				ch <- netip.AddrFrom16(ip.SourceAddress().As16())
			}
		}
	})
	wait = func(t *testing.T, from netip.Addr) {
		t.Helper()
		select {
		case a := <-ch:
			if a != from {
				t.Errorf("ICMP type %d from %s, want from %s", typ, a, from)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("no ICMP type %d from %s", typ, from)
		}
	}
	return wait, stop
}

func TestICMPErrorsAcrossNodes(t *testing.T) {
	l := startLab(t, Config{Nodes: 2, Pods: 1, Backend: "vxlan", Duration: 0})
	src, dst := vpod(t, l.Nodes[0].Pods[0]), vpod(t, l.Nodes[1].Pods[0])
	gw0, gw1 := l.Nodes[0].Eng.Gateway(), l.Nodes[1].Eng.Gateway()
	gw1v6 := l.Nodes[1].Eng.Gateway6()

	// TTL 2: n0 forwards it with TTL 1, n1 cannot: time exceeded from n1's
	// gateway, carried back across the underlay. TTL 1: from n0's.
	for _, tc := range []struct {
		ttl  uint8
		to   netip.Addr
		from netip.Addr
		v6   bool
	}{
		{2, dst.Addr(), gw1, false}, {1, dst.Addr(), gw0, false}, {2, dst.Addr6(), gw1v6, true},
	} {
		typ := uint8(header.ICMPv4TimeExceeded)
		if tc.v6 {
			typ = uint8(header.ICMPv6TimeExceeded)
		}
		wait, stop := icmpFrom(src, tc.v6, typ)
		if err := src.SendUDPWithTTL(netip.AddrPortFrom(tc.to, 9), tc.ttl, []byte("x")); err != nil {
			t.Fatal(err)
		}
		wait(t, tc.from)
		stop()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// No pod at that address of n1's podCIDR: host unreachable, from n1.
	_, err := src.Ping(ctx, netip.MustParseAddr("10.244.1.200"), 8)
	var ie *netstackx.ICMPError
	if !errors.As(err, &ie) || ie.From != gw1 || ie.Type != uint8(header.ICMPv4DstUnreachable) || ie.Code != uint8(header.ICMPv4HostUnreachable) {
		t.Errorf("ping an empty address of n1: %v, want host unreachable from %s", err, gw1)
	}
	// In the cluster CIDR but no node's: net unreachable, from n0.
	_, err = src.Ping(ctx, netip.MustParseAddr("10.244.77.7"), 8)
	if !errors.As(err, &ie) || ie.From != gw0 || ie.Code != uint8(header.ICMPv4NetUnreachable) {
		t.Errorf("ping an address of no node: %v, want net unreachable from %s", err, gw0)
	}
	if sent, _ := l.Nodes[1].Eng.ICMPStats(); sent < 3 {
		t.Errorf("n1 sent %d ICMP errors, want at least 3", sent)
	}
}

// TestPMTUDAcrossNodes: pods with MTU 1500 over a 1500-byte vxlan underlay
// (peer MTU 1450) get fragmentation-needed / packet-too-big from their own
// node, and TCP adapts.
func TestPMTUDAcrossNodes(t *testing.T) {
	l := startLab(t, Config{Nodes: 2, Pods: 1, Backend: "vxlan", MTU: 1500})
	src, dst := vpod(t, l.Nodes[0].Pods[0]), vpod(t, l.Nodes[1].Pods[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// IPv6 never fragments on the way: packet too big, MTU 1450.
	_, err := src.Ping(ctx, dst.Addr6(), 1500-40-8)
	var ie *netstackx.ICMPError
	if !errors.As(err, &ie) || ie.Type != uint8(header.ICMPv6PacketTooBig) || ie.MTU != 1450 || ie.From != l.Nodes[0].Eng.Gateway6() {
		t.Fatalf("big ping6: %v, want packet too big (mtu 1450) from n0", err)
	}
	// TCP (DF set) in both families: MSS 1460 at first, then 1410.
	for _, a := range []netip.Addr{dst.Addr(), dst.Addr6()} {
		if err := tcpEcho(ctx, src, netip.AddrPortFrom(a, echoPort)); err != nil {
			t.Fatalf("TCP echo to %s: %v", a, err)
		}
	}
	if _, err := Throughput(ctx, src, dst, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var tooBig uint64
	for _, p := range l.Nodes[0].Eng.Ports() {
		tooBig += p.Stats().Drops[engine.DropTooBig]
	}
	if tooBig == 0 {
		t.Error("no too-big drop on n0: PMTUD was not exercised")
	}
	if st := src.Stats(); st.ICMPDstUnreachable == 0 || st.ICMPPacketTooBig == 0 {
		t.Errorf("source pod got %d frag-needed, %d packet-too-big", st.ICMPDstUnreachable, st.ICMPPacketTooBig)
	}
}

func TestThreeNodes(t *testing.T) {
	l := startLab(t, Config{Nodes: 3, Pods: 1, Backend: "udp"})
	if len(l.Pods()) != 3 {
		t.Fatalf("%d pods", len(l.Pods()))
	}
	allPairsOK(t, l)
	a, c := vpod(t, l.Nodes[0].Pods[0]), vpod(t, l.Nodes[2].Pods[0])
	if ttl, from := udpTTL(t, a, c, c.Addr()); ttl != 62 || from != a.Addr() {
		t.Errorf("n0 -> n2: TTL %d from %s, want 62 from %s (full mesh: two routed hops)", ttl, from, a.Addr())
	}
	// Each node has a peer port per other node, and routes to them.
	for _, n := range l.Nodes {
		ports := 0
		for _, m := range l.Nodes {
			if n.Node.PeerPort(m.Name) != nil {
				ports++
			}
		}
		if ports != 2 || len(n.Underlay.Peers()) != 2 {
			t.Errorf("node %s: %d peer ports, %d peers", n.Name, ports, len(n.Underlay.Peers()))
		}
	}
}

// TestUnderlayDeliversLocalOnly: a packet a peer sends to this node for
// another node's podCIDR is dropped (not-local), not routed on.
func TestUnderlayDeliversLocalOnly(t *testing.T) {
	l := startLab(t, Config{Nodes: 3, Pods: 1, Backend: "vxlan"})
	n0, n1 := l.Nodes[0], l.Nodes[1]
	// From n0 to n1's underlay, a packet for n2's pod.
	pkt := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize)
	ip := header.IPv4(pkt)
	src, dst := l.Nodes[0].Pods[0].Addr().As4(), l.Nodes[2].Pods[0].Addr().As4()
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber)})
	copy(pkt[12:16], src[:])
	copy(pkt[16:20], dst[:])
	ip.SetChecksum(^ip.CalculateChecksum())
	dev := n0.Underlay.PeerDevice("n1")
	defer dev.Close()
	if _, err := dev.Write([][]byte{append(make([]byte, link.Headroom), pkt...)}, link.Headroom); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n1.Node.UnderlayPort().Stats().Drops[engine.DropNotLocal] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("n1's underlay port drops: %v, want not-local=1", n1.Node.UnderlayPort().Stats().Drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if tx := n1.Node.PeerPort("n2").Stats().TxPackets; tx != 0 {
		t.Errorf("n1 routed %d packets on to n2", tx)
	}
}

// TestPeerChurn: removing and re-adding a peer while traffic flows.
func TestPeerChurn(t *testing.T) {
	l := startLab(t, Config{Nodes: 2, Pods: 1, Backend: "udp", NoIPv6: true})
	n0, n1 := l.Nodes[0], l.Nodes[1]
	peer := n0.Underlay.Peers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			n0.Underlay.RemovePeer(peer.Name)
			time.Sleep(2 * time.Millisecond)
			if err := n0.Underlay.UpsertPeer(peer); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	// Pings across may be lost while the peer is gone; TCP recovers.
	if err := tcpEcho(ctx, n0.Pods[0], netip.AddrPortFrom(n1.Pods[0].Addr(), echoPort)); err != nil {
		t.Errorf("TCP echo during churn: %v", err)
	}
	wg.Wait()
	if _, err := n0.Pods[0].Ping(ctx, n1.Pods[0].Addr(), 8); err != nil {
		t.Errorf("ping after churn: %v", err)
	}
}

func TestRunReport(t *testing.T) {
	checkGoroutines(t)
	var out bytes.Buffer
	cfg := Config{Nodes: 2, Pods: 2, Backend: "udp", Duration: 200 * time.Millisecond, Logger: zaptest.NewLogger(t)}
	res, err := Run(context.Background(), cfg, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"2 nodes, 4 virtual pods, backend udp",
		"n1    10.244.1.0/24",
		"  3  n1-pod-1  ok  ok  ok   .",
		"ping RTT median: same node",
		"throughput n0-pod-0 -> n0-pod-1 TCP (same node)",
		"throughput n0-pod-0 -> n1-pod-0 TCP (cross node, udp)",
		"node n1:",
		"peer-n0",
		"underlay udp 127.0.0.1:",
		"result: 12/12 pairs ok: PASS",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	if res.CrossThroughput <= 0 || res.Throughput <= 0 {
		t.Errorf("throughput same %v, cross %v", res.Throughput, res.CrossThroughput)
	}
}

func TestConfigCarving(t *testing.T) {
	c := Config{Nodes: 3, Pods: 2}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []NodeSpec{
		{"n0", netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/64"), 2},
		{"n1", netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64"), 2},
		{"n2", netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64"), 2},
	}
	for i, n := range c.Topology {
		if n != want[i] {
			t.Errorf("node %d: %+v, want %+v", i, n, want[i])
		}
	}
	if c.ClusterCIDR6 != netip.MustParsePrefix("fd00:10:244::/56") || c.MTU != 1450 || c.Backend != "vxlan" {
		t.Errorf("defaults: cluster6 %s, MTU %d, backend %v", c.ClusterCIDR6, c.MTU, c.Backend)
	}
	one := Config{}
	if err := one.Validate(); err != nil || one.MTU != 1500 || len(one.Topology) != 1 || one.Pods != 4 {
		t.Errorf("one node defaults: %v, MTU %d, %d nodes, %d pods", err, one.MTU, len(one.Topology), one.Pods)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Nodes: 65}, "--nodes 65"},
		{Config{Nodes: 2, Pods: 251}, "--pods 251"},
		{Config{Pods: 1}, "--pods 1: want 2..250"},
		{Config{Nodes: 5, ClusterCIDR: netip.MustParsePrefix("10.0.0.0/22")}, "--cluster-cidr 10.0.0.0/22 has no room for 5"},
		{Config{Nodes: 2, PodCIDR: netip.MustParsePrefix("10.244.0.0/29"), Pods: 6}, "--pod-cidr 10.244.0.0/29 holds at most 5"},
		{Config{UnderlayMTU: 100}, "--underlay-mtu 100"},
		{Config{Nodes: 2, UnderlayMTU: 1300}, "--underlay-mtu 1300: leaves 1250 bytes"},
		{Config{MTU: 70000}, "--mtu 70000"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}
