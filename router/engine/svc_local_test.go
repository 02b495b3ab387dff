package engine

// externalTrafficPolicy Local: a nodePort flow the ingress (the gateway
// port) brings from its client's own address keeps it, and its replies go
// back to the gateway port.

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

var (
	npNode  = netip.MustParseAddr("172.29.0.2")
	npNode6 = netip.MustParseAddr("2001:db8:29::2")
	client  = netip.MustParseAddr("203.0.113.7") // TEST-NET-3
	client6 = netip.MustParseAddr("2001:db8:7::7")
)

// localRig is the Service rig with this node's addresses (npNode,
// npNode6) and a gateway port (an L3 netstack port, as the ingress).
type localRig struct {
	*snatRig
	gw  *linktest.End
	pgw *Port
	pb  *Port
}

func newLocalRig(t *testing.T) *localRig {
	t.Helper()
	r, _ := newSvcRigWith(t, func(c *Config) { c.HostAddrs = []netip.Addr{npNode, npNode6} })
	host, dev := linktest.Pipe(256, 9000, 64)
	pgw, err := r.e.AddPort(dev, PortConfig{Name: "ingress", Kind: KindNetstack, MTU: 1500, Gateway: true})
	if err != nil {
		t.Fatal(err)
	}
	r.rx[host] = reader(host)
	lr := &localRig{snatRig: r, gw: host, pgw: pgw}
	for _, p := range r.e.Ports() {
		if p.cfg.Name == "b" {
			lr.pb = p
		}
	}
	return lr
}

// nodePortServices returns two Services with pod B (both families) as
// their local backend on port 8080: "local" (externalTrafficPolicy Local)
// at nodePort 30080 and "cluster" at nodePort 30081, TCP and UDP each.
func nodePortServices() *service.Table {
	bs := []service.Backend{
		{Addr: addrB, Port: 8080, Ready: true, Serving: true, Local: true},
		{Addr: addrB6, Port: 8080, Ready: true, Serving: true, Local: true},
	}
	ports := func(np uint16) []service.Port {
		return []service.Port{
			{Name: "tcp", Proto: packet.ProtoTCP, Port: 80, NodePort: np, Backends: bs},
			{Name: "udp", Proto: packet.ProtoUDP, Port: 80, NodePort: np, Backends: bs},
		}
	}
	svcs := []service.Service{
		{Namespace: "ns", Name: "local", ClusterIPs: []netip.Addr{vip, vip6}, ExternalLocal: true, Ports: ports(30080)},
		{Namespace: "ns", Name: "cluster", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")}, Ports: ports(30081)},
	}
	return service.NewTable(svcs, service.Options{NodeAddrs: []netip.Addr{npNode, npNode6}})
}

// expectOn reads a packet from end (an L3 port) and checks its addresses,
// ports and checksums.
func expectOn(t *testing.T, r *snatRig, end *linktest.End, src, dst netip.AddrPort) []byte {
	t.Helper()
	ip := r.get(t, end)
	_, s, d, _ := l4Of(ip)
	sp, dp := ports(ip)
	if got := [2]netip.AddrPort{netip.AddrPortFrom(s, sp), netip.AddrPortFrom(d, dp)}; got != [2]netip.AddrPort{src, dst} {
		t.Fatalf("got %s -> %s, want %s -> %s", got[0], got[1], src, dst)
	}
	checkSums(t, ip)
	return ip
}

// expectBPorts is expectB with ports.
func expectBPorts(t *testing.T, r *snatRig, src, dst netip.AddrPort) []byte {
	t.Helper()
	ip := expectB(t, r, src.Addr(), dst.Addr())
	if sp, dp := ports(ip); sp != src.Port() || dp != dst.Port() {
		t.Fatalf("pod B got ports %d -> %d, want %d -> %d", sp, dp, src.Port(), dst.Port())
	}
	return ip
}

// TestServiceNodePortLocalKeepsClient: a flow from the gateway port, from
// a client's address, to a Local nodePort reaches the backend from that
// address; the backend's replies to the client leave through the gateway
// port from the nodePort, not through the uplink the client's address
// routes to. TCP and UDP, both families.
func TestServiceNodePortLocalKeepsClient(t *testing.T) {
	for _, tc := range []struct {
		name        string
		proto       tcpip.TransportProtocolNumber
		node, cl, b netip.Addr
	}{
		{"tcp4", header.TCPProtocolNumber, npNode, client, addrB},
		{"udp4", header.UDPProtocolNumber, npNode, client, addrB},
		{"tcp6", header.TCPProtocolNumber, npNode6, client6, addrB6},
		{"udp6", header.UDPProtocolNumber, npNode6, client6, addrB6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newLocalRig(t)
			if err := r.e.SetServices(nodePortServices()); err != nil {
				t.Fatal(err)
			}
			seg := func(sp, dp uint16, flags header.TCPFlags) []byte {
				if tc.proto == header.TCPProtocolNumber {
					return tcpSeg(sp, dp, flags, 1, 0, 10)
				}
				return udpSeg(sp, dp, 10)
			}
			cl, front, be := netip.AddrPortFrom(tc.cl, 40000), netip.AddrPortFrom(tc.node, 30080), netip.AddrPortFrom(tc.b, 8080)
			send(t, r.gw, ipPacket(cl.Addr(), front.Addr(), tc.proto, seg(cl.Port(), front.Port(), header.TCPFlagSyn)))
			expectBPorts(t, r.snatRig, cl, be)
			send(t, r.b, eth(r.e, macB, ipPacket(be.Addr(), cl.Addr(), tc.proto, seg(be.Port(), cl.Port(), header.TCPFlagSyn|header.TCPFlagAck))))
			expectOn(t, r.snatRig, r.gw, front, cl)
			r.noPacket(t, r.up)
			send(t, r.gw, ipPacket(cl.Addr(), front.Addr(), tc.proto, seg(cl.Port(), front.Port(), header.TCPFlagAck)))
			expectBPorts(t, r.snatRig, cl, be)
			send(t, r.b, eth(r.e, macB, ipPacket(be.Addr(), cl.Addr(), tc.proto, seg(be.Port(), cl.Port(), header.TCPFlagAck))))
			expectOn(t, r.snatRig, r.gw, front, cl)
			if st := r.e.ServiceStats(); st.Flows != 1 || st.Hairpins != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestServiceNodePortLocalOnlyGateway: nothing else keeps a client's
// address: the same client through the uplink, a pod, and the gateway
// port to a Cluster nodePort are translated to the gateway as before; a
// pod may not send from the client's address at all.
func TestServiceNodePortLocalOnlyGateway(t *testing.T) {
	r := newLocalRig(t)
	if err := r.e.SetServices(nodePortServices()); err != nil {
		t.Fatal(err)
	}
	udp := header.UDPProtocolNumber
	gw := netip.AddrPortFrom(r.e.Gateway(), 0)
	be := netip.AddrPortFrom(addrB, 8080)
	expectFromGateway := func() uint16 {
		t.Helper()
		ip := expectB(t, r.snatRig, gw.Addr(), addrB)
		sp, dp := ports(ip)
		if dp != 8080 {
			t.Fatalf("to port %d", dp)
		}
		return sp
	}
	// The client, through the uplink: its reply leaves by the uplink.
	send(t, r.up, ipPacket(client, npNode, udp, udpSeg(40000, 30080, 4)))
	np := expectFromGateway()
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, gw.Addr(), udp, udpSeg(8080, np, 4))))
	expectOn(t, r.snatRig, r.up, netip.AddrPortFrom(npNode, 30080), netip.AddrPortFrom(client, 40000))
	r.noPacket(t, r.gw)
	// Pod A, from its own address.
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, npNode, udp, udpSeg(40001, 30080, 4))))
	expectFromGateway()
	// Pod A, from the client's address: the source check drops it.
	send(t, r.a, eth(r.e, macA, ipPacket(client, npNode, udp, udpSeg(40002, 30080, 4))))
	r.noPacket(t, r.b)
	if d := r.pa.Stats().Drops[DropSpoofed]; d != 1 {
		t.Fatalf("spoofed drops %d, want 1", d)
	}
	// The gateway port, from the client's address, to a Cluster nodePort
	// (the ingress's rule and the Service table disagree for a moment):
	// translated, and the reply goes back to the gateway port too.
	send(t, r.gw, ipPacket(client, npNode, udp, udpSeg(40003, 30081, 4)))
	np = expectFromGateway()
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, gw.Addr(), udp, udpSeg(be.Port(), np, 4))))
	expectOn(t, r.snatRig, r.gw, netip.AddrPortFrom(npNode, 30081), netip.AddrPortFrom(client, 40003))
	// The gateway port from the gateway address (a client the ingress
	// could not keep) to the Local nodePort: as it is.
	send(t, r.gw, ipPacket(gw.Addr(), npNode, udp, udpSeg(16000, 30080, 4)))
	if sp := expectFromGateway(); sp != 16000 {
		t.Fatalf("gateway's flow: source port %d, want 16000", sp)
	}
	if st := r.e.ServiceStats(); st.Flows != 4 || st.Hairpins != 0 { // translated to the gateway, none a hairpin
		t.Fatalf("stats %+v", st)
	}
}

// TestServiceNodePortLocalRelated: the backend's ICMP error about a
// datagram of a kept flow goes to the gateway port, from the nodePort.
func TestServiceNodePortLocalRelated(t *testing.T) {
	r := newLocalRig(t)
	if err := r.e.SetServices(nodePortServices()); err != nil {
		t.Fatal(err)
	}
	send(t, r.gw, ipPacket(client, npNode, header.UDPProtocolNumber, udpSeg(40000, 30080, 12)))
	got := expectB(t, r.snatRig, client, addrB)
	send(t, r.b, eth(r.e, macB, icmpError(addrB, client, got)))
	back := r.get(t, r.gw)
	if _, s, d, _ := l4Of(back); s != npNode || d != client {
		t.Fatalf("error at the ingress: %s -> %s", s, d)
	}
	q := header.IPv4(header.ICMPv4(header.IPv4(back).Payload()).Payload())
	if netip.AddrFrom4(q.DestinationAddress().As4()) != npNode {
		t.Fatalf("quoted destination %s, want the node", q.DestinationAddress())
	}
	r.noPacket(t, r.up)
}

// TestServiceNodePortLocalGatewayGone: once the gateway port the flow came
// from is gone, its replies are dropped, never routed to the client's
// address.
func TestServiceNodePortLocalGatewayGone(t *testing.T) {
	r := newLocalRig(t)
	if err := r.e.SetServices(nodePortServices()); err != nil {
		t.Fatal(err)
	}
	tcp := header.TCPProtocolNumber
	send(t, r.gw, ipPacket(client, npNode, tcp, tcpSeg(40000, 30080, header.TCPFlagSyn, 1, 0, 0)))
	expectB(t, r.snatRig, client, addrB)
	if err := r.e.RemovePort(r.pgw); err != nil {
		t.Fatal(err)
	}
	before := r.pb.Stats().Drops[DropNoRoute]
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, client, tcp, tcpSeg(8080, 40000, header.TCPFlagSyn|header.TCPFlagAck, 9, 2, 0))))
	r.noPacket(t, r.up)
	if d := r.pb.Stats().Drops[DropNoRoute]; d != before+1 {
		t.Fatalf("no-route drops %d, want %d", d, before+1)
	}
}

// TestServiceNodePortLocalNoEndpoints: a Local nodePort without a backend
// on this node refuses the ingress's flow from a client's address with an
// ICMP port unreachable that goes back to the gateway port (the ingress
// then resets its client at once), not to the client through the uplink.
func TestServiceNodePortLocalNoEndpoints(t *testing.T) {
	r := newLocalRig(t)
	svcs := []service.Service{{Namespace: "ns", Name: "elsewhere", ClusterIPs: []netip.Addr{vip}, ExternalLocal: true,
		Ports: []service.Port{{Name: "tcp", Proto: packet.ProtoTCP, Port: 80, NodePort: 30082,
			Backends: []service.Backend{{Addr: netip.MustParseAddr("10.244.2.9"), Port: 8080, Ready: true, Serving: true}}}}}}
	if err := r.e.SetServices(service.NewTable(svcs, service.Options{NodeAddrs: []netip.Addr{npNode}})); err != nil {
		t.Fatal(err)
	}
	syn := ipPacket(client, npNode, header.TCPProtocolNumber, tcpSeg(40000, 30082, header.TCPFlagSyn, 1, 0, 0))
	send(t, r.gw, syn)
	checkICMPv4(t, r.e, r.get(t, r.gw), client, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, syn)
	r.noPacket(t, r.up)
	if st := r.e.ServiceStats(); st.NoEndpoints != 1 {
		t.Fatalf("stats %+v", st)
	}
}
