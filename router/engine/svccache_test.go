package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

// TestServiceCacheSameBytes: a packet the Service flow cache translates
// leaves exactly as the full path would send it (addresses, ports, both
// checksums, UDP's zero checksum kept and a computed zero sent as
// 0xffff), for Service flows and their replies, hairpins (source and
// destination translated), TCP and UDP, both families, over random
// payloads and headers. Each packet goes once through the cache and once,
// with an empty cache, the full way.
func TestServiceCacheSameBytes(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
			for _, hairpin := range []bool{false, true} {
				name := fmt.Sprintf("%s/v6=%v/hairpin=%v", service.ProtoName(proto), v6, hairpin)
				t.Run(name, func(t *testing.T) { testServiceCacheSameBytes(t, v6, proto, hairpin) })
			}
		}
	}
}

func testServiceCacheSameBytes(t *testing.T, v6 bool, proto uint8, hairpin bool) {
	r, _ := newSvcRig(t)
	a, b, v, gw := addrA, addrB, vip, r.e.Gateway()
	if v6 {
		a, b, v, gw = addrA6, addrB6, vip6, r.e.Gateway6()
	}
	backend, backendEnd, backendMAC := b, r.b, macB
	if hairpin {
		backend, backendEnd, backendMAC = a, r.a, macA
	}
	if err := r.e.SetServices(service.NewTable(oneService(proto, 80, ready(backend, 8080)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	wa, wb := svcWorkers(r)
	tp := tcpip.TransportProtocolNumber(proto)
	rng := rand.New(rand.NewPCG(1, uint64(proto)))
	seg := func(sp, dp uint16, flags header.TCPFlags) []byte {
		n := rng.IntN(200)
		var l4 []byte
		if proto == packet.ProtoTCP {
			l4 = tcpSeg(sp, dp, flags, rng.Uint32(), rng.Uint32(), n)
			header.TCP(l4).SetWindowSize(uint16(rng.Uint32()))
		} else {
			l4 = udpSeg(sp, dp, n)
		}
		for i := len(l4) - n; i < len(l4); i++ {
			l4[i] = byte(rng.Uint32())
		}
		return l4
	}
	frame := func(src, dst netip.Addr, mac packet.MAC, l4 []byte) []byte {
		ip := ipPacket(src, dst, tp, l4)
		if proto == packet.ProtoUDP && !v6 && rng.IntN(8) == 0 {
			ip[header.IPv4MinimumSize+6], ip[header.IPv4MinimumSize+7] = 0, 0 // no checksum
		}
		return eth(r.e, mac, ip)
	}
	run := runFrame
	// The flow, its reply port: the hairpin's reply comes from pod A to
	// the gateway port the flow's source was translated to.
	wr, replyMAC := wb, macB
	if hairpin {
		wr, replyMAC = wa, macA
	}
	run(wa, frame(a, v, macA, seg(40000, 80, header.TCPFlagSyn)))
	got := checkEth(t, r.e, r.get(t, backendEnd), backendMAC)
	src, sport := a, uint16(40000)
	if hairpin {
		src = gw
		sport, _ = ports(got)
	}
	run(wr, frame(backend, src, replyMAC, seg(8080, sport, header.TCPFlagSyn|header.TCPFlagAck)))
	checkEth(t, r.e, r.get(t, r.a), macA)
	ack := header.TCPFlags(header.TCPFlagAck)
	var hits, packets uint64
	for range 300 {
		for _, dir := range []struct {
			w        *worker
			f        []byte
			out      *worker
			end      bool // the answer reaches pod A (else the backend)
			outSrc   netip.Addr
			outPorts [2]uint16
		}{
			{w: wa, f: frame(a, v, macA, seg(40000, 80, ack)), outSrc: src, outPorts: [2]uint16{sport, 8080}},
			{w: wr, f: frame(backend, src, replyMAC, seg(8080, sport, ack)), end: true, outSrc: v, outPorts: [2]uint16{80, 40000}},
		} {
			end, mac := backendEnd, backendMAC
			if dir.end {
				end, mac = r.a, macA
			}
			before := dir.w.svcHits
			run(dir.w, dir.f)
			cached := checkEth(t, r.e, r.get(t, end), mac)
			hit := dir.w.svcHits - before
			kept := dir.w.svcCache
			dir.w.svcCache = nil
			run(dir.w, dir.f)
			full := checkEth(t, r.e, r.get(t, end), mac)
			dir.w.svcCache = kept
			if dir.w.svcHits != before+hit {
				t.Fatal("the emptied cache translated a packet")
			}
			if !bytes.Equal(cached, full) {
				t.Fatalf("cache and full path differ (hit %d):\ncache % x\nfull  % x", hit, cached, full)
			}
			_, s, _, _ := l4Of(full)
			if sp, dp := ports(full); s != dir.outSrc || [2]uint16{sp, dp} != dir.outPorts {
				t.Fatalf("sent from %s ports %d -> %d, want %s %v", s, sp, dp, dir.outSrc, dir.outPorts)
			}
			if !(proto == packet.ProtoUDP && !v6 && l4Sum(full) == 0) {
				checkSums(t, full)
			}
			hits += hit
			packets++
		}
	}
	// A refresh (once a second) or a new flow in the shard sends a packet
	// the full way now and then; most must hit, unless the two ways of a
	// hairpin, which one worker handles, share a slot and evict each other.
	if hairpin && slotOf(t, frame(a, v, macA, seg(40000, 80, ack))) == slotOf(t, frame(backend, src, replyMAC, seg(8080, sport, ack))) {
		t.Logf("the hairpin's two ways share a cache slot: %d hits of %d", hits, packets)
		return
	}
	if hits < packets*9/10 {
		t.Fatalf("the cache translated %d of %d packets", hits, packets)
	}
}

// slotOf returns the Service flow cache slot of the Ethernet frame f.
func slotOf(t *testing.T, f []byte) int {
	var pp packet.Parsed
	if st := packet.Parse(f, true, &pp); st != packet.OK {
		t.Fatalf("parse: %v", st)
	}
	return svcIndex(svcKey(f[pp.IPOff:], &pp))
}

// svcWorkers returns workers for the rig's pods A and B that the test
// drives itself (runFrame), beside the engine's own.
func svcWorkers(r *snatRig) (wa, wb *worker) {
	for _, p := range r.e.Ports() {
		if p.cfg.Name == "b" {
			wb = newWorker(r.e, p)
		}
	}
	return newWorker(r.e, r.pa), wb
}

// runFrame has w handle the frame f as read from its port.
func runFrame(w *worker, f []byte) {
	copy(w.bufs[0][readOffset:], f)
	w.sizes[0] = len(f)
	w.process(1)
}

// l4Sum returns the UDP or TCP checksum field of the IP packet ip.
func l4Sum(ip []byte) uint16 {
	proto, _, _, l4 := l4Of(ip)
	at := csumAt(proto)
	return uint16(l4[at])<<8 | uint16(l4[at+1])
}

// TestCsumAdd: the cache's precomputed updates give packet.UpdateChecksum's
// and UpdateChecksumBytes's results bit for bit, the fields 0x0000 and
// 0xffff included.
func TestCsumAdd(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 200000 {
		field, old, nw := uint16(rng.Uint32()), uint16(rng.Uint32()), uint16(rng.Uint32())
		switch i % 4 {
		case 0:
			field = 0
		case 1:
			field = 0xffff
		}
		if got, want := csumAdd(field, uint32(^old)+uint32(nw)), packet.UpdateChecksum(field, old, nw); got != want {
			t.Fatalf("field %#x %#x->%#x: %#x, want %#x", field, old, nw, got, want)
		}
		var o, n [16]byte
		for j := range o {
			o[j], n[j] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		var d uint32
		for j := 0; j < 16; j += 2 {
			d += uint32(^(uint16(o[j])<<8|uint16(o[j+1])))&0xffff + uint32(uint16(n[j])<<8|uint16(n[j+1]))
		}
		if got, want := csumAdd(field, d), packet.UpdateChecksumBytes(field, o[:], n[:]); got != want {
			t.Fatalf("field %#x, address change: %#x, want %#x", field, got, want)
		}
	}
}

// TestServiceCachePass: a backend's own traffic (no Service flow) is
// cached as passing unchanged; once a Service flow makes that very tuple
// its reply, the next packet is translated (the insert lapses the entry).
func TestServiceCachePass(t *testing.T) {
	r, _ := newSvcRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoUDP, 80, ready(addrB, 8080)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	wa, wb := svcWorkers(r)
	run := runFrame
	// B is a backend (SetServices), so its packets are looked up; none is
	// a Service flow's.
	direct := eth(r.e, macB, ipPacket(addrB, addrA, header.UDPProtocolNumber, udpSeg(8080, 40000, 8)))
	for i := range 3 {
		run(wb, direct)
		expectPod(t, r, addrB, addrA)
		if wb.svcHits != uint64(i) { // the first fills the entry
			t.Fatalf("packet %d: %d cache hits, want %d", i, wb.svcHits, i)
		}
	}
	// A opens a Service flow whose reply is B:8080 -> A:40000.
	run(wa, eth(r.e, macA, ipPacket(addrA, vip, header.UDPProtocolNumber, udpSeg(40000, 80, 8))))
	expectB(t, r, addrA, addrB)
	hits := wb.svcHits
	run(wb, direct)
	back := expectPod(t, r, vip, addrA)
	if sp, dp := ports(back); sp != 80 || dp != 40000 {
		t.Fatalf("reply ports %d -> %d, want 80 -> 40000", sp, dp)
	}
	if wb.svcHits != hits {
		t.Fatal("the reply was taken from the pass entry")
	}
}
