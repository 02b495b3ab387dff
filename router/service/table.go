package service

// The engine's view of Services: an immutable Table of frontends, one per
// (address, port, protocol) a client may reach a Service at, each with the
// backends a new flow may go to, already filtered (ready, else serving and
// terminating; internalTrafficPolicy / externalTrafficPolicy Local).
//
//	NewTable(services, node addresses, prev) ─► frontends by key
//	   ClusterIPs and externalIPs : port        (internal policy)
//	   node addresses : nodePort                (external policy)
//	   ─► carried over from prev: affinity state and counters of frontends
//	      that stay, so a swap loses no affinity and no count
//	   ─► Gone: UDP backends that took flows before and take none now
//	      (the caller flushes their flows)
//
// Design notes. A frontend is looked up once per flow (its first packet),
// never per packet: conntrack holds the chosen backend. So the lookup is a
// plain map, and the per-packet test "is this a Service address?" is the
// caller's (a prefix check on the Service CIDRs). Backend choice is uniform
// random, as kube-proxy's iptables and nftables modes; ClientIP affinity is
// a small map per frontend under a mutex, consulted only for new flows.

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

// Key identifies a frontend.
type Key struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

// Frontend is one address:port/protocol of a Service with the backends
// new flows may take.
type Frontend struct {
	Key
	Service  string // "namespace/name"
	PortName string
	NodePort bool // a node address : nodePort frontend
	// ExternalLocal: a nodePort frontend of an externalTrafficPolicy
	// Local Service. Backends are this node's only, and a flow the
	// node's ingress brings from the client's own address keeps it.
	ExternalLocal bool
	// Backends take new flows (uniformly); empty: the frontend rejects.
	Backends []netip.AddrPort
	// All are every backend of the port, for the operator view.
	All      []Backend
	Affinity time.Duration
	// Terminating: Backends are serving-but-terminating ones (no ready
	// backend was left).
	Terminating bool

	st *frontState // shared with the previous and next tables
}

// frontState is what a frontend keeps across table swaps.
type frontState struct {
	flows    atomic.Uint64 // flows started
	rejected atomic.Uint64 // new flows refused: no backend
	mu       sync.Mutex
	aff      map[netip.Addr]affinity
	perBack  sync.Map // netip.AddrPort -> *atomic.Uint64 (flows per backend)
}

type affinity struct {
	backend netip.AddrPort
	expires time.Time
}

// maxAffinity bounds a frontend's affinity map; beyond it expired entries
// are swept, then the map is reset (affinity is best effort under a flood
// of clients, as kube-proxy's recent-module lists are bounded too).
const maxAffinity = 65536

// Counters are a frontend's.
type Counters struct {
	Flows, Rejected uint64
	PerBackend      map[netip.AddrPort]uint64
}

// Counters returns the frontend's counters.
func (f *Frontend) Counters() Counters {
	c := Counters{Flows: f.st.flows.Load(), Rejected: f.st.rejected.Load(), PerBackend: map[netip.AddrPort]uint64{}}
	f.st.perBack.Range(func(k, v any) bool {
		c.PerBackend[k.(netip.AddrPort)] = v.(*atomic.Uint64).Load()
		return true
	})
	return c
}

// Table is an immutable set of frontends.
type Table struct {
	fronts   map[Key]*Frontend
	external map[netip.Addr]bool // externalIPs (outside the Service CIDRs)
	services int
	// Gone lists the UDP backends (per frontend) that took new flows in
	// the previous table and take none in this one: their flows are
	// flushed by the caller, as kube-proxy clears conntrack entries of
	// removed UDP endpoints.
	Gone []Gone
}

// Gone is a backend that stopped taking a frontend's flows.
type Gone struct {
	Frontend Key
	Backend  netip.AddrPort
}

// Options are NewTable's.
type Options struct {
	// NodeAddrs are this node's addresses: NodePort frontends are made on
	// each (of the Service's families).
	NodeAddrs []netip.Addr
	// Prev is the table being replaced (nil: none); frontends that stay
	// keep its affinity and counters.
	Prev *Table
}

// NewTable builds a table from resolved Services (the watcher validated
// them; NewTable only drops what cannot be a frontend: an address or
// port of the wrong family or zero, a duplicate key, which it skips).
func NewTable(svcs []Service, o Options) *Table {
	t := &Table{fronts: map[Key]*Frontend{}, external: map[netip.Addr]bool{}}
	for i := range svcs {
		s := &svcs[i]
		name := s.String()
		t.services++
		for _, p := range s.Ports {
			if p.Port == 0 || (p.Proto != packet.ProtoTCP && p.Proto != packet.ProtoUDP) {
				continue
			}
			internal := usable(p.Backends, s.InternalLocal)
			for _, a := range s.ClusterIPs {
				t.add(o.Prev, name, &p, Key{a, p.Port, p.Proto}, false, false, internal, s.Affinity)
			}
			for _, a := range s.ExternalIPs {
				t.add(o.Prev, name, &p, Key{a, p.Port, p.Proto}, false, false, internal, s.Affinity)
				t.external[a] = true
			}
			if p.NodePort != 0 {
				external := usable(p.Backends, s.ExternalLocal)
				for _, a := range o.NodeAddrs {
					t.add(o.Prev, name, &p, Key{a, p.NodePort, p.Proto}, true, s.ExternalLocal, external, s.Affinity)
				}
			}
		}
	}
	if o.Prev != nil {
		for k, pf := range o.Prev.fronts {
			if k.Proto != packet.ProtoUDP {
				continue
			}
			nf := t.fronts[k]
			for _, b := range pf.Backends {
				if nf == nil || !slices.Contains(nf.Backends, b) {
					t.Gone = append(t.Gone, Gone{Frontend: k, Backend: b})
				}
			}
		}
	}
	return t
}

// usable returns the backends that take new flows: the ready ones (of
// this node only when local), else the serving terminating ones.
func usable(bs []Backend, local bool) (out []netip.AddrPort) {
	for _, b := range bs {
		if b.Ready && (!local || b.Local) {
			out = append(out, netip.AddrPortFrom(b.Addr, b.Port))
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, b := range bs {
		if b.Serving && b.Terminating && (!local || b.Local) {
			out = append(out, netip.AddrPortFrom(b.Addr, b.Port))
		}
	}
	return out
}

func (t *Table) add(prev *Table, svc string, p *Port, k Key, nodePort, local bool, backends []netip.AddrPort, aff time.Duration) {
	if !k.Addr.IsValid() || k.Addr.Is4In6() {
		return
	}
	if _, dup := t.fronts[k]; dup {
		return
	}
	var bs []netip.AddrPort
	for _, b := range backends {
		if b.Addr().Is4() == k.Addr.Is4() {
			bs = append(bs, b)
		}
	}
	f := &Frontend{Key: k, Service: svc, PortName: p.Name, NodePort: nodePort, ExternalLocal: local, Backends: bs, All: p.Backends, Affinity: aff}
	for _, b := range bs {
		if i := slices.IndexFunc(p.Backends, func(x Backend) bool { return netip.AddrPortFrom(x.Addr, x.Port) == b }); i >= 0 && !p.Backends[i].Ready {
			f.Terminating = true
		}
	}
	if prev != nil {
		if pf := prev.fronts[k]; pf != nil && pf.Service == svc {
			f.st = pf.st
		}
	}
	if f.st == nil {
		f.st = &frontState{}
	}
	t.fronts[k] = f
}

// Frontend returns the frontend at addr:port for proto, or nil.
func (t *Table) Frontend(addr netip.Addr, port uint16, proto uint8) *Frontend {
	return t.fronts[Key{addr, port, proto}]
}

// IsExternal reports whether a is one of the Services' externalIPs.
func (t *Table) IsExternal(a netip.Addr) bool { return len(t.external) > 0 && t.external[a] }

// Frontends returns every frontend, sorted by address, port and protocol.
func (t *Table) Frontends() []*Frontend {
	out := make([]*Frontend, 0, len(t.fronts))
	for _, f := range t.fronts {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *Frontend) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return int(a.Proto) - int(b.Proto)
	})
	return out
}

// Len returns the number of Services and of frontends.
func (t *Table) Len() (services, frontends int) { return t.services, len(t.fronts) }

// Pick chooses the backend of a new flow from client at time now, and
// reports false (counted as rejected) when the frontend has none.
func (f *Frontend) Pick(client netip.Addr, now time.Time) (netip.AddrPort, bool) {
	n := len(f.Backends)
	if n == 0 {
		f.st.rejected.Add(1)
		return netip.AddrPort{}, false
	}
	var b netip.AddrPort
	if f.Affinity > 0 {
		b = f.pickAffinity(client, now)
	} else {
		b = f.Backends[rand.IntN(n)]
	}
	f.st.flows.Add(1)
	c, ok := f.st.perBack.Load(b)
	if !ok {
		c, _ = f.st.perBack.LoadOrStore(b, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
	return b, true
}

func (f *Frontend) pickAffinity(client netip.Addr, now time.Time) netip.AddrPort {
	st := f.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if a, ok := st.aff[client]; ok && now.Before(a.expires) && slices.Contains(f.Backends, a.backend) {
		a.expires = now.Add(f.Affinity)
		st.aff[client] = a
		return a.backend
	}
	if st.aff == nil {
		st.aff = map[netip.Addr]affinity{}
	}
	if len(st.aff) >= maxAffinity {
		for c, a := range st.aff {
			if !now.Before(a.expires) {
				delete(st.aff, c)
			}
		}
		if len(st.aff) >= maxAffinity {
			clear(st.aff)
		}
	}
	b := f.Backends[rand.IntN(len(f.Backends))]
	st.aff[client] = affinity{backend: b, expires: now.Add(f.Affinity)}
	return b
}
