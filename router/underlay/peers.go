package underlay

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/podrouter/podrouter/router/packet"
)

// Peer is another node as the underlay sees it.
type Peer struct {
	// Name is the node's name, unique in the table (required).
	Name string
	// Addr is the node's underlay endpoint: where its packets go, and the
	// source address and port its datagrams must come from (required);
	// see AnySourcePort.
	Addr netip.AddrPort
	// AnySourcePort: the node sends from source ports of its own choosing,
	// so its datagrams are matched on Addr's address alone. A Linux vxlan
	// device (flannel's vxlan backend) does: it hashes the inner flow into
	// the source port. A podrouter node sends from its Addr, and leaves
	// this false. Where two such peers share an address, neither matches
	// but by exact address and port.
	AnySourcePort bool
	// VTEPMAC is the node's VTEP MAC: the inner Ethernet destination of
	// what we send it (required for vxlan, ignored for udp).
	VTEPMAC packet.MAC
	// PodCIDRs are the node's podCIDRs: the inner sources it may send
	// from (as WireGuard's AllowedIPs), besides its node addresses. The
	// underlay does not route; the control plane turns them into engine
	// routes to the peer's port.
	PodCIDRs []netip.Prefix
	// NodeAddrs are further addresses of the node (optional): inner
	// sources its hostNetwork traffic may come from, besides Addr's
	// address, which always may (e.g. its address of the other family on
	// a dual-stack cluster, or a node IP apart from its underlay address).
	NodeAddrs []netip.Addr
	// PublicKey is the node's WireGuard public key (required by the
	// wireguard backend, ignored by udp and vxlan).
	PublicKey Key
}

// Key is a Curve25519 key as WireGuard uses it, private or public. Its
// text form is standard base64, as wg(8) prints it.
type Key [32]byte

// ParseKey parses a key in base64 (44 characters, as wg(8) prints it).
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return Key{}, fmt.Errorf("key %q: want 32 bytes in base64", s)
	}
	copy(k[:], b)
	return k, nil
}

// String returns the key in base64.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key (none).
func (k Key) IsZero() bool { return k == Key{} }

// PeerStats are one peer's counters (kept across peer table updates while
// the peer stays in the table).
type PeerStats struct {
	RxPackets, RxBytes uint64 // inner packets received from the peer and delivered
	TxPackets, TxBytes uint64 // inner packets sent to the peer
	// Drops counts, by reason (non-zero reasons only), what the underlay
	// dropped of the datagrams the peer sent us and of the packets we
	// were to send it.
	Drops map[DropReason]uint64
}

// TotalDrops sums the drops over every reason.
func (s PeerStats) TotalDrops() uint64 { return sumDrops(s.Drops) }

// peerState is a peer in one snapshot of the table: immutable except for
// its counters, which carry over to the next snapshot.
type peerState struct {
	Peer
	name     [28]byte // the peer's sockaddr, as sendmmsg takes it
	nameLen  uint32
	tmpl     *encapTemplate // vxlan only
	src      sources        // the inner sources it may send from
	counters *peerCounters
}

type peerCounters struct {
	rxPackets, rxBytes atomic.Uint64
	_                  [48]byte // rx (the RX goroutine) apart from tx (any writer)
	txPackets, txBytes atomic.Uint64
	drops              [numDropReasons]atomic.Uint64 // rx and tx: both rare
}

// table is one immutable snapshot of the peer table.
type table struct {
	byName map[string]*peerState
	byAddr map[netip.AddrPort]*peerState
	byIP   map[netip.Addr]*peerState // AnySourcePort peers by address; nil entry = ambiguous
}

func (u *Underlay) validatePeer(p *Peer) error {
	if p.Name == "" {
		return fmt.Errorf("%w: Name: empty", ErrBadPeer)
	}
	a := p.Addr.Addr()
	if !p.Addr.IsValid() || p.Addr.Port() == 0 {
		return fmt.Errorf("%w: %s: Addr %s: want an address and a port", ErrBadPeer, p.Name, p.Addr)
	}
	if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("%w: %s: Addr %s: want a unicast address without zone", ErrBadPeer, p.Name, p.Addr)
	}
	if a.Unmap().Is4() != u.local.Addr().Is4() {
		return fmt.Errorf("%w: %s: Addr %s: not of the underlay's family (%s)", ErrBadPeer, p.Name, p.Addr, u.local)
	}
	if u.cfg.Encap == EncapVXLAN && (p.VTEPMAC == packet.MAC{} || p.VTEPMAC.IsMulticast()) {
		return fmt.Errorf("%w: %s: VTEPMAC %s: want a unicast MAC for vxlan", ErrBadPeer, p.Name, p.VTEPMAC)
	}
	for _, c := range p.PodCIDRs {
		if !c.IsValid() || c != c.Masked() || c.Addr().Zone() != "" || c.Addr().Is4In6() {
			return fmt.Errorf("%w: %s: PodCIDRs: %s is not a masked prefix", ErrBadPeer, p.Name, c)
		}
	}
	for _, a := range p.NodeAddrs {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("%w: %s: NodeAddrs: %s: want a unicast address without zone", ErrBadPeer, p.Name, a)
		}
	}
	return nil
}

// buildTable validates peers and builds a snapshot; counters of peers
// already in old carry over.
func (u *Underlay) buildTable(peers []Peer, old *table) (*table, error) {
	t := &table{
		byName: make(map[string]*peerState, len(peers)),
		byAddr: make(map[netip.AddrPort]*peerState, len(peers)),
		byIP:   make(map[netip.Addr]*peerState, len(peers)),
	}
	for i := range peers {
		p := peers[i]
		p.Addr = netip.AddrPortFrom(p.Addr.Addr().Unmap(), p.Addr.Port())
		if err := u.validatePeer(&p); err != nil {
			return nil, err
		}
		if _, dup := t.byName[p.Name]; dup {
			return nil, fmt.Errorf("%w: name %q listed twice", ErrBadPeer, p.Name)
		}
		if q, dup := t.byAddr[p.Addr]; dup {
			return nil, fmt.Errorf("%w: %s and %s share the address %s", ErrBadPeer, q.Name, p.Name, p.Addr)
		}
		if p.Addr == u.local {
			return nil, fmt.Errorf("%w: %s: Addr %s is this underlay's own address", ErrBadPeer, p.Name, p.Addr)
		}
		p.PodCIDRs = slices.Clone(p.PodCIDRs)
		p.NodeAddrs = slices.Clone(p.NodeAddrs)
		ps := &peerState{Peer: p}
		ps.nameLen = putSockaddr(&ps.name, p.Addr)
		ps.src.build(&p)
		if u.cfg.Encap == EncapVXLAN {
			tm := newTemplate(u.cfg.VNI, p.VTEPMAC, u.cfg.VTEPMAC)
			ps.tmpl = &tm
		}
		if o := old.byName[p.Name]; o != nil {
			ps.counters = o.counters
		} else {
			ps.counters = new(peerCounters)
		}
		t.byName[p.Name] = ps
		t.byAddr[p.Addr] = ps
		if !p.AnySourcePort {
			continue
		}
		if _, seen := t.byIP[p.Addr.Addr()]; seen {
			t.byIP[p.Addr.Addr()] = nil // two such peers behind one address: match ports
		} else {
			t.byIP[p.Addr.Addr()] = ps
		}
	}
	return t, nil
}

// lookupSource returns the peer a datagram from src belongs to, or nil:
// the peer of that address and port, else the AnySourcePort peer of that
// address.
func lookupSource(t *table, src netip.AddrPort) *peerState {
	if p := t.byAddr[src]; p != nil {
		return p
	}
	if len(t.byIP) == 0 {
		return nil
	}
	return t.byIP[src.Addr()]
}

// checkInner checks the inner IP packet ip (decapsulate vouched for its
// version nibble) as far as the underlay must before the engine trusts the
// peer's port with it: a whole IP header that is not longer than the
// packet (IPv4: a correct header checksum), and a source the peer may send
// from. The engine checks the rest, as of any port.
func (p *peerState) checkInner(ip []byte) DropReason {
	if ip[0]>>4 == 4 {
		if len(ip) < packet.IPv4MinLen {
			return DropShort
		}
		hl, total := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:4]))
		if hl < packet.IPv4MinLen || total < hl || total > len(ip) {
			return DropShort
		}
		if packet.Checksum(ip[:hl], 0) != 0xffff {
			return DropBadChecksum
		}
		if !p.src.contains4(binary.BigEndian.Uint32(ip[12:16])) {
			return DropForeignSource
		}
		return dropNone
	}
	if len(ip) < packet.IPv6Len || packet.IPv6Len+int(binary.BigEndian.Uint16(ip[4:6])) > len(ip) {
		return DropShort
	}
	if !p.src.contains6(binary.BigEndian.Uint64(ip[8:16]), binary.BigEndian.Uint64(ip[16:24])) {
		return DropForeignSource
	}
	return dropNone
}

// SetPeers replaces the whole peer table with peers, atomically: a packet
// is sent or accepted under either the old table or the new one. Devices
// of peers no longer listed drop what they are given (DropNoPeer) until
// they are closed; a device of a name that comes back sends again.
func (u *Underlay) SetPeers(peers []Peer) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.publish(peers, u.peers.Load()); err != nil {
		return err
	}
	u.log.Info("peer table set")
	return nil
}

// publish builds the table of peers, carrying old's counters over, and
// makes it the current one. The caller holds u.mu and old is current.
func (u *Underlay) publish(peers []Peer, old *table) error {
	t, err := u.buildTable(peers, old)
	if err != nil {
		return err
	}
	u.peers.Store(t)
	return nil
}

// UpsertPeer adds p, or replaces the peer of the same name.
func (u *Underlay) UpsertPeer(p Peer) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.peers.Load()
	if err := u.publish(append(old.without(p.Name, 1), p), old); err != nil {
		return err
	}
	u.log.Info("peer set")
	return nil
}

// RemovePeer removes the named peer and reports whether it was there.
func (u *Underlay) RemovePeer(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.peers.Load()
	if old.byName[name] == nil {
		return false
	}
	// An error cannot happen: the remaining peers were valid.
	return u.publish(old.without(name, 0), old) == nil
}

// without lists the table's peers but the named one, with room for extra
// more peers (UpsertPeer appends the new one).
func (t *table) without(name string, extra int) []Peer {
	peers := make([]Peer, 0, len(t.byName)+extra)
	for _, q := range t.byName {
		if q.Name != name {
			peers = append(peers, q.Peer)
		}
	}
	return peers
}

// Peers returns the current table, sorted by name.
func (u *Underlay) Peers() []Peer {
	t := u.peers.Load()
	out := make([]Peer, 0, len(t.byName))
	for _, p := range t.byName {
		q := p.Peer
		q.PodCIDRs = slices.Clone(q.PodCIDRs)
		q.NodeAddrs = slices.Clone(q.NodeAddrs)
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// PeerStats returns the named peer's counters, or false when it is not in
// the table.
func (u *Underlay) PeerStats(name string) (PeerStats, bool) {
	p := u.peers.Load().byName[name]
	if p == nil {
		return PeerStats{}, false
	}
	c := p.counters
	s := PeerStats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		Drops: map[DropReason]uint64{},
	}
	loadDrops(s.Drops, &c.drops)
	return s, true
}

// sources is the set of inner source addresses a peer may send from: its
// podCIDRs and node addresses, as masked integers, so that the check per
// packet is a few compares over a handful of entries and allocates
// nothing. A peer has one or two podCIDRs and a node address or two:
// WireGuard's AllowedIPs without the trie.
type sources struct {
	v4 []prefix4
	v6 []prefix6
}

type prefix4 struct{ addr, mask uint32 }

type prefix6 struct{ hi, lo, mhi, mlo uint64 }

// build fills s with p's podCIDRs, Addr's address and NodeAddrs.
func (s *sources) build(p *Peer) {
	s.add(netip.PrefixFrom(p.Addr.Addr(), p.Addr.Addr().BitLen()))
	for _, c := range p.PodCIDRs {
		s.add(c)
	}
	for _, a := range p.NodeAddrs {
		s.add(netip.PrefixFrom(a, a.BitLen()))
	}
}

func (s *sources) add(c netip.Prefix) {
	c = c.Masked()
	n := c.Bits() // Go's shifts by the width or more give 0: /0 masks nothing
	if c.Addr().Is4() {
		b := c.Addr().As4()
		s.v4 = append(s.v4, prefix4{binary.BigEndian.Uint32(b[:]), ^uint32(0) << (32 - n)})
		return
	}
	b := c.Addr().As16()
	s.v6 = append(s.v6, prefix6{
		hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]),
		mhi: ^uint64(0) << (64 - min(n, 64)), mlo: ^uint64(0) << (128 - max(n, 64)),
	})
}

// contains4 reports whether the IPv4 address a (big-endian) is in s.
func (s *sources) contains4(a uint32) bool {
	for _, p := range s.v4 {
		if a&p.mask == p.addr {
			return true
		}
	}
	return false
}

// contains6 reports whether the IPv6 address hi:lo is in s.
func (s *sources) contains6(hi, lo uint64) bool {
	for _, p := range s.v6 {
		if hi&p.mhi == p.hi && lo&p.mlo == p.lo {
			return true
		}
	}
	return false
}
