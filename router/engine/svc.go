package engine

// The load balancer: Services without kube-proxy (Engine.SetServices).
//
//	handle ─► source check ─► [SNAT port: replies back] ─► services:
//	  TCP/UDP to a Service address (Service CIDR, externalIP, node
//	  address : nodePort)?
//	     TrackExisting: a packet of a known flow ─► rewrite (DNAT, + SNAT
//	        for a hairpin) ─► route
//	     new flow: Frontend ─► none: drop (service-port), or route on when
//	        the address is the node's own (not a nodePort)
//	        ─► Pick backend ─► none: ICMP port unreachable (no-endpoints)
//	        ─► TrackDNAT(backend, gateway when the client is the backend
//	           or a nodePort's but for Local from the ingress; label: the
//	           gateway port, for a nodePort flow from the ingress)
//	        ─► remember the backend's address ─► rewrite ─► route
//	  from an address that was a backend? TrackExisting: a reply of a
//	     Service flow ─► rewrite back (source = the Service) ─► route,
//	     or to the labelled port
//	  ICMP errors quoting a Service flow: translated with their quote
//
// Design notes. The per-packet price for traffic that is not a Service's
// is two tests: a prefix check of the destination against the Service
// CIDRs (and the node's addresses), and a lookup of the source in the set
// of addresses that ever were a backend on this node. That set only grows
// between calls to SetServices, which rebuild it from the live DNAT flows
// and the current backends: kept from flows, not from the Service table,
// so that replies of an established flow keep their translation after its
// backend left the Endpoints (kube-proxy leaves TCP flows to a removed
// endpoint alone; only UDP flows are flushed, SetServices does that).
//
// A nodePort flow's source is translated to the gateway too, as
// kube-proxy masquerades nodePort traffic: its backend may be on another
// node, and the replies must come back here. So is a flow from outside
// the cluster CIDRs (the node itself, a hostNetwork pod): a backend that
// is another node's host would answer the node's address directly, past
// this engine (kube-proxy masquerades what does not come from the
// cluster CIDR for the same reason). Except for externalTrafficPolicy
// Local, whose backends are this node's: a flow the node's ingress (the
// gateway port, netstackx/ingress) brings from its client's own address
// keeps it. Every nodePort flow of the ingress from an address other than
// the gateway is labelled in conntrack with the port it came from
// (TrackDNATFrom), and its replies, addressed to the client, go back to
// that port (svcBack, forward), not where the route table sends the
// client's address: the ingress holds the client's connection. Only the
// gateway port may start such flows; the label is checked against it
// again for every reply (backPort). The engine's own answers (ICMP errors)
// to a packet the gateway port sent from such an address go back to it
// as well (originate): a Local nodePort without a backend here refuses the
// flow at once.
//
// A hairpin (a pod reaching its own Service and picked as the backend) is
// translated both ways: the source becomes the pod gateway's address with
// a port from the conntrack table's SNAT range for it, so the pod sees a
// peer that is not itself (Linux drops a packet from its own address).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/service"
)

// ErrServicesConfig is wrapped by EnableServices' errors.
var ErrServicesConfig = errors.New("engine: invalid services config")

// HairpinPortMin and HairpinPortMax are the ports a hairpin flow's source
// is translated to on the gateway address: below gVisor's ephemeral range
// (16000 and up), which a netstack port using the gateway address (NodePort
// and hostPort ingress) takes its ports from.
const (
	HairpinPortMin = 1024
	HairpinPortMax = 15999
)

// ServicesConfig configures the load balancer.
type ServicesConfig struct {
	// CIDRs are the Service address ranges (kube-apiserver's
	// --service-cluster-ip-range), at least one.
	CIDRs []netip.Prefix
	// Table tracks the Service flows. Its Config.SNAT must list the
	// engine's gateway addresses (Gateway, Gateway6) for hairpins, with the
	// HairpinPortMin..HairpinPortMax range. It must not be shared with an
	// SNAT port's table.
	Table *conntrack.Table
}

// ServiceStats counts the load balancer's work.
type ServiceStats struct {
	Flows       uint64 // Service flows created
	Hairpins    uint64 // of which hairpins
	NoEndpoints uint64 // new flows refused for want of a backend
	NoPort      uint64 // packets to a Service address on no Service port
	Unsupported uint64 // packets to a Service address of another protocol than TCP and UDP
	Refused     uint64 // flows conntrack refused (table full, clash, ...)
	Flushed     uint64 // UDP flows flushed when their backend left
}

type services struct {
	cfg      ServicesConfig
	nets4    []net4         // cfg.CIDRs' IPv4 prefixes, for isServiceAddr
	nets6    []netip.Prefix // and their IPv6 ones
	table    atomic.Pointer[service.Table]
	backends atomic.Pointer[map[netip.Addr]struct{}] // copy on write, under mu
	mu       sync.Mutex

	flows, hairpins, noEndpoints, noPort, unsupported, refused, flushed atomic.Uint64
}

// EnableServices turns the load balancer on, with no Services until
// SetServices. It may be called once.
func (e *Engine) EnableServices(cfg ServicesConfig) error {
	if len(cfg.CIDRs) == 0 {
		return fmt.Errorf("%w: no Service CIDR", ErrServicesConfig)
	}
	for _, c := range cfg.CIDRs {
		if !c.IsValid() || c != c.Masked() {
			return fmt.Errorf("%w: Service CIDR %s: want a masked prefix", ErrServicesConfig, c)
		}
		for _, cc := range append([]netip.Prefix{e.cfg.PodCIDR, e.cfg.PodCIDR6}, e.cfg.ClusterCIDRs...) {
			if cc.IsValid() && cc.Overlaps(c) {
				return fmt.Errorf("%w: Service CIDR %s overlaps the cluster CIDR %s", ErrServicesConfig, c, cc)
			}
		}
	}
	if cfg.Table == nil {
		return fmt.Errorf("%w: no conntrack table", ErrServicesConfig)
	}
	s := &services{cfg: cfg}
	s.cfg.CIDRs = slices.Clone(cfg.CIDRs)
	for _, c := range cfg.CIDRs {
		if c.Addr().Is4() {
			a := c.Addr().As4()
			s.nets4 = append(s.nets4, net4{base: binary.BigEndian.Uint32(a[:]), mask: ^uint32(0) << (32 - c.Bits())})
		} else {
			s.nets6 = append(s.nets6, c)
		}
	}
	s.table.Store(service.NewTable(nil, service.Options{}))
	s.backends.Store(&map[netip.Addr]struct{}{})
	if !e.svc.CompareAndSwap(nil, s) {
		return fmt.Errorf("%w: already enabled", ErrServicesConfig)
	}
	e.log.Info("services enabled", zap.Stringers("serviceCIDRs", cfg.CIDRs))
	return nil
}

// SetServices swaps in t: new flows use it at once. Established UDP flows
// to backends t.Gone lists are flushed; the set of backend addresses is
// rebuilt from the live Service flows and t's backends.
func (e *Engine) SetServices(t *service.Table) error {
	s := e.svc.Load()
	if s == nil {
		return fmt.Errorf("%w: services not enabled", ErrServicesConfig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table.Store(t)
	var flushed int
	if len(t.Gone) > 0 {
		gone := map[[2]netip.AddrPort]bool{}
		for _, g := range t.Gone {
			gone[[2]netip.AddrPort{netip.AddrPortFrom(g.Frontend.Addr, g.Frontend.Port), g.Backend}] = true
		}
		var dead []conntrack.Tuple
		now := s.cfg.Table.Now()
		s.cfg.Table.RangeShards(now, func(f conntrack.Flow) bool {
			if f.DNAT && f.Orig.Proto() == packet.ProtoUDP && gone[[2]netip.AddrPort{f.Orig.Dst(), f.Reply.Src()}] {
				dead = append(dead, f.Orig)
			}
			return true
		})
		for _, k := range dead {
			if s.cfg.Table.Delete(k) {
				flushed++
			}
		}
		s.flushed.Add(uint64(flushed))
	}
	s.rebuildBackendsLocked(t)
	sv, fr := t.Len()
	e.log.Info("services set", zap.Int("services", sv), zap.Int("frontends", fr), zap.Int("udpFlowsFlushed", flushed))
	return nil
}

// rebuildBackendsLocked makes the backend address set: t's backends and
// the backends of live flows.
func (s *services) rebuildBackendsLocked(t *service.Table) {
	m := map[netip.Addr]struct{}{}
	for _, f := range t.Frontends() {
		for _, b := range f.All {
			m[b.Addr] = struct{}{}
		}
	}
	s.cfg.Table.RangeShards(s.cfg.Table.Now(), func(f conntrack.Flow) bool {
		if f.DNAT {
			m[f.Reply.Src().Addr()] = struct{}{}
		}
		return true
	})
	s.backends.Store(&m)
}

// noteBackend adds a to the backend address set (a flow was made to it).
func (s *services) noteBackend(a netip.Addr) {
	if _, ok := (*s.backends.Load())[a]; ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.backends.Load()
	if _, ok := old[a]; ok {
		return
	}
	m := make(map[netip.Addr]struct{}, len(old)+1)
	for k := range old {
		m[k] = struct{}{}
	}
	m[a] = struct{}{}
	s.backends.Store(&m)
}

// Services returns the table in force, or nil when the load balancer is
// off.
func (e *Engine) Services() *service.Table {
	if s := e.svc.Load(); s != nil {
		return s.table.Load()
	}
	return nil
}

// ServiceStats returns the load balancer's counters (zero when off).
func (e *Engine) ServiceStats() ServiceStats {
	s := e.svc.Load()
	if s == nil {
		return ServiceStats{}
	}
	return ServiceStats{
		Flows: s.flows.Load(), Hairpins: s.hairpins.Load(), NoEndpoints: s.noEndpoints.Load(),
		NoPort: s.noPort.Load(), Unsupported: s.unsupported.Load(), Refused: s.refused.Load(),
		Flushed: s.flushed.Load(),
	}
}

// net4 is an IPv4 prefix as a masked address and its mask.
type net4 struct{ base, mask uint32 }

// isServiceAddr reports whether dst may be a frontend's address.
func (w *worker) isServiceAddr(s *services, t *service.Table, dst netip.Addr) (vip bool, host bool) {
	if dst.Is4() {
		a := dst.As4()
		x := binary.BigEndian.Uint32(a[:])
		for _, n := range s.nets4 {
			if x&n.mask == n.base {
				return true, false
			}
		}
	} else {
		for _, c := range s.nets6 {
			if c.Contains(dst) {
				return true, false
			}
		}
	}
	if w.e.isHostAddr(dst) {
		return false, true
	}
	return t.IsExternal(dst), false
}

// serviceStage runs the load balancer on the packet in frame (w.pp
// describes it, g its offload state). It reports false when the packet
// was consumed (dropped and counted, or answered).
func (w *worker) serviceStage(s *services, frame []byte, g packet.GSO) bool {
	pp := &w.pp
	t := s.table.Load()
	vip, host := w.isServiceAddr(s, t, pp.Dst)
	if pp.Proto != packet.ProtoTCP && pp.Proto != packet.ProtoUDP {
		if pp.Proto == packet.ProtoICMPv4 || pp.Proto == packet.ProtoICMPv6 {
			return w.serviceICMP(s, frame, vip || host)
		}
		if vip {
			s.unsupported.Add(1)
			w.drop(DropServicePort)
			return false
		}
		return true
	}
	if pp.FragOff {
		return w.serviceFragment(s, frame, vip)
	}
	if !vip && !host {
		if _, ok := (*s.backends.Load())[pp.Src]; !ok {
			return true
		}
		// Perhaps a reply of a Service flow, from its backend.
		now, flags := w.ctNow(s.cfg.Table), tcpFlags(frame, pp)
		c, hit := w.svcSlot(frame, g)
		if hit && w.svcCacheHit(s, c, frame, g, flags, now, true) {
			return true
		}
		k, ok := conntrack.FromParsed(pp)
		if !ok {
			return true
		}
		r, found, err := s.cfg.Table.TrackExistingHint(k, flags, now, &w.svcHint)
		if !found && c != nil && w.svcHint.Absent() {
			c.fillPass(frame[pp.IPOff:], pp, &w.svcHint)
		}
		if !found || r.Dir != conntrack.Reply || !r.DNAT() || (err != nil && !errors.Is(err, conntrack.ErrInvalid)) {
			return true
		}
		return w.serviceRewrite(s, frame, &r, g, c)
	}
	now := w.ctNow(s.cfg.Table)
	flags := tcpFlags(frame, pp)
	c, hit := w.svcSlot(frame, g)
	if hit && w.svcCacheHit(s, c, frame, g, flags, now, false) {
		return true
	}
	k, ok := conntrack.FromParsed(pp)
	if !ok { // a non-first fragment: no ports to balance on
		if vip {
			w.drop(DropServicePort)
			return false
		}
		return true
	}
	r, found, err := s.cfg.Table.TrackExistingHint(k, flags, now, &w.svcHint)
	if found {
		if err != nil && !errors.Is(err, conntrack.ErrInvalid) {
			w.drop(DropService)
			return false
		}
		if !r.DNAT() {
			return true // a flow this table tracks untranslated: none
		}
		return w.serviceRewrite(s, frame, &r, g, c)
	}
	f := t.Frontend(pp.Dst, pp.DstPort, pp.Proto)
	if f == nil {
		if vip {
			s.noPort.Add(1)
			w.drop(DropServicePort)
			w.icmpError(frame, portUnreachable(pp.Version))
			return false
		}
		return true // the node's own address, not a nodePort: the host's
	}
	backend, ok := f.Pick(pp.Src, w.e.cfg.Now())
	if !ok {
		s.noEndpoints.Add(1)
		w.drop(DropNoEndpoints)
		w.icmpError(frame, portUnreachable(pp.Version))
		return false
	}
	// The source is translated to the gateway for a hairpin, and for a
	// nodePort (as kube-proxy masquerades nodePort traffic): the backend
	// may be on another node, and its replies must come back through
	// this one to be translated. Traffic from the ingress port comes from
	// the gateway already.
	var snat netip.Addr
	gw := w.e.gw4
	if pp.Version == 6 {
		gw = w.e.gw6
	}
	// A nodePort flow the gateway port (the node's ingress) brings from a
	// source other than the gateway is labelled with that port, where its
	// replies go back (serviceRewrite, forward), and keeps its client's
	// address when the Service is externalTrafficPolicy Local (whose
	// backends are all on this node). No other port may do this: a pod's
	// or a peer's nodePort flows are translated as before.
	origin := w.ingressOrigin(f, gw)
	keep := origin != 0 && f.ExternalLocal
	if backend.Addr() == pp.Src || (pp.Src != gw && !keep && (f.NodePort || !w.e.inClusterCIDR(pp.Src))) {
		snat = gw
	}
	r, err = s.cfg.Table.TrackDNATFrom(k, flags, backend, snat, origin, now)
	if err != nil {
		if !errors.Is(err, conntrack.ErrInvalid) {
			s.refused.Add(1)
		}
		w.drop(DropService)
		return false
	}
	if r.IsNew() {
		s.flows.Add(1)
		if backend.Addr() == pp.Src {
			s.hairpins.Add(1)
		}
		s.noteBackend(backend.Addr())
	}
	return w.serviceRewrite(s, frame, &r, g, nil)
}

// serviceRewrite applies a Service flow's translations to the packet.
// When c is not nil and conntrack gave a hint (w.svcHint), c becomes the
// flow's cache entry.
func (w *worker) serviceRewrite(s *services, frame []byte, r *conntrack.Result, g packet.GSO, c *svcCached) bool {
	pp := &w.pp
	// A reply's source and an original's destination: what the engine's
	// own ICMP errors about this packet must quote instead (svcUndo).
	if r.Dir == conntrack.Original {
		w.svcUndoBuf = conntrack.Result{Dir: conntrack.Original, DNATAddr: pp.Dst, DNATPort: pp.DstPort}
		if r.NAT() {
			w.svcUndoBuf.NATAddr, w.svcUndoBuf.NATPort = pp.Src, pp.SrcPort
		}
		w.svcUndo = &w.svcUndoBuf
	}
	var fk fragKey
	first := pp.Frag && pp.Version == 4 // a first fragment: FragOff ones never get here
	if first {
		fk = fragKeyOf(frame, pp)
	}
	var meta uint64 // the filled entry's, published once the rewrite succeeded
	if c != nil {
		c.meta = 0
		if w.svcHint.Valid() && !g.NeedsCsum {
			meta = c.fill(frame[pp.IPOff:], pp, r, &w.svcHint, &w.svcUndoBuf)
		}
	}
	if rewrite(frame, pp, r, g) != nil || rewriteDNAT(frame, pp, r, g) != nil {
		w.svcUndo = nil
		w.drop(DropService)
		return false
	}
	if meta != 0 {
		c.meta = meta
	}
	if first {
		w.svcFrags[fk.slot()] = svcFrag{key: fk, src: pp.Src, dst: pp.Dst, at: w.ctNow(s.cfg.Table)}
	}
	if r.Dir == conntrack.Reply {
		w.svcBack = r.Origin() // forward sends it there, not by route
		w.svcReply = true
	}
	return true
}

// Fragments. A datagram larger than the path MTU (a 2 KB DNS answer, a
// large UDP request) reaches the engine as IPv4 fragments, and only the
// first carries the ports a Service flow is found by. The worker keeps
// how it translated each recent first fragment, keyed by the datagram's
// addresses, protocol and IP ID as sent, and translates the later
// fragments' addresses the same way (netfilter reassembles instead; the
// engine never does). Fragments of one datagram arrive on one port, so
// one worker sees them all. A later fragment with no first one seen is
// dropped when it is addressed to a Service (IPv6 fragments to a Service
// too: their identification is in an extension header).

// svcFragSlots is the size of a worker's table of first fragments.
const svcFragSlots = 64

// svcFragTTL is how long (conntrack seconds) a first fragment's
// translation is kept for the later ones.
const svcFragTTL = 5

type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

func (k fragKey) slot() int { return int(k.id^uint16(k.src[3])<<8^uint16(k.src[2])) % svcFragSlots }

type svcFrag struct {
	key      fragKey
	src, dst netip.Addr // after translation
	at       conntrack.Time
}

// fragKeyOf returns the fragment key of the IPv4 packet pp describes.
func fragKeyOf(frame []byte, pp *packet.Parsed) fragKey {
	ip := frame[pp.IPOff:pp.IPEnd]
	return fragKey{src: [4]byte(ip[12:16]), dst: [4]byte(ip[16:20]), id: uint16(ip[4])<<8 | uint16(ip[5]), proto: pp.Proto}
}

// serviceFragment translates a non-first fragment as its first fragment
// was (svcFrags); it reports false when it dropped it.
func (w *worker) serviceFragment(s *services, frame []byte, vip bool) bool {
	pp := &w.pp
	if pp.Version == 4 {
		k := fragKeyOf(frame, pp)
		if f := &w.svcFrags[k.slot()]; f.key == k && f.src.IsValid() && w.ctNow(s.cfg.Table)-f.at <= svcFragTTL {
			ip := frame[pp.IPOff:pp.IPEnd]
			ns, nd := f.src.As4(), f.dst.As4()
			c := packet.IPv4(ip).HeaderChecksum()
			c = packet.UpdateChecksumBytes(c, ip[12:16], ns[:])
			c = packet.UpdateChecksumBytes(c, ip[16:20], nd[:])
			copy(ip[12:16], ns[:])
			copy(ip[16:20], nd[:])
			ip[10], ip[11] = byte(c>>8), byte(c)
			pp.Src, pp.Dst = f.src, f.dst
			return true
		}
	}
	if vip {
		w.drop(DropServicePort)
		return false
	}
	return true
}

// ingressOrigin returns the origin label of a new flow to f whose replies
// go back to the gateway port (its index + 1), or 0 for one routed as
// usual: f is not a nodePort, the packet did not come from the gateway
// port or comes from the gateway address (the ingress did not keep its
// client's: replies to the gateway reach that port by route), or the
// index does not fit.
func (w *worker) ingressOrigin(f *service.Frontend, gw netip.Addr) uint16 {
	in := w.in
	if !f.NodePort || in != w.snap.gateway || w.pp.Src == gw || in.idx >= 0xffff {
		return 0
	}
	return uint16(in.idx) + 1
}

// backPort returns the next hop of a reply of a flow labelled origin
// (ingressOrigin): the port the flow came from while it is still the
// gateway port, else a blackhole (that ingress is gone, and the client's
// address must not be routed: it would leave from the Service's address).
func (w *worker) backPort(origin uint16) route.NextHop {
	i := int32(origin) - 1
	if gw := w.snap.gateway; gw != nil && gw.idx == i {
		return route.ToLocal(i)
	}
	return route.NextHop{Kind: route.Blackhole}
}

// serviceICMP translates an ICMP error that quotes a Service flow: an
// error about a packet sent to a backend, on its way to the client (the
// quote's destination is a backend), or an error from the client about a
// reply (sent to the Service address, dstService).
func (w *worker) serviceICMP(s *services, frame []byte, dstService bool) bool {
	pp := &w.pp
	q, ok := conntrack.QuotedTuple(frame, pp)
	if !ok {
		return true
	}
	if !dstService {
		if _, ok := (*s.backends.Load())[q.Dst().Addr()]; !ok {
			return true
		}
	}
	r, ok := s.cfg.Table.TrackRelated(frame, pp, w.ctNow(s.cfg.Table))
	if !ok || !r.DNAT() {
		return true
	}
	if conntrack.RewriteRelated(frame, pp, &r) != nil || conntrack.RewriteRelatedDNAT(frame, pp, &r) != nil {
		w.drop(DropService)
		return false
	}
	if r.Dir == conntrack.Reply {
		w.svcBack = r.Origin() // an error on its way to the client: as replies
	}
	w.svcReply = true // related to a Service flow, judged on its first packet
	return true
}

func portUnreachable(v uint8) icmpKind {
	if v == 4 {
		return icmpKind{typ: packet.ICMPv4DstUnreachable, code: 3}
	}
	return icmpKind{typ: packet.ICMPv6DstUnreachable, code: 4}
}

// rewriteDNAT is conntrack.RewriteDNAT for a packet in any offload state
// (see rewrite).
func rewriteDNAT(frame []byte, pp *packet.Parsed, r *conntrack.Result, g packet.GSO) error {
	if !r.DNAT() {
		return nil
	}
	if !g.NeedsCsum {
		return conntrack.RewriteDNAT(frame, pp, r)
	}
	return rewritePartial(frame, pp, g, r.Dir == conntrack.Reply, func() error { return conntrack.RewriteDNAT(frame, pp, r) })
}

// unService undoes the translation of the packet in frame that the
// service stage made (w.svcUndo), before an ICMP error quotes it: the
// client must recognise the packet it sent. It never fails the caller.
func (w *worker) unService(frame []byte) {
	if w.svcUndo == nil || !w.svcUndo.DNAT() {
		return
	}
	u := *w.svcUndo
	w.svcUndo = nil
	_ = conntrack.RewriteDNAT(frame, &w.pp, &u)
	_ = conntrack.Rewrite(frame, &w.pp, &u)
}

// inClusterCIDR reports whether a lies in one of the cluster CIDRs.
func (e *Engine) inClusterCIDR(a netip.Addr) bool {
	for _, c := range e.cfg.ClusterCIDRs {
		if c.Contains(a) {
			return true
		}
	}
	return false
}
