package node

// The wireguard backend: an authenticated, encrypted underlay on
// userspace WireGuard (wireguard-go's device: Noise handshakes, AllowedIPs,
// replay windows; its conn.Bind: one batched UDP socket with GSO/GRO), so
// it needs no kernel module and no privilege beyond the UDP socket.
//
//	engine ─► peer device (one per peer; counts, drops if the peer left)
//	       ─► txq (bounded, one for every peer) ─► wgTUN.Read
//	       ─► wireguard-go: AllowedIPs picks the peer by destination,
//	          encrypts ─► UDP
//	UDP ─► wireguard-go: decrypts, checks the source against the sending
//	       peer's AllowedIPs ─► wgTUN.Write ─► rxq (bounded) ─► RX device
//	       ─► engine
//
// Design notes. wireguard-go routes by AllowedIPs itself, so every peer
// device feeds one queue and the node's per-peer ports exist for counters
// and for dropping what is sent to a peer that left. A peer's AllowedIPs
// are its podCIDRs and node addresses: the same sources udp and vxlan
// admit. SetPeers does not use replace_peers: that would drop every
// session and redo every handshake on each control-plane update. It
// removes the peers that left (or changed key) and updates the others in
// place, so their sessions survive. The queues copy packets into
// preallocated slots: no allocation per packet. The bind listens on every
// address of Listen's port (conn.StdNetBind's behaviour; WireGuard only
// accepts authenticated datagrams, and only from listed peers).

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/pktq"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// BackendWireGuard is the wireguard backend's name.
const BackendWireGuard = "wireguard"

// wireGuardOverhead is WireGuard's own overhead per packet: the data
// message header (16) and the Poly1305 tag (16).
const wireGuardOverhead = 32

// wgDropReasons bounds the drop reasons the backend counts (no-peer,
// too-big, queue-full).
const wgDropReasons = underlay.DropQueueFull + 1

// wgQueueLen is the length of each of the two queues (packets).
const wgQueueLen = 1024

func init() {
	RegisterBackend(BackendKind{
		Name: BackendWireGuard,
		Overhead: func(ipv6 bool) int {
			if ipv6 {
				return 40 + 8 + wireGuardOverhead
			}
			return 20 + 8 + wireGuardOverhead
		},
		DefaultPort: 51820,
		New:         newWireGuard,
	})
}

// GenerateKey returns a new WireGuard private key.
func GenerateKey() (Key, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("node: generate key: %w", err)
	}
	return Key(k.Bytes()), nil
}

// PublicKey returns the public key of the private key priv.
func PublicKey(priv Key) Key {
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil { // cannot happen: every 32 bytes are an X25519 key
		panic(err)
	}
	return Key(k.PublicKey().Bytes())
}

// wgBackend is a wireguard-go device as a Backend.
type wgBackend struct {
	log   *zap.Logger
	dev   *device.Device
	tun   *wgTUN
	rx    *wgRxDevice
	local netip.AddrPort
	pub   Key
	mtu   int // the inner MTU

	mu    sync.Mutex // serializes SetPeers and Close
	peers atomic.Pointer[wgTable]
	devs  map[string]*wgPeerDevice // devices handed out, by peer name
	c     wgCounters

	logMu  sync.RWMutex
	logOff bool // after Close: wireguard-go no longer logs
}

var _ Backend = (*wgBackend)(nil)

// wgTable is one immutable snapshot of the peer table.
type wgTable struct {
	list   []Peer // sorted by name
	byName map[string]*wgPeer
	// src maps a peer's AllowedIPs to its index in byIndex: whose
	// decrypted packets wgTUN.Write is given (each call is one peer's).
	src     *route.Table
	byIndex []*wgPeer
}

type wgPeer struct {
	Peer
	c *wgPeerCounters // carried over while the peer stays
}

// allowedIPs returns the inner sources p may send from, as WireGuard's
// AllowedIPs: its endpoint's address, its podCIDRs and node addresses.
func allowedIPs(p *Peer) []netip.Prefix {
	a := p.Addr.Addr().Unmap()
	out := []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
	out = append(out, p.PodCIDRs...)
	for _, a := range p.NodeAddrs {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// newWGTable builds a snapshot of peers (validated); counters of peers
// in old under the same key carry over.
func newWGTable(peers []Peer, old *wgTable) *wgTable {
	t := &wgTable{byName: make(map[string]*wgPeer, len(peers))}
	rb := route.NewBuilder()
	for _, p := range peers {
		p.PodCIDRs, p.NodeAddrs = slices.Clone(p.PodCIDRs), slices.Clone(p.NodeAddrs)
		wp := &wgPeer{Peer: p, c: new(wgPeerCounters)}
		if o := old.byName[p.Name]; o != nil && o.PublicKey == p.PublicKey {
			wp.c = o.c
		}
		for _, c := range allowedIPs(&p) {
			_ = rb.Add(c, route.ToPeer(int32(len(t.byIndex)))) // a duplicate: WireGuard gives it to the last peer too; counts go to the first
		}
		t.byName[p.Name] = wp
		t.byIndex = append(t.byIndex, wp)
		t.list = append(t.list, p)
	}
	t.src = rb.Build()
	slices.SortFunc(t.list, func(x, y Peer) int { return strings.Compare(x.Name, y.Name) })
	return t
}

// sender returns the peer that may send from the source of the IP packet
// ip, or nil.
func (t *wgTable) sender(ip []byte) *wgPeer {
	var a netip.Addr
	switch {
	case len(ip) >= 20 && ip[0]>>4 == 4:
		a = netip.AddrFrom4([4]byte(ip[12:16]))
	case len(ip) >= 40 && ip[0]>>4 == 6:
		a = netip.AddrFrom16([16]byte(ip[8:24]))
	default:
		return nil
	}
	nh, ok := t.src.Lookup(a)
	if !ok || int(nh.Peer) >= len(t.byIndex) {
		return nil
	}
	return t.byIndex[nh.Peer]
}

type wgCounters struct {
	rxPackets, rxBytes atomic.Uint64
	_                  [48]byte
	txPackets, txBytes atomic.Uint64
	drops              [wgDropReasons]atomic.Uint64
}

type wgPeerCounters struct {
	rxPackets, rxBytes atomic.Uint64
	_                  [48]byte
	txPackets, txBytes atomic.Uint64
	drops              [wgDropReasons]atomic.Uint64
}

func (b *wgBackend) drop(p *wgPeerCounters, r underlay.DropReason, n uint64) {
	b.c.drops[r].Add(n)
	if p != nil {
		p.drops[r].Add(n)
	}
}

func newWireGuard(cfg UnderlayConfig, log *zap.Logger) (Backend, error) {
	if cfg.PrivateKey.IsZero() {
		return nil, configErr("wireguard: private key: none given")
	}
	log = log.Named("wireguard")
	under := cfg.MTU
	if under == 0 && cfg.Interface != "" {
		var err error
		if under, err = underlay.MTUFromInterface(cfg.Interface); err != nil {
			return nil, err
		}
	}
	if under == 0 {
		under = 1500
	}
	k, _ := backendKind(BackendWireGuard)
	b := &wgBackend{
		log: log, pub: PublicKey(cfg.PrivateKey), devs: map[string]*wgPeerDevice{},
		mtu: under - k.Overhead(cfg.Listen.Addr().Is6()),
	}
	b.peers.Store(newWGTable(nil, &wgTable{}))
	b.tun = &wgTUN{b: b, q: pktq.New(wgQueueLen, b.mtu), events: make(chan tun.Event)}
	b.rx = &wgRxDevice{q: pktq.New(wgQueueLen, b.mtu)}
	b.dev = device.NewDevice(b.tun, conn.NewDefaultBind(), &device.Logger{Verbosef: b.wgLog(zap.DebugLevel), Errorf: b.wgLog(zap.WarnLevel)})
	success := false
	defer func() {
		if !success {
			_ = b.Close()
		}
	}()
	if err := b.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.Listen.Port())); err != nil {
		return nil, fmt.Errorf("wireguard: config: %w", err)
	}
	if err := b.dev.Up(); err != nil {
		return nil, fmt.Errorf("wireguard: listen on port %d: %w", cfg.Listen.Port(), err)
	}
	port, err := b.listenPort()
	if err != nil {
		return nil, err
	}
	b.local = netip.AddrPortFrom(cfg.Listen.Addr(), port)
	success = true
	return b, nil
}

// wgLog returns a wireguard-go log function logging at lvl until Close:
// some of wireguard-go's workers end (and log) after its Close returned.
func (b *wgBackend) wgLog(lvl zapcore.Level) func(string, ...any) {
	return func(f string, a ...any) {
		b.logMu.RLock()
		defer b.logMu.RUnlock()
		if !b.logOff {
			if ce := b.log.Check(lvl, ""); ce != nil {
				ce.Message = fmt.Sprintf(f, a...)
				ce.Write()
			}
		}
	}
}

// listenPort returns the port the bind listens on (the kernel's pick for
// port 0).
func (b *wgBackend) listenPort() (uint16, error) {
	s, err := b.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("wireguard: %w", err)
	}
	for line := range strings.Lines(s) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("wireguard: listen_port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("wireguard: no listen_port")
}

func (b *wgBackend) RxDevice() link.Device     { return b.rx }
func (b *wgBackend) MTU() int                  { return b.mtu }
func (b *wgBackend) LocalAddr() netip.AddrPort { return b.local }

// Announce returns the endpoint and the public key.
func (b *wgBackend) Announce() Announcement {
	return Announcement{Backend: BackendWireGuard, Endpoint: b.local, PublicKey: b.pub}
}

// validatePeers checks peers as WireGuard needs them.
func (b *wgBackend) validatePeers(peers []Peer) error {
	names := map[string]bool{}
	keys := map[Key]string{}
	for _, p := range peers {
		switch a := p.Addr.Addr(); {
		case p.Name == "":
			return fmt.Errorf("%w: Name: empty", underlay.ErrBadPeer)
		case names[p.Name]:
			return fmt.Errorf("%w: name %q listed twice", underlay.ErrBadPeer, p.Name)
		case !p.Addr.IsValid() || p.Addr.Port() == 0 || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast():
			return fmt.Errorf("%w: %s: Addr %s: want a unicast address and a port", underlay.ErrBadPeer, p.Name, p.Addr)
		case p.PublicKey.IsZero():
			return fmt.Errorf("%w: %s: no public key", underlay.ErrBadPeer, p.Name)
		case p.PublicKey == b.pub:
			return fmt.Errorf("%w: %s: public key is this node's own", underlay.ErrBadPeer, p.Name)
		case keys[p.PublicKey] != "":
			return fmt.Errorf("%w: %s and %s share a public key", underlay.ErrBadPeer, keys[p.PublicKey], p.Name)
		}
		for _, c := range p.PodCIDRs {
			if !c.IsValid() || c != c.Masked() || c.Addr().Zone() != "" || c.Addr().Is4In6() {
				return fmt.Errorf("%w: %s: PodCIDRs: %s is not a masked prefix", underlay.ErrBadPeer, p.Name, c)
			}
		}
		for _, a := range p.NodeAddrs {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
				return fmt.Errorf("%w: %s: NodeAddrs: %s: want a unicast address without zone", underlay.ErrBadPeer, p.Name, a)
			}
		}
		names[p.Name] = true
		keys[p.PublicKey] = p.Name
	}
	return nil
}

// uapi returns the UAPI configuration that turns the table old into the
// peers: peers that left or changed key removed, the others added or
// updated in place (their sessions kept).
func uapi(old *wgTable, peers []Peer) string {
	var sb strings.Builder
	for name, o := range old.byName {
		if !slices.ContainsFunc(peers, func(p Peer) bool { return p.Name == name && p.PublicKey == o.PublicKey }) {
			fmt.Fprintf(&sb, "public_key=%s\nremove=true\n", hex.EncodeToString(o.PublicKey[:]))
		}
	}
	for _, p := range peers {
		fmt.Fprintf(&sb, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", hex.EncodeToString(p.PublicKey[:]), p.Addr)
		for _, c := range allowedIPs(&p) {
			fmt.Fprintf(&sb, "allowed_ip=%s\n", c)
		}
	}
	return sb.String()
}

// SetPeers replaces the peer table. The peers are validated before
// wireguard-go sees them; should it still refuse the new configuration,
// the previous one is applied again.
func (b *wgBackend) SetPeers(peers []Peer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.validatePeers(peers); err != nil {
		return err
	}
	old := b.peers.Load()
	t := newWGTable(peers, old)
	if err := b.dev.IpcSet(uapi(old, peers)); err != nil {
		if rerr := b.dev.IpcSet(uapi(&wgTable{byName: t.byName}, old.list)); rerr != nil {
			b.log.Error("wireguard: restoring the previous peers failed", zap.Error(rerr))
		}
		return fmt.Errorf("wireguard: peers: %w", err)
	}
	b.peers.Store(t)
	b.log.Info("peer table set", zap.Int("peers", len(peers)))
	return nil
}

// Peers returns the table, sorted by name.
func (b *wgBackend) Peers() []Peer {
	t := b.peers.Load()
	out := slices.Clone(t.list)
	for i := range out {
		out[i].PodCIDRs, out[i].NodeAddrs = slices.Clone(out[i].PodCIDRs), slices.Clone(out[i].NodeAddrs)
	}
	return out
}

// PeerDevice returns the device sending to the named peer.
func (b *wgBackend) PeerDevice(name string) link.Device {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.devs[name]
	if d == nil || d.closed.Load() {
		d = &wgPeerDevice{b: b, name: name, done: make(chan struct{})}
		b.devs[name] = d
	}
	return d
}

// Stats returns the backend's totals: inner packets delivered to the
// engine (rx) and handed to WireGuard (tx), and drops.
func (b *wgBackend) Stats() underlay.Stats {
	s := underlay.Stats{
		RxPackets: b.c.rxPackets.Load(), RxBytes: b.c.rxBytes.Load(),
		TxPackets: b.c.txPackets.Load(), TxBytes: b.c.txBytes.Load(),
		Drops: map[underlay.DropReason]uint64{},
	}
	loadWGDrops(s.Drops, &b.c.drops)
	return s
}

func loadWGDrops(m map[underlay.DropReason]uint64, c *[wgDropReasons]atomic.Uint64) {
	for r := range c {
		if v := c[r].Load(); v != 0 {
			m[underlay.DropReason(r)] = v
		}
	}
}

// PeerStats returns the named peer's counters (inner packets, as for
// udp and vxlan: received from the peer and delivered, handed to
// WireGuard for it).
func (b *wgBackend) PeerStats(name string) (underlay.PeerStats, bool) {
	p := b.peers.Load().byName[name]
	if p == nil {
		return underlay.PeerStats{}, false
	}
	s := underlay.PeerStats{
		RxPackets: p.c.rxPackets.Load(), RxBytes: p.c.rxBytes.Load(),
		TxPackets: p.c.txPackets.Load(), TxBytes: p.c.txBytes.Load(),
		Drops: map[underlay.DropReason]uint64{},
	}
	loadWGDrops(s.Drops, &p.c.drops)
	return s, true
}

// Close closes the device (its socket, its queue) and every device
// handed out.
func (b *wgBackend) Close() error {
	b.dev.Close() // closes b.tun
	b.rx.Close()
	b.logMu.Lock()
	b.logOff = true
	b.logMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range b.devs {
		_ = d.Close()
	}
	return nil
}

// wgPeerDevice is a peer's engine port: writes go to WireGuard, Read only
// waits for Close (what the peer sends arrives on the RX device).
type wgPeerDevice struct {
	b      *wgBackend
	name   string
	closed atomic.Bool
	once   sync.Once
	done   chan struct{}
}

var _ link.Device = (*wgPeerDevice)(nil)

func (d *wgPeerDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	<-d.done
	return 0, link.ErrClosed
}

func (d *wgPeerDevice) Write(bufs [][]byte, offset int) (int, error) {
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	p := d.b.peers.Load().byName[d.name]
	if p == nil {
		d.b.drop(nil, underlay.DropNoPeer, uint64(len(bufs)))
		return len(bufs), nil
	}
	w, err := d.b.tun.q.Write(bufs, offset)
	if err != nil {
		return 0, err
	}
	if w.Packets > 0 {
		p.c.txPackets.Add(uint64(w.Packets))
		p.c.txBytes.Add(w.Bytes)
		d.b.c.txPackets.Add(uint64(w.Packets))
		d.b.c.txBytes.Add(w.Bytes)
	}
	if w.Full > 0 {
		d.b.drop(p.c, underlay.DropQueueFull, w.Full)
	}
	if w.TooBig > 0 {
		d.b.drop(p.c, underlay.DropTooBig, w.TooBig)
	}
	return len(bufs), nil
}

func (d *wgPeerDevice) BatchSize() int { return conn.IdealBatchSize }

func (d *wgPeerDevice) Close() error {
	d.once.Do(func() {
		d.closed.Store(true)
		close(d.done)
	})
	return nil
}

// wgRxDevice is the RX port: what WireGuard decrypted, from every peer.
type wgRxDevice struct{ q *pktq.Queue }

var _ link.Device = (*wgRxDevice)(nil)

func (d *wgRxDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.q.Read(bufs, sizes, offset)
}

// Write discards: nothing is routed to the RX port.
func (d *wgRxDevice) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (d *wgRxDevice) BatchSize() int                               { return conn.IdealBatchSize }
func (d *wgRxDevice) Close() error                                 { d.q.Close(); return nil }

// wgTUN is wireguard-go's tun.Device: Read hands it what the peer devices
// queued, Write takes what it decrypted.
type wgTUN struct {
	b      *wgBackend
	q      *pktq.Queue // tx: engine to WireGuard
	events chan tun.Event
	once   sync.Once
}

var _ tun.Device = (*wgTUN)(nil)

func (t *wgTUN) File() *os.File { return nil }

func (t *wgTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.q.Read(bufs, sizes, offset)
	if err != nil {
		return 0, os.ErrClosed
	}
	return n, nil
}

// Write takes one peer's decrypted packets (wireguard-go's receiver of
// that peer calls it), their sources already checked against the peer's
// AllowedIPs; the first one's source names the peer for the counters.
func (t *wgTUN) Write(bufs [][]byte, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	var pc *wgPeerCounters
	if p := t.b.peers.Load().sender(bufs[0][offset:]); p != nil {
		pc = p.c
	}
	w, err := t.b.rx.q.Write(bufs, offset)
	if err != nil {
		return 0, os.ErrClosed
	}
	t.b.c.rxPackets.Add(uint64(w.Packets))
	t.b.c.rxBytes.Add(w.Bytes)
	if pc != nil {
		pc.rxPackets.Add(uint64(w.Packets))
		pc.rxBytes.Add(w.Bytes)
	}
	if w.Full > 0 {
		t.b.drop(pc, underlay.DropQueueFull, w.Full)
	}
	if w.TooBig > 0 {
		t.b.drop(pc, underlay.DropTooBig, w.TooBig)
	}
	return len(bufs), nil
}

func (t *wgTUN) MTU() (int, error)        { return t.b.mtu, nil }
func (t *wgTUN) Name() (string, error)    { return "podrouter-wg", nil }
func (t *wgTUN) Events() <-chan tun.Event { return t.events }
func (t *wgTUN) BatchSize() int           { return conn.IdealBatchSize }
func (t *wgTUN) Close() error {
	t.once.Do(func() {
		t.q.Close()
		close(t.events)
	})
	return nil
}
