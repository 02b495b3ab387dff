package engine

// The Service flow cache: per worker, direct-mapped by the packet's
// addresses, ports and protocol, it keeps for each recently seen Service
// flow the conntrack Hint, the translation and the checksum deltas the
// translation needs. A packet of a cached flow then costs a compare of
// its tuple, conntrack's Still (two atomic loads and the state machine's
// step) and the writes of the new addresses and ports with precomputed
// checksum updates, instead of a tuple, a hash lookup and two general
// rewrites (about 180 ns against a routed packet's 55 in BenchmarkForward
// before it).
//
// Only what the full path would do identically is cached: TCP and UDP,
// unfragmented, with a complete checksum (no partial-checksum offload).
// A packet from a backend's address that belongs to no Service flow (a
// backend pod's own traffic) is cached as a pass entry: valid while the
// tuple's conntrack shard saw no insert (StillAbsent), it spares such
// packets the lookup.
// An entry is filled by the full path when conntrack found the flow
// steady (TrackExistingHint) and its rewrite succeeded; it is checked
// against conntrack on every use, so a state transition, a timeout
// refresh, a flush or a deletion sends the packet the full way again. The
// updates are applied in the order and with the arithmetic of
// conntrack.Rewrite and RewriteDNAT, so the bytes are the same as the
// full path's (TestServiceCacheSameBytes).

import (
	"encoding/binary"
	"net/netip"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

const svcCacheSlots = 128 // 1<<7: svcIndex

// svcCached is one cached Service flow direction.
type svcCached struct {
	// The key: the packet's addresses as they arrive (IPv4: both in
	// key[0]) and meta (ports, protocol, version); meta is 0 when the
	// entry is unused or being filled.
	key  [4]uint64
	meta uint64

	hint conntrack.Hint
	// pass: the packet's tuple had no flow (hint.Absent) when a packet
	// from a backend's address came (serviceStage): it is no Service
	// flow's reply, and the packet goes on unchanged.
	pass bool
	ops  [2]svcOp // applied in order, n of them
	n    uint8
	dir  conntrack.Dir
	back uint16           // the Result's origin, for a reply (svcBack)
	undo conntrack.Result // for an original (svcUndo)
}

// svcOp rewrites one side (source or destination) of a packet to addr:port.
type svcOp struct {
	addr  netip.Addr
	raw   [16]byte // addr's bytes (IPv4: the first 4)
	port  uint16
	src   bool
	dAddr uint32 // sum over the address's 16-bit words of ^old + new (RFC 1624)
	dPort uint32 // ^old port + new port
}

type svcCache [svcCacheSlots]svcCached

// svcKey returns the cache key of the packet whose IP header is ip (pp
// describes it).
func svcKey(ip []byte, pp *packet.Parsed) (k0, k1, k2, k3, meta uint64) {
	meta = uint64(pp.SrcPort)<<48 | uint64(pp.DstPort)<<32 | uint64(pp.Proto)<<8 | uint64(pp.Version)
	if pp.Version == 4 {
		return binary.LittleEndian.Uint64(ip[12:20]), 0, 0, 0, meta
	}
	_ = ip[39]
	return binary.LittleEndian.Uint64(ip[8:16]), binary.LittleEndian.Uint64(ip[16:24]),
		binary.LittleEndian.Uint64(ip[24:32]), binary.LittleEndian.Uint64(ip[32:40]), meta
}

// svcSlot returns the cache slot of the packet in frame (w.pp describes
// it) and whether it holds the packet's flow, or nil when the packet may
// not use the cache.
func (w *worker) svcSlot(frame []byte, g packet.GSO) (*svcCached, bool) {
	pp := &w.pp
	if pp.Frag || (pp.Proto != packet.ProtoTCP && pp.Proto != packet.ProtoUDP) {
		return nil, false
	}
	if w.svcCache == nil {
		w.svcCache = new(svcCache)
	}
	k0, k1, k2, k3, meta := svcKey(frame[pp.IPOff:], pp)
	c := &w.svcCache[svcIndex(k0, k1, k2, k3, meta)]
	return c, c.meta == meta && c.key[0] == k0 && c.key[1] == k1 && c.key[2] == k2 && c.key[3] == k3
}

// svcIndex returns the slot of a key. Two flows of a slot evict each
// other: the cache is direct-mapped.
func svcIndex(k0, k1, k2, k3, meta uint64) int {
	return int(((k0 ^ k1 ^ k2 ^ k3 ^ meta) * 0x9e3779b97f4a7c15) >> (64 - 7))
}

// fill makes c the entry of the packet w.pp describes, before the full
// path rewrites it with r. c stays unusable (meta 0) until the caller,
// once the rewrite succeeded, sets c.meta to the key's meta that fill
// returns.
func (c *svcCached) fill(ip []byte, pp *packet.Parsed, r *conntrack.Result, h *conntrack.Hint, undo *conntrack.Result) (meta uint64) {
	k0, k1, k2, k3, meta := svcKey(ip, pp)
	*c = svcCached{key: [4]uint64{k0, k1, k2, k3}, hint: *h, dir: r.Dir}
	if r.NAT() {
		c.add(pp, r.Dir == conntrack.Original, r.NATAddr, r.NATPort)
	}
	if r.DNAT() {
		c.add(pp, r.Dir == conntrack.Reply, r.DNATAddr, r.DNATPort)
	}
	if r.Dir == conntrack.Reply {
		c.back = r.Origin()
	} else {
		c.undo = *undo
	}
	return meta
}

func (c *svcCached) add(pp *packet.Parsed, src bool, addr netip.Addr, port uint16) {
	old, oldPort := pp.Dst, pp.DstPort
	if src {
		old, oldPort = pp.Src, pp.SrcPort
	}
	o, n := old.As16(), addr.As16()
	from := 0
	if pp.Version == 4 {
		from = 12 // the IPv4 bytes of the mapped form
	}
	var d uint32
	for i := from; i < 16; i += 2 {
		d += uint32(^binary.BigEndian.Uint16(o[i:])) & 0xffff
		d += uint32(binary.BigEndian.Uint16(n[i:]))
	}
	op := svcOp{addr: addr, port: port, src: src, dAddr: d, dPort: uint32(^oldPort) + uint32(port)}
	copy(op.raw[:], n[from:])
	c.ops[c.n] = op
	c.n++
}

// apply rewrites the packet in frame (w.pp describes it, and is updated)
// as c says; false when the packet is too short for it (the full path
// then refuses it too).
func (c *svcCached) apply(frame []byte, pp *packet.Parsed) bool {
	ip := frame[pp.IPOff:pp.IPEnd]
	l4 := frame[pp.L4Off:pp.IPEnd]
	csumOff := 16
	if pp.Proto == packet.ProtoUDP {
		if len(l4) < packet.UDPLen {
			return false
		}
		csumOff = 6
		if pp.Version == 4 && binary.BigEndian.Uint16(l4[6:8]) == 0 {
			csumOff = -1 // no checksum
		}
	} else if len(l4) < packet.TCPMinLen {
		return false
	}
	for i := range c.n {
		op := &c.ops[i]
		portOff, addrOff, alen := 2, 16, 4
		if pp.Version == 6 {
			addrOff, alen = 24, 16
		}
		if op.src {
			portOff, addrOff = 0, addrOff-alen
		}
		if csumOff >= 0 {
			v := csumAdd(binary.BigEndian.Uint16(l4[csumOff:]), op.dAddr)
			v = csumAdd(v, op.dPort)
			if v == 0 && pp.Proto == packet.ProtoUDP {
				v = 0xffff
			}
			binary.BigEndian.PutUint16(l4[csumOff:], v)
		}
		binary.BigEndian.PutUint16(l4[portOff:], op.port)
		if pp.Version == 4 {
			binary.BigEndian.PutUint16(ip[10:12], csumAdd(binary.BigEndian.Uint16(ip[10:12]), op.dAddr))
		}
		copy(ip[addrOff:addrOff+alen], op.raw[:alen])
		if op.src {
			pp.Src, pp.SrcPort = op.addr, op.port
		} else {
			pp.Dst, pp.DstPort = op.addr, op.port
		}
	}
	return true
}

// csumAdd folds the precomputed sum d into the checksum field as
// packet.UpdateChecksum(Bytes) does: ~(~field + d).
func csumAdd(field uint16, d uint32) uint16 {
	sum := uint32(^field) + d
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}

// svcCacheHit handles a packet of a cached Service flow: it reports
// false (and changes nothing) unless c holds the packet's flow and
// conntrack says the flow is as c saw it. Only a reply's lookup (from a
// backend's address, to no Service address) may take a pass entry.
func (w *worker) svcCacheHit(s *services, c *svcCached, frame []byte, g packet.GSO, flags uint8, now conntrack.Time, reply bool) bool {
	if c.pass {
		if !reply || !s.cfg.Table.StillAbsent(&c.hint) {
			return false
		}
		w.svcHits++
		return true
	}
	if g.NeedsCsum || !s.cfg.Table.Still(&c.hint, flags, now) {
		return false
	}
	pp := &w.pp
	if c.dir == conntrack.Original {
		w.svcUndo = &c.undo
	}
	if !c.apply(frame, pp) {
		w.svcUndo = nil
		return false
	}
	if c.dir == conntrack.Reply {
		w.svcBack = c.back
		w.svcReply = true
	}
	w.svcHits++
	return true
}

// fillPass makes c the pass entry of the packet w.pp describes (h: its
// tuple's absence).
func (c *svcCached) fillPass(ip []byte, pp *packet.Parsed, h *conntrack.Hint) {
	k0, k1, k2, k3, meta := svcKey(ip, pp)
	*c = svcCached{key: [4]uint64{k0, k1, k2, k3}, meta: meta, hint: *h, pass: true}
}
