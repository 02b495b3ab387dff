package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/internal/tunfd"
	"github.com/podrouter/podrouter/router/link/internal/uring"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// kind is how tunfd reports this package's errors.
var kind = tunfd.Kind{Flag: unix.IFF_TAP, Name: "tap", ErrNot: ErrNotTAP, ErrBusy: ErrBusy, ErrConfig: ErrConfig}

// Device is an open TAP device: a link.GSODevice carrying Ethernet frames.
// It holds the TAP's descriptor (non-blocking, in Go's netpoller) and, for
// reads, one MaxFrame scratch buffer in which a super-packet is kept while
// Read hands out its segments (over more than one call when the caller's
// batch is smaller than the segments' number). WriteGSO's software fallback
// uses a second such buffer, allocated on first use.
type Device struct {
	fd       int // owned by f; used directly by writes, which Close waits for
	f        *os.File
	rc       syscall.RawConn
	name     string
	offloads packet.Offloads

	closed atomic.Bool
	wmu    sync.RWMutex // writers hold it shared, Close exclusively

	// Read side: one reader at a time (the link.Device contract).
	rd     readState
	readFn func(fd uintptr) bool // d.readBatch, bound once so Read allocates nothing
	pend   pending

	// Read side with io_uring (readRing): the reader's own ring, made on
	// first use; off once it proved unusable here.
	rx ringReader

	// Write side: WriteGSO's software fallback.
	swMu    sync.Mutex
	sw      []byte // VnetHdrLen + MaxFrame, allocated on first use
	swOut   [1][]byte
	swSizes [1]int

	c counters
}

var (
	_ link.GSODevice       = (*Device)(nil)
	_ tunfd.Setup[*Device] = setup{}
)

// readState is the argument and result of one Read, kept in the Device so
// that the netpoller callback needs no closure.
type readState struct {
	bufs   [][]byte
	sizes  []int
	gso    []packet.GSO // nil for Read
	offset int
	n      int
	err    error
	hdr    [VnetHdrLen]byte
	iov    [3][]byte
	cnt    rxCounts
}

// ringReader is readRing's state: a virtio-net header and an iovec pair
// (header, frame) for each read of a batch.
type ringReader struct {
	ring atomic.Pointer[uring.Ring]
	off  bool
	// want is how many reads to submit next: a read that finds the queue
	// empty costs nearly as much as one that does not, so it follows what
	// the last batches found (doubling while every read finds a frame).
	want int
	hdr  [uring.Entries][VnetHdrLen]byte
	iov  [uring.Entries][2]unix.Iovec
	iovs [uring.Entries][]unix.Iovec
}

// pending is a super-packet Read is handing out in segments.
type pending struct {
	buf   []byte     // MaxFrame: the frame; also where a read overflows a short buffer
	size  int        // frame length
	g     packet.GSO // its descriptor
	next  int        // next segment to hand out
	total int        // number of segments; 0 when nothing is pending
}

type rxCounts struct{ frames, bytes, gso, csum, segmented, dropped uint64 }

type txCounts struct{ frames, bytes, gso, software, dropped uint64 }

type counters struct {
	rxFrames, rxBytes, rxGSO, rxCsum, rxSegmented, rxDropped atomic.Uint64
	txFrames, txBytes, txGSO, txSoftware, txDropped          atomic.Uint64
}

// BatchedWrites reports whether a Write of several frames goes to the
// kernel with one io_uring_enter(2), and ReadGSO reads its batch likewise
// (nil), or, with the reason, frame by frame with one write(2) or readv(2)
// each (io_uring missing or refused here, or PODROUTER_URING=0). Both move
// the same frames; batching costs fewer system calls and wakes the
// receiving pod once per batch.
func BatchedWrites() error { return uring.Available() }

// Create creates the TAP device name in the calling thread's network
// namespace, or attaches to it when it exists (a persistent TAP left by an
// earlier process), and configures it as cfg says. An empty name lets the
// kernel choose one (tap0, tap1, ...). The kernel side of the device (its
// addresses, its state up or down) is the caller's to configure.
func Create(name string, cfg Config) (*Device, error) {
	return tunfd.Create(kind, name, unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR, setup(cfg))
}

// FromFile makes a Device of an attached TAP descriptor, e.g. one the CNI
// plugin opened in a pod's network namespace and passed over a unix socket
// (SCM_RIGHTS). The TAP must have IFF_VNET_HDR and IFF_NO_PI; the device may
// live in any network namespace (cfg.MTU is set in the device's own). On
// success the Device holds a duplicate of f's descriptor and f is closed; on
// failure f is left open, the caller's to close.
func FromFile(f *os.File, cfg Config) (*Device, error) {
	return tunfd.FromFile(kind, f, setup(cfg))
}

// setup is a Config as tunfd.Create and tunfd.FromFile use it.
type setup Config

// Check implements tunfd.Setup.
func (cfg setup) Check() error {
	if err := kind.CheckMTU(cfg.MTU); err != nil {
		return err
	}
	if cfg.Owner < 0 || cfg.Group < 0 {
		return fmt.Errorf("%w: owner %d, group %d", ErrConfig, cfg.Owner, cfg.Group)
	}
	return nil
}

// Open implements tunfd.Setup: it makes fd, attached to the TAP name with
// flags, non-blocking, configures it and wraps it. It owns fd: on error fd
// is closed.
func (cfg setup) Open(fd int, name string, flags uint16) (*Device, error) {
	success := false
	defer func() {
		if !success {
			_ = unix.Close(fd)
		}
	}()
	if err := unix.SetNonblock(fd, true); err != nil { // a descriptor handed over may block
		return nil, fmt.Errorf("tap %s: set non-blocking: %w", name, err)
	}
	if flags&unix.IFF_VNET_HDR == 0 || flags&unix.IFF_NO_PI == 0 {
		return nil, fmt.Errorf("%w: %s has flags %#x", ErrNoVnetHdr, name, flags)
	}
	if err := tunfd.SetVnetHdrLen(fd); err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	off, refused, err := negotiate(func(flags int) error {
		return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags)
	}, cfg.DisableOffloads)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	if cfg.Owner > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, cfg.Owner); err != nil {
			return nil, fmt.Errorf("tap %s: TUNSETOWNER %d: %w", name, cfg.Owner, err)
		}
	}
	if cfg.Group > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, cfg.Group); err != nil {
			return nil, fmt.Errorf("tap %s: TUNSETGROUP %d: %w", name, cfg.Group, err)
		}
	}
	if cfg.MTU != 0 {
		if err := tunfd.SetMTU(fd, name, cfg.MTU); err != nil {
			return nil, fmt.Errorf("tap %s: %w", name, err)
		}
	}
	// Persistence last: a device this call created goes with fd if an
	// earlier step failed.
	if err := tunfd.SetPersist(fd, cfg.Persist); err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), tunfd.CloneDevice)
	success = true // from here f owns fd
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	d := &Device{fd: fd, f: f, rc: rc, name: name, offloads: off, pend: pending{buf: make([]byte, MaxFrame)}}
	d.readFn = d.readBatch
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	for _, e := range refused {
		log.Warn("kernel refused an offload set; using fewer", zap.String("tap", name), zap.Error(e))
	}
	log.Info("tap attached", zap.String("tap", name), zap.Stringer("offloads", offloadsString(off)),
		zap.Bool("persist", cfg.Persist))
	return d, nil
}

// offloadLadder is what negotiate offers, from the most to none.
var offloadLadder = [...]struct {
	flags int
	off   packet.Offloads
}{
	{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6, offloadsAll},
	{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6, offloadsTSO},
	{unix.TUN_F_CSUM, packet.OffloadCsum},
	{0, 0},
}

// negotiate offers set the offload sets of offloadLadder in turn (only the
// empty one when disable) and returns the first it takes, with the errors of
// those it refused. It fails only when even the empty set is refused.
func negotiate(set func(flags int) error, disable bool) (packet.Offloads, []error, error) {
	steps := offloadLadder[:]
	if disable {
		steps = steps[len(steps)-1:]
	}
	var refused []error
	for _, s := range steps {
		err := set(s.flags)
		if err == nil {
			return s.off, refused, nil
		}
		refused = append(refused, fmt.Errorf("TUNSETOFFLOAD %#x: %w", s.flags, err))
	}
	return 0, nil, errors.Join(refused...)
}

type offloadsString packet.Offloads

func (o offloadsString) String() string {
	if o == 0 {
		return "none"
	}
	s := ""
	for _, b := range []struct {
		bit  packet.Offloads
		name string
	}{{packet.OffloadCsum, "csum"}, {packet.OffloadTSO4, "tso4"}, {packet.OffloadTSO6, "tso6"}, {packet.OffloadUSO, "uso"}} {
		if packet.Offloads(o)&b.bit != 0 {
			if s != "" {
				s += ","
			}
			s += b.name
		}
	}
	return s
}

// Name returns the device's name (in the network namespace it lives in).
func (d *Device) Name() string { return d.name }

// Offloads implements link.GSODevice: what the kernel segments and
// checksums for WriteGSO, fixed at creation.
func (d *Device) Offloads() packet.Offloads { return d.offloads }

// BatchSize implements link.Device.
func (d *Device) BatchSize() int { return BatchSize }

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	return Stats{
		RxFrames: d.c.rxFrames.Load(), RxBytes: d.c.rxBytes.Load(), RxGSO: d.c.rxGSO.Load(),
		RxCsum: d.c.rxCsum.Load(), RxSegmented: d.c.rxSegmented.Load(), RxDropped: d.c.rxDropped.Load(),
		TxFrames: d.c.txFrames.Load(), TxBytes: d.c.txBytes.Load(), TxGSO: d.c.txGSO.Load(),
		TxSoftware: d.c.txSoftware.Load(), TxDropped: d.c.txDropped.Load(),
	}
}

// SetPersist changes whether the device outlives its descriptor (see
// Config.Persist). Clearing it and then closing the Device deletes the TAP.
func (d *Device) SetPersist(on bool) error {
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	if d.closed.Load() {
		return link.ErrClosed
	}
	if err := tunfd.SetPersist(d.fd, on); err != nil {
		return fmt.Errorf("tap %s: %w", d.name, err)
	}
	return nil
}

// Close implements link.Device: it closes the descriptor (a persistent TAP
// stays, a non-persistent one is deleted by the kernel), wakes a blocked
// Read with link.ErrClosed and waits for Writes in progress. Later calls
// return link.ErrClosed; Close is idempotent.
func (d *Device) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	err := d.f.Close() // waits for a Read in progress
	if ring := d.rx.ring.Swap(nil); ring != nil {
		ring.Close()
	}
	return err
}

// Read implements link.Device: frame i (Ethernet header on) is copied to
// bufs[i][offset:]; each is a complete packet with its checksum, super-
// packets having been cut into segments and partial checksums finished in
// software. Segments that do not fit in this call's bufs are returned by the
// next call, before anything else is read.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.read(bufs, sizes, nil, offset)
}

// ReadGSO implements link.GSODevice: frames come as the kernel sent them,
// super-packets and partial checksums described by gso[i] (offsets from the
// IP header, behind the Ethernet header). A super-packet that does not fit
// in bufs[i][offset:] (see MaxFrame) is cut into segments as Read does.
func (d *Device) ReadGSO(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	if len(gso) < len(bufs) {
		return 0, fmt.Errorf("tap %s: %d GSO descriptors for %d buffers", d.name, len(gso), len(bufs))
	}
	return d.read(bufs, sizes, gso, offset)
}

func (d *Device) read(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	if len(sizes) < len(bufs) || offset < 0 {
		return 0, fmt.Errorf("tap %s: read with %d sizes for %d buffers, offset %d", d.name, len(sizes), len(bufs), offset)
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	r := &d.rd
	r.bufs, r.sizes, r.gso, r.offset, r.n, r.err = bufs, sizes, gso, offset, 0, nil
	d.drain()
	var err error
	if r.n < len(bufs) {
		err = d.rc.Read(d.readFn)
	}
	if err == nil {
		err = r.err
	}
	n := r.n
	r.bufs, r.sizes, r.gso, r.err = nil, nil, nil, nil // retain no caller buffer
	c := &r.cnt
	d.c.rxFrames.Add(c.frames)
	d.c.rxBytes.Add(c.bytes)
	d.c.rxGSO.Add(c.gso)
	d.c.rxCsum.Add(c.csum)
	d.c.rxSegmented.Add(c.segmented)
	d.c.rxDropped.Add(c.dropped)
	*c = rxCounts{}
	if err != nil {
		switch {
		case d.closed.Load():
			err = link.ErrClosed
		case errors.Is(err, unix.EBADFD):
			err = fmt.Errorf("%w: %s", ErrDetached, d.name)
		default:
			err = fmt.Errorf("tap %s: read: %w", d.name, err)
		}
	}
	return n, err
}

// readBatch is the netpoller callback of read: it reads frames until the
// batch is full or the kernel has none left (EAGAIN), and reports whether
// read is done (false: nothing yet, wait until the descriptor is readable).
func (d *Device) readBatch(fd uintptr) bool {
	r := &d.rd
	if r.gso != nil && d.pend.total == 0 {
		if done, ok := d.readRing(int(fd)); ok {
			return done
		}
	}
	for r.n < len(r.bufs) {
		if d.pend.total > 0 {
			d.drain()
			if d.pend.total > 0 {
				return true
			}
			continue
		}
		buf := r.bufs[r.n][r.offset:]
		r.iov[0], r.iov[1] = r.hdr[:], buf
		iov := r.iov[:2]
		if len(buf) < MaxFrame {
			r.iov[2] = d.pend.buf[len(buf):]
			iov = r.iov[:3]
		}
		nr, err := unix.Readv(int(fd), iov)
		r.iov[1], r.iov[2] = nil, nil
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return r.n > 0
		default:
			r.err = err
			return true
		}
		d.frame(buf, nr-VnetHdrLen)
	}
	return true
}

// readRing is readBatch for ReadGSO with io_uring: up to uring.Entries
// frames per io_uring_enter instead of one readv each, and no extra call
// to learn that the queue is empty (the reads that find nothing complete
// with EAGAIN in the same call). It serves calls whose buffers all take a
// MaxFrame frame, so that nothing is ever cut; ok is false when it does not
// serve this call (readBatch's loop does), done as readBatch's result.
func (d *Device) readRing(fd int) (done, ok bool) {
	r, x := &d.rd, &d.rx
	if x.off {
		return false, false
	}
	ring := x.ring.Load()
	if ring == nil {
		var err error
		if ring, err = uring.New(); err != nil {
			x.off = true
			return false, false
		}
		for j := range x.iov {
			x.iov[j][0].Base = &x.hdr[j][0]
			x.iov[j][0].SetLen(VnetHdrLen)
			x.iovs[j] = x.iov[j][:]
		}
		x.ring.Store(ring)
	}
	defer func() {
		for j := range x.iov {
			x.iov[j][1].Base = nil // retain no caller buffer
		}
	}()
	for r.n < len(r.bufs) {
		base := r.n
		k := min(len(r.bufs)-base, max(x.want, 2))
		for j := range k {
			buf := r.bufs[base+j][r.offset:]
			if len(buf) < MaxFrame {
				if j == 0 { // done with what the batch has, or readBatch's loop serves it
					return r.n > 0, r.n > 0
				}
				k = j
				break
			}
			x.iov[j][1].Base = &buf[0]
			x.iov[j][1].SetLen(len(buf))
		}
		res, err := ring.ReadvBatch(fd, x.iovs[:k])
		got := 0
		for j, v := range res {
			if v < 0 {
				switch errno := unix.Errno(-v); errno {
				case unix.EAGAIN, unix.EIO:
				case unix.EOPNOTSUPP, unix.EINVAL:
					// No RWF_NOWAIT reads on this descriptor: readv it is.
					x.off = true
				default:
					if r.err == nil {
						r.err = errno
					}
				}
				continue
			}
			got++
			buf := r.bufs[base+j][r.offset:]
			flen := int(v) - VnetHdrLen
			if r.n != base+j && flen > 0 {
				// An earlier frame of this batch was dropped: this one moves
				// up into its buffer (no frame is waiting there).
				dst := r.bufs[r.n][r.offset:]
				copy(dst, buf[:flen])
				buf = dst
			}
			r.hdr = x.hdr[j]
			d.frame(buf, flen)
		}
		if got == k {
			x.want = min(2*k, uring.Entries)
		} else {
			x.want = got + 1
		}
		if err != nil {
			// The ring is broken: what it read is in the batch, the rest is
			// read with readv from now on.
			x.off = true
			return r.n > 0, r.n > 0
		}
		switch {
		case r.err != nil:
			return true, true
		case x.off:
			return r.n > 0, r.n > 0
		case got < k:
			return r.n > 0, true // the queue is empty
		}
	}
	return true, true
}

// frame handles a frame of flen bytes just read: its first len(buf) bytes
// in buf, the rest in d.pend.buf[len(buf):].
func (d *Device) frame(buf []byte, flen int) {
	r := &d.rd
	if flen < packet.EthernetLen {
		r.cnt.dropped++
		return
	}
	r.cnt.frames++
	r.cnt.bytes += uint64(flen)
	g, ok := decodeHdr(&r.hdr, flen)
	if !ok {
		r.cnt.dropped++
		return
	}
	if g.NeedsCsum {
		r.cnt.csum++
	}
	if g.Type != packet.GSONone {
		r.cnt.gso++
	}
	if flen <= len(buf) {
		frame := buf[:flen]
		switch {
		case r.gso != nil:
			if g.Type != packet.GSONone && !setHdrLen(&g, frame) {
				r.cnt.dropped++
				return
			}
			r.gso[r.n] = g
			r.sizes[r.n] = flen
			r.n++
			return
		case g.Type == packet.GSONone:
			if packet.FinishChecksum(frame[packet.EthernetLen:], g) != nil {
				r.cnt.dropped++
				return
			}
			r.sizes[r.n] = flen
			r.n++
			return
		}
		copy(d.pend.buf, frame)
	} else {
		if g.Type == packet.GSONone {
			r.cnt.dropped++ // a plain frame larger than the buffer: nothing to cut it into
			return
		}
		copy(d.pend.buf, buf)
	}
	// A super-packet for Read, or one too large for the caller's buffer:
	// now whole in d.pend, handed out in segments.
	r.cnt.segmented++
	d.pend.size, d.pend.g, d.pend.next, d.pend.total = flen, g, 0, 1
	d.drain()
}

// drain moves segments of the pending super-packet into the batch.
func (d *Device) drain() {
	r, p := &d.rd, &d.pend
	if p.total == 0 || r.n >= len(r.bufs) {
		return
	}
	k, total, err := packet.GSOSegmentFrom(p.buf[packet.EthernetLen:p.size], p.g, p.next,
		r.bufs[r.n:], r.sizes[r.n:len(r.bufs)], r.offset+packet.EthernetLen)
	for j := r.n; j < r.n+k; j++ {
		copy(r.bufs[j][r.offset:], p.buf[:packet.EthernetLen])
		r.sizes[j] += packet.EthernetLen
		if r.gso != nil {
			r.gso[j] = packet.GSO{}
		}
	}
	r.n += k
	p.next += k
	p.total = total
	if err != nil || p.next >= total {
		if err != nil {
			r.cnt.dropped++
		}
		p.total = 0
	}
}

// decodeHdr converts the virtio-net header of a frame of flen bytes to a
// packet.GSO (HdrLen not yet set). The header is in native byte order (the
// TAP is not switched to little- or big-endian headers). ok is false for a
// header this package cannot honour: an unknown GSO type (UFO), a super-
// packet without NEEDS_CSUM, offsets outside the frame or inside the
// Ethernet header.
func decodeHdr(h *[VnetHdrLen]byte, flen int) (g packet.GSO, ok bool) {
	switch typ := h[1] &^ unix.VIRTIO_NET_HDR_GSO_ECN; typ {
	case unix.VIRTIO_NET_HDR_GSO_NONE, unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6, unix.VIRTIO_NET_HDR_GSO_UDP_L4:
		g.Type = packet.GSOType(typ)
	default:
		return g, false
	}
	if h[0]&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
		start := binary.NativeEndian.Uint16(h[6:8])
		off := binary.NativeEndian.Uint16(h[8:10])
		if start < packet.EthernetLen || int(start)+int(off)+2 > flen {
			return g, false
		}
		g.NeedsCsum, g.CsumStart, g.CsumOffset = true, start-packet.EthernetLen, off
	} else if g.Type != packet.GSONone {
		return g, false
	}
	if g.Type != packet.GSONone {
		g.Size = binary.NativeEndian.Uint16(h[4:6])
		if g.Size == 0 {
			return g, false
		}
	}
	return g, true
}

// setHdrLen sets g.HdrLen of a super-packet from its transport header in
// frame (the kernel's hdr_len is the skb's linear length, not the headers').
func setHdrLen(g *packet.GSO, frame []byte) bool {
	l4 := packet.EthernetLen + int(g.CsumStart)
	n := packet.UDPLen
	if g.Type != packet.GSOUDPL4 {
		if l4+packet.TCPMinLen > len(frame) {
			return false
		}
		n = packet.TCP(frame[l4:]).DataOffset()
		if n < packet.TCPMinLen {
			return false
		}
	}
	if l4+n > len(frame) {
		return false
	}
	g.HdrLen = g.CsumStart + uint16(n)
	return true
}

// encodeHdr writes the virtio-net header for a frame that g describes.
func encodeHdr(h []byte, g packet.GSO) {
	clear(h[:VnetHdrLen])
	if g.NeedsCsum {
		h[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
		binary.NativeEndian.PutUint16(h[6:8], g.CsumStart+packet.EthernetLen)
		binary.NativeEndian.PutUint16(h[8:10], g.CsumOffset)
	}
	if g.Type != packet.GSONone {
		h[1] = uint8(g.Type)
		if g.HdrLen != 0 {
			binary.NativeEndian.PutUint16(h[2:4], g.HdrLen+packet.EthernetLen)
		}
		binary.NativeEndian.PutUint16(h[4:6], g.Size)
	}
}

// Write implements link.Device: frames bufs[i][offset:] go to the kernel as
// complete packets (a zero virtio-net header), one write(2) each, the header
// written into the headroom (offset >= VnetHdrLen, else ErrHeadroom). A
// frame the kernel refuses (interface down, malformed) is counted in
// TxDropped and still accepted. Write is safe for concurrent use.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	return d.write(bufs, nil, offset)
}

// WriteGSO implements link.GSODevice: as Write, with each frame's virtio-net
// header made from gso[i], so the kernel segments and checksums it. A packet
// that Offloads does not cover is cut or checksummed in software first (and
// counted in TxSoftware), so WriteGSO takes any packet a GSO describes.
func (d *Device) WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	if len(gso) < len(bufs) {
		return 0, fmt.Errorf("tap %s: %d GSO descriptors for %d buffers", d.name, len(gso), len(bufs))
	}
	return d.write(bufs, gso, offset)
}

func (d *Device) write(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	if offset < VnetHdrLen {
		return 0, ErrHeadroom
	}
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	var c txCounts
	defer d.addTx(&c)
	var r *uring.Ring
	if len(bufs) > 1 {
		if r = uring.Get(); r != nil {
			defer uring.Put(r)
		}
	}
	return d.writeFrames(r, bufs, gso, offset, &c)
}

// writeFrames is write's loop: the frames that Offloads accepts are written
// through r, one io_uring_enter per run of up to uring.Entries of them, or
// with one write(2) each when r is nil; frames needing the software
// fallback are written between runs, in order.
func (d *Device) writeFrames(r *uring.Ring, bufs [][]byte, gso []packet.GSO, offset int, c *txCounts) (int, error) {
	var frames [][]byte
	if r != nil {
		frames = r.Frames[:0]
		defer clear(frames[:cap(frames)])
	}
	first := 0 // index in bufs of frames[0]
	flush := func() (int, error) {
		if len(frames) == 0 {
			return 0, nil
		}
		res, err := r.WriteBatch(d.fd, frames)
		for i, n := range res {
			switch {
			case n >= 0:
				c.frames++
				c.bytes += uint64(int(n) - VnetHdrLen)
			case unix.Errno(-n) == unix.EBADFD:
				return first + i, fmt.Errorf("%w: %s", ErrDetached, d.name)
			case unix.Errno(-n) == unix.EBADF:
				return first + i, link.ErrClosed
			case err == nil:
				c.dropped++ // refused by the kernel (interface down, malformed), as writeFrame
			}
		}
		if err != nil {
			return first, fmt.Errorf("tap %s: write: %w", d.name, err)
		}
		frames = frames[:0]
		return 0, nil
	}
	for i, b := range bufs {
		var g packet.GSO
		if gso != nil {
			g = gso[i]
		}
		if !d.offloads.Accepts(g) {
			if at, err := flush(); err != nil {
				return at, err
			}
			if err := d.writeSoftware(b[offset:], g, c); err != nil {
				return i, err
			}
			continue
		}
		frame := b[offset-VnetHdrLen:]
		encodeHdr(frame, g)
		if g.Type != packet.GSONone {
			c.gso++
		}
		if r == nil {
			if err := d.writeFrame(frame, c); err != nil {
				return i, err
			}
			continue
		}
		if len(frames) == 0 {
			first = i
		}
		frames = append(frames, frame)
		if len(frames) == cap(frames) {
			if at, err := flush(); err != nil {
				return at, err
			}
		}
	}
	if at, err := flush(); err != nil {
		return at, err
	}
	return len(bufs), nil
}

// writeSoftware writes the frame that g describes and Offloads does not
// cover as complete packets, cut and checksummed one at a time in d.sw.
func (d *Device) writeSoftware(frame []byte, g packet.GSO, c *txCounts) error {
	c.software++
	if len(frame) < packet.EthernetLen {
		c.dropped++
		return nil
	}
	d.swMu.Lock()
	defer d.swMu.Unlock()
	if d.sw == nil {
		d.sw = make([]byte, VnetHdrLen+MaxFrame)
		d.swOut[0] = d.sw
	}
	const at = VnetHdrLen + packet.EthernetLen
	for next, total := 0, 1; next < total; next++ {
		k, t, err := packet.GSOSegmentFrom(frame[packet.EthernetLen:], g, next, d.swOut[:], d.swSizes[:], at)
		if err != nil || k == 0 {
			c.dropped++
			return nil
		}
		total = t
		clear(d.sw[:VnetHdrLen])
		copy(d.sw[VnetHdrLen:], frame[:packet.EthernetLen])
		if err := d.writeFrame(d.sw[:at+d.swSizes[0]], c); err != nil {
			return err
		}
	}
	return nil
}

// writeFrame writes one frame, virtio-net header included. Only a closed
// or detached descriptor is an error; the caller holds d.wmu shared.
func (d *Device) writeFrame(frame []byte, c *txCounts) error {
	for {
		_, err := unix.Write(d.fd, frame)
		switch err {
		case nil:
			c.frames++
			c.bytes += uint64(len(frame) - VnetHdrLen)
			return nil
		case unix.EINTR:
			continue
		case unix.EBADFD:
			return fmt.Errorf("%w: %s", ErrDetached, d.name)
		case unix.EBADF:
			return link.ErrClosed
		}
		c.dropped++
		return nil
	}
}

func (d *Device) addTx(c *txCounts) {
	d.c.txFrames.Add(c.frames)
	d.c.txBytes.Add(c.bytes)
	d.c.txGSO.Add(c.gso)
	d.c.txSoftware.Add(c.software)
	d.c.txDropped.Add(c.dropped)
}
