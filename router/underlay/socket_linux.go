package underlay

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// socket is the underlay's UDP socket. Reads and writes go through the Go
// poller (syscall.RawConn), so a full send buffer or an empty receive queue
// parks the goroutine instead of spinning, and Close wakes them.
type socket struct {
	uc    *net.UDPConn
	rc    syscall.RawConn
	local netip.AddrPort
	log   *zap.Logger
	gso   atomic.Bool // UDP_SEGMENT works (cleared when the kernel refuses it)
	gro   bool        // UDP_GRO is on
}

func openSocket(cfg Config, log *zap.Logger) (*socket, error) {
	network := "udp4"
	if cfg.Listen.Addr().Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			// Up to the sysctl limits, then beyond them when
			// CAP_NET_ADMIN allows: bursts from many pods at once must not
			// overflow the queues.
			for _, o := range [][2]int{{unix.SO_RCVBUF, unix.SO_RCVBUFFORCE}, {unix.SO_SNDBUF, unix.SO_SNDBUFFORCE}} {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], cfg.SocketBuffer)
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], cfg.SocketBuffer)
			}
		})
	}}
	pc, err := lc.ListenPacket(context.Background(), network, cfg.Listen.String())
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	la := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	s := &socket{uc: uc, local: netip.AddrPortFrom(la.Addr().Unmap(), la.Port()), log: log}
	if s.rc, err = uc.SyscallConn(); err != nil {
		_ = uc.Close()
		return nil, err
	}
	var rcv, snd int
	err = s.rc.Control(func(fd uintptr) {
		rcv, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		snd, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		if cfg.NoOffload {
			return
		}
		// UDP_SEGMENT is readable on kernels that support it (4.18+).
		if _, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT); err == nil {
			s.gso.Store(true)
		}
		s.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	if err != nil {
		_ = uc.Close()
		return nil, err
	}
	// The kernel reports twice what it grants (bookkeeping overhead).
	if rcv/2 < cfg.SocketBuffer || snd/2 < cfg.SocketBuffer {
		log.Info("socket buffers below the requested size (raise net.core.rmem_max/wmem_max, or run with CAP_NET_ADMIN)",
			zap.Int("want", cfg.SocketBuffer), zap.Int("rcvbuf", rcv/2), zap.Int("sndbuf", snd/2))
	}
	return s, nil
}

func (s *socket) offloads() (gso, gro bool) { return s.gso.Load(), s.gro }

func (s *socket) close() error { return s.uc.Close() }

// putSockaddr writes ap as a struct sockaddr_in or sockaddr_in6 into b and
// returns its length.
func putSockaddr(b *[28]byte, ap netip.AddrPort) uint32 {
	*b = [28]byte{}
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	if a := ap.Addr(); a.Is4() {
		binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
		a4 := a.As4()
		copy(b[4:8], a4[:])
		return unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	a16 := ap.Addr().As16()
	copy(b[8:24], a16[:])
	return unix.SizeofSockaddrInet6
}

// parseSockaddr reads a struct sockaddr_in or sockaddr_in6 (IPv4-mapped
// addresses unmapped); the zero AddrPort when it is neither.
func parseSockaddr(b []byte) netip.AddrPort {
	if len(b) < 2 {
		return netip.AddrPort{}
	}
	port := func() uint16 { return binary.BigEndian.Uint16(b[2:4]) }
	switch binary.NativeEndian.Uint16(b[0:2]) {
	case unix.AF_INET:
		if len(b) >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port())
		}
	case unix.AF_INET6:
		if len(b) >= unix.SizeofSockaddrInet6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port())
		}
	}
	return netip.AddrPort{}
}

// segmentSize returns the UDP_GRO segment size in a received control
// message, or 0 when there is none (a plain datagram).
func segmentSize(control []byte) int {
	for len(control) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(control)
		if err != nil {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(data) >= 4 {
			return int(binary.NativeEndian.Uint32(data))
		}
		control = rest
	}
	return 0
}

// rxDevice is the receive side: recvmmsg into its own buffers, then each
// datagram checked, decapsulated and copied into the engine's buffers.
type rxDevice struct {
	u      *Underlay
	hdrs   []mmsghdr
	iovs   []unix.Iovec
	names  [][28]byte
	ctrl   []byte
	ctrlSz int
	bufs   [][]byte
	closed atomic.Bool

	// What the last recvmmsg returned and how far drain has got.
	n, next, off int
	seg          int
	msgReady     bool // the message at next passed its checks (peer, seg set)
	peer         *peerState
	tbl          *table
	errno        syscall.Errno

	readFn func(fd uintptr) bool // r.recv, bound once
}

var _ link.GSODevice = (*rxDevice)(nil)

func newRxDevice(u *Underlay) *rxDevice {
	_, gro := u.sock.offloads()
	msgs, size := rxMsgs, min(rxBufSize, u.cfg.MTU)
	if gro {
		msgs, size = rxMsgsGRO, rxBufSize
	}
	r := &rxDevice{
		u: u, hdrs: make([]mmsghdr, msgs), iovs: make([]unix.Iovec, msgs),
		names: make([][28]byte, msgs), ctrlSz: 64, bufs: make([][]byte, msgs),
	}
	r.ctrl = make([]byte, msgs*r.ctrlSz)
	for i := range msgs {
		r.bufs[i] = make([]byte, size)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(size)
		h := &r.hdrs[i].hdr
		h.Name = &r.names[i][0]
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = &r.ctrl[i*r.ctrlSz]
	}
	r.readFn = r.recv
	return r
}

// Read blocks until at least one inner packet from a known peer arrived,
// then copies up to len(bufs) of them to bufs[i][offset:]. Datagrams that
// fail a check are dropped and counted (Stats.Drops), never returned. It
// returns link.ErrClosed after Close of the device or of the underlay.
func (r *rxDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return r.read(bufs, sizes, nil, offset)
}

// ReadGSO is Read that also merges consecutive TCP segments of a flow into
// super-packets (see gro.go), described in gso[i], when bufs[i] has room.
func (r *rxDevice) ReadGSO(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	return r.read(bufs, sizes, gso[:len(bufs)], offset)
}

func (r *rxDevice) read(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	for {
		if r.closed.Load() {
			return 0, link.ErrClosed
		}
		if r.next >= r.n {
			if err := r.receive(); err != nil {
				return 0, err
			}
		}
		if k := r.drain(bufs, sizes, gso, offset); k > 0 {
			return k, nil
		}
	}
}

// receive fills the device's buffers with one recvmmsg.
func (r *rxDevice) receive() error {
	for i := range r.hdrs {
		h := &r.hdrs[i].hdr
		h.Namelen = uint32(len(r.names[i]))
		h.SetControllen(r.ctrlSz)
		h.Flags = 0
	}
	r.n, r.next, r.off, r.msgReady, r.errno = 0, 0, 0, false, 0
	if err := r.u.sock.rc.Read(r.readFn); err != nil {
		if r.closed.Load() || errors.Is(err, net.ErrClosed) {
			return link.ErrClosed
		}
		return err
	}
	if r.errno != 0 {
		// A transient error (ENOMEM, a pending ICMP error): try again,
		// without spinning.
		time.Sleep(time.Millisecond)
		return nil
	}
	r.tbl = r.u.peers.Load()
	r.u.c.rxCalls.Add(1)
	return nil
}

// recv is the RawConn callback.
func (r *rxDevice) recv(fd uintptr) bool {
	for {
		n, errno := recvmmsg(int(fd), r.hdrs)
		switch errno {
		case 0:
			r.n = n
			return true
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		}
		r.errno = errno
		return true
	}
}

// drain decapsulates received datagrams into bufs until either runs out,
// merging TCP segments when gso is not nil.
func (r *rxDevice) drain(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) int {
	u := r.u
	k := 0
	var c coalescer
	var pkts, bytes uint64
	for r.next < r.n {
		h := &r.hdrs[r.next]
		mlen := int(h.len)
		if !r.msgReady {
			// The first datagram of a message: check the message as a
			// whole. A stranger's datagrams are its, whatever their shape.
			src := parseSockaddr(r.names[r.next][:h.hdr.Namelen])
			r.peer = lookupSource(r.tbl, src)
			if h.hdr.Flags&unix.MSG_TRUNC != 0 || mlen == 0 {
				why := DropTruncated
				switch {
				case r.peer == nil:
					why = DropUnknownSender
				case mlen == 0:
					why = DropShort
				}
				u.drop(r.peer, why, 1)
				r.nextMessage()
				continue
			}
			r.seg = segmentSize(r.ctrl[r.next*r.ctrlSz : r.next*r.ctrlSz+int(h.hdr.Controllen)])
			if r.seg <= 0 || r.seg > mlen {
				r.seg = mlen
			} else if r.seg < mlen {
				u.c.rxGRO.Add(1)
			}
			if r.peer == nil {
				u.drop(nil, DropUnknownSender, uint64((mlen+r.seg-1)/r.seg))
				r.nextMessage()
				continue
			}
			r.msgReady = true
		}
		end := min(r.off+r.seg, mlen)
		ip, why := decapsulate(r.bufs[r.next][r.off:end], u.cfg.Encap, u.cfg.VNI, u.cfg.VTEPMAC)
		if why == dropNone {
			why = r.peer.checkInner(ip)
		}
		if why != dropNone {
			u.drop(r.peer, why, 1)
			r.advance(end, mlen)
			continue
		}
		if c.open && c.tryAppend(bufs[c.k], offset, ip) {
			r.delivered(ip)
			pkts, bytes = pkts+1, bytes+uint64(len(ip))
			r.advance(end, mlen)
			continue
		}
		if k == len(bufs) {
			break // this datagram waits for the next Read
		}
		if c.open {
			sizes[c.k], gso[c.k] = c.finish(bufs[c.k], offset)
		}
		dst := bufs[k][offset:]
		if len(ip) > len(dst) {
			u.drop(r.peer, DropTooBig, 1)
			r.advance(end, mlen)
			continue
		}
		sizes[k] = copy(dst, ip)
		if gso != nil {
			gso[k] = packet.GSO{}
			if s, ok := mergeable(ip); ok {
				c.start(k, ip, s)
			}
		}
		r.delivered(ip)
		pkts, bytes = pkts+1, bytes+uint64(len(ip))
		k++
		r.advance(end, mlen)
	}
	if c.open {
		sizes[c.k], gso[c.k] = c.finish(bufs[c.k], offset)
	}
	if pkts > 0 {
		u.c.rxPackets.Add(pkts)
		u.c.rxBytes.Add(bytes)
	}
	return k
}

// advance moves past the datagram that ends at end of a message of mlen
// bytes.
func (r *rxDevice) advance(end, mlen int) {
	if end >= mlen {
		r.nextMessage()
	} else {
		r.off = end
	}
}

func (r *rxDevice) nextMessage() {
	r.next, r.off, r.msgReady = r.next+1, 0, false
}

// delivered counts an inner packet for its peer.
func (r *rxDevice) delivered(ip []byte) {
	r.peer.counters.rxPackets.Add(1)
	r.peer.counters.rxBytes.Add(uint64(len(ip)))
}

// Write drops bufs: the RX device is no route's next hop.
func (r *rxDevice) Write(bufs [][]byte, offset int) (int, error) {
	if r.closed.Load() {
		return 0, link.ErrClosed
	}
	r.u.drop(nil, DropNoPeer, uint64(len(bufs)))
	return len(bufs), nil
}

// WriteGSO drops bufs, as Write.
func (r *rxDevice) WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	return r.Write(bufs, offset)
}

// Offloads returns none: nothing is ever written to the RX device.
func (r *rxDevice) Offloads() packet.Offloads { return 0 }

// BatchSize returns the most packets a Read returns.
func (r *rxDevice) BatchSize() int { return batchSize }

// Close stops Read (a blocked one returns link.ErrClosed) and leaves the
// socket to the peer devices; Underlay.Close closes it. Idempotent.
func (r *rxDevice) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		// Wake a Read parked in the poller. The read deadline is the
		// RX device's alone: nothing else reads the socket.
		_ = r.u.sock.uc.SetReadDeadline(time.Unix(1, 0))
	}
	return nil
}
