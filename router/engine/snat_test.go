package engine

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

var (
	snatAddr   = netip.MustParseAddr("198.51.100.7") // TEST-NET-2
	snatAddr6  = netip.MustParseAddr("2001:db8:5::7")
	outside6   = netip.MustParseAddr("2001:db8:1::10")
	otherNode  = netip.MustParseAddr("10.244.2.5") // a pod of another node: cluster CIDR
	otherNodes = netip.MustParsePrefix("10.244.2.0/24")
)

// snatRig is an engine with two L2 pod ports (A, B) and an L3 uplink port
// with SNAT: default routes and another node's podCIDR go to the uplink.
type snatRig struct {
	e      *Engine
	a, b   *linktest.End
	up     *linktest.End
	pa, pu *Port
	ct     *conntrack.Table
	rx     map[*linktest.End]chan []byte // what each end received
}

// reader collects what end receives until the pipe closes.
func reader(end *linktest.End) chan []byte {
	ch := make(chan []byte, 64)
	go func() {
		defer close(ch)
		bufs, sizes := [][]byte{make([]byte, 70000)}, []int{0}
		for {
			n, err := end.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			if n == 1 {
				ch <- append([]byte(nil), bufs[0][:sizes[0]]...)
			}
		}
	}()
	return ch
}

// get returns the next packet end received within a second, or fails.
func (r *snatRig) get(t *testing.T, end *linktest.End) []byte {
	t.Helper()
	b, ok := r.tryGet(end, time.Second)
	if !ok {
		t.Fatalf("no packet; pod a drops %v, uplink drops %v, conntrack %+v", r.pa.Stats().Drops, r.pu.Stats().Drops, r.ct.Stats())
	}
	return b
}

func (r *snatRig) tryGet(end *linktest.End, d time.Duration) ([]byte, bool) {
	select {
	case b, ok := <-r.rx[end]:
		return b, ok
	case <-time.After(d):
		return nil, false
	}
}

func newSNATRig(t *testing.T, portMin, portMax uint16) *snatRig {
	t.Helper()
	return newSNATRigWith(t, portMin, portMax, nil)
}

// newSNATRigWith is newSNATRig with the engine's Config as mod leaves it.
func newSNATRigWith(t *testing.T, portMin, portMax uint16, mod func(*Config)) *snatRig {
	t.Helper()
	checkGoroutines(t)
	cfg := Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}, Logger: zaptest.NewLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1024, MaxPerSource: 1024, SNAT: []conntrack.SNATAddr{
		{Addr: snatAddr, PortMin: portMin, PortMax: portMax}, {Addr: snatAddr6, PortMin: portMin, PortMax: portMax}}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}, NodeAddr: snatAddr, NodeAddr6: snatAddr6})
	if err != nil {
		t.Fatal(err)
	}
	r := &snatRig{e: e, ct: ct}
	attach := func(pc PortConfig) (*linktest.End, *Port) {
		host, port := linktest.Pipe(256, 9000, 64)
		p, err := e.AddPort(port, pc)
		if err != nil {
			t.Fatal(err)
		}
		return host, p
	}
	r.a, r.pa = attach(PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}})
	r.b, _ = attach(PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB, addrB6}})
	r.up, r.pu = attach(PortConfig{Name: "up", Kind: KindUplink, MTU: 1500,
		SNAT: &SNAT{Table: ct, Policy: pol, Addr: snatAddr, Addr6: snatAddr6}})
	r.rx = map[*linktest.End]chan []byte{r.a: reader(r.a), r.b: reader(r.b), r.up: reader(r.up)}
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(r.pu.idx)},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(r.pu.idx)},
		{Prefix: otherNodes, NextHop: route.ToEgress(r.pu.idx)},
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

func taddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// ipPacket wraps the transport segment l4 (checksum field zero) in an IP
// header src->dst and fills in every checksum.
func ipPacket(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, l4 []byte) []byte {
	var b []byte
	if src.Is4() {
		b = make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto), ID: 9, SrcAddr: taddr(src), DstAddr: taddr(dst)})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
	} else {
		b = make([]byte, header.IPv6MinimumSize+len(l4))
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4)), TransportProtocol: proto, HopLimit: 64, SrcAddr: taddr(src), DstAddr: taddr(dst)})
		copy(b[header.IPv6MinimumSize:], l4)
	}
	fillL4Checksum(b)
	return b
}

// l4Of returns an IP packet's transport protocol and segment.
func l4Of(ip []byte) (tcpip.TransportProtocolNumber, netip.Addr, netip.Addr, []byte) {
	if ip[0]>>4 == 4 {
		h := header.IPv4(ip)
		return h.TransportProtocol(), netip.AddrFrom4(h.SourceAddress().As4()), netip.AddrFrom4(h.DestinationAddress().As4()), h.Payload()
	}
	h := header.IPv6(ip)
	return h.TransportProtocol(), netip.AddrFrom16(h.SourceAddress().As16()), netip.AddrFrom16(h.DestinationAddress().As16()), h.Payload()
}

// csumAt returns where the checksum field of a transport protocol is.
func csumAt(proto tcpip.TransportProtocolNumber) int {
	switch proto {
	case header.TCPProtocolNumber:
		return 16
	case header.UDPProtocolNumber:
		return 6
	}
	return 2 // ICMP
}

// fullSum returns the ones' complement sum over the transport segment
// and, except for ICMPv4, the pseudo-header: 0xffff when the checksum is
// right.
func fullSum(ip []byte) uint16 {
	proto, src, dst, l4 := l4Of(ip)
	var init uint16
	if proto != header.ICMPv4ProtocolNumber {
		init = header.PseudoHeaderChecksum(proto, taddr(src), taddr(dst), uint16(len(l4)))
	}
	return checksum.Checksum(l4, init)
}

func fillL4Checksum(ip []byte) {
	proto, _, _, l4 := l4Of(ip)
	at := csumAt(proto)
	l4[at], l4[at+1] = 0, 0
	c := ^fullSum(ip)
	if c == 0 && proto == header.UDPProtocolNumber {
		c = 0xffff
	}
	l4[at], l4[at+1] = byte(c>>8), byte(c)
}

// checkSums fails unless the IPv4 header checksum (when IPv4) and the
// transport checksum of ip, recomputed in full, are right.
func checkSums(t *testing.T, ip []byte) {
	t.Helper()
	if ip[0]>>4 == 4 {
		h := header.IPv4(ip)
		if !h.IsValid(len(ip)) || !h.IsChecksumValid() {
			t.Fatalf("bad IPv4 header % x", ip[:20])
		}
	}
	if s := fullSum(ip); s != 0xffff {
		t.Fatalf("transport checksum wrong (sum %#04x)", s)
	}
}

func tcpSeg(sport, dport uint16, flags header.TCPFlags, seq, ack uint32, payload int) []byte {
	b := make([]byte, header.TCPMinimumSize+payload)
	header.TCP(b).Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: seq, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535})
	for i := range payload {
		b[header.TCPMinimumSize+i] = byte(i * 3)
	}
	return b
}

func udpSeg(sport, dport uint16, payload int) []byte {
	b := make([]byte, header.UDPMinimumSize+payload)
	header.UDP(b).Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(b))})
	for i := range payload {
		b[header.UDPMinimumSize+i] = byte(i + 1)
	}
	return b
}

func echo(v6, reply bool, id, seq uint16) []byte {
	b := make([]byte, header.ICMPv4MinimumSize+16)
	typ := byte(header.ICMPv4Echo)
	switch {
	case v6 && reply:
		typ = byte(header.ICMPv6EchoReply)
	case v6:
		typ = byte(header.ICMPv6EchoRequest)
	case reply:
		typ = byte(header.ICMPv4EchoReply)
	}
	b[0] = typ
	b[4], b[5], b[6], b[7] = byte(id>>8), byte(id), byte(seq>>8), byte(seq)
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// ports returns a TCP/UDP segment's ports.
func ports(ip []byte) (uint16, uint16) {
	_, _, _, l4 := l4Of(ip)
	return uint16(l4[0])<<8 | uint16(l4[1]), uint16(l4[2])<<8 | uint16(l4[3])
}

// expectOut reads a packet from the uplink and checks its addresses and checksums.
func expectOut(t *testing.T, r *snatRig, src, dst netip.Addr) []byte {
	t.Helper()
	ip := r.get(t, r.up)
	_, s, d, _ := l4Of(ip)
	if s != src || d != dst {
		t.Fatalf("uplink got %s -> %s, want %s -> %s", s, d, src, dst)
	}
	checkSums(t, ip)
	return ip
}

// expectPod reads a packet from pod A's port and checks addresses and checksums.
func expectPod(t *testing.T, r *snatRig, src, dst netip.Addr) []byte {
	t.Helper()
	ip := checkEth(t, r.e, r.get(t, r.a), macA)
	_, s, d, _ := l4Of(ip)
	if s != src || d != dst {
		t.Fatalf("pod got %s -> %s, want %s -> %s", s, d, src, dst)
	}
	checkSums(t, ip)
	return ip
}

func (r *snatRig) noPacket(t *testing.T, end *linktest.End) {
	t.Helper()
	if b, ok := r.tryGet(end, 100*time.Millisecond); ok {
		t.Fatalf("unexpected packet % x", b[:min(len(b), 40)])
	}
}

func TestSNATTCP(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	tcp := header.TCPProtocolNumber
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside, tcp, tcpSeg(40000, 80, header.TCPFlagSyn, 100, 0, 0))))
	out := expectOut(t, r, snatAddr, outside)
	natPort, dport := ports(out)
	if natPort < conntrack.DefaultPortMin || natPort > conntrack.DefaultPortMax || dport != 80 {
		t.Fatalf("ports %d -> %d", natPort, dport)
	}
	if header.IPv4(out).TTL() != 63 {
		t.Fatalf("TTL %d, want 63", header.IPv4(out).TTL())
	}
	// The SYN/ACK comes back to the SNAT address and reaches the pod.
	send(t, r.up, ipPacket(outside, snatAddr, tcp, tcpSeg(80, natPort, header.TCPFlagSyn|header.TCPFlagAck, 5000, 101, 0)))
	back := expectPod(t, r, outside, addrA)
	if sp, dp := ports(back); sp != 80 || dp != 40000 {
		t.Fatalf("reply ports %d -> %d, want 80 -> 40000", sp, dp)
	}
	// Data both ways keeps the translation.
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside, tcp, tcpSeg(40000, 80, header.TCPFlagAck|header.TCPFlagPsh, 101, 5001, 300))))
	out = expectOut(t, r, snatAddr, outside)
	if sp, _ := ports(out); sp != natPort {
		t.Fatalf("data from port %d, want %d", sp, natPort)
	}
	send(t, r.up, ipPacket(outside, snatAddr, tcp, tcpSeg(80, natPort, header.TCPFlagAck, 5001, 401, 1000)))
	expectPod(t, r, outside, addrA)
	fl, dir, ok := r.ct.Get(conntrack.MakeTuple(packet.ProtoTCP, netip.AddrPortFrom(addrA, 40000), netip.AddrPortFrom(outside, 80)), r.ct.Now())
	if !ok || dir != conntrack.Original || !fl.NAT || fl.State != conntrack.StateEstablished || fl.Reply.Dst() != netip.AddrPortFrom(snatAddr, natPort) {
		t.Fatalf("flow %+v dir %v ok %v", fl, dir, ok)
	}
	if s := r.pu.Stats(); s.TotalDrops() != 0 {
		t.Fatalf("uplink drops %v", s.Drops)
	}
}

func TestSNATUDP(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	udp := header.UDPProtocolNumber
	for _, c := range []struct{ pod, out, nat netip.Addr }{{addrA, outside, snatAddr}, {addrA6, outside6, snatAddr6}} {
		send(t, r.a, eth(r.e, macA, ipPacket(c.pod, c.out, udp, udpSeg(5353, 53, 40))))
		out := expectOut(t, r, c.nat, c.out)
		natPort, _ := ports(out)
		send(t, r.up, ipPacket(c.out, c.nat, udp, udpSeg(53, natPort, 120)))
		back := expectPod(t, r, c.out, c.pod)
		if sp, dp := ports(back); sp != 53 || dp != 5353 {
			t.Fatalf("%s: reply ports %d -> %d", c.pod, sp, dp)
		}
		// A datagram to the SNAT address on another port is no reply.
		send(t, r.up, ipPacket(c.out, c.nat, udp, udpSeg(53, natPort+1, 10)))
		r.noPacket(t, r.a)
	}
	if got := r.pu.Stats().Drops[DropNoConntrack]; got != 2 {
		t.Fatalf("no-conntrack drops %d, want 2", got)
	}
}

func TestSNATICMPEcho(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	for _, c := range []struct {
		pod, out, nat netip.Addr
		proto         tcpip.TransportProtocolNumber
	}{{addrA, outside, snatAddr, header.ICMPv4ProtocolNumber}, {addrA6, outside6, snatAddr6, header.ICMPv6ProtocolNumber}} {
		v6 := c.pod.Is6()
		send(t, r.a, eth(r.e, macA, ipPacket(c.pod, c.out, c.proto, echo(v6, false, 0x4242, 1))))
		out := expectOut(t, r, c.nat, c.out)
		_, _, _, l4 := l4Of(out)
		id := uint16(l4[4])<<8 | uint16(l4[5])
		send(t, r.up, ipPacket(c.out, c.nat, c.proto, echo(v6, true, id, 1)))
		back := expectPod(t, r, c.out, c.pod)
		_, _, _, l4 = l4Of(back)
		if got := uint16(l4[4])<<8 | uint16(l4[5]); got != 0x4242 {
			t.Fatalf("%s: echo reply id %#x, want 0x4242", c.pod, got)
		}
		// An echo request from outside to the SNAT address is dropped.
		send(t, r.up, ipPacket(c.out, c.nat, c.proto, echo(v6, false, id, 2)))
		r.noPacket(t, r.a)
		r.noPacket(t, r.up)
	}
	if got := r.pu.Stats().Drops[DropNoConntrack]; got != 2 {
		t.Fatalf("no-conntrack drops %d, want 2", got)
	}
}

// icmpError builds an ICMPv4 port unreachable from src to dst quoting orig.
func icmpError(src, dst netip.Addr, orig []byte) []byte {
	b := make([]byte, header.ICMPv4MinimumSize+len(orig))
	b[0], b[1] = byte(header.ICMPv4DstUnreachable), byte(header.ICMPv4PortUnreachable)
	copy(b[header.ICMPv4MinimumSize:], orig)
	return ipPacket(src, dst, header.ICMPv4ProtocolNumber, b)
}

func TestSNATICMPErrorRelated(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	udp := header.UDPProtocolNumber
	sent := ipPacket(addrA, outside, udp, udpSeg(5000, 9999, 20))
	send(t, r.a, eth(r.e, macA, sent))
	out := expectOut(t, r, snatAddr, outside)
	natPort, _ := ports(out)
	// The outside host answers with port unreachable, quoting the
	// translated datagram as it received it.
	send(t, r.up, icmpError(outside, snatAddr, out))
	back := expectPod(t, r, outside, addrA)
	c := header.ICMPv4(header.IPv4(back).Payload())
	if c.Type() != header.ICMPv4DstUnreachable || c.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("ICMP %d/%d", c.Type(), c.Code())
	}
	q := header.IPv4(c.Payload())
	if !q.IsChecksumValid() || netip.AddrFrom4(q.SourceAddress().As4()) != addrA || netip.AddrFrom4(q.DestinationAddress().As4()) != outside {
		t.Fatalf("quoted %s -> %s (checksum valid %v)", q.SourceAddress(), q.DestinationAddress(), q.IsChecksumValid())
	}
	if sp, dp := ports(c.Payload()); sp != 5000 || dp != 9999 {
		t.Fatalf("quoted ports %d -> %d", sp, dp)
	}
	// The quote is the pod's datagram as it sent it, but for the TTL.
	qq := append([]byte(nil), c.Payload()...)
	header.IPv4(qq).SetTTL(64)
	header.IPv4(qq).SetChecksum(0)
	header.IPv4(qq).SetChecksum(^header.IPv4(qq).CalculateChecksum())
	checkSums(t, qq)
	if !bytes.Equal(qq, sent) {
		t.Fatalf("quote\n% x\nwant\n% x", qq, sent)
	}
	// An error quoting a port no flow has is dropped.
	bad := append([]byte(nil), out...)
	header.UDP(header.IPv4(bad).Payload()).SetSourcePort(natPort + 1)
	send(t, r.up, icmpError(outside, snatAddr, bad))
	r.noPacket(t, r.a)
	if got := r.pu.Stats().Drops[DropNoConntrack]; got != 1 {
		t.Fatalf("no-conntrack drops %d, want 1", got)
	}
}

func TestSNATPortExhaustion(t *testing.T) {
	r := newSNATRig(t, 41000, 41001) // two ports
	udp := header.UDPProtocolNumber
	seen := map[uint16]bool{}
	for sport := uint16(1000); sport < 1003; sport++ {
		send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside, udp, udpSeg(sport, 53, 8))))
		if sport == 1002 {
			r.noPacket(t, r.up)
			break
		}
		p, _ := ports(expectOut(t, r, snatAddr, outside))
		if p < 41000 || p > 41001 || seen[p] {
			t.Fatalf("port %d (seen %v)", p, seen)
		}
		seen[p] = true
	}
	if got := r.pa.Stats().Drops[DropSNAT]; got != 1 {
		t.Fatalf("snat drops %d, want 1", got)
	}
	if got := r.ct.Stats().Drops[conntrack.DropPortsExhausted]; got != 1 {
		t.Fatalf("conntrack ports-exhausted %d, want 1", got)
	}
	// Another destination may reuse the ports.
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside.Next(), udp, udpSeg(1002, 53, 8))))
	expectOut(t, r, snatAddr, outside.Next())
}

func TestSNATNeverInCluster(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	udp := header.UDPProtocolNumber
	// Pod to pod on this node: switched, unchanged.
	p := ipPacket(addrA, addrB, udp, udpSeg(1, 2, 10))
	send(t, r.a, eth(r.e, macA, p))
	if got := checkEth(t, r.e, r.get(t, r.b), macB); !bytes.Equal(got, p) {
		t.Fatal("pod to pod packet changed")
	}
	// Pod to another node's pod through the SNAT port: source kept.
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, otherNode, udp, udpSeg(1, 2, 10))))
	expectOut(t, r, addrA, otherNode)
	// And that pod's reply, to the pod's own address, passes untouched.
	send(t, r.up, ipPacket(otherNode, addrA, udp, udpSeg(2, 1, 10)))
	expectPod(t, r, otherNode, addrA)
	if r.ct.Len() != 0 {
		t.Fatalf("%d flows tracked, want none", r.ct.Len())
	}
	// Unmatched TCP to the SNAT address: dropped, counted.
	send(t, r.up, ipPacket(outside, snatAddr, header.TCPProtocolNumber, tcpSeg(80, 40000, header.TCPFlagSyn, 1, 0, 0)))
	r.noPacket(t, r.a)
	if got := r.pu.Stats().Drops[DropNoConntrack]; got != 1 {
		t.Fatalf("no-conntrack drops %d, want 1", got)
	}
}

// TestSNATPartialChecksum: a packet with a partial checksum and a TSO
// super-packet keep a right pseudo-header sum after translation, whether
// the uplink takes them as they are or the engine finishes them.
func TestSNATPartialChecksum(t *testing.T) {
	for _, upOffloads := range []packet.Offloads{0, packet.OffloadCsum | packet.OffloadTSO4} {
		e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}})
		if err != nil {
			t.Fatal(err)
		}
		ct, err := conntrack.New(conntrack.Config{MaxEntries: 64, SNAT: []conntrack.SNATAddr{{Addr: snatAddr}}})
		if err != nil {
			t.Fatal(err)
		}
		pol, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{clusterCIDR}, NodeAddr: snatAddr})
		if err != nil {
			t.Fatal(err)
		}
		a, up := newGSODev(packet.OffloadCsum|packet.OffloadTSO4), newGSODev(upOffloads)
		if _, err := e.AddPort(a, PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
			t.Fatal(err)
		}
		pu, err := e.AddPort(up, PortConfig{Name: "up", Kind: KindUplink, MTU: 1500, SNAT: &SNAT{Table: ct, Policy: pol, Addr: snatAddr}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.SetRoutes([]route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(pu.idx)}}); err != nil {
			t.Fatal(err)
		}
		tcp := header.TCPProtocolNumber
		// Handshake with plain packets.
		a.in <- gsoFrame{b: eth(e, macA, ipPacket(addrA, outside, tcp, tcpSeg(40000, 5201, header.TCPFlagSyn, 999, 0, 0)))}
		syn := up.wait(t).b
		checkSums(t, syn)
		natPort, _ := ports(syn)
		up.in <- gsoFrame{b: ipPacket(outside, snatAddr, tcp, tcpSeg(5201, natPort, header.TCPFlagSyn|header.TCPFlagAck, 1, 1000, 0))}
		checkSums(t, checkEth(t, e, a.wait(t).b, macA))

		// A partial checksum (not a super-packet).
		ip, g := tsoFrame(addrA, outside, 1000, 1448)
		g.Type, g.Size = packet.GSONone, 0
		a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
		f := up.wait(t)
		if _, s, _, _ := l4Of(f.b); s != snatAddr {
			t.Fatalf("source %s", s)
		}
		if sp, _ := ports(f.b); sp != natPort {
			t.Fatalf("source port %d, want %d", sp, natPort)
		}
		if f.g.NeedsCsum {
			if err := packet.FinishChecksum(f.b, f.g); err != nil {
				t.Fatal(err)
			}
		}
		checkSums(t, f.b)

		// A super-packet: passed whole, its pseudo-header sum must be the
		// translated packet's; segmented, every segment must check.
		ip, g = tsoFrame(addrA, outside, 5000, 1448)
		a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
		if upOffloads&packet.OffloadTSO4 != 0 {
			f := up.wait(t)
			if f.g.Type != packet.GSOTCPv4 {
				t.Fatalf("descriptor %+v", f.g)
			}
			h := header.IPv4(f.b)
			seg := header.TCP(h.Payload())
			want := header.PseudoHeaderChecksum(tcp, h.SourceAddress(), h.DestinationAddress(), uint16(len(seg)))
			if h.SourceAddress() != taddr(snatAddr) || seg.SourcePort() != natPort || seg.Checksum() != want || !h.IsChecksumValid() {
				t.Fatalf("super-packet %s:%d, partial %#04x want %#04x", h.SourceAddress(), seg.SourcePort(), seg.Checksum(), want)
			}
			cp := append([]byte(nil), f.b...)
			if err := packet.FinishChecksum(cp, packet.GSO{NeedsCsum: true, CsumStart: g.CsumStart, CsumOffset: g.CsumOffset}); err != nil {
				t.Fatal(err)
			}
			checkSums(t, cp)
		} else {
			var n int
			for n < 5000 {
				f := up.wait(t)
				checkSums(t, f.b)
				if sp, _ := ports(f.b); sp != natPort {
					t.Fatalf("segment from port %d", sp)
				}
				_, _, _, l4 := l4Of(f.b)
				n += len(header.TCP(l4).Payload())
			}
		}
		// A partial-checksum reply read from the uplink is translated back.
		rip := ipPacket(outside, snatAddr, tcp, tcpSeg(5201, natPort, header.TCPFlagAck, 1, 6000, 500))
		seg := header.TCP(header.IPv4(rip).Payload())
		seg.SetChecksum(header.PseudoHeaderChecksum(tcp, taddr(outside), taddr(snatAddr), uint16(len(seg))))
		up.in <- gsoFrame{b: rip, g: packet.GSO{NeedsCsum: true, CsumStart: header.IPv4MinimumSize, CsumOffset: 16}}
		f = a.wait(t)
		back := checkEth(t, e, f.b, macA)
		if f.g.NeedsCsum {
			if err := packet.FinishChecksum(back, f.g); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, d, _ := l4Of(back); d != addrA {
			t.Fatalf("reply to %s", d)
		}
		checkSums(t, back)
		if s := pu.Stats(); s.TotalDrops() != 0 {
			t.Fatalf("uplink drops %v", s.Drops)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSNATConfigErrors(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ct, _ := conntrack.New(conntrack.Config{SNAT: []conntrack.SNATAddr{{Addr: snatAddr}}})
	pol, _ := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{clusterCIDR}, NodeAddr: snatAddr})
	for _, s := range []*SNAT{
		{Policy: pol, Addr: snatAddr},
		{Table: ct, Addr: snatAddr},
		{Table: ct, Policy: pol},
		{Table: ct, Policy: pol, Addr: snatAddr6},
		{Table: ct, Policy: pol, Addr6: snatAddr},
	} {
		host, dev := linktest.Pipe(4, 1500, 1)
		_, err := e.AddPort(dev, PortConfig{Name: "up", Kind: KindUplink, MTU: 1500, SNAT: s})
		if !errors.Is(err, ErrSNATConfig) {
			t.Errorf("%+v: err %v, want ErrSNATConfig", s, err)
		}
		host.Close()
		dev.Close()
	}
}

// snatBenchRig is benchRig with SNAT on the egress port: a worker for pod
// port a, driven by the caller, forwarding UDP from pod A to outside.
func snatBenchRig(tb testing.TB, size int) (*worker, *sink, []byte, func()) {
	e, err := New(Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{clusterCIDR}})
	if err != nil {
		tb.Fatal(err)
	}
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1024, SNAT: []conntrack.SNATAddr{{Addr: snatAddr}}})
	if err != nil {
		tb.Fatal(err)
	}
	pol, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{clusterCIDR}, NodeAddr: snatAddr})
	if err != nil {
		tb.Fatal(err)
	}
	so := newSink()
	pa, err := e.AddPort(newSink(), PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		tb.Fatal(err)
	}
	po, err := e.AddPort(so, PortConfig{Name: "up", Kind: KindUplink, MTU: 1500, SNAT: &SNAT{Table: ct, Policy: pol, Addr: snatAddr}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(po.idx)}}); err != nil {
		tb.Fatal(err)
	}
	w := newWorker(e, pa)
	frame := eth(e, macA, ipPacket(addrA, outside, header.UDPProtocolNumber, udpSeg(40000, 53, size-14-28)))
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], frame)
		w.sizes[i] = len(frame)
	}
	return w, so, frame, func() { e.Close() }
}

// refillSNAT restores the headers SNAT and forwarding rewrote.
func refillSNAT(w *worker, frame []byte) {
	h := frame[:14+28]
	for i := range w.bufs {
		copy(w.bufs[i][readOffset:], h)
	}
}

// BenchmarkSNAT is BenchmarkForward's routed case through a port with
// SNAT: conntrack lookup and an incremental rewrite per packet.
func BenchmarkSNAT(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			w, out, frame, done := snatBenchRig(b, size)
			defer done()
			n := len(w.bufs)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i += n {
				refillSNAT(w, frame)
				w.process(min(n, b.N-i))
			}
			if out.n.Load() != uint64(b.N) {
				b.Fatalf("forwarded %d of %d", out.n.Load(), b.N)
			}
		})
	}
}

// TestSNATFragNeededToOutside: a reply too big for the pod's port gets the
// engine's "fragmentation needed" back to the outside, translated like the
// flow (from the SNAT address, quoting the reply as the outside sent it),
// so that path MTU discovery works through the NAT.
func TestSNATFragNeededToOutside(t *testing.T) {
	r := newSNATRig(t, 0, 0)
	udp := header.UDPProtocolNumber
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside, udp, udpSeg(5000, 443, 10))))
	natPort, _ := ports(expectOut(t, r, snatAddr, outside))
	big := ipPacket(outside, snatAddr, udp, udpSeg(443, natPort, 1600))
	h := header.IPv4(big)
	h.SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 0)
	h.SetChecksum(0)
	h.SetChecksum(^h.CalculateChecksum())
	send(t, r.up, big)
	ip := r.get(t, r.up)
	_, src, dst, l4 := l4Of(ip)
	if src != snatAddr || dst != outside {
		t.Fatalf("ICMP error %s -> %s, want %s -> %s", src, dst, snatAddr, outside)
	}
	checkSums(t, ip)
	c := header.ICMPv4(l4)
	if c.Type() != header.ICMPv4DstUnreachable || c.Code() != header.ICMPv4FragmentationNeeded || c.MTU() != 1500 {
		t.Fatalf("ICMP %d/%d mtu %d", c.Type(), c.Code(), c.MTU())
	}
	q := header.IPv4(c.Payload())
	if !q.IsChecksumValid() || q.SourceAddress() != taddr(outside) || q.DestinationAddress() != taddr(snatAddr) {
		t.Fatalf("quoted %s -> %s (checksum valid %v), want %s -> %s", q.SourceAddress(), q.DestinationAddress(), q.IsChecksumValid(), outside, snatAddr)
	}
	qu := header.UDP(c.Payload()[q.HeaderLength():]) // the quote is truncated
	if sp, dp := qu.SourcePort(), qu.DestinationPort(); sp != 443 || dp != natPort {
		t.Fatalf("quoted ports %d -> %d, want 443 -> %d", sp, dp, natPort)
	}
	r.noPacket(t, r.a)
}
