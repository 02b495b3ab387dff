package engine

// The forwarding loop of one port:
//
//	Read(bufs) ─► for each frame: parse once ─► L2 checks, ARP/NDP answers
//	  ─► source check ─► input port has SNAT? replies translated back (snat.go)
//	  ─► echo to the gateway? answer
//	  ─► Lookup(dst) ─► unreachable: ICMP unreachable
//	                 ─► local/egress port q: TTL (routed hops) ─► MTU
//	                    ─► q has SNAT? translate (snat.go) ─► stage on q
//	─► flush: q.Write(staged) for every q touched
//
// Design notes: a worker owns its read buffers, one Parsed value, the staged
// batches (one slice per port index) and a few scratch buffers for the
// packets it originates (ARP/NDP answers, ICMP errors, fragments, software
// segments); staging keeps sub-slices of the read buffers, so nothing is
// copied until the next port's Write. Buffers leave link.Headroom + an
// Ethernet header of room in front of each packet (readOffset), so a frame
// can be re-headed in place.
//
// Offloads: a port whose device is a link.GSODevice hands the engine TSO/USO
// super-packets and packets with partial checksums, each described by a
// packet.GSO. The descriptor is the sender's word, so handle checks it
// against the parsed packet (packet.Parsed.OffloadValid) before anything
// acts on it, and drops a forged one (DropBadOffload). The engine routes a
// super-packet once, checks the next hop's MTU against its segment size, and
// passes it whole to a next port that accepts it (TAP to TAP: the kernel
// never segments); toward any other port it segments (or finishes the
// checksum) in software.

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

const (
	// readOffset is where a read packet starts in its buffer.
	readOffset = 2 * link.Headroom
	// maxBatch caps the batch a worker reads.
	maxBatch = 128
	// numScratch is how many packets a worker may originate per batch
	// before it flushes early.
	numScratch = 64
	// minRxMTU is the smallest IP packet size a worker accepts on read.
	minRxMTU = 9000
	// gsoBatch caps the batch of a port that reads 64 KiB super-packets.
	gsoBatch = 32
	// maxIPPacket is the largest IP packet (an IPv6 super-packet: a full
	// payload length plus the fixed header).
	maxIPPacket = 65535 + packet.IPv6Len
	// minScratch is the smallest IP packet a scratch buffer holds.
	minScratch = 9216
)

type worker struct {
	e      *Engine
	in     *Port
	bufs   [][]byte
	sizes  []int
	pp     packet.Parsed
	snap   *snapshot
	staged [][][]byte // by port index
	dirty  []int32    // port indexes with staged packets
	// scratch buffers for originated packets, reused every batch.
	scratch     [][]byte
	nScratch    int
	scratchSize int
	// offloads: the input device's GSO view, the descriptors of the read
	// batch, and the staged packets' descriptors by port index.
	gsoIn     link.GSODevice
	gso       []packet.GSO
	stagedGSO [][]packet.GSO
	segBufs   [][]byte // one buffer for a segment to be fragmented (emit)
	segSizes  []int
	// conntrack clock of the batch, read once per table (snat.go).
	ctTab, ctTab2   *conntrack.Table
	ctTime, ctTime2 conntrack.Time
	// svc is the load balancer of the batch (nil: off); svcUndo undoes
	// the service stage's translation of the packet being handled, for
	// the ICMP errors that quote it (svc.go).
	svc        *services
	svcUndo    *conntrack.Result // nil, &svcUndoBuf or a cache entry's (svccache.go)
	svcUndoBuf conntrack.Result
	svcFrags   [svcFragSlots]svcFrag // first fragments' translations (svc.go)
	// svcBack, when not 0, is the origin label of the Service flow whose
	// reply is being handled, or the gateway port's for the engine's
	// answer to a packet it sent from a client's address (originate):
	// forward sends the packet to that port (backPort) instead of routing
	// it (svc.go).
	svcBack uint16
	// svcCache holds recent Service flows' translations (svccache.go),
	// made on first use; svcHint is the last TrackExistingHint's.
	svcCache *svcCache
	svcHint  conntrack.Hint
	svcHits  uint64 // packets the cache translated (read by tests)
	// svcReply is set when the service stage translated a packet back
	// to its client (a reply, or an ICMP error on its way to the client):
	// the policy stage lets it pass (policy.go).
	svcReply bool
	// polFrags holds first IPv4 fragments' policy verdicts (policy.go).
	polFrags [polFragSlots]polFrag
	// originating is set while the worker routes a packet it made itself
	// (originate): drops then count as the engine's, not w.in's.
	originating bool
}

func newWorker(e *Engine, p *Port) *worker {
	batch := min(max(p.dev.BatchSize(), 1), maxBatch)
	// Read buffers take frames larger than the port's MTU, so that a host
	// configured with a larger MTU than its port gets ICMP errors from the
	// next hop's MTU check instead of a silent black hole.
	rx := max(p.cfg.MTU, minRxMTU)
	w := &worker{e: e, in: p}
	if p.gsoDev != nil {
		w.gsoIn = p.gsoDev
		batch = min(batch, gsoBatch)
		rx = maxIPPacket
	}
	size := readOffset + packet.EthernetLen + rx
	w.bufs, w.sizes, w.gso = make([][]byte, batch), make([]int, batch), make([]packet.GSO, batch)
	for i := range w.bufs {
		w.bufs[i] = make([]byte, size)
	}
	// Scratch holds fragments, segments and ICMP errors; it grows (once)
	// when a super-packet needs more segments than it has.
	w.scratchSize = readOffset + packet.EthernetLen + max(p.cfg.MTU, minScratch)
	w.growScratch(numScratch)
	return w
}

func (w *worker) growScratch(n int) {
	for len(w.scratch) < n {
		w.scratch = append(w.scratch, make([]byte, w.scratchSize))
	}
}

// run is the port's worker.
func (e *Engine) run(p *Port) {
	defer e.workers.Done()
	defer close(p.done)
	w := newWorker(e, p)
	for {
		var n int
		var err error
		if w.gsoIn != nil {
			n, err = w.gsoIn.ReadGSO(w.bufs, w.sizes, w.gso, readOffset)
		} else {
			n, err = p.dev.Read(w.bufs, w.sizes, readOffset)
		}
		if n > 0 {
			w.process(n)
		}
		if err != nil {
			if !errors.Is(err, link.ErrClosed) {
				e.log.Warn("port read failed; worker stops")
			}
			return
		}
	}
}

// process handles n frames of w.bufs and flushes what it staged.
func (w *worker) process(n int) {
	w.snap = w.e.state.Load()
	w.ctTab, w.ctTab2 = nil, nil
	w.svc = w.e.svc.Load()
	if len(w.staged) < len(w.snap.ports) {
		w.staged = append(w.staged, make([][][]byte, len(w.snap.ports)-len(w.staged))...)
		w.stagedGSO = append(w.stagedGSO, make([][]packet.GSO, len(w.snap.ports)-len(w.stagedGSO))...)
	}
	var bytes uint64
	var tap *Tap
	if tapsCompiled {
		tap = w.in.tap.Load()
	}
	for i := range n {
		sz := w.sizes[i]
		bytes += uint64(sz)
		if tap != nil {
			tap.Fn(Rx, w.bufs[i][readOffset:readOffset+sz])
		}
		w.handle(w.bufs[i], readOffset, readOffset+sz, w.gso[i])
	}
	w.in.c.rxPackets.Add(uint64(n))
	w.in.c.rxBytes.Add(bytes)
	w.flush()
}

// flush writes every staged batch to its port.
func (w *worker) flush() {
	for _, qi := range w.dirty {
		q := w.snap.ports[qi]
		batch := w.staged[qi]
		if tap := q.loadTap(); tap != nil {
			for _, b := range batch {
				tap.Fn(Tx, b[link.Headroom:])
			}
		}
		var err error
		if q.gsoDev != nil {
			_, err = q.gsoDev.WriteGSO(batch, w.stagedGSO[qi], link.Headroom)
		} else {
			_, err = q.dev.Write(batch, link.Headroom)
		}
		if err != nil {
			w.in.c.drops[DropTxError].Add(uint64(len(batch)))
		} else {
			var bytes uint64
			for _, b := range batch {
				bytes += uint64(len(b) - link.Headroom)
			}
			q.c.txPackets.Add(uint64(len(batch)))
			q.c.txBytes.Add(bytes)
		}
		clear(batch)
		w.staged[qi] = batch[:0]
		w.stagedGSO[qi] = w.stagedGSO[qi][:0]
	}
	w.dirty = w.dirty[:0]
	w.nScratch = 0
}

// scratchBuf returns a buffer for an originated packet, flushing first
// when the worker has used them all in this batch (flush releases them).
func (w *worker) scratchBuf() []byte {
	if w.nScratch == len(w.scratch) {
		w.flush()
	}
	b := w.scratch[w.nScratch]
	w.nScratch++
	return b
}

// scratchBufs returns n scratch buffers at once (software segments).
func (w *worker) scratchBufs(n int) [][]byte {
	w.growScratch(n)
	if w.nScratch+n > len(w.scratch) {
		w.flush()
	}
	b := w.scratch[w.nScratch : w.nScratch+n]
	w.nScratch += n
	return b
}

func (w *worker) drop(r DropReason) {
	if w.originating {
		w.e.origDrops.Add(1)
		return
	}
	w.in.c.drops[r].Add(1)
}

// handle decides on the frame buf[start:end], described by g.
func (w *worker) handle(buf []byte, start, end int, g packet.GSO) {
	in := w.in
	frame := buf[start:end]
	pp := &w.pp
	switch st := packet.Parse(frame, in.cfg.L2, pp); st {
	case packet.OK:
	case packet.IsARP:
		w.handleARP(frame)
		return
	case packet.TooShort:
		w.drop(DropTooShort)
		return
	case packet.BadChecksum:
		w.drop(DropBadChecksum)
		return
	case packet.BadEtherType:
		w.drop(DropEtherType)
		return
	default:
		w.drop(DropMalformed)
		return
	}
	// The descriptor comes from the sender (a pod's virtio-net header) and
	// is acted on after the source check: check it against the packet once,
	// here, so that nothing later trusts a forged offset or size.
	if g != (packet.GSO{}) && !pp.OffloadValid(frame, g) {
		w.drop(DropBadOffload)
		return
	}
	if in.cfg.L2 {
		eth := packet.Ethernet(frame)
		dst := eth.Dst()
		if in.peerMAC.Load() == nil {
			m := eth.Src()
			in.peerMAC.Store(&m)
		}
		if dst != w.e.cfg.GatewayMAC && !dst.IsMulticast() {
			w.drop(DropNotForUs)
			return
		}
	}
	if pp.Version == 6 && pp.Proto == packet.ProtoICMPv6 && !pp.FragOff {
		switch pp.ICMPType() {
		case packet.ICMPv6NeighborSolicit:
			w.handleNS(frame)
			return
		case packet.ICMPv6RouterSolicit, packet.ICMPv6RouterAdvert, packet.ICMPv6NeighborAdvert, 137:
			w.drop(DropNeighbor)
			return
		}
	}
	if pp.Dst.IsMulticast() || (pp.Version == 4 && w.isBroadcast4(pp.Dst)) {
		w.drop(DropMulticast)
		return
	}
	switch in.cfg.Kind {
	case KindPod:
		if !w.sourceOK(pp.Src) {
			w.drop(DropSpoofed)
			return
		}
	case KindPeer:
		// The underlay carries traffic for this node's pods and its host
		// only.
		if !w.e.inPodCIDR(pp.Dst) && !w.e.isHostAddr(pp.Dst) {
			w.drop(DropNotLocal)
			return
		}
	}
	if s := in.cfg.SNAT; s != nil && !w.snatIn(s, frame, g) {
		return
	}
	if s := w.svc; s != nil {
		w.svcUndo = nil
		w.svcBack = 0
		w.svcReply = false
		if !w.serviceStage(s, frame, g) {
			return
		}
	}
	if (pp.Dst == w.e.gw4 || (pp.Version == 6 && pp.Dst == w.e.gw6)) && !w.toGatewayPort() {
		w.answerEcho(frame)
		return
	}
	w.forward(buf, start, end, g, false)
}

// sourceOK reports whether a pod port may send from src.
func (w *worker) sourceOK(src netip.Addr) bool { return w.in.hasAddr(src) }

func (w *worker) isBroadcast4(a netip.Addr) bool {
	if a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	pc := w.e.cfg.PodCIDR
	if !pc.Contains(a) {
		return false
	}
	// The podCIDR's broadcast address: all host bits set.
	b := a.As4()
	host := ^uint32(0) >> pc.Bits()
	return binary.BigEndian.Uint32(b[:])&host == host
}

// forward routes the parsed packet at buf[start:end] (w.pp describes it, g
// its offload state). originated is set for packets the engine made
// itself: no ICMP errors are sent about them.
func (w *worker) forward(buf []byte, start, end int, g packet.GSO, originated bool) {
	pp := &w.pp
	nh, ok := w.snap.table.Lookup(pp.Dst)
	if !ok {
		nh.Kind = route.Unreachable
	}
	if w.svcBack != 0 {
		// A reply of a Service flow that kept its client's address, or
		// the engine's answer to one of its packets (originate), goes
		// back to the port the flow came from (svc.go), whatever the
		// route to the client says.
		nh = w.backPort(w.svcBack)
	}
	var q *Port
	switch nh.Kind {
	case route.Local, route.Egress:
		if int(nh.Port) < len(w.snap.ports) {
			q = w.snap.ports[nh.Port]
		}
	case route.Blackhole:
		w.drop(DropNoRoute)
		return
	case route.Peer:
		if int(nh.Peer) < len(w.snap.ports) {
			q = w.snap.ports[nh.Peer]
		}
	}
	if q == nil {
		w.drop(DropNoRoute)
		if !originated {
			w.unreachable(buf[start:end])
		}
		return
	}
	if st := w.snap.pol; st != nil && !originated {
		// NetworkPolicy: only flows to or from an isolated pod pay more
		// than these loads (policy.go).
		var sp, dp *portPol
		if w.in.cfg.Kind == KindPod && int(w.in.idx) < len(st.ports) && st.ports[w.in.idx].isolated() {
			sp = &st.ports[w.in.idx]
		}
		if q.cfg.Kind == KindPod && int(q.idx) < len(st.ports) && st.ports[q.idx].isolated() {
			dp = &st.ports[q.idx]
		}
		if (sp != nil || dp != nil) && !w.policyStage(st, sp, dp, buf[start:end]) {
			return
		}
	}
	ipOff := start + pp.IPOff
	ip := buf[ipOff : start+pp.IPEnd]
	// A hop between two pods of this node is switched, as on a bridge: no
	// TTL decrement. Every other hop is routed.
	routed := !originated && !(q.cfg.Kind == KindPod && w.in.cfg.Kind == KindPod)
	if routed && pp.TTL <= 1 {
		w.drop(DropTTL)
		w.icmpError(buf[start:end], timeExceeded(pp.Version))
		return
	}
	// A super-packet leaves as segments of HdrLen+Size bytes.
	segLen := len(ip)
	if g.Type != packet.GSONone {
		segLen = int(g.HdrLen) + int(g.Size)
	}
	tooLarge := segLen > q.cfg.MTU
	if tooLarge && (pp.Version == 6 || pp.DF) {
		// As Linux's ip_forward: the error quotes the packet as it arrived.
		w.drop(DropTooBig)
		if !originated {
			w.icmpError(buf[start:end], tooBig(pp.Version, q.cfg.MTU))
		}
		return
	}
	if s := q.cfg.SNAT; s != nil && !w.snatOut(s, buf[start:end], g) {
		return
	}
	if routed {
		if pp.Version == 4 {
			packet.IPv4(ip).DecTTL()
		} else {
			ip[7]--
		}
	}
	if tooLarge && g.Type == packet.GSONone {
		w.fragment4(ip, q)
		return
	}
	w.emit(q, buf, ipOff, ipOff+len(ip), pp.Version, g)
}

// emit stages the IP packet buf[ipStart:ipEnd] on q as it is when q takes
// its offload state g, and otherwise finishes its checksum or cuts it into
// segments (each fragmented if it is still too big and may be).
func (w *worker) emit(q *Port, buf []byte, ipStart, ipEnd int, version uint8, g packet.GSO) {
	if (g.Type == packet.GSONone && !g.NeedsCsum) || q.offloads.Accepts(g) {
		if g.Type != packet.GSONone {
			w.e.offload.whole.Add(1)
		}
		w.stage(q, buf, ipStart, ipEnd, version, g)
		return
	}
	ip := buf[ipStart:ipEnd]
	if g.Type == packet.GSONone {
		if err := packet.FinishChecksum(ip, g); err != nil {
			w.drop(DropMalformed)
			return
		}
		w.e.offload.csums.Add(1)
		w.stage(q, buf, ipStart, ipEnd, version, packet.GSO{})
		return
	}
	if g.Size == 0 || int(g.HdrLen)+int(g.Size) > w.scratchSize-readOffset-packet.EthernetLen {
		w.drop(DropNoBuffer)
		return
	}
	total, err := packet.GSOSegments(ip, g)
	if err != nil {
		w.drop(DropMalformed)
		return
	}
	// Cut in chunks of at most numScratch segments, so that the scratch
	// never grows with the segment count a sender chose (64 KiB of 1-byte
	// segments would be 65000 buffers held for good). Segments that are
	// still too big (IPv4 without DF) are cut one at a time into segBufs[0]
	// and fragmented from there: fragment4 may flush and reuse the scratch,
	// which must then hold no segment still to be read.
	if cap(w.segSizes) < numScratch {
		w.segSizes = make([]int, numScratch)
	}
	fragSegs := int(g.HdrLen)+int(g.Size) > q.cfg.MTU
	if fragSegs && w.segBufs == nil {
		w.segBufs = [][]byte{make([]byte, w.scratchSize)}
	}
	for next := 0; next < total; {
		k := min(total-next, numScratch)
		var bufs [][]byte
		if fragSegs {
			k, bufs = 1, w.segBufs
		} else {
			bufs = w.scratchBufs(k)
		}
		sizes := w.segSizes[:k]
		n, _, err := packet.GSOSegmentFrom(ip, g, next, bufs, sizes, readOffset)
		if err != nil || n == 0 {
			w.drop(DropMalformed)
			return
		}
		if next == 0 {
			w.e.offload.segmented.Add(1)
		}
		w.e.offload.segments.Add(uint64(n))
		next += n
		for i := range n {
			seg := bufs[i][readOffset : readOffset+sizes[i]]
			if fragSegs { // fragment4 copies (one fragment when it fits)
				w.fragment4(seg, q)
				continue
			}
			w.stage(q, bufs[i], readOffset, readOffset+sizes[i], version, packet.GSO{})
		}
	}
}

// stage queues the IP packet buf[ipStart:ipEnd] with offload state g on q,
// writing an Ethernet header in front of it for L2 ports.
func (w *worker) stage(q *Port, buf []byte, ipStart, ipEnd int, version uint8, g packet.GSO) {
	s := ipStart
	if q.cfg.L2 {
		s -= packet.EthernetLen
		dst := packet.Broadcast
		if m := q.peerMAC.Load(); m != nil {
			dst = *m
		}
		typ := uint16(packet.EtherTypeIPv4)
		if version == 6 {
			typ = packet.EtherTypeIPv6
		}
		packet.Ethernet(buf[s:]).Encode(dst, w.e.cfg.GatewayMAC, typ)
	}
	w.stageFrame(q, buf[s-link.Headroom:ipEnd], g)
}

func (w *worker) stageFrame(q *Port, b []byte, g packet.GSO) {
	qi := q.idx
	if len(w.staged[qi]) == 0 {
		w.dirty = append(w.dirty, qi)
	}
	w.staged[qi] = append(w.staged[qi], b)
	w.stagedGSO[qi] = append(w.stagedGSO[qi], g)
}

type icmpKind struct {
	typ, code uint8
	rest      uint32
}

// pmtu reports whether k tells the sender a path MTU (as tooBig makes it).
// The types of the two versions do not collide here: ICMPv6's type 3 (time
// exceeded) never has code 4, and ICMPv4 has no type 2.
func (k icmpKind) pmtu() bool {
	return (k.typ == packet.ICMPv4DstUnreachable && k.code == packet.ICMPv4FragNeeded) ||
		(k.typ == packet.ICMPv6PacketTooBig && k.code == 0)
}

func timeExceeded(v uint8) icmpKind {
	if v == 4 {
		return icmpKind{typ: packet.ICMPv4TimeExceeded}
	}
	return icmpKind{typ: packet.ICMPv6TimeExceeded, code: packet.ICMPv6HopLimitExceeded}
}

func tooBig(v uint8, mtu int) icmpKind {
	if v == 4 {
		return icmpKind{typ: packet.ICMPv4DstUnreachable, code: packet.ICMPv4FragNeeded, rest: uint32(mtu)}
	}
	return icmpKind{typ: packet.ICMPv6PacketTooBig, rest: uint32(mtu)}
}

// unreachable sends net or host unreachable about frame: host unreachable
// for an address of this node's podCIDR with no pod, net unreachable else.
func (w *worker) unreachable(frame []byte) {
	pp := &w.pp
	host := w.e.inPodCIDR(pp.Dst)
	var k icmpKind
	switch {
	case pp.Version == 4 && host:
		k = icmpKind{typ: packet.ICMPv4DstUnreachable, code: packet.ICMPv4HostUnreachable}
	case pp.Version == 4:
		k = icmpKind{typ: packet.ICMPv4DstUnreachable, code: packet.ICMPv4NetUnreachable}
	case host:
		k = icmpKind{typ: packet.ICMPv6DstUnreachable, code: packet.ICMPv6AddrUnreachable}
	default:
		k = icmpKind{typ: packet.ICMPv6DstUnreachable, code: packet.ICMPv6NoRoute}
	}
	w.icmpError(frame, k)
}

// icmpError sends an ICMP error about the packet in frame (w.pp describes
// it) back toward its source, within the rate limit.
//
// Design notes: the limit is one token bucket per input port, not one for
// the engine, so that one pod's flood of TTL-expired or unreachable
// triggers cannot starve another pod of its errors. A bucket per source
// address would need a map on the hot path, keyed by addresses a sender
// chooses, with eviction; a port is a bounded stand-in for a source: a pod
// port sends only from its own addresses (the source check comes first), so
// there it is exactly per pod, and the uplink, egress and each peer port
// share one budget among their sources, never with a pod. Errors that carry
// a path MTU (IPv4 fragmentation needed, ICMPv6 packet too big) are not
// limited at all, as Linux exempts them (icmpv4_mask_allow, icmpv6_ratemask):
// a lost one black-holes a flow, and each is smaller than the packet that
// caused it, so they amplify nothing.
func (w *worker) icmpError(frame []byte, k icmpKind) {
	pp := &w.pp
	w.unService(frame)
	if !packet.ICMPErrorAllowed(pp) {
		return
	}
	src := w.e.gw4
	if pp.Version == 6 {
		src = w.e.gw6
		if !src.IsValid() {
			return
		}
	}
	if !k.pmtu() && !w.in.icmp.Allow() {
		w.e.icmpLimited.Add(1)
		return
	}
	orig := frame[pp.IPOff:pp.IPEnd]
	buf := w.scratchBuf()
	n := packet.BuildICMPError(buf[readOffset:], orig, pp, src, k.typ, k.code, k.rest)
	if n == 0 {
		w.drop(DropNoBuffer)
		return
	}
	w.e.icmpSent.Add(1)
	w.originate(buf, readOffset, readOffset+n)
}

// originate routes an IP packet the engine made at buf[start:end]. Its
// drops are the engine's own (Engine.OriginatedDrops), not a second drop of
// the packet it answers, which arrived on w.in and is counted there once.
func (w *worker) originate(buf []byte, start, end int) {
	w.originating = true
	// An answer to a packet the gateway port sent from another source
	// than the gateway (a client's address the ingress kept, svc.go)
	// goes back to that port; any other answer is routed.
	back := w.svcBack
	w.svcBack = 0
	if w.in == w.snap.gateway && w.pp.Src != w.e.gw4 && w.pp.Src != w.e.gw6 && w.in.idx < 0xffff {
		w.svcBack = uint16(w.in.idx) + 1
	}
	if packet.Parse(buf[start:end], false, &w.pp) != packet.OK {
		w.drop(DropMalformed)
	} else {
		w.forward(buf, start, end, packet.GSO{}, true)
	}
	w.svcBack = back
	w.originating = false
}

// answerEcho answers an ICMP echo request to the gateway address; anything
// else addressed to the gateway is dropped.
func (w *worker) answerEcho(frame []byte) {
	pp := &w.pp
	echo, reply := uint8(packet.ICMPv4Echo), uint8(packet.ICMPv4EchoReply)
	if pp.Version == 6 {
		echo, reply = packet.ICMPv6EchoRequest, packet.ICMPv6EchoReply
	}
	if pp.ICMPType() != int(echo) || pp.Frag {
		w.drop(DropToGateway)
		return
	}
	buf := w.scratchBuf()
	orig := frame[pp.IPOff:pp.IPEnd]
	if readOffset+len(orig) > len(buf) {
		w.drop(DropNoBuffer)
		return
	}
	out := buf[readOffset : readOffset+len(orig)]
	copy(out, orig)
	l4 := pp.L4Off - pp.IPOff
	src, dst := pp.Src, pp.Dst
	if pp.Version == 4 {
		hl := packet.IPv4(out).HeaderLen()
		packet.IPv4(out).Encode(packet.IPv4Fields{TotalLen: uint16(len(out)), TTL: 64, Protocol: packet.ProtoICMPv4, Src: dst, Dst: src})
		if hl != packet.IPv4MinLen { // drop options: move the ICMP message up
			n := copy(out[packet.IPv4MinLen:], out[hl:])
			out = out[:packet.IPv4MinLen+n]
			binary.BigEndian.PutUint16(out[2:4], uint16(len(out)))
			packet.IPv4(out).SetChecksum()
			l4 = packet.IPv4MinLen
		}
		c := out[l4:]
		c[0] = reply
		c[2], c[3] = 0, 0
		binary.BigEndian.PutUint16(c[2:4], ^packet.Checksum(c, 0))
	} else {
		if l4 != packet.IPv6Len { // extension headers: not worth answering
			w.drop(DropToGateway)
			return
		}
		packet.IPv6(out).Encode(uint16(len(out)-packet.IPv6Len), packet.ProtoICMPv6, 64, dst, src)
		c := out[l4:]
		c[0] = reply
		c[2], c[3] = 0, 0
		binary.BigEndian.PutUint16(c[2:4], ^packet.Checksum(c, packet.PseudoHeaderSum(dst, src, packet.ProtoICMPv6, len(c))))
	}
	w.originate(buf, readOffset, readOffset+len(out))
}

// fragment4 splits the IPv4 packet ip (DF clear, TTL already handled) into
// fragments that fit q's MTU (RFC 791). Options are kept in the first
// fragment only.
func (w *worker) fragment4(ip []byte, q *Port) {
	h := packet.IPv4(ip)
	hl := h.HeaderLen()
	payload := ip[hl:]
	ff := h.FlagsFrag()
	baseOff := int(ff&packet.IPv4FragOffMask) * 8
	moreAfter := ff&packet.IPv4FlagMF != 0
	for off, first := 0, true; off < len(payload); first = false {
		fhl := packet.IPv4MinLen
		if first {
			fhl = hl
		}
		chunk := (q.cfg.MTU - fhl) &^ 7
		if chunk <= 0 {
			w.drop(DropTooBig)
			return
		}
		last := off+chunk >= len(payload)
		if last {
			chunk = len(payload) - off
		}
		buf := w.scratchBuf()
		if readOffset+fhl+chunk > len(buf) {
			w.drop(DropNoBuffer)
			return
		}
		f := buf[readOffset : readOffset+fhl+chunk]
		copy(f[:packet.IPv4MinLen], ip[:packet.IPv4MinLen])
		if first {
			copy(f[packet.IPv4MinLen:fhl], ip[packet.IPv4MinLen:hl])
		}
		f[0] = 0x40 | byte(fhl/4)
		copy(f[fhl:], payload[off:off+chunk])
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		flags := uint16((baseOff + off) / 8)
		if !last || moreAfter {
			flags |= packet.IPv4FlagMF
		}
		binary.BigEndian.PutUint16(f[6:8], flags)
		packet.IPv4(f).SetChecksum()
		w.stage(q, buf, readOffset, readOffset+len(f), 4, packet.GSO{})
		off += chunk
	}
}
