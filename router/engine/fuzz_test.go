package engine

import (
	"net/netip"
	"slices"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// fuzzRig is one engine with a port of every kind; the fuzz target drives
// each port's path through its own worker, with no goroutine between.
type fuzzRig struct {
	e       *Engine
	ports   []*Port
	devs    []*recDev
	workers []*worker
}

const (
	fzPodL2 = iota
	fzPodL3
	fzUplink
	fzPeer
	fzEgress
	fzPorts
)

var nodeAddr = netip.MustParseAddr("192.168.0.10")

func newFuzzRig(tb testing.TB) *fuzzRig {
	e, err := New(Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, netip.MustParsePrefix("fd00:10:244::/48")},
		ICMPRate: 1 << 20, ICMPBurst: 1 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	r := &fuzzRig{e: e}
	all := packet.OffloadCsum | packet.OffloadTSO4 | packet.OffloadTSO6 | packet.OffloadUSO
	for _, c := range []struct {
		pc  PortConfig
		gso bool
		o   packet.Offloads
	}{
		{PortConfig{Name: "pod-l2", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}}, true, all},
		{PortConfig{Name: "pod-l3", Kind: KindPod, MTU: 1500, Addrs: []netip.Addr{addrB, addrB6}}, true, packet.OffloadCsum | packet.OffloadTSO4},
		{PortConfig{Name: "uplink", Kind: KindUplink, MTU: 1500}, true, all},
		{PortConfig{Name: "peer", Kind: KindPeer, MTU: 1450}, false, 0},
		{PortConfig{Name: "egress", Kind: KindEgress, MTU: 1400}, false, 0},
	} {
		d := newRecDev()
		var dev link.Device = d
		if c.gso {
			dev = recGSODev{d, c.o}
		}
		p, err := e.AddPort(dev, c.pc)
		if err != nil {
			tb.Fatal(err)
		}
		r.ports, r.devs = append(r.ports, p), append(r.devs, d)
	}
	if err := e.SetRoutes([]route.Route{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(r.ports[fzEgress].idx)},
		{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(r.ports[fzEgress].idx)},
		{Prefix: netip.PrefixFrom(nodeAddr, 32), NextHop: route.ToLocal(r.ports[fzUplink].idx)},
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: route.ToPeer(r.ports[fzPeer].idx)},
		{Prefix: netip.MustParsePrefix("fd00:10:244:2::/64"), NextHop: route.ToPeer(r.ports[fzPeer].idx)},
	}); err != nil {
		tb.Fatal(err)
	}
	for _, p := range r.ports {
		r.workers = append(r.workers, newWorker(e, p))
	}
	return r
}

// FuzzReceive drives the engine's whole receive path (parse, offload and
// source checks, ARP/NDP, SNAT-free forwarding, TTL, MTU, ICMP errors,
// software segmentation and checksums) with arbitrary frames and offload
// descriptors on every kind of port, and checks its invariants:
//   - no panic;
//   - every packet is forwarded (or answered) or counted as exactly one
//     drop, on the port it came in on;
//   - what leaves is a well-formed IP packet (or an ARP answer), and a
//     descriptor the engine hands on fits its packet;
//   - nothing a pod sent leaves through another port with a source the pod
//     does not own, after the next device applies the descriptor (its
//     checksum finished, its segments cut).
//
// Seeds: f.Add below and testdata/fuzz/FuzzReceive.
func FuzzReceive(f *testing.F) {
	r := newFuzzRig(f)
	gw := r.e.GatewayMAC()
	l2 := func(src packet.MAC, ip []byte) []byte {
		b := eth(r.e, src, ip)
		copy(b[:6], gw[:])
		return b
	}
	add := func(port uint8, frame []byte, g packet.GSO) {
		flags := uint8(0)
		if g.NeedsCsum {
			flags = 1
		}
		f.Add(port, uint8(g.Type), flags, g.HdrLen, g.Size, g.CsumStart, g.CsumOffset, frame)
	}
	udp4 := ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(1, 2, 100))
	add(fzPodL2, l2(macA, udp4), packet.GSO{})
	tcp6 := ipPacket(addrA6, outsideV6, header.TCPProtocolNumber, tcpSeg(1, 2, header.TCPFlagAck, 1, 1, 4000))
	add(fzPodL2, l2(macA, tcp6), super(tcp6, packet.GSOTCPv6, 1200))
	udp6 := ipPacket(addrA6, addrB6, header.UDPProtocolNumber, udpSeg(1, 2, 64))
	g := partial(udp6)
	add(fzPodL2, l2(macA, udp6), g)
	g.CsumStart, g.CsumOffset = 8, 14
	add(fzPodL2, l2(macA, udp6), g)
	uso := ipPacket(addrB, outside, header.UDPProtocolNumber, udpSeg(1, 2, 3000))
	add(fzPodL3, uso, super(uso, packet.GSOUDPL4, 1000))
	add(fzPodL3, ipv4(addrB, outside, ipOpts{ttl: 1}), packet.GSO{})
	add(fzPodL3, ipv4(addrB, outside, ipOpts{df: true, payload: 1450}), packet.GSO{})
	add(fzPodL3, ipv4(addrB, outside, ipOpts{payload: 1450}), packet.GSO{})
	add(fzPodL3, ipv4(addrB, r.e.Gateway(), ipOpts{proto: header.ICMPv4ProtocolNumber, icmp: header.ICMPv4Echo, payload: 8}), packet.GSO{})
	add(fzPodL2, arpFrame(macA, addrA, addrB), packet.GSO{})
	add(fzUplink, ipv4(nodeAddr, addrA, ipOpts{}), packet.GSO{})
	add(fzPeer, ipv4(netip.MustParseAddr("10.244.2.5"), addrB, ipOpts{}), packet.GSO{})
	add(fzEgress, ipv6(outsideV6, addrA6, 64, 100), packet.GSO{})
	add(fzUplink, ipv4(netip.MustParseAddr("10.244.1.77"), outside, ipOpts{ttl: 1}), packet.GSO{})

	f.Fuzz(func(t *testing.T, port, typ, flags uint8, hdrLen, size, cstart, coff uint16, frame []byte) {
		pi := int(port) % fzPorts
		p, w := r.ports[pi], r.workers[pi]
		if len(frame) > len(w.bufs[0])-readOffset {
			frame = frame[:len(w.bufs[0])-readOffset]
		}
		var g packet.GSO
		if p.gsoDev != nil {
			g = packet.GSO{Type: packet.GSOType(typ), NeedsCsum: flags&1 != 0, HdrLen: hdrLen, Size: size, CsumStart: cstart, CsumOffset: coff}
		}
		before, origBefore := p.Stats().TotalDrops(), r.e.OriginatedDrops()
		w.sizes[0] = copy(w.bufs[0][readOffset:], frame)
		w.gso[0] = g
		w.process(1)
		drops, orig := p.Stats().TotalDrops()-before, r.e.OriginatedDrops()-origBefore

		sent := 0
		for qi, d := range r.devs {
			q := r.ports[qi]
			for _, o := range d.take() {
				sent++
				r.checkOut(t, p, q, o)
			}
		}
		// An answer (echo reply) may itself be lost: counted as the engine's.
		if drops > 1 || (drops == 0 && sent == 0 && orig == 0) {
			t.Fatalf("port %s: %d drops (%v) and %d packets out, want one drop or something out", p.Name(), drops, p.Stats().Drops, sent)
		}
	})
}

var outsideV6 = netip.MustParseAddr("2001:db8::10")

// checkOut checks a frame o that q's device was handed while the engine
// handled a packet from in.
func (r *fuzzRig) checkOut(t *testing.T, in, q *Port, o gsoFrame) {
	t.Helper()
	var pp packet.Parsed
	st := packet.Parse(o.b, q.cfg.L2, &pp)
	if st == packet.IsARP && q == in {
		return
	}
	if st != packet.OK {
		t.Fatalf("port %s wrote to %s a frame that does not parse (%v): % x", in.Name(), q.Name(), st, o.b)
	}
	if !pp.OffloadValid(o.b, o.g) {
		t.Fatalf("port %s wrote to %s descriptor %+v that does not fit % x", in.Name(), q.Name(), o.g, o.b)
	}
	if in.cfg.Kind != KindPod || q == in {
		return
	}
	// What the next device's kernel makes of it: the checksum finished,
	// the super-packet cut.
	ip := o.b[pp.IPOff:pp.IPEnd]
	pkts := [][]byte{ip}
	switch {
	case o.g.Type != packet.GSONone:
		n, err := packet.GSOSegments(ip, o.g)
		if err != nil {
			t.Fatalf("descriptor %+v does not segment: %v", o.g, err)
		}
		pkts = make([][]byte, n)
		sizes := make([]int, n)
		for i := range pkts {
			pkts[i] = make([]byte, len(ip))
		}
		if _, err := packet.GSOSegment(ip, o.g, pkts, sizes, 0); err != nil {
			t.Fatalf("descriptor %+v does not segment: %v", o.g, err)
		}
		for i := range pkts {
			pkts[i] = pkts[i][:sizes[i]]
		}
	case o.g.NeedsCsum:
		ip = append([]byte(nil), ip...)
		if err := packet.FinishChecksum(ip, o.g); err != nil {
			t.Fatalf("descriptor %+v: %v", o.g, err)
		}
		pkts[0] = ip
	}
	for _, b := range pkts {
		if st := packet.Parse(b, false, &pp); st != packet.OK {
			t.Fatalf("port %s wrote to %s a packet that no longer parses (%v) once offloads are done", in.Name(), q.Name(), st)
		}
		if !slices.Contains(in.addrs, pp.Src) {
			t.Fatalf("pod port %s sent to %s a packet from %s, not its own", in.Name(), q.Name(), pp.Src)
		}
	}
}
