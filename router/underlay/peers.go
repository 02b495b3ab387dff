package underlay

import (
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
	// source its packets must come from (required). Over vxlan only the
	// address is checked on receipt, not the port: a Linux vxlan device
	// sends from a source port hashed from the inner flow.
	Addr netip.AddrPort
	// VTEPMAC is the node's VTEP MAC: the inner Ethernet destination of
	// what we send it (required for vxlan, ignored for udp).
	VTEPMAC packet.MAC
	// PodCIDRs are the node's podCIDRs. The underlay does not route; the
	// control plane turns them into engine routes to the peer's port.
	PodCIDRs []netip.Prefix
}

// PeerStats are one peer's counters (kept across peer table updates while
// the peer stays in the table).
type PeerStats struct {
	RxPackets, RxBytes uint64 // inner packets received from the peer and delivered
	TxPackets, TxBytes uint64 // inner packets sent to the peer
}

// peerState is a peer in one snapshot of the table: immutable except for
// its counters, which carry over to the next snapshot.
type peerState struct {
	Peer
	name     [28]byte // the peer's sockaddr, as sendmmsg takes it
	nameLen  uint32
	tmpl     *encapTemplate // vxlan only
	counters *peerCounters
}

type peerCounters struct {
	rxPackets, rxBytes atomic.Uint64
	_                  [48]byte // rx (the RX goroutine) apart from tx (any writer)
	txPackets, txBytes atomic.Uint64
}

// table is one immutable snapshot of the peer table.
type table struct {
	byName map[string]*peerState
	byAddr map[netip.AddrPort]*peerState
	byIP   map[netip.Addr]*peerState // vxlan: source address alone; nil entry = ambiguous
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
		if !c.IsValid() || c != c.Masked() {
			return fmt.Errorf("%w: %s: PodCIDRs: %s is not a masked prefix", ErrBadPeer, p.Name, c)
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
		ps := &peerState{Peer: p}
		ps.nameLen = putSockaddr(&ps.name, p.Addr)
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
		if _, seen := t.byIP[p.Addr.Addr()]; seen {
			t.byIP[p.Addr.Addr()] = nil // two peers behind one address: match ports
		} else {
			t.byIP[p.Addr.Addr()] = ps
		}
	}
	return t, nil
}

// lookupSource returns the peer a datagram from src belongs to, or nil.
func (u *Underlay) lookupSource(t *table, src netip.AddrPort) *peerState {
	if p := t.byAddr[src]; p != nil {
		return p
	}
	if u.cfg.Encap == EncapVXLAN {
		return t.byIP[src.Addr()]
	}
	return nil
}

// SetPeers replaces the whole peer table with peers, atomically: a packet
// is sent or accepted under either the old table or the new one. Devices
// of peers no longer listed drop what they are given (DropNoPeer) until
// they are closed; a device of a name that comes back sends again.
func (u *Underlay) SetPeers(peers []Peer) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, err := u.buildTable(peers, u.peers.Load())
	if err != nil {
		return err
	}
	u.peers.Store(t)
	u.log.Info("peer table set")
	return nil
}

// UpsertPeer adds p, or replaces the peer of the same name.
func (u *Underlay) UpsertPeer(p Peer) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.peers.Load()
	peers := make([]Peer, 0, len(old.byName)+1)
	for _, q := range old.byName {
		if q.Name != p.Name {
			peers = append(peers, q.Peer)
		}
	}
	peers = append(peers, p)
	t, err := u.buildTable(peers, old)
	if err != nil {
		return err
	}
	u.peers.Store(t)
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
	peers := make([]Peer, 0, len(old.byName))
	for _, q := range old.byName {
		if q.Name != name {
			peers = append(peers, q.Peer)
		}
	}
	t, err := u.buildTable(peers, old)
	if err != nil { // cannot happen: the remaining peers were valid
		return false
	}
	u.peers.Store(t)
	return true
}

// Peers returns the current table, sorted by name.
func (u *Underlay) Peers() []Peer {
	t := u.peers.Load()
	out := make([]Peer, 0, len(t.byName))
	for _, p := range t.byName {
		q := p.Peer
		q.PodCIDRs = slices.Clone(q.PodCIDRs)
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
	return PeerStats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
	}, true
}
