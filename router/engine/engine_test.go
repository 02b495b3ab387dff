package engine

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// Packets in these tests are built and checked with gVisor's header package,
// an implementation independent of router/packet.

var (
	podCIDR     = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6    = netip.MustParsePrefix("fd00:10:244:1::/64")
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	addrA       = netip.MustParseAddr("10.244.1.2")
	addrB       = netip.MustParseAddr("10.244.1.3")
	addrA6      = netip.MustParseAddr("fd00:10:244:1::2")
	addrB6      = netip.MustParseAddr("fd00:10:244:1::3")
	outside     = netip.MustParseAddr("192.0.2.10") // TEST-NET-1: never leaves the process
	macA        = packet.MAC{0x02, 0, 0, 0, 0, 0xa}
	macB        = packet.MAC{0x02, 0, 0, 0, 0, 0xb}
)

const egressMTU = 1400

// rig is an engine with two L2 pod ports (A, B) and an L3 egress port with a
// default route and a smaller MTU.
type rig struct {
	e              *Engine
	a, b, out      *linktest.End // the hosts' ends
	pa, pb, egress *Port
}

// checkGoroutines fails the test if, after its cleanups, goroutines
// started during it are still running (workers that did not stop).
func checkGoroutines(t *testing.T) { t.Helper(); leaktest.Check(t, 2*time.Second) }

func newRig(t *testing.T) *rig {
	t.Helper()
	checkGoroutines(t)
	e, err := New(Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{e: e}
	attach := func(pc PortConfig) (*linktest.End, *Port) {
		host, port := linktest.Pipe(256, 9000, 64)
		p, err := e.AddPort(port, pc)
		if err != nil {
			t.Fatal(err)
		}
		return host, p
	}
	r.a, r.pa = attach(PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}})
	r.b, r.pb = attach(PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB, addrB6}})
	r.out, r.egress = attach(PortConfig{Name: "out", Kind: KindEgress, MTU: egressMTU})
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(r.egress.idx)},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(r.egress.idx)},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// recv reads one packet from end within a second, or fails.
func recv(t *testing.T, end *linktest.End) []byte {
	t.Helper()
	got, ok := tryRecv(end, time.Second)
	if !ok {
		t.Fatal("no packet arrived")
	}
	return got
}

// tryRecv reads one packet or gives up after d. The reading goroutine is
// ended by closing the pipe in the test's cleanup.
func tryRecv(end *linktest.End, d time.Duration) ([]byte, bool) {
	ch := make(chan []byte, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 10000)}, []int{0}
		if n, err := end.Read(bufs, sizes, 0); err == nil && n == 1 {
			ch <- bufs[0][:sizes[0]]
		}
	}()
	select {
	case b := <-ch:
		return b, true
	case <-time.After(d):
		return nil, false
	}
}

func send(t *testing.T, end *linktest.End, frames ...[]byte) {
	t.Helper()
	if _, err := end.Write(frames, 0); err != nil {
		t.Fatal(err)
	}
}

type ipOpts struct {
	ttl     uint8
	df      bool
	payload int
	proto   tcpip.TransportProtocolNumber // UDP unless set
	icmp    header.ICMPv4Type
}

// ipv4 builds an IPv4 packet src->dst carrying UDP 1000->2000 (or an ICMP
// echo) with a payload of o.payload bytes.
func ipv4(src, dst netip.Addr, o ipOpts) []byte {
	if o.ttl == 0 {
		o.ttl = 64
	}
	l4len := header.UDPMinimumSize + o.payload
	proto := header.UDPProtocolNumber
	if o.proto == header.ICMPv4ProtocolNumber {
		proto = o.proto
		l4len = header.ICMPv4MinimumSize + o.payload
	}
	b := make([]byte, header.IPv4MinimumSize+l4len)
	var flags uint8
	if o.df {
		flags = header.IPv4FlagDontFragment
	}
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: o.ttl, Protocol: uint8(proto), Flags: flags, ID: 7,
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := b[header.IPv4MinimumSize:]
	for i := range o.payload {
		l4[len(l4)-o.payload+i] = byte(i)
	}
	if proto == header.ICMPv4ProtocolNumber {
		c := header.ICMPv4(l4)
		c.SetType(o.icmp)
		c.SetIdent(0x1234)
		c.SetSequence(1)
		c.SetChecksum(0)
		c.SetChecksum(^checksum.Checksum(l4, 0))
		return b
	}
	u := header.UDP(l4)
	u.Encode(&header.UDPFields{SrcPort: 1000, DstPort: 2000, Length: uint16(l4len)})
	u.SetChecksum(^u.CalculateChecksum(checksum.Combine(header.PseudoHeaderChecksum(header.UDPProtocolNumber,
		tcpip.AddrFrom4(src.As4()), tcpip.AddrFrom4(dst.As4()), uint16(l4len)), checksum.Checksum(l4[header.UDPMinimumSize:], 0))))
	return b
}

func ipv6(src, dst netip.Addr, hop uint8, payload int) []byte {
	l4len := header.UDPMinimumSize + payload
	b := make([]byte, header.IPv6MinimumSize+l4len)
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(l4len), TransportProtocol: header.UDPProtocolNumber, HopLimit: hop,
		SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
	header.UDP(b[header.IPv6MinimumSize:]).Encode(&header.UDPFields{SrcPort: 1000, DstPort: 2000, Length: uint16(l4len)})
	return b
}

// eth prepends an Ethernet header from mac to the gateway.
func eth(e *Engine, src packet.MAC, ip []byte) []byte {
	f := make([]byte, header.EthernetMinimumSize+len(ip))
	typ := header.IPv4ProtocolNumber
	if ip[0]>>4 == 6 {
		typ = header.IPv6ProtocolNumber
	}
	g := e.GatewayMAC()
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src[:]), DstAddr: tcpip.LinkAddress(g[:]), Type: typ})
	copy(f[header.EthernetMinimumSize:], ip)
	return f
}

// checkEth checks a frame's Ethernet header and returns its IP packet.
func checkEth(t *testing.T, e *Engine, f []byte, dst packet.MAC) []byte {
	t.Helper()
	h := header.Ethernet(f)
	g := e.GatewayMAC()
	if h.DestinationAddress() != tcpip.LinkAddress(dst[:]) || h.SourceAddress() != tcpip.LinkAddress(g[:]) {
		t.Fatalf("ethernet %s -> %s, want %s -> %s", h.SourceAddress(), h.DestinationAddress(), g, dst)
	}
	return f[header.EthernetMinimumSize:]
}

// checkICMPv4 checks that ip is a valid ICMPv4 error of the given type and
// code from the gateway to dst, quoting orig, and returns its header.
func checkICMPv4(t *testing.T, e *Engine, ip []byte, dst netip.Addr, typ header.ICMPv4Type, code header.ICMPv4Code, orig []byte) header.ICMPv4 {
	t.Helper()
	h := header.IPv4(ip)
	if !h.IsValid(len(ip)) || !h.IsChecksumValid() {
		t.Fatalf("invalid IPv4 header % x", ip[:min(len(ip), 20)])
	}
	if h.TransportProtocol() != header.ICMPv4ProtocolNumber || h.SourceAddress() != tcpip.AddrFrom4(e.Gateway().As4()) || h.DestinationAddress() != tcpip.AddrFrom4(dst.As4()) {
		t.Fatalf("ICMP %s -> %s proto %d", h.SourceAddress(), h.DestinationAddress(), h.TransportProtocol())
	}
	c := header.ICMPv4(h.Payload())
	if c.Type() != typ || c.Code() != code {
		t.Fatalf("ICMP type %d code %d, want %d/%d", c.Type(), c.Code(), typ, code)
	}
	if checksum.Checksum(c, 0) != 0xffff {
		t.Fatal("bad ICMP checksum")
	}
	if q := c.Payload(); !bytes.Equal(q, orig[:len(q)]) || len(q) < min(len(orig), 28) {
		t.Fatalf("quoted %d bytes, want a prefix of the original (%d bytes)", len(q), len(orig))
	}
	return c
}

func TestForwardSameNode(t *testing.T) {
	r := newRig(t)
	p := ipv4(addrA, addrB, ipOpts{ttl: 5, payload: 100})
	send(t, r.a, eth(r.e, macA, p))
	got := checkEth(t, r.e, recv(t, r.b), macB)
	// Switched inside the podCIDR: the packet is unchanged, TTL included.
	if !bytes.Equal(got, p) {
		t.Fatalf("packet changed:\n got % x\nwant % x", got, p)
	}
	p6 := ipv6(addrA6, addrB6, 1, 10)
	send(t, r.a, eth(r.e, macA, p6))
	if got := checkEth(t, r.e, recv(t, r.b), macB); !bytes.Equal(got, p6) {
		t.Fatal("IPv6 packet changed")
	}
	if s := r.pa.Stats(); s.RxPackets != 2 || s.TotalDrops() != 0 {
		t.Fatalf("port a stats %+v", s)
	}
	if s := r.pb.Stats(); s.TxPackets != 2 {
		t.Fatalf("port b stats %+v", s)
	}
}

func TestForwardRoutedDecrementsTTL(t *testing.T) {
	r := newRig(t)
	send(t, r.a, eth(r.e, macA, ipv4(addrA, outside, ipOpts{ttl: 9, payload: 20})))
	got := header.IPv4(recv(t, r.out))
	if !got.IsChecksumValid() || got.TTL() != 8 {
		t.Fatalf("TTL %d checksum valid %v, want TTL 8 and a valid checksum", got.TTL(), got.IsChecksumValid())
	}
	send(t, r.a, eth(r.e, macA, ipv6(addrA6, netip.MustParseAddr("2001:db8::1"), 9, 0)))
	if h := header.IPv6(recv(t, r.out)); h.HopLimit() != 8 {
		t.Fatalf("hop limit %d, want 8", h.HopLimit())
	}
	// And back in: the egress port reaches pod B, routed.
	send(t, r.out, ipv4(outside, addrB, ipOpts{ttl: 9}))
	if got := header.IPv4(checkEth(t, r.e, recv(t, r.b), macB)); got.TTL() != 8 || !got.IsChecksumValid() {
		t.Fatalf("inbound TTL %d", got.TTL())
	}
}

func TestICMPErrors(t *testing.T) {
	big := ipv4(addrA, outside, ipOpts{df: true, payload: egressMTU})
	cases := []struct {
		name  string
		pkt   []byte
		typ   header.ICMPv4Type
		code  header.ICMPv4Code
		mtu   uint16
		drops DropReason
	}{
		{"ttl expired on a routed hop", ipv4(addrA, outside, ipOpts{ttl: 1}), header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0, DropTTL},
		{"no pod at an address of the podCIDR", ipv4(addrA, netip.MustParseAddr("10.244.1.99"), ipOpts{}), header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, DropNoRoute},
		{"unrouted cluster destination", ipv4(addrA, netip.MustParseAddr("10.244.7.5"), ipOpts{}), header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, 0, DropNoRoute},
		{"DF packet larger than the next hop", big, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, egressMTU, DropTooBig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			send(t, r.a, eth(r.e, macA, tc.pkt))
			c := checkICMPv4(t, r.e, checkEth(t, r.e, recv(t, r.a), macA), addrA, tc.typ, tc.code, tc.pkt)
			if c.MTU() != tc.mtu {
				t.Fatalf("MTU %d, want %d", c.MTU(), tc.mtu)
			}
			if n := r.pa.Stats().Drops[tc.drops]; n != 1 {
				t.Fatalf("drops[%s] = %d, want 1", tc.drops, n)
			}
			if _, ok := tryRecv(r.out, 50*time.Millisecond); ok {
				t.Fatal("the packet was forwarded")
			}
		})
	}
}

func TestICMPv6Errors(t *testing.T) {
	r := newRig(t)
	orig := ipv6(addrA6, netip.MustParseAddr("2001:db8::1"), 1, 8)
	send(t, r.a, eth(r.e, macA, orig))
	ip := header.IPv6(checkEth(t, r.e, recv(t, r.a), macA))
	c := header.ICMPv6(ip.Payload())
	if ip.TransportProtocol() != header.ICMPv6ProtocolNumber || c.Type() != header.ICMPv6TimeExceeded {
		t.Fatalf("got proto %d type %d", ip.TransportProtocol(), c.Type())
	}
	if header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: c, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}) != c.Checksum() {
		t.Fatal("bad ICMPv6 checksum")
	}
	// Too big for the egress MTU: packet too big, IPv6 routers never fragment.
	send(t, r.a, eth(r.e, macA, ipv6(addrA6, netip.MustParseAddr("2001:db8::1"), 64, egressMTU)))
	c = header.ICMPv6(header.IPv6(checkEth(t, r.e, recv(t, r.a), macA)).Payload())
	if c.Type() != header.ICMPv6PacketTooBig || c.MTU() != egressMTU {
		t.Fatalf("type %d mtu %d", c.Type(), c.MTU())
	}
}

func TestNoICMPAboutICMPErrors(t *testing.T) {
	r := newRig(t)
	// An ICMP error with TTL 1 toward a routed hop: dropped, no error about it.
	err := ipv4(addrA, outside, ipOpts{ttl: 1, proto: header.ICMPv4ProtocolNumber, icmp: header.ICMPv4DstUnreachable, payload: 28})
	send(t, r.a, eth(r.e, macA, err))
	if _, ok := tryRecv(r.a, 100*time.Millisecond); ok {
		t.Fatal("got an ICMP error about an ICMP error")
	}
	if r.pa.Stats().Drops[DropTTL] != 1 {
		t.Fatal("not counted")
	}
}

func TestFragmentation(t *testing.T) {
	r := newRig(t)
	orig := ipv4(addrA, outside, ipOpts{payload: 1450})
	send(t, r.a, eth(r.e, macA, orig))
	payload := header.IPv4(orig).Payload()
	var got []byte
	for more := true; more; {
		f := header.IPv4(recv(t, r.out))
		if !f.IsValid(len(f)) || !f.IsChecksumValid() || len(f) > egressMTU {
			t.Fatalf("bad fragment: len %d", len(f))
		}
		if int(f.FragmentOffset()) != len(got) {
			t.Fatalf("fragment offset %d, want %d", f.FragmentOffset(), len(got))
		}
		got = append(got, f.Payload()...)
		more = f.More()
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("reassembled payload differs")
	}
}

func TestSpoofedSourceDropped(t *testing.T) {
	r := newRig(t)
	send(t, r.a, eth(r.e, macA, ipv4(addrB, outside, ipOpts{})))
	send(t, r.a, eth(r.e, macA, ipv4(netip.MustParseAddr("10.244.1.77"), addrB, ipOpts{})))
	if _, ok := tryRecv(r.out, 50*time.Millisecond); ok {
		t.Fatal("spoofed packet forwarded")
	}
	if _, ok := tryRecv(r.b, 50*time.Millisecond); ok {
		t.Fatal("spoofed packet forwarded")
	}
	if n := r.pa.Stats().Drops[DropSpoofed]; n != 2 {
		t.Fatalf("spoofed drops %d", n)
	}
}

func arpFrame(src packet.MAC, sender, target netip.Addr) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src[:]), DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber})
	a := header.ARP(f[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), src[:])
	s, d := sender.As4(), target.As4()
	copy(a.ProtocolAddressSender(), s[:])
	copy(a.ProtocolAddressTarget(), d[:])
	return f
}

func TestARP(t *testing.T) {
	cases := []struct {
		name           string
		sender, target netip.Addr
		answer         bool
	}{
		{"gateway", addrA, netip.MustParseAddr("10.244.1.1"), true},
		{"another pod (proxy)", addrA, addrB, true},
		{"unused podCIDR address (proxy)", addrA, netip.MustParseAddr("10.244.1.200"), true},
		{"probe from 0.0.0.0", netip.IPv4Unspecified(), addrA, false},
		{"gratuitous", addrA, addrA, false},
		{"own address", addrA, addrA, false},
		{"outside the podCIDR", addrA, netip.MustParseAddr("10.244.2.1"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			send(t, r.a, arpFrame(macA, tc.sender, tc.target))
			f, ok := tryRecv(r.a, 100*time.Millisecond)
			if ok != tc.answer {
				t.Fatalf("answered %v, want %v", ok, tc.answer)
			}
			if !ok {
				return
			}
			a := header.ARP(checkEth(t, r.e, f, macA))
			g := r.e.GatewayMAC()
			tg := tc.target.As4()
			if !a.IsValid() || a.Op() != header.ARPReply || !bytes.Equal(a.HardwareAddressSender(), g[:]) ||
				!bytes.Equal(a.ProtocolAddressSender(), tg[:]) || !bytes.Equal(a.HardwareAddressTarget(), macA[:]) {
				t.Fatalf("bad reply % x", []byte(a))
			}
		})
	}
}

func TestNDP(t *testing.T) {
	r := newRig(t)
	gw6 := r.e.Gateway6()
	ll := netip.MustParseAddr("fe80::a")
	ns := make([]byte, header.ICMPv6NeighborSolicitMinimumSize+8)
	c := header.ICMPv6(ns)
	c.SetType(header.ICMPv6NeighborSolicit)
	header.NDPNeighborSolicit(c.MessageBody()).SetTargetAddress(tcpip.AddrFrom16(gw6.As16()))
	opt := ns[header.ICMPv6NeighborSolicitMinimumSize:]
	opt[0], opt[1] = 1, 1
	copy(opt[2:], macA[:])
	snm := header.SolicitedNodeAddr(tcpip.AddrFrom16(gw6.As16()))
	c.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: c, Src: tcpip.AddrFrom16(ll.As16()), Dst: snm}))
	ip := make([]byte, header.IPv6MinimumSize+len(ns))
	header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(ns)), TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: 255,
		SrcAddr: tcpip.AddrFrom16(ll.As16()), DstAddr: snm})
	copy(ip[header.IPv6MinimumSize:], ns)
	f := make([]byte, header.EthernetMinimumSize+len(ip))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(macA[:]), DstAddr: header.EthernetAddressFromMulticastIPv6Address(snm), Type: header.IPv6ProtocolNumber})
	copy(f[header.EthernetMinimumSize:], ip)
	send(t, r.a, f)

	reply := header.IPv6(checkEth(t, r.e, recv(t, r.a), macA))
	na := header.ICMPv6(reply.Payload())
	if na.Type() != header.ICMPv6NeighborAdvert || reply.HopLimit() != 255 || reply.DestinationAddress() != tcpip.AddrFrom16(ll.As16()) {
		t.Fatalf("type %d hop %d dst %s", na.Type(), reply.HopLimit(), reply.DestinationAddress())
	}
	if header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: na, Src: reply.SourceAddress(), Dst: reply.DestinationAddress()}) != na.Checksum() {
		t.Fatal("bad checksum")
	}
	body := header.NDPNeighborAdvert(na.MessageBody())
	if body.TargetAddress() != tcpip.AddrFrom16(gw6.As16()) || !body.SolicitedFlag() || !body.RouterFlag() {
		t.Fatalf("target %s solicited %v router %v", body.TargetAddress(), body.SolicitedFlag(), body.RouterFlag())
	}
	it, err := body.Options().Iter(true)
	if err != nil {
		t.Fatal(err)
	}
	o, done, err := it.Next()
	g := r.e.GatewayMAC()
	tll, isTLL := o.(header.NDPTargetLinkLayerAddressOption)
	if err != nil || done || !isTLL || !bytes.Equal([]byte(tll), g[:]) {
		t.Fatalf("target LL option %v %v %v", o, done, err)
	}
}

func TestEchoToGateway(t *testing.T) {
	r := newRig(t)
	req := ipv4(addrA, r.e.Gateway(), ipOpts{proto: header.ICMPv4ProtocolNumber, icmp: header.ICMPv4Echo, payload: 56})
	send(t, r.a, eth(r.e, macA, req))
	ip := header.IPv4(checkEth(t, r.e, recv(t, r.a), macA))
	c := header.ICMPv4(ip.Payload())
	if !ip.IsChecksumValid() || c.Type() != header.ICMPv4EchoReply || c.Ident() != 0x1234 || checksum.Checksum(c, 0) != 0xffff ||
		ip.SourceAddress() != tcpip.AddrFrom4(r.e.Gateway().As4()) {
		t.Fatalf("bad echo reply % x", []byte(ip))
	}
}

func TestPeerMACLearned(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ha, pa := linktest.Pipe(16, 2000, 8)
	hb, pb := linktest.Pipe(16, 2000, 8)
	if _, err := e.AddPort(pa, PortConfig{Name: "a", L2: true, MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(pb, PortConfig{Name: "b", L2: true, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	// B has not spoken: a frame to it goes to the broadcast MAC.
	send(t, ha, eth(e, macA, ipv4(addrA, addrB, ipOpts{})))
	checkEth(t, e, recv(t, hb), packet.Broadcast)
	// B speaks (an ARP request); then frames to it carry its MAC.
	send(t, hb, arpFrame(macB, addrB, addrA))
	recv(t, hb)
	send(t, ha, eth(e, macA, ipv4(addrA, addrB, ipOpts{})))
	checkEth(t, e, recv(t, hb), macB)
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"missing podCIDR", Config{}},
		{"IPv6 podCIDR", Config{PodCIDR: podCIDR6}},
		{"unmasked podCIDR", Config{PodCIDR: netip.MustParsePrefix("10.244.1.5/24")}},
		{"too small", Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/31")}},
		{"IPv4 podCIDR6", Config{PodCIDR: podCIDR, PodCIDR6: podCIDR}},
		{"unmasked cluster CIDR", Config{PodCIDR: podCIDR, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/16")}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("no error")
			}
		})
	}
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ports := []struct {
		name string
		pc   PortConfig
	}{
		{"no name", PortConfig{MTU: 1500}},
		{"MTU too small", PortConfig{Name: "x", MTU: 20}},
		{"address outside the podCIDR", PortConfig{Name: "x", MTU: 1500, Addrs: []netip.Addr{outside}}},
		{"gateway address", PortConfig{Name: "x", MTU: 1500, Addrs: []netip.Addr{e.Gateway()}}},
	}
	for _, tc := range ports {
		t.Run(tc.name, func(t *testing.T) {
			_, d := linktest.Pipe(1, 100, 1)
			if _, err := e.AddPort(d, tc.pc); err == nil {
				t.Fatal("no error")
			}
		})
	}
	_, d1 := linktest.Pipe(1, 100, 1)
	_, d2 := linktest.Pipe(1, 100, 1)
	if _, err := e.AddPort(d1, PortConfig{Name: "a", MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(d2, PortConfig{Name: "b", MTU: 1500, Addrs: []netip.Addr{addrA}}); err == nil {
		t.Fatal("duplicate address accepted")
	}
	if err := e.SetRoutes([]route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(42)}}); err == nil {
		t.Fatal("route to an unattached port accepted")
	}
}

func TestRemovePort(t *testing.T) {
	r := newRig(t)
	if err := r.e.RemovePort(r.pb); err != nil {
		t.Fatal(err)
	}
	if err := r.e.RemovePort(r.pb); err == nil {
		t.Fatal("second remove succeeded")
	}
	// B's address is now unused: host unreachable.
	p := ipv4(addrA, addrB, ipOpts{})
	send(t, r.a, eth(r.e, macA, p))
	checkICMPv4(t, r.e, checkEth(t, r.e, recv(t, r.a), macA), addrA, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, p)
	// The freed index is reused by the next port.
	_, d := linktest.Pipe(4, 2000, 4)
	p2, err := r.e.AddPort(d, PortConfig{Name: "b2", Kind: KindPod, L2: true, MTU: 1500, Addrs: []netip.Addr{addrB}})
	if err != nil {
		t.Fatal(err)
	}
	if p2.idx != r.pb.idx {
		t.Fatalf("index %d not reused (%d)", p2.idx, r.pb.idx)
	}
}

func TestICMPRateLimit(t *testing.T) {
	now := time.Unix(0, 0)
	e, err := New(Config{PodCIDR: podCIDR, ICMPRate: 1, ICMPBurst: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	h, d := linktest.Pipe(64, 2000, 64)
	if _, err := e.AddPort(d, PortConfig{Name: "a", MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		send(t, h, ipv4(addrA, netip.MustParseAddr("10.244.1.99"), ipOpts{}))
	}
	recv(t, h)
	recv(t, h)
	if _, ok := tryRecv(h, 100*time.Millisecond); ok {
		t.Fatal("rate limit not applied")
	}
	if sent, limited := e.ICMPStats(); sent != 2 || limited != 3 {
		t.Fatalf("sent %d limited %d", sent, limited)
	}
}

var _ = binary.BigEndian
var _ link.Device = (*linktest.End)(nil)

// TestICMPRateLimitPerPort: a pod that floods the engine with TTL-expired
// triggers spends only its own budget; another pod still gets its errors,
// and errors that carry a path MTU are never limited.
func TestICMPRateLimitPerPort(t *testing.T) {
	now := time.Unix(0, 0)
	e, err := New(Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ICMPRate: 1, ICMPBurst: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ha, da := linktest.Pipe(256, 2000, 64)
	hb, db := linktest.Pipe(256, 2000, 64)
	hout, dout := linktest.Pipe(256, 2000, 64)
	if _, err := e.AddPort(da, PortConfig{Name: "a", MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(db, PortConfig{Name: "b", MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	out, err := e.AddPort(dout, PortConfig{Name: "out", Kind: KindEgress, MTU: egressMTU})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(out.idx)},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(out.idx)},
	}); err != nil {
		t.Fatal(err)
	}
	icmpType := func(ip []byte) (uint8, uint8) {
		_, _, _, l4 := l4Of(ip)
		return l4[0], l4[1]
	}

	// A floods: 20 packets whose TTL expires on the routed hop out.
	for range 20 {
		send(t, ha, ipv4(addrA, outside, ipOpts{ttl: 1}))
	}
	for range 2 {
		if typ, _ := icmpType(recv(t, ha)); typ != uint8(header.ICMPv4TimeExceeded) {
			t.Fatalf("A got ICMP type %d, want time exceeded", typ)
		}
	}
	// (No tryRecv on A here: its reader would steal a later packet.)
	waitICMP := func(sent, limited uint64) {
		t.Helper()
		deadline := time.Now().Add(time.Second)
		for {
			s, l := e.ICMPStats()
			if s == sent && l == limited {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("ICMP errors sent %d limited %d, want %d and %d", s, l, sent, limited)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitICMP(2, 18)
	// B's budget is its own.
	send(t, hb, ipv4(addrB, outside, ipOpts{ttl: 1}))
	if typ, _ := icmpType(recv(t, hb)); typ != uint8(header.ICMPv4TimeExceeded) {
		t.Fatalf("B got ICMP type %d, want time exceeded", typ)
	}
	// A's budget is spent, and still every packet too big for the egress
	// MTU gets its fragmentation needed / packet too big.
	for range 10 {
		send(t, ha, ipv4(addrA, outside, ipOpts{df: true, payload: egressMTU}))
		send(t, ha, ipv6(addrA6, netip.MustParseAddr("2001:db8::1"), 64, egressMTU))
	}
	for range 10 {
		for _, want := range [][2]uint8{{uint8(header.ICMPv4DstUnreachable), uint8(header.ICMPv4FragmentationNeeded)}, {uint8(header.ICMPv6PacketTooBig), 0}} {
			if typ, code := icmpType(recv(t, ha)); typ != want[0] || code != want[1] {
				t.Fatalf("A got ICMP %d/%d, want %d/%d", typ, code, want[0], want[1])
			}
		}
	}
	waitICMP(23, 18)
	if _, ok := tryRecv(ha, 50*time.Millisecond); ok {
		t.Fatal("A got more errors than its budget and its PMTU errors")
	}
	if _, ok := tryRecv(hout, 50*time.Millisecond); ok {
		t.Fatal("a packet left through egress")
	}
}
