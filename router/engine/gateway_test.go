package engine

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link/linktest"
)

// TestGatewayPort: with a port attached as the gateway port, the packets
// to the gateway addresses that are not echo requests go to it (from pods
// and from peers, TTL decremented as a routed hop); echo requests are still
// answered by the engine; the port's own packets to the gateway are dropped
// (no loop); once the port is gone the gateway's packets are dropped again.
func TestGatewayPort(t *testing.T) {
	r := newRig(t)
	gw, gwPort := linktest.Pipe(256, 9000, 64)
	pg, err := r.e.AddPort(gwPort, PortConfig{Name: "ingress", Kind: KindNetstack, MTU: 1500, Gateway: true})
	if err != nil {
		t.Fatal(err)
	}
	peer, peerPort := linktest.Pipe(256, 9000, 64)
	if _, err := r.e.AddPort(peerPort, PortConfig{Name: "peer", Kind: KindPeer, MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	g4, g6 := r.e.Gateway(), r.e.Gateway6()

	// A pod's UDP to the gateway.
	send(t, r.a, eth(r.e, macA, ipv4(addrA, g4, ipOpts{ttl: 64, payload: 10})))
	ip := header.IPv4(recv(t, gw))
	if ip.SourceAddress() != tcpip.AddrFrom4(addrA.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(g4.As4()) || ip.TTL() != 63 || !ip.IsChecksumValid() {
		t.Fatalf("gateway port got % x", []byte(ip))
	}
	// IPv6.
	send(t, r.a, eth(r.e, macA, ipv6(addrA6, g6, 64, 10)))
	ip6 := header.IPv6(recv(t, gw))
	if ip6.DestinationAddress() != tcpip.AddrFrom16(g6.As16()) || ip6.HopLimit() != 63 {
		t.Fatalf("gateway port got % x", []byte(ip6))
	}
	// A pod of another node answering a flow the gateway port opened.
	remote := netip.MustParseAddr("10.244.7.2")
	send(t, peer, ipv4(remote, g4, ipOpts{ttl: 64, payload: 10}))
	ip = header.IPv4(recv(t, gw))
	if ip.SourceAddress() != tcpip.AddrFrom4(remote.As4()) {
		t.Fatalf("gateway port got % x", []byte(ip))
	}
	// Echo requests are still the engine's.
	send(t, r.a, eth(r.e, macA, ipv4(addrA, g4, ipOpts{proto: header.ICMPv4ProtocolNumber, icmp: header.ICMPv4Echo, payload: 8})))
	rep := header.IPv4(checkEth(t, r.e, recv(t, r.a), macA))
	if header.ICMPv4(rep.Payload()).Type() != header.ICMPv4EchoReply {
		t.Fatalf("no echo reply: % x", []byte(rep))
	}
	if got, ok := tryRecv(gw, 100*time.Millisecond); ok {
		t.Fatalf("gateway port got the echo request: % x", got)
	}
	// The gateway port's own packets to the gateway go nowhere.
	send(t, gw, ipv4(g4, g4, ipOpts{ttl: 64, payload: 10}))
	waitDrop(t, pg, DropToGateway, 1)

	// A second gateway port, or a pod as one, is refused.
	_, d := linktest.Pipe(1, 100, 1)
	if _, err := r.e.AddPort(d, PortConfig{Name: "second", Kind: KindNetstack, MTU: 1500, Gateway: true}); err == nil {
		t.Fatal("second gateway port accepted")
	}
	if _, err := r.e.AddPort(d, PortConfig{Name: "pod", Kind: KindPod, MTU: 1500, Gateway: true}); err == nil {
		t.Fatal("pod port accepted as the gateway port")
	}

	// Without the gateway port: dropped as before.
	if err := r.e.RemovePort(pg); err != nil {
		t.Fatal(err)
	}
	send(t, r.a, eth(r.e, macA, ipv4(addrA, g4, ipOpts{ttl: 64, payload: 10})))
	waitDrop(t, r.pa, DropToGateway, 1)
}

func waitDrop(t *testing.T, p *Port, r DropReason, want uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Drops[r] != want {
		if time.Now().After(deadline) {
			t.Fatalf("port %s: %d drops %s, want %d", p.Name(), p.Stats().Drops[r], r, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
