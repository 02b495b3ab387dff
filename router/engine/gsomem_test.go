package engine

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// TestTinyGSOSizeBoundedScratch: a pod's 64 KiB USO super-packet with
// 1-byte segments is cut in software in chunks, and the worker's scratch
// buffers never grow past one chunk. (They grew to one 9 KiB buffer per
// segment: 60000 of them, over 500 MiB a pod could make a worker hold.)
func TestTinyGSOSizeBoundedScratch(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	pa, err := e.AddPort(newGSODev(packet.OffloadCsum|packet.OffloadUSO), PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	b := newRecDev()
	if _, err := e.AddPort(b, PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	w := newWorker(e, pa)
	const payload = 60000
	ip := ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(4000, 53, payload))
	g := super(ip, packet.GSOUDPL4, 1)
	w.sizes[0] = copy(w.bufs[0][readOffset:], eth(e, macA, ip))
	w.gso[0] = g
	w.process(1)
	out := b.take()
	if len(out) != payload {
		t.Fatalf("%d segments forwarded, want %d (drops %v)", len(out), payload, pa.Stats().Drops)
	}
	for i, o := range out {
		seg := checkEth(t, e, o.b, macB)
		checkSums(t, seg)
		if _, _, _, l4 := l4Of(seg); len(l4) != header.UDPMinimumSize+1 || l4[8] != ip[28+i] {
			t.Fatalf("segment %d: % x", i, l4)
		}
	}
	if n := len(w.scratch); n > numScratch {
		t.Fatalf("scratch grew to %d buffers, want at most %d", n, numScratch)
	}
}

// TestGSOSegmentsFragmented: a USO super-packet (IPv4, no DF) whose
// segments exceed the next hop's MTU leaves as fragments of each segment,
// and every segment reassembles intact, even when the fragments need more
// scratch buffers than a batch has (fragment4 then flushes mid-packet, and
// must not overwrite segments still to be fragmented).
func TestGSOSegmentsFragmented(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	pa, err := e.AddPort(newGSODev(packet.OffloadCsum|packet.OffloadUSO), PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 9000, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	b := newRecDev()
	if _, err := e.AddPort(b, PortConfig{Name: "b", Kind: KindPod, MTU: 600, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	w := newWorker(e, pa)
	const payload, size = 60000, 3000
	ip := ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(4000, 53, payload))
	g := super(ip, packet.GSOUDPL4, size)
	w.sizes[0] = copy(w.bufs[0][readOffset:], eth(e, macA, ip))
	w.gso[0] = g
	w.process(1)
	if s := pa.Stats(); s.TotalDrops() != 0 {
		t.Fatalf("drops %v", s.Drops)
	}
	// Reassemble by IP ID (segment i has the super-packet's ID + i).
	frags := map[uint16][]byte{}
	for _, o := range b.take() {
		h := header.IPv4(o.b)
		if !h.IsValid(len(o.b)) || !h.IsChecksumValid() || len(o.b) > 600 {
			t.Fatalf("bad fragment of %d bytes", len(o.b))
		}
		d := frags[h.ID()]
		off := int(h.FragmentOffset())
		if off != len(d) {
			t.Fatalf("ID %d: fragment at %d after %d bytes", h.ID(), off, len(d))
		}
		frags[h.ID()] = append(d, h.Payload()...)
	}
	if len(frags) != payload/size {
		t.Fatalf("%d segments, want %d", len(frags), payload/size)
	}
	id := header.IPv4(ip).ID()
	for i := range payload / size {
		l4 := frags[id+uint16(i)]
		seg := ipPacket(addrA, addrB, header.UDPProtocolNumber, make([]byte, len(l4)))
		copy(seg[header.IPv4MinimumSize:], l4)
		checkSums(t, seg)
		want := ip[header.IPv4MinimumSize+header.UDPMinimumSize+i*size:][:size]
		if got := l4[header.UDPMinimumSize:]; string(got) != string(want) {
			t.Fatalf("segment %d: payload differs", i)
		}
	}
}

// TestOriginatedDropNotCountedTwice: an ICMP error the engine cannot route
// back (here: to an address of the podCIDR with no pod, from the uplink)
// is the engine's own drop; the packet that caused it is counted once, on
// its port, under its own reason.
func TestOriginatedDropNotCountedTwice(t *testing.T) {
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	up, err := e.AddPort(newRecDev(), PortConfig{Name: "uplink", Kind: KindUplink, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.AddPort(newRecDev(), PortConfig{Name: "out", Kind: KindEgress, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(out.idx)}}); err != nil {
		t.Fatal(err)
	}
	w := newWorker(e, up)
	w.sizes[0] = copy(w.bufs[0][readOffset:], ipv4(netip.MustParseAddr("10.244.1.77"), outside, ipOpts{ttl: 1}))
	w.process(1)
	if d := up.Stats().Drops; len(d) != 1 || d[DropTTL] != 1 {
		t.Fatalf("uplink drops %v, want one %v", d, DropTTL)
	}
	if n := e.OriginatedDrops(); n != 1 {
		t.Fatalf("%d originated drops, want 1", n)
	}
}
