package engine

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

var (
	svcCIDR  = netip.MustParsePrefix("10.96.0.0/12")
	svcCIDR6 = netip.MustParsePrefix("fd00:96::/108")
	vip      = netip.MustParseAddr("10.96.0.10")
	vip6     = netip.MustParseAddr("fd00:96::10")
)

// svcRig is the SNAT rig with the load balancer on.
func newSvcRig(t *testing.T) (*snatRig, *conntrack.Table) {
	t.Helper()
	return newSvcRigWith(t, nil)
}

// newSvcRigWith is newSvcRig with the engine's Config as mod leaves it.
func newSvcRigWith(t *testing.T, mod func(*Config)) (*snatRig, *conntrack.Table) {
	t.Helper()
	r := newSNATRigWith(t, 0, 0, mod)
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1024, MaxPerSource: 1024, SNAT: []conntrack.SNATAddr{
		{Addr: r.e.Gateway(), PortMin: HairpinPortMin, PortMax: HairpinPortMax},
		{Addr: r.e.Gateway6(), PortMin: HairpinPortMin, PortMax: HairpinPortMax}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.e.EnableServices(ServicesConfig{CIDRs: []netip.Prefix{svcCIDR, svcCIDR6}, Table: ct}); err != nil {
		t.Fatal(err)
	}
	return r, ct
}

func oneService(proto uint8, port uint16, backends ...service.Backend) []service.Service {
	return []service.Service{{Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{vip, vip6},
		Ports: []service.Port{{Name: "p", Proto: proto, Port: port, Backends: backends}}}}
}

func ready(a netip.Addr, port uint16) service.Backend {
	return service.Backend{Addr: a, Port: port, Ready: true, Serving: true}
}

// expectB reads a packet from pod B's port and checks addresses and checksums.
func expectB(t *testing.T, r *snatRig, src, dst netip.Addr) []byte {
	t.Helper()
	ip := checkEth(t, r.e, r.get(t, r.b), macB)
	_, s, d, _ := l4Of(ip)
	if s != src || d != dst {
		t.Fatalf("pod B got %s -> %s, want %s -> %s", s, d, src, dst)
	}
	checkSums(t, ip)
	return ip
}

// TestServiceClusterIP: pod A reaches pod B through a ClusterIP, TCP and
// UDP, both families; B sees A's own address, A sees the Service's.
func TestServiceClusterIP(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
			name := service.ProtoName(proto) + map[bool]string{false: "4", true: "6"}[v6]
			t.Run(name, func(t *testing.T) {
				r, _ := newSvcRig(t)
				a, b, v := addrA, addrB, vip
				if v6 {
					a, b, v = addrA6, addrB6, vip6
				}
				if err := r.e.SetServices(service.NewTable(oneService(proto, 80, ready(b, 8080)), service.Options{})); err != nil {
					t.Fatal(err)
				}
				seg := func(sp, dp uint16, flags header.TCPFlags) ([]byte, uint8) {
					if proto == packet.ProtoTCP {
						return tcpSeg(sp, dp, flags, 1, 0, 10), uint8(header.TCPProtocolNumber)
					}
					return udpSeg(sp, dp, 10), uint8(header.UDPProtocolNumber)
				}
				l4, pn := seg(40000, 80, header.TCPFlagSyn)
				send(t, r.a, eth(r.e, macA, ipPacket(a, v, tcpip.TransportProtocolNumber(pn), l4)))
				got := expectB(t, r, a, b)
				if sp, dp := ports(got); sp != 40000 || dp != 8080 {
					t.Fatalf("at the backend: ports %d -> %d", sp, dp)
				}
				l4, _ = seg(8080, 40000, header.TCPFlagSyn|header.TCPFlagAck)
				send(t, r.b, eth(r.e, macB, ipPacket(b, a, tcpip.TransportProtocolNumber(pn), l4)))
				back := expectPod(t, r, v, a)
				if sp, dp := ports(back); sp != 80 || dp != 40000 {
					t.Fatalf("at the client: ports %d -> %d", sp, dp)
				}
				if st := r.e.ServiceStats(); st.Flows != 1 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// TestServiceNoEndpoints: a new flow to a Service port without a backend
// is refused with ICMP port unreachable; a port the Service does not have
// too; an SCTP packet to a Service address is dropped and counted.
func TestServiceNoEndpoints(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoTCP, 80), service.Options{})); err != nil {
		t.Fatal(err)
	}
	syn := ipPacket(addrA, vip, header.TCPProtocolNumber, tcpSeg(40000, 80, header.TCPFlagSyn, 1, 0, 0))
	send(t, r.a, eth(r.e, macA, syn))
	ip := checkEth(t, r.e, r.get(t, r.a), macA)
	checkICMPv4(t, r.e, ip, addrA, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, syn)
	other := ipPacket(addrA, vip, header.TCPProtocolNumber, tcpSeg(40000, 81, header.TCPFlagSyn, 1, 0, 0))
	send(t, r.a, eth(r.e, macA, other))
	ip = checkEth(t, r.e, r.get(t, r.a), macA)
	checkICMPv4(t, r.e, ip, addrA, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, other)
	sctp := ipv4(addrA, vip, ipOpts{payload: 20})
	sctp[9] = 132 // SCTP: checksums are not looked at on the way to the drop
	header.IPv4(sctp).SetChecksum(0)
	header.IPv4(sctp).SetChecksum(^header.IPv4(sctp).CalculateChecksum())
	send(t, r.a, eth(r.e, macA, sctp))
	r.noPacket(t, r.b)
	st := r.e.ServiceStats()
	d := r.pa.Stats().Drops
	if st.NoEndpoints != 1 || st.NoPort != 1 || st.Unsupported != 1 || d[DropNoEndpoints] != 1 || d[DropServicePort] != 2 {
		t.Fatalf("stats %+v, drops %v", st, d)
	}
}

// TestServiceHairpin: pod A reaches its own Service and is the backend:
// it sees the flow come from the gateway, and its answer comes back as
// from the Service.
func TestServiceHairpin(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoUDP, 53, ready(addrA, 5353)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7000, 53, 10))))
	got := expectPod(t, r, r.e.Gateway(), addrA)
	np, dp := ports(got)
	if np < HairpinPortMin || np > HairpinPortMax || dp != 5353 {
		t.Fatalf("hairpin ports %d -> %d", np, dp)
	}
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, r.e.Gateway(), header.UDPProtocolNumber, udpSeg(5353, np, 4))))
	back := expectPod(t, r, vip, addrA)
	if sp, dp := ports(back); sp != 53 || dp != 7000 {
		t.Fatalf("hairpin answer ports %d -> %d", sp, dp)
	}
	if st := r.e.ServiceStats(); st.Hairpins != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestServiceUDPFlush: when a UDP backend leaves, its flows go at once and
// the next datagram picks a live backend; a TCP flow to a removed
// backend keeps its translation.
func TestServiceUDPFlush(t *testing.T) {
	r, ct := newSvcRig(t)
	svcs := []service.Service{{Namespace: "ns", Name: "dns", ClusterIPs: []netip.Addr{vip}, Ports: []service.Port{
		{Name: "udp", Proto: packet.ProtoUDP, Port: 53, Backends: []service.Backend{ready(addrB, 53)}},
		{Name: "tcp", Proto: packet.ProtoTCP, Port: 53, Backends: []service.Backend{ready(addrB, 53)}}}}}
	t1 := service.NewTable(svcs, service.Options{})
	if err := r.e.SetServices(t1); err != nil {
		t.Fatal(err)
	}
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7000, 53, 10))))
	expectB(t, r, addrA, addrB)
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, vip, header.TCPProtocolNumber, tcpSeg(7001, 53, header.TCPFlagSyn, 1, 0, 0))))
	expectB(t, r, addrA, addrB)
	if ct.Len() != 2 {
		t.Fatalf("%d flows", ct.Len())
	}
	svcs[0].Ports[0].Backends = []service.Backend{ready(addrA6, 53)} // another family: none usable for v4
	svcs[0].Ports[1].Backends = nil
	if err := r.e.SetServices(service.NewTable(svcs, service.Options{Prev: t1})); err != nil {
		t.Fatal(err)
	}
	if st := r.e.ServiceStats(); st.Flushed != 1 || ct.Len() != 1 {
		t.Fatalf("after the backend left: stats %+v, %d flows", st, ct.Len())
	}
	// The TCP flow's replies are still translated.
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, addrA, header.TCPProtocolNumber, tcpSeg(53, 7001, header.TCPFlagSyn|header.TCPFlagAck, 9, 2, 0))))
	expectPod(t, r, vip, addrA)
	// A new UDP datagram finds no backend.
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7000, 53, 10))))
	ip := checkEth(t, r.e, r.get(t, r.a), macA)
	if header.IPv4(ip).TransportProtocol() != header.ICMPv4ProtocolNumber {
		t.Fatal("want ICMP port unreachable")
	}
}

// TestServiceFromUplink: the node reaches a ClusterIP through its uplink
// (hostNetwork pods, the kubelet). The error the engine sends about a
// too-big packet to a Service quotes the packet as the client sent it.
func TestServiceFromUplink(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoTCP, 80, ready(addrB, 8080)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	node := netip.MustParseAddr("172.29.0.1")
	send(t, r.up, ipPacket(node, vip, header.TCPProtocolNumber, tcpSeg(40000, 80, header.TCPFlagSyn, 1, 0, 0)))
	// From outside the cluster CIDRs: the backend sees the gateway (a
	// backend that is another node's host must answer through here).
	got := expectB(t, r, r.e.Gateway(), addrB)
	np, _ := ports(got)
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, r.e.Gateway(), header.TCPProtocolNumber, tcpSeg(8080, np, header.TCPFlagSyn|header.TCPFlagAck, 9, 2, 0))))
	out := r.get(t, r.up)
	if _, s, d, _ := l4Of(out); s != vip || d != node {
		t.Fatalf("reply at the host: %s -> %s", s, d)
	}
	if sp, dp := ports(out); sp != 80 || dp != 40000 {
		t.Fatalf("reply at the host: ports %d -> %d", sp, dp)
	}
	checkSums(t, out)
	// From a pod: too big for pod B's port (MTU 1500), DF set: the error
	// quotes the packet as A sent it, to the Service.
	big := ipPacket(addrA, vip, header.TCPProtocolNumber, tcpSeg(40001, 80, header.TCPFlagSyn, 2, 0, 1600))
	header.IPv4(big).SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	header.IPv4(big).SetChecksum(0)
	header.IPv4(big).SetChecksum(^header.IPv4(big).CalculateChecksum())
	send(t, r.a, eth(r.e, macA, big))
	e := checkEth(t, r.e, r.get(t, r.a), macA)
	checkICMPv4(t, r.e, e, addrA, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, big)
}

// TestServiceAffinity: with ClientIP affinity every flow of a client goes
// to the same backend.
func TestServiceAffinity(t *testing.T) {
	svcs := oneService(packet.ProtoUDP, 53, ready(addrB, 53), ready(netip.MustParseAddr("10.244.1.9"), 53), ready(netip.MustParseAddr("10.244.1.10"), 53))
	svcs[0].Affinity = time.Hour
	tab := service.NewTable(svcs, service.Options{})
	f := tab.Frontend(vip, 53, packet.ProtoUDP)
	first, _ := f.Pick(addrA, time.Now())
	for range 50 {
		if b, _ := f.Pick(addrA, time.Now()); b != first {
			t.Fatalf("affinity broken: %v then %v", first, b)
		}
	}
	seen := map[netip.AddrPort]bool{}
	svcs[0].Affinity = 0
	f = service.NewTable(svcs, service.Options{}).Frontend(vip, 53, packet.ProtoUDP)
	for range 200 {
		b, _ := f.Pick(addrA, time.Now())
		seen[b] = true
	}
	if len(seen) != 3 {
		t.Fatalf("without affinity 200 flows reached %d of 3 backends", len(seen))
	}
}

// svcBenchRig is benchRig's routed rig with the load balancer on and
// 10,000 Services of 10 backends each loaded (100,000 endpoints, in the
// peers' podCIDRs); port a's packets go to one of the Services, UDP
// 1000 -> VIP:2000, and leave through the peer port (the sink returned).
func svcBenchRig(tb testing.TB, size int) (*worker, *sink, func()) {
	w, _, done := benchRig(tb, size, true)
	e := w.e
	ct, err := conntrack.New(conntrack.Config{SNAT: []conntrack.SNATAddr{{Addr: e.Gateway(), PortMin: HairpinPortMin, PortMax: HairpinPortMax}}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.EnableServices(ServicesConfig{CIDRs: []netip.Prefix{svcCIDR}, Table: ct}); err != nil {
		tb.Fatal(err)
	}
	svcs := make([]service.Service, 10000)
	for i := range svcs {
		v := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		var bs []service.Backend
		for j := range 10 {
			n := (i*10 + j) % 1000 // one of the peers' /24s
			bs = append(bs, ready(netip.AddrFrom4([4]byte{172, byte(16 + n/256), byte(n), byte(2 + j)}), 8080))
		}
		svcs[i] = service.Service{Namespace: "bench", Name: fmt.Sprint("s", i), ClusterIPs: []netip.Addr{v},
			Ports: []service.Port{{Name: "p", Proto: packet.ProtoUDP, Port: 2000, Backends: bs}}}
	}
	if err := e.SetServices(service.NewTable(svcs, service.Options{})); err != nil {
		tb.Fatal(err)
	}
	var peer *sink
	for _, p := range e.Ports() {
		if p.cfg.Kind == KindPeer {
			peer = p.dev.(*sink)
		}
	}
	frame := eth(e, macA, ipv4(addrA, netip.AddrFrom4([4]byte{10, 96, 19, 136}), ipOpts{ttl: 64, payload: size - 14 - 28}))
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame)
		w.sizes[i] = len(frame)
	}
	return w, peer, done
}

// TestServiceICMPErrorRelated: the backend's port unreachable about a
// datagram sent to it reaches the client from the Service, quoting the
// datagram the client sent (to the Service).
func TestServiceICMPErrorRelated(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoUDP, 53, ready(addrB, 5353)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7000, 53, 12))))
	got := expectB(t, r, addrA, addrB)
	send(t, r.b, eth(r.e, macB, icmpError(addrB, addrA, got)))
	back := expectPod(t, r, vip, addrA)
	c := header.ICMPv4(header.IPv4(back).Payload())
	if c.Type() != header.ICMPv4DstUnreachable || c.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("ICMP %d/%d", c.Type(), c.Code())
	}
	q := header.IPv4(c.Payload())
	if !q.IsChecksumValid() || netip.AddrFrom4(q.SourceAddress().As4()) != addrA || netip.AddrFrom4(q.DestinationAddress().As4()) != vip {
		t.Fatalf("quoted %s -> %s (checksum valid %v)", q.SourceAddress(), q.DestinationAddress(), q.IsChecksumValid())
	}
	if sp, dp := ports(c.Payload()); sp != 7000 || dp != 53 {
		t.Fatalf("quoted ports %d -> %d", sp, dp)
	}
}

// frag4 cuts the IPv4 packet ip into fragments of at most 8*n payload
// bytes each (RFC 791), ID 77.
func frag4(ip []byte, n int) [][]byte {
	payload := ip[20:]
	var out [][]byte
	for off := 0; off < len(payload); off += 8 * n {
		end := min(off+8*n, len(payload))
		f := make([]byte, 20+end-off)
		copy(f, ip[:20])
		copy(f[20:], payload[off:end])
		h := header.IPv4(f)
		flags := uint8(0)
		if end < len(payload) {
			flags = header.IPv4FlagMoreFragments
		}
		h.SetTotalLength(uint16(len(f)))
		h.SetFlagsFragmentOffset(flags, uint16(off))
		h.SetID(77)
		h.SetChecksum(0)
		h.SetChecksum(^h.CalculateChecksum())
		out = append(out, f)
	}
	return out
}

// TestServiceFragments: a UDP datagram to a Service that arrives in
// fragments reaches the backend whole (every fragment translated as the
// first), and the backend's fragmented answer reaches the client from
// the Service.
func TestServiceFragments(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoUDP, 53, ready(addrB, 5353)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	dgram := ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7000, 53, 2000))
	frags := frag4(dgram, 100) // 800-byte fragments
	for _, f := range frags {
		send(t, r.a, eth(r.e, macA, f))
	}
	var got [][]byte
	for range frags {
		ip := checkEth(t, r.e, r.get(t, r.b), macB)
		h := header.IPv4(ip)
		if !h.IsChecksumValid() || netip.AddrFrom4(h.SourceAddress().As4()) != addrA || netip.AddrFrom4(h.DestinationAddress().As4()) != addrB {
			t.Fatalf("fragment at the backend: %s -> %s", h.SourceAddress(), h.DestinationAddress())
		}
		got = append(got, ip)
	}
	// Reassembled, the datagram's UDP checksum holds for the backend.
	whole := append([]byte(nil), got[0][:20]...)
	for _, f := range got {
		whole = append(whole, f[20:]...)
	}
	header.IPv4(whole).SetTotalLength(uint16(len(whole)))
	header.IPv4(whole).SetFlagsFragmentOffset(0, 0)
	if p, d := ports(whole); p != 7000 || d != 5353 {
		t.Fatalf("ports %d -> %d", p, d)
	}
	if s := fullSum(whole); s != 0xffff {
		t.Fatalf("reassembled datagram's checksum wrong (sum %#04x)", s)
	}
	// The answer, fragmented by the backend.
	answer := ipPacket(addrB, addrA, header.UDPProtocolNumber, udpSeg(5353, 7000, 1500))
	afr := frag4(answer, 100)
	for _, f := range afr {
		send(t, r.b, eth(r.e, macB, f))
	}
	for range afr {
		ip := checkEth(t, r.e, r.get(t, r.a), macA)
		h := header.IPv4(ip)
		if !h.IsChecksumValid() || netip.AddrFrom4(h.SourceAddress().As4()) != vip || netip.AddrFrom4(h.DestinationAddress().As4()) != addrA {
			t.Fatalf("answer fragment at the client: %s -> %s", h.SourceAddress(), h.DestinationAddress())
		}
	}
	// A later fragment whose first was never seen is dropped.
	stray := frag4(ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(7001, 53, 2000)), 100)[1]
	header.IPv4(stray).SetID(78)
	header.IPv4(stray).SetChecksum(0)
	header.IPv4(stray).SetChecksum(^header.IPv4(stray).CalculateChecksum())
	send(t, r.a, eth(r.e, macA, stray))
	r.noPacket(t, r.b)
}
