// Package underlay carries packets between nodes: one UDP socket per node,
// batched I/O with UDP GSO and GRO, and two encapsulations, "udp" (the IP
// packet is the UDP payload, as flannel's UDP backend) and "vxlan" (RFC
// 7348, wire-compatible with a Linux vxlan device set up as flannel's vxlan
// backend sets it up). It gives the engine one link.Device per peer node to
// send through and one receive device that delivers what every peer sent.
//
//	engine worker ─► peer device Write / WriteGSO (send_linux.go)
//	   ─► partial checksums finished; TCP super-packets cut into segments
//	      whose headers go to an arena and whose payload stays in place
//	   ─► encapsulation in the headroom (vxlan: 8 B header + inner Ethernet)
//	   ─► equal-sized datagrams grouped (one sendmmsg message per group, an
//	      iovec or two per datagram, UDP_SEGMENT) ─► sendmmsg ─► kernel ─► peer
//
//	peer ─► kernel (GRO) ─► recvmmsg into the receiver's own buffers
//	   ─► per message: source address and port a peer's? (else unknown-sender)
//	   ─► per datagram: VNI? inner dst MAC? inner IP header whole (IPv4:
//	      checksum)? inner source in that peer's podCIDRs or node addresses?
//	      (else dropped, counted by reason underlay-wide and on the peer)
//	   ─► inner packet copied to bufs[i][offset:]; with ReadGSO, runs of TCP
//	      segments or same-sized UDP datagrams of one flow merged into one
//	      super-packet (gro.go) ─► engine (RX port) ─► a TAP takes it whole
//
// Design notes. The receive side is one device for all peers, not each
// peer's own: one socket receives from every peer, and recvmmsg cannot
// demultiplex by source, so per-peer reads would need a dispatcher
// goroutine and a queue per peer, a handoff and a copy per packet. Peer
// devices therefore never return packets from Read (it blocks until Close)
// and the RX device never sends. The engine treats every packet read from
// a KindPeer port alike (routed, for this node's podCIDRs only), so the
// underlay, which knows the peer, is where a peer's inner sources are
// checked (WireGuard's AllowedIPs: a peer speaks for its podCIDRs and its
// node addresses only, so no peer can inject as a pod of ours or of a third
// node) and where drops are counted per peer.
//
// Sending is zero-copy: the encapsulation is written in the engine's
// headroom, and each datagram is an iovec pointing into the engine's
// buffer (plus one into the header arena for a cut segment); the kernel
// copies once. Receiving copies once, from the GRO buffer to the engine's
// buffer: a GRO super-datagram holds up to 64 datagrams that the engine
// wants in separate buffers, or merged behind one header. A vxlan datagram
// always leaves from the socket's own port (a Linux vxlan device hashes the
// inner flow into the source port, for ECMP and RSS; a single socket cannot).
//
// The peer table is an immutable snapshot behind an atomic pointer: the
// send path reads it once per batch, the receive path once per recvmmsg.
package underlay

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// Errors.
var (
	// ErrBadEncap: the encapsulation is neither udp nor vxlan.
	ErrBadEncap = errors.New("underlay: unknown encapsulation")
	// ErrBadConfig: a Config field is invalid.
	ErrBadConfig = errors.New("underlay: invalid config")
	// ErrBadPeer: a peer is invalid or clashes with another.
	ErrBadPeer = errors.New("underlay: invalid peer")
	// ErrUnsupported: the platform has no underlay (Linux only).
	ErrUnsupported = errors.New("underlay: unsupported platform")
)

const (
	// DefaultSocketBuffer is the default SO_RCVBUF and SO_SNDBUF.
	DefaultSocketBuffer = 8 << 20
	// batchSize is the most packets one sendmmsg or Read handles.
	batchSize = 128
	// maxGSOSegments is the most datagrams in one UDP_SEGMENT send
	// (UDP_MAX_SEGMENTS of kernels before 6.9).
	maxGSOSegments = 64
	// maxUDPPayload bounds one GSO send's payload (IPv6's, the smaller).
	maxUDPPayload = 65535 - ipv6UDPLen
	// rxBufSize is one receive buffer: a whole GRO super-datagram.
	rxBufSize = 65536
	// rxMsgsGRO and rxMsgs are the messages per recvmmsg.
	rxMsgsGRO = 16
	rxMsgs    = 64
)

// Config configures an underlay. The zero value of an optional field means
// its documented default.
type Config struct {
	// Encap is the encapsulation (required).
	Encap Encap
	// Listen is the local address and UDP port (required). The address
	// may be unspecified (0.0.0.0 or ::, every address); its family is the
	// peers' family. Port 0 lets the kernel pick one (LocalAddr says
	// which); nodes normally use Encap.DefaultPort().
	Listen netip.AddrPort
	// VNI is the VXLAN network identifier, 1..2^24-1 (default 1).
	VNI uint32
	// VTEPMAC is this node's VTEP MAC for vxlan: the inner destination
	// peers address to us, and our inner source. Default: a locally
	// administered MAC derived from the bound address and port.
	VTEPMAC packet.MAC
	// MTU is the underlay MTU: the largest outer IP packet, 576..65535.
	// Default: the MTU of Interface, or of the interface holding the Listen
	// address when Interface is empty, else 1500.
	MTU int
	// Interface names the uplink whose MTU is the default MTU.
	Interface string
	// SocketBuffer is SO_RCVBUF and SO_SNDBUF in bytes (default 8 MiB).
	// As root the FORCE variants lift the sysctl limits.
	SocketBuffer int
	// NoOffload disables UDP GSO and GRO (the fallback path, for tests).
	NoOffload bool
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// DropReason says why the underlay dropped a datagram or a packet. Every
// drop is counted by reason in Stats.Drops and, when the datagram or packet
// belongs to a peer in the table, in that peer's PeerStats.Drops as well
// (DropUnknownSender and DropNoPeer never have one).
type DropReason uint8

// Drop reasons.
const (
	dropNone          DropReason = iota
	DropUnknownSender            // rx: source address and port of no peer in the table
	DropShort                    // rx: empty, or shorter than the encapsulation header, or the inner IP header or length cut short
	DropBadHeader                // rx: VXLAN header without the I flag
	DropWrongVNI                 // rx: another VNI
	DropWrongMAC                 // rx: inner Ethernet destination not our VTEP MAC
	DropNotIP                    // rx or tx: the inner packet is not IPv4 or IPv6
	DropTruncated                // rx: the datagram did not fit the receive buffer
	DropTooBig                   // rx: the inner packet did not fit the engine's buffer
	DropNoPeer                   // tx: the device's peer is not in the table
	DropTxError                  // tx: the kernel refused the datagram
	DropBadGSO                   // tx: a super-packet or partial checksum that does not fit its descriptor
	DropForeignSource            // rx: inner source in none of the sending peer's podCIDRs, nor one of its node addresses
	DropBadChecksum              // rx: inner IPv4 header checksum wrong
	DropQueueFull                // rx or tx: a bounded queue between the engine and a userspace backend (wireguard) was full
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"", "unknown-sender", "short", "bad-header", "wrong-vni", "wrong-mac", "not-ip",
	"truncated", "too-big", "no-peer", "tx-error", "bad-gso", "foreign-source", "bad-checksum", "queue-full",
}

// String returns the reason's kebab-case name.
func (r DropReason) String() string {
	if r > dropNone && r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// DropReasons lists every reason, in order.
func DropReasons() []DropReason {
	rs := make([]DropReason, 0, numDropReasons-1)
	for r := dropNone + 1; r < numDropReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}

// Stats is a snapshot of an underlay's counters.
type Stats struct {
	RxPackets, RxBytes uint64 // inner packets delivered to the engine
	TxPackets, TxBytes uint64 // inner packets handed to the kernel
	RxCalls, TxCalls   uint64 // recvmmsg and sendmmsg calls
	RxGRO, TxGSO       uint64 // super-datagrams received and sent
	// Drops counts every drop by reason, non-zero reasons only: the sum
	// over the peers' PeerStats.Drops (of peers past and present) plus
	// what belongs to no peer (DropUnknownSender, DropNoPeer).
	Drops map[DropReason]uint64
}

// TotalDrops sums the drops over every reason.
func (s Stats) TotalDrops() uint64 { return sumDrops(s.Drops) }

// sumDrops sums drops by reason (Stats and PeerStats).
func sumDrops(drops map[DropReason]uint64) uint64 {
	var n uint64
	for _, v := range drops {
		n += v
	}
	return n
}

type counters struct {
	rxPackets, rxBytes, rxCalls, rxGRO atomic.Uint64
	_                                  [32]byte
	txPackets, txBytes, txCalls, txGSO atomic.Uint64
	drops                              [numDropReasons]atomic.Uint64
}

// drop counts n drops for reason r: underlay-wide and, when p is not nil,
// for that peer.
func (u *Underlay) drop(p *peerState, r DropReason, n uint64) {
	u.c.drops[r].Add(n)
	if p != nil {
		p.counters.drops[r].Add(n)
	}
}

// Underlay is one node's UDP underlay: its socket, its peer table, a
// device per peer and the receive device.
type Underlay struct {
	cfg   Config
	log   *zap.Logger
	sock  *socket
	local netip.AddrPort
	mtu   int // pod-facing MTU: cfg.MTU - overhead

	mu    sync.Mutex // serialises peer table changes
	peers atomic.Pointer[table]

	rx     *rxDevice
	closed chan struct{}
	once   sync.Once
	c      counters
	batch  sync.Pool // *sendBatch
}

// New validates cfg, opens the socket and returns an underlay with an
// empty peer table. Create it inside a network namespace (on a thread
// switched into it) and its socket lives there, whatever thread uses it
// later.
func New(cfg Config) (*Underlay, error) {
	if !cfg.Encap.valid() {
		return nil, fmt.Errorf("%w: Encap %d", ErrBadEncap, cfg.Encap)
	}
	if !cfg.Listen.IsValid() {
		return nil, fmt.Errorf("%w: Listen: required", ErrBadConfig)
	}
	if a := cfg.Listen.Addr(); a.Zone() != "" || a.IsMulticast() {
		return nil, fmt.Errorf("%w: Listen %s: want a unicast or unspecified address without zone", ErrBadConfig, cfg.Listen)
	}
	cfg.Listen = netip.AddrPortFrom(cfg.Listen.Addr().Unmap(), cfg.Listen.Port())
	if cfg.Encap == EncapVXLAN {
		if cfg.VNI == 0 {
			cfg.VNI = DefaultVNI
		}
		if cfg.VNI > maxVNI {
			return nil, fmt.Errorf("%w: VNI %d: want 1..%d", ErrBadConfig, cfg.VNI, maxVNI)
		}
		if cfg.VTEPMAC.IsMulticast() {
			return nil, fmt.Errorf("%w: VTEPMAC %s: want a unicast MAC", ErrBadConfig, cfg.VTEPMAC)
		}
	}
	if cfg.MTU == 0 {
		m, err := defaultMTU(cfg.Interface, cfg.Listen.Addr())
		if err != nil {
			return nil, fmt.Errorf("%w: MTU: %w", ErrBadConfig, err)
		}
		cfg.MTU = min(m, 65535)
	}
	ov := cfg.Encap.Overhead(cfg.Listen.Addr().Is6())
	if cfg.MTU < 576 || cfg.MTU > 65535 || cfg.MTU-ov < 68 {
		return nil, fmt.Errorf("%w: MTU %d: want 576..65535", ErrBadConfig, cfg.MTU)
	}
	if cfg.SocketBuffer == 0 {
		cfg.SocketBuffer = DefaultSocketBuffer
	}
	if cfg.SocketBuffer < 0 {
		return nil, fmt.Errorf("%w: SocketBuffer %d: must not be negative", ErrBadConfig, cfg.SocketBuffer)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	u := &Underlay{cfg: cfg, log: cfg.Logger.Named("underlay"), closed: make(chan struct{})}
	u.mtu = cfg.MTU - ov
	s, err := openSocket(cfg, u.log)
	if err != nil {
		return nil, fmt.Errorf("underlay: listen %s: %w", cfg.Listen, err)
	}
	u.sock = s
	u.local = s.local
	if cfg.Encap == EncapVXLAN && cfg.VTEPMAC == (packet.MAC{}) {
		u.cfg.VTEPMAC = deriveMAC(u.local)
	}
	u.peers.Store(&table{byName: map[string]*peerState{}, byAddr: map[netip.AddrPort]*peerState{}, byIP: map[netip.Addr]*peerState{}})
	u.rx = newRxDevice(u)
	u.batch.New = func() any { return newSendBatch(u) }
	gso, gro := s.offloads()
	u.log.Info("underlay open", zap.Stringer("encap", cfg.Encap), zap.Stringer("addr", u.local),
		zap.Int("underlay_mtu", cfg.MTU), zap.Int("mtu", u.mtu), zap.Bool("gso", gso), zap.Bool("gro", gro))
	return u, nil
}

// deriveMAC makes a locally administered unicast MAC from an address.
func deriveMAC(ap netip.AddrPort) packet.MAC {
	h := fnv.New64a()
	b, _ := ap.MarshalBinary()
	_, _ = h.Write(b)
	s := h.Sum64()
	return packet.MAC{0x0e, byte(s >> 32), byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)}
}

func defaultMTU(ifname string, listen netip.Addr) (int, error) {
	if ifname != "" {
		return MTUFromInterface(ifname)
	}
	if listen.IsUnspecified() {
		return 1500, nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return 1500, nil
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap() == listen {
					return ifc.MTU, nil
				}
			}
		}
	}
	return 1500, nil
}

// MTUFromInterface returns the MTU of the named interface (the uplink
// whose MTU the underlay MTU defaults to).
func MTUFromInterface(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("underlay: interface %q: %w", name, err)
	}
	return ifc.MTU, nil
}

// LocalAddr returns the bound address and port.
func (u *Underlay) LocalAddr() netip.AddrPort { return u.local }

// Encap returns the encapsulation.
func (u *Underlay) Encap() Encap { return u.cfg.Encap }

// VNI returns the VXLAN network identifier (0 for udp).
func (u *Underlay) VNI() uint32 { return u.cfg.VNI }

// VTEPMAC returns this node's VTEP MAC (zero for udp).
func (u *Underlay) VTEPMAC() packet.MAC { return u.cfg.VTEPMAC }

// UnderlayMTU returns the underlay MTU (the largest outer IP packet).
func (u *Underlay) UnderlayMTU() int { return u.cfg.MTU }

// MTU returns the MTU of the devices: the largest inner IP packet, the
// underlay MTU less the encapsulation overhead. Peer ports get this MTU,
// so that the engine sends fragmentation-needed for larger packets.
func (u *Underlay) MTU() int { return u.mtu }

// Offloads reports whether UDP GSO (send) and GRO (receive) are in use.
func (u *Underlay) Offloads() (gso, gro bool) { return u.sock.offloads() }

// Stats returns a snapshot of the counters.
func (u *Underlay) Stats() Stats {
	c := &u.c
	s := Stats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxCalls: c.rxCalls.Load(), TxCalls: c.txCalls.Load(),
		RxGRO: c.rxGRO.Load(), TxGSO: c.txGSO.Load(),
		Drops: map[DropReason]uint64{},
	}
	loadDrops(s.Drops, &c.drops)
	return s
}

// loadDrops copies the non-zero counters of c into m.
func loadDrops(m map[DropReason]uint64, c *[numDropReasons]atomic.Uint64) {
	for r := dropNone + 1; r < numDropReasons; r++ {
		if v := c[r].Load(); v != 0 {
			m[r] = v
		}
	}
}

// Close closes the socket: every device's Read and Write return
// link.ErrClosed from then on. It does not detach the devices from an
// engine; close the engine (or remove the ports) first. Idempotent.
func (u *Underlay) Close() error {
	var err error
	u.once.Do(func() {
		close(u.closed)
		err = u.sock.close()
		u.log.Info("underlay closed")
	})
	return err
}

// RxDevice returns the receive device, the same one on every call: attach
// it to the engine as a port of kind peer (L3, MTU()). Its Read returns the
// inner IP packets every known peer sent us, for the engine to route; its
// Write drops everything (it is never a route's next hop). Its Close stops
// Read but leaves the socket open for the peer devices.
func (u *Underlay) RxDevice() link.Device { return u.rx }

// PeerDevice returns a device that sends to the named peer, as the peer
// table says at each Write: attach it as a port of kind peer (L3, MTU())
// and route the peer's podCIDRs to it. The peer need not be in the table
// yet; until it is, Write drops (DropNoPeer). Read returns nothing: it
// blocks until Close (see the package's design notes).
func (u *Underlay) PeerDevice(name string) link.Device {
	return &peerDevice{u: u, name: name, done: make(chan struct{})}
}

// peerDevice sends to one peer.
type peerDevice struct {
	u      *Underlay
	name   string
	done   chan struct{}
	once   sync.Once
	closed atomic.Bool
}

var _ link.GSODevice = (*peerDevice)(nil)

// Read blocks until the device or the underlay is closed, then returns
// link.ErrClosed: packets from peers come out of the RX device.
func (d *peerDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-d.done:
	case <-d.u.closed:
	}
	return 0, link.ErrClosed
}

// ReadGSO is Read.
func (d *peerDevice) ReadGSO(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	return d.Read(bufs, sizes, offset)
}

// Write encapsulates bufs[i][offset:] in place (offset >= the encapsulation
// header, 22 bytes for vxlan; the engine gives link.Headroom) and sends
// them to the peer. Packets that are not IP, and every packet while the
// peer is not in the table, are dropped and counted. It returns
// link.ErrClosed once the device or the underlay is closed.
func (d *peerDevice) Write(bufs [][]byte, offset int) (int, error) {
	return d.write(bufs, nil, offset)
}

// WriteGSO is Write for packets described by gso[i]: partial checksums are
// finished and TCP super-packets cut into segments, their payload never
// copied (see send_linux.go).
func (d *peerDevice) WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	return d.write(bufs, gso, offset)
}

// Offloads returns what WriteGSO takes: partial checksums and TCP
// super-packets over IPv4 and IPv6. (UDP super-packets are cut by the
// engine: a pod's UDP_SEGMENT sends are rare.)
func (d *peerDevice) Offloads() packet.Offloads {
	return packet.OffloadCsum | packet.OffloadTSO4 | packet.OffloadTSO6
}

func (d *peerDevice) write(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	u := d.u
	p := u.peers.Load().byName[d.name]
	if p == nil {
		u.drop(nil, DropNoPeer, uint64(len(bufs)))
		return len(bufs), nil
	}
	b := u.batch.Get().(*sendBatch)
	defer u.batch.Put(b)
	if err := b.send(p, bufs, gso, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// BatchSize returns 1: Read never returns packets, so the engine need not
// size read buffers for a batch. Write takes batches of any size.
func (d *peerDevice) BatchSize() int { return 1 }

// Close makes Read and Write return link.ErrClosed. Idempotent.
func (d *peerDevice) Close() error {
	d.once.Do(func() {
		d.closed.Store(true)
		close(d.done)
	})
	return nil
}
