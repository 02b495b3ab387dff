package underlay

// The send path of a peer device.
//
//	Write(bufs) / WriteGSO(bufs, gso)
//	   ─► plain packet: checksum finished if partial; encapsulation written
//	      in its headroom; one iovec (zero copy)
//	   ─► TCP super-packet (TSO): cut without copying: per segment, its
//	      encapsulation + IP + TCP header built in the batch's header arena
//	      (lengths, IPv4 ID, sequence number, flags, checksums) and its
//	      payload left in place: two iovecs per datagram
//	   ─► datagrams of equal length (the last may be shorter) grouped into
//	      one UDP_SEGMENT message ─► sendmmsg
//
// Design notes: the kernel concatenates a message's iovecs and cuts the
// result every gso_size bytes, so a datagram may be any number of iovecs
// as long as every datagram of the message but the last is gso_size long.
// That is what lets a TCP super-packet leave as one sendmsg with its
// payload never copied in userspace: the kernel's copy into the skb is the
// only one. Layouts the fast path does not cut (UDP super-packets, IPv6
// extension headers longer than the header arena's slot) are cut with
// packet.GSOSegment into the batch's scratch buffers.

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

const (
	// maxDgrams is the most datagrams one sendmmsg build holds.
	maxDgrams = 256
	// hdrSlot is one segment's header room in the arena: encapsulation,
	// IP header (with options) and TCP header (with options).
	hdrSlot = 160
	// numScratch is the fallback's scratch buffers per batch.
	numScratch = 64
)

var segmentCmsgSpace = unix.CmsgSpace(2)

// sendBatch is one Write's worth of sendmmsg state, pooled: a writer takes
// one, builds and sends its datagrams and gives it back, so concurrent
// writers never share one and the steady state allocates nothing.
type sendBatch struct {
	u  *Underlay
	p  *peerState
	gs bool // GSO may be used in this build

	hdrs  []mmsghdr    // messages; 2*maxDgrams for the retry without GSO
	iovs  []unix.Iovec // one or two per datagram
	ctrl  []byte       // a UDP_SEGMENT cmsg per message
	arena []byte       // segment headers, hdrSlot bytes each

	dgIov, dgN, dgInner []int  // per datagram: first iovec, iovecs, inner bytes
	msgDg, msgN         []int  // per message: first datagram, datagrams
	retry               []bool // per message: refused with EIO, resend without GSO

	nd, ni, nm, na int // datagrams, iovecs, messages, arena slots used
	segLen, total  int // the open GSO message: datagram length, bytes
	ended          bool

	n, sent, drops, dropB int // send results: messages to send, done, datagrams and inner bytes refused
	eio                   bool
	pk, by                int // inner packets and bytes handed to the kernel, since begin

	scratch  [][]byte // fallback segments (lazily allocated)
	nScratch int
	sizes    []int

	writeFn func(fd uintptr) bool // b.write, bound once
}

func newSendBatch(u *Underlay) any {
	maxMsgs := 2 * maxDgrams
	b := &sendBatch{
		u:       u,
		hdrs:    make([]mmsghdr, maxMsgs),
		iovs:    make([]unix.Iovec, 2*maxDgrams),
		ctrl:    make([]byte, maxMsgs*segmentCmsgSpace),
		arena:   make([]byte, maxDgrams*hdrSlot),
		dgIov:   make([]int, maxDgrams),
		dgN:     make([]int, maxDgrams),
		dgInner: make([]int, maxDgrams),
		msgDg:   make([]int, maxMsgs),
		msgN:    make([]int, maxMsgs),
		retry:   make([]bool, maxMsgs),
	}
	b.writeFn = b.write
	return b
}

// send encapsulates and sends bufs (gso[i] describes bufs[i]; nil: plain
// packets) to p. It returns link.ErrClosed when the socket is closed.
func (b *sendBatch) send(p *peerState, bufs [][]byte, gso []packet.GSO, offset int) error {
	u := b.u
	b.p, b.gs = p, u.sock.gso.Load()
	b.pk, b.by, b.nScratch = 0, 0, 0
	b.reset()
	var notIP, bad int
	for i, buf := range bufs {
		var g packet.GSO
		if gso != nil {
			g = gso[i]
		}
		if g.Type == packet.GSONone {
			ip := buf[offset:]
			if g.NeedsCsum && packet.FinishChecksum(ip, g) != nil {
				bad++
				continue
			}
			d := encapsulate(buf, offset, p.tmpl)
			if len(d) == 0 {
				notIP++
				continue
			}
			if err := b.add(d, nil, len(ip)); err != nil {
				return err
			}
			continue
		}
		ok, err := b.addTSO(buf[offset:], g)
		if err != nil {
			return err
		}
		if !ok {
			if ok, err = b.addSegmented(buf[offset:], g); err != nil {
				return err
			}
			if !ok {
				bad++
			}
		}
	}
	if notIP > 0 {
		u.drop(p, DropNotIP, uint64(notIP))
	}
	if bad > 0 {
		u.drop(p, DropBadGSO, uint64(bad))
	}
	if err := b.flush(); err != nil {
		return err
	}
	u.c.txPackets.Add(uint64(b.pk))
	u.c.txBytes.Add(uint64(b.by))
	p.counters.txPackets.Add(uint64(b.pk))
	p.counters.txBytes.Add(uint64(b.by))
	return nil
}

func (b *sendBatch) reset() {
	b.nd, b.ni, b.nm, b.na = 0, 0, 0, 0
	b.ended = false
}

// full reports whether the batch cannot take another datagram (with an
// arena slot).
func (b *sendBatch) full() bool {
	return b.nd == maxDgrams || b.na == maxDgrams || b.ni+2 > len(b.iovs)
}

// add appends a datagram of one iovec (d) or two (d, then e) carrying
// inner bytes of the inner packet, flushing first when the batch is full.
func (b *sendBatch) add(d, e []byte, inner int) error {
	if b.full() {
		if err := b.flush(); err != nil {
			return err
		}
	}
	dlen := len(d) + len(e)
	iov := &b.iovs[b.ni]
	iov.Base = &d[0]
	iov.SetLen(len(d))
	n := 1
	if len(e) > 0 {
		iov2 := &b.iovs[b.ni+1]
		iov2.Base = &e[0]
		iov2.SetLen(len(e))
		n = 2
	}
	b.dgIov[b.nd], b.dgN[b.nd], b.dgInner[b.nd] = b.ni, n, inner
	m := b.nm - 1
	if b.gs && m >= 0 && !b.ended && b.msgN[m] < maxGSOSegments && dlen <= b.segLen && b.total+dlen <= maxUDPPayload {
		b.msgN[m]++
		b.total += dlen
		b.ended = dlen < b.segLen // a shorter datagram ends the group
	} else {
		b.msgDg[b.nm], b.msgN[b.nm], b.retry[b.nm] = b.nd, 1, false
		b.nm++
		b.segLen, b.total, b.ended = dlen, dlen, false
	}
	b.ni += n
	b.nd++
	b.pk++
	b.by += inner
	return nil
}

// addTSO cuts a TCP super-packet into datagrams without copying its
// payload. It returns false (having added nothing) for a layout it does
// not handle.
func (b *sendBatch) addTSO(ip []byte, g packet.GSO) (bool, error) {
	if g.Type != packet.GSOTCPv4 && g.Type != packet.GSOTCPv6 || g.Size == 0 || len(ip) < 1 {
		return false, nil
	}
	var l4, ipLen int
	v6 := g.Type == packet.GSOTCPv6
	if v6 {
		if len(ip) < packet.IPv6Len || ip[0]>>4 != 6 {
			return false, nil
		}
		ipLen = packet.IPv6Len + int(binary.BigEndian.Uint16(ip[4:6]))
		switch {
		case ip[6] == packet.ProtoTCP:
			l4 = packet.IPv6Len
		case g.NeedsCsum && int(g.CsumStart) > packet.IPv6Len:
			l4 = int(g.CsumStart) // extension headers, copied as they are
		default:
			return false, nil
		}
	} else {
		if len(ip) < packet.IPv4MinLen || ip[0]>>4 != 4 || ip[9] != packet.ProtoTCP ||
			binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
			return false, nil
		}
		l4 = int(ip[0]&0xf) * 4
		ipLen = int(binary.BigEndian.Uint16(ip[2:4]))
	}
	if l4 < packet.IPv4MinLen || ipLen > len(ip) || l4+packet.TCPMinLen > ipLen {
		return false, nil
	}
	thl := int(ip[l4+12]>>4) * 4
	hdr := l4 + thl
	encLen := b.u.cfg.Encap.HeaderLen()
	if thl < packet.TCPMinLen || hdr > ipLen || encLen+hdr > hdrSlot {
		return false, nil
	}
	mss := int(g.Size)
	nseg := max(1, (ipLen-hdr+mss-1)/mss)
	var src, dst netip.Addr
	if v6 {
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	} else {
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	}
	pseudo := packet.PseudoHeaderSum(src, dst, packet.ProtoTCP, 0)
	seq := binary.BigEndian.Uint32(ip[l4+4:])
	flags := ip[l4+13]
	var id uint16
	if !v6 {
		id = binary.BigEndian.Uint16(ip[4:6])
	}
	for j := range nseg {
		if b.full() { // before taking a slot: add must not flush it away
			if err := b.flush(); err != nil {
				return true, err
			}
		}
		start := hdr + j*mss
		end := min(start+mss, ipLen)
		payload := ip[start:end]
		slot := b.arena[b.na*hdrSlot : b.na*hdrSlot+encLen+hdr]
		b.na++
		h := slot[encLen:]
		copy(h, ip[:hdr])
		segLen := hdr + len(payload)
		if v6 {
			binary.BigEndian.PutUint16(h[4:6], uint16(segLen-packet.IPv6Len))
		} else {
			binary.BigEndian.PutUint16(h[2:4], uint16(segLen))
			binary.BigEndian.PutUint16(h[4:6], id+uint16(j))
			packet.IPv4(h).SetChecksum()
		}
		t := h[l4:]
		binary.BigEndian.PutUint32(t[4:8], seq+uint32(j*mss))
		f := flags
		if j > 0 {
			f &^= 0x80 // CWR on the first segment only
		}
		if j < nseg-1 {
			f &^= packet.TCPFlagFIN | packet.TCPFlagPSH
		}
		t[13] = f
		t[16], t[17] = 0, 0
		sum := packet.Checksum(payload, uint32(packet.Checksum(t, pseudo+uint32(thl+len(payload)))))
		binary.BigEndian.PutUint16(t[16:18], ^sum)
		if encLen > 0 {
			copy(slot, b.p.tmpl[:])
			typ := uint16(packet.EtherTypeIPv4)
			if v6 {
				typ = packet.EtherTypeIPv6
			}
			binary.BigEndian.PutUint16(slot[encLen-2:], typ)
		}
		if err := b.add(slot, payload, segLen); err != nil {
			return true, err
		}
	}
	return true, nil
}

// addSegmented cuts a super-packet the fast path does not handle with
// packet.GSOSegment into the batch's scratch buffers. It returns false
// when the packet is malformed.
func (b *sendBatch) addSegmented(ip []byte, g packet.GSO) (bool, error) {
	if b.scratch == nil {
		size := link.Headroom + b.u.mtu
		b.scratch = make([][]byte, numScratch)
		for i := range b.scratch {
			b.scratch[i] = make([]byte, size)
		}
		b.sizes = make([]int, numScratch)
	}
	for first := 0; ; {
		if b.nScratch == len(b.scratch) {
			if err := b.flush(); err != nil {
				return true, err
			}
			b.nScratch = 0
		}
		n, total, err := packet.GSOSegmentFrom(ip, g, first, b.scratch[b.nScratch:], b.sizes[b.nScratch:], link.Headroom)
		if err != nil {
			return false, nil
		}
		for i := range n {
			buf := b.scratch[b.nScratch+i][:link.Headroom+b.sizes[b.nScratch+i]]
			d := encapsulate(buf, link.Headroom, b.p.tmpl)
			if len(d) == 0 {
				continue
			}
			if err := b.add(d, nil, b.sizes[b.nScratch+i]); err != nil {
				return true, err
			}
		}
		b.nScratch += n
		first += n
		if first >= total {
			return true, nil
		}
	}
}

// flush sends what the batch holds and starts an empty one.
func (b *sendBatch) flush() error {
	if b.nm == 0 {
		b.reset()
		return nil
	}
	p := b.p
	for m := range b.nm {
		h := &b.hdrs[m].hdr
		first := b.msgDg[m]
		h.Name, h.Namelen = &p.name[0], p.nameLen
		h.Iov = &b.iovs[b.dgIov[first]]
		last := first + b.msgN[m] - 1
		h.SetIovlen(b.dgIov[last] + b.dgN[last] - b.dgIov[first])
		if b.msgN[m] == 1 {
			h.Control = nil
			h.SetControllen(0)
			continue
		}
		segLen := 0
		for _, iov := range b.iovs[b.dgIov[first] : b.dgIov[first]+b.dgN[first]] {
			segLen += int(iov.Len)
		}
		c := b.ctrl[m*segmentCmsgSpace : (m+1)*segmentCmsgSpace]
		putSegmentCmsg(c, uint16(segLen))
		h.Control = &c[0]
		h.SetControllen(len(c))
		b.u.c.txGSO.Add(1)
	}
	b.n, b.sent, b.drops, b.dropB, b.eio = b.nm, 0, 0, 0, false
	err := b.u.sock.rc.Write(b.writeFn)
	if err == nil && b.eio {
		err = b.retryWithoutGSO()
	}
	clear(b.iovs[:b.ni]) // keep no reference to the caller's buffers
	for m := range b.n {
		b.hdrs[m].hdr.Iov, b.hdrs[m].hdr.Name = nil, nil
	}
	b.pk -= b.drops
	b.by -= b.dropB
	if b.drops > 0 {
		b.u.drop(p, DropTxError, uint64(b.drops))
	}
	b.reset()
	if err != nil {
		return link.ErrClosed
	}
	return nil
}

// write is the RawConn callback: sendmmsg until every message is done,
// false (wait for the socket to be writable) on EAGAIN.
func (b *sendBatch) write(fd uintptr) bool {
	for b.sent < b.n {
		b.u.c.txCalls.Add(1)
		r, errno := sendmmsg(int(fd), b.hdrs[b.sent:b.n])
		switch {
		case errno == 0:
			b.sent += r
		case errno == unix.EAGAIN:
			return false
		case errno == unix.EINTR:
		case errno == unix.EIO && b.msgN[b.sent] > 1:
			// The egress device cannot checksum, which UDP_SEGMENT
			// requires: resent without GSO afterwards.
			b.retry[b.sent], b.eio = true, true
			b.sent++
		default:
			// The message at b.sent failed; the ones before it went.
			m := b.sent
			b.drops += b.msgN[m]
			for d := b.msgDg[m]; d < b.msgDg[m]+b.msgN[m]; d++ {
				b.dropB += b.dgInner[d]
			}
			b.sent++
		}
	}
	return true
}

// retryWithoutGSO turns GSO off for good and resends, one datagram per
// message, the GSO messages the kernel refused with EIO.
func (b *sendBatch) retryWithoutGSO() error {
	if b.u.sock.gso.CompareAndSwap(true, false) {
		b.u.log.Warn("the kernel refused UDP GSO (EIO: no checksum offload on the uplink); sending without it")
	}
	n := b.n
	for m := range b.n {
		if !b.retry[m] {
			continue
		}
		name, namelen := b.hdrs[m].hdr.Name, b.hdrs[m].hdr.Namelen
		for d := b.msgDg[m]; d < b.msgDg[m]+b.msgN[m]; d++ {
			h := &b.hdrs[n].hdr
			h.Name, h.Namelen = name, namelen
			h.Iov = &b.iovs[b.dgIov[d]]
			h.SetIovlen(b.dgN[d])
			h.Control = nil
			h.SetControllen(0)
			b.msgDg[n], b.msgN[n], b.retry[n] = d, 1, false
			n++
		}
	}
	b.sent, b.n = b.n, n
	return b.u.sock.rc.Write(b.writeFn)
}
