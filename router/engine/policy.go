package engine

// NetworkPolicy enforcement (Engine.EnablePolicy, SetPolicy).
//
//	forward ─► next port q chosen ─► policy: is the input port's pod or
//	  q's pod isolated (in either direction)?
//	     no: on (no cost but two loads)
//	     a reply of a Service flow (the service stage translated it back):
//	        on (the flow was judged on its first packet)
//	     TrackExisting in the policy table: a packet of a known flow, either
//	        way: on
//	     an ICMP error quoting a known flow (TrackRelated): on
//	     else judge it: the sender's egress rules (against the destination)
//	        and the receiver's ingress rules (against the source); the
//	        node's own addresses always reach its pods
//	        ─► denied: drop (DropPolicy), count per policy and direction
//	        ─► allowed: Track, so that the rest of the flow and its replies
//	           pass at conntrack cost
//
// Design notes. The judgment happens after the service stage, so a flow
// through a Service is judged against its backend, as the API requires. A
// flow is tracked when either end is isolated in either direction: the
// replies of a flow into a pod that is isolated only for egress must find
// it. A TCP segment that cannot start a flow (no SYN: a flow that was
// established before its pod was isolated) is judged and, when allowed,
// passed untracked; every such segment is judged the same way. Non-first
// IPv4 fragments carry no ports: they get their first fragment's verdict
// (polFrags); IPv6 fragments are judged without ports (rules with ports do
// not match them).
//
// A policy change applies to new flows at once (the snapshot is swapped
// before SetPolicy returns). Established flows are judged again by their
// original tuple against the new rules: SetPolicy deletes those now denied,
// and does so again 250 ms later for the flows workers still tracked under
// the old rules (a worker holds a snapshot for one batch). Their next
// packet is then judged as a first packet and dropped: an established flow
// a new policy denies is cut within 250 ms.

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/policy"
	"github.com/podrouter/podrouter/router/route"
)

// ErrPolicyConfig is wrapped by EnablePolicy's errors.
var ErrPolicyConfig = errors.New("engine: invalid policy config")

// PolicyConfig configures NetworkPolicy enforcement.
type PolicyConfig struct {
	// Table tracks the flows of isolated pods. It must not be shared
	// with another stage, and needs no SNAT addresses.
	Table *conntrack.Table
	// LogDenied, when set, logs denied flows' first packets at most
	// LogRate times a second (default 10), with a count of those left out.
	LogDenied bool
	LogRate   int
	// Resweep is how long after SetPolicy the established flows are judged
	// again (default 250ms; tests shorten it).
	Resweep time.Duration
}

// PolicyStats counts the enforcement's work.
type PolicyStats struct {
	Policies        int    // policies in the set in force
	IsolatedPorts   int    // pod ports isolated in at least one direction
	Allowed         uint64 // flows allowed and tracked
	AllowedUntraced uint64 // packets allowed that started no flow (TCP without SYN, other protocols, table full)
	DeniedIngress   uint64 // packets denied by a receiver's ingress rules
	DeniedEgress    uint64 // packets denied by a sender's egress rules
	Cut             uint64 // established flows deleted because a new policy denies them
	// DeniedByPolicy counts denied packets per isolating policy
	// ("namespace/name") and direction, over every set that was in force.
	DeniedByPolicy map[PolicyKey]uint64
}

// PolicyKey names a policy and a direction.
type PolicyKey struct {
	Policy    string // namespace/name
	Direction policy.Direction
}

// PolicyVerdict is a judged flow, as PolicyRecent lists them.
type PolicyVerdict struct {
	At        time.Time
	Src, Dst  netip.Addr
	Proto     uint8
	Port      uint16 // destination port (0: none)
	Allowed   bool
	Direction policy.Direction // the direction that decided: the denying one, or ingress when both allowed
	// Policy is the allowing policy ("namespace/name", "" when no rule
	// decided: the pod was not isolated that way or the peer was the
	// node), or for a denied flow the isolating policies, joined by ",".
	Policy string
}

type netpol struct {
	cfg PolicyConfig
	log *zap.Logger

	mu  sync.Mutex    // serialises SetPolicy; guards set, retired
	set *policy.Set   // the set in force (under e.mu too: publishLocked reads it)
	gen atomic.Uint64 // bumped by every SetPolicy (the delayed sweep checks it)
	// retired sums the per-policy denials of sets no longer in force;
	// retiring holds the states replaced less than Resweep ago (workers
	// may still count there).
	retired  map[PolicyKey]uint64
	retiring map[*polState]bool

	allowed, untracked, deniedIn, deniedEg, cut atomic.Uint64
	seq                                         atomic.Uint64 // orders the ports' recent verdicts

	logTokens atomic.Int64 // denied-flow log budget, refilled each second
	logLeft   atomic.Uint64
	logSecond atomic.Int64
}

// polState is the policy part of a snapshot: each port's rules, by port
// index, and per-policy denial counters of this set.
type polState struct {
	set    *policy.Set
	ports  []portPol
	denied [2][]atomic.Uint64 // by direction, by policy index
}

// portPol is a pod port's rules; both nil: not isolated.
type portPol struct {
	ingress, egress *policy.Rules
}

func (p *portPol) isolated() bool { return p.ingress != nil || p.egress != nil }

// EnablePolicy turns NetworkPolicy enforcement on, with no policy (every
// pod unisolated) until SetPolicy. It may be called once.
func (e *Engine) EnablePolicy(cfg PolicyConfig) error {
	if cfg.Table == nil {
		return fmt.Errorf("%w: no conntrack table", ErrPolicyConfig)
	}
	if cfg.LogRate <= 0 {
		cfg.LogRate = 10
	}
	if cfg.Resweep <= 0 {
		cfg.Resweep = 250 * time.Millisecond
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pol != nil {
		return fmt.Errorf("%w: already enabled", ErrPolicyConfig)
	}
	if e.closed {
		return errors.New("engine: closed")
	}
	e.pol = &netpol{cfg: cfg, log: e.log.Named("policy"), retired: map[PolicyKey]uint64{}, retiring: map[*polState]bool{}}
	e.log.Info("network policy enabled", zap.Bool("logDenied", cfg.LogDenied))
	return e.publishLocked()
}

// SetPolicy swaps in s (nil: no policy): new flows are judged by it at
// once, and established flows it denies are cut (see the file comment).
func (e *Engine) SetPolicy(s *policy.Set) error {
	e.mu.Lock()
	np := e.pol
	if np == nil {
		e.mu.Unlock()
		return fmt.Errorf("%w: policy not enabled", ErrPolicyConfig)
	}
	old := e.state.Load().pol
	np.mu.Lock()
	np.set = s
	if old != nil {
		np.retiring[old] = true
	}
	np.mu.Unlock()
	err := e.publishLocked()
	st := e.state.Load().pol
	e.mu.Unlock()
	if err != nil {
		return err
	}
	gen := np.gen.Add(1)
	cut := e.sweepPolicy(st)
	isolated := 0
	for i := range st.ports {
		if st.ports[i].isolated() {
			isolated++
		}
	}
	e.log.Info("network policy set", zap.Int("policies", s.NumPolicies()), zap.Int("isolatedPorts", isolated), zap.Int("flowsCut", cut))
	time.AfterFunc(np.cfg.Resweep, func() {
		if old != nil {
			np.mu.Lock()
			delete(np.retiring, old)
			np.retire(old)
			np.mu.Unlock()
		}
		if np.gen.Load() != gen {
			return // a newer SetPolicy sweeps for itself
		}
		e.mu.Lock()
		closed := e.closed
		e.mu.Unlock()
		if !closed {
			e.sweepPolicy(e.state.Load().pol)
		}
	})
	return nil
}

// retire adds the denial counters of a set no longer in force to
// np.retired.
func (np *netpol) retire(old *polState) { old.sumDenied(np.retired) }

// sumDenied adds st's per-policy denials to m.
func (st *polState) sumDenied(m map[PolicyKey]uint64) {
	if st == nil || st.set == nil {
		return
	}
	for d := range st.denied {
		for i := range st.denied[d] {
			if n := st.denied[d][i].Load(); n > 0 {
				ns, name := st.set.Policy(int32(i))
				m[PolicyKey{ns + "/" + name, policy.Direction(d)}] += n
			}
		}
	}
}

// buildPolStateLocked makes the policy part of a snapshot for e.ports
// (by index); nil when enforcement is off.
func (e *Engine) buildPolStateLocked() *polState {
	np := e.pol
	if np == nil {
		return nil
	}
	st := &polState{set: np.set, ports: make([]portPol, len(e.ports))}
	if np.set != nil {
		for i := range st.denied {
			st.denied[i] = make([]atomic.Uint64, np.set.NumPolicies())
		}
	}
	// The counters of a set stay with it across port changes.
	if cur := e.state.Load(); cur != nil && cur.pol != nil && cur.pol.set == np.set {
		st.denied = cur.pol.denied
	}
	for i, p := range e.ports {
		if p == nil || p.cfg.Kind != KindPod {
			continue
		}
		for _, a := range p.addrs {
			if st.ports[i].ingress == nil {
				st.ports[i].ingress = np.set.Rules(policy.Ingress, a)
			}
			if st.ports[i].egress == nil {
				st.ports[i].egress = np.set.Rules(policy.Egress, a)
			}
		}
	}
	return st
}

// portRules returns the rules of the pod port with address a in snap, by
// its host route, or nil.
func (e *Engine) portRules(snap *snapshot, a netip.Addr) *portPol {
	nh, ok := snap.table.Lookup(a)
	if !ok || nh.Kind != route.Local || int(nh.Port) >= len(snap.pol.ports) {
		return nil
	}
	if p := snap.ports[nh.Port]; p == nil || p.cfg.Kind != KindPod || !p.hasAddr(a) {
		return nil
	}
	return &snap.pol.ports[nh.Port]
}

// hasAddr reports whether a is one of the port's addresses (a pod port's
// source check, and the policy stage's pod lookup).
func (p *Port) hasAddr(a netip.Addr) bool {
	for _, x := range p.addrs {
		if x == a {
			return true
		}
	}
	return false
}

// sweepPolicy deletes the established flows st denies, judged by their
// original tuple, and returns how many.
func (e *Engine) sweepPolicy(st *polState) int {
	np := e.pol
	if np == nil || st == nil {
		return 0
	}
	snap := e.state.Load()
	if snap.pol != st {
		return 0 // a newer snapshot: its own sweep follows
	}
	t := np.cfg.Table
	var dead []conntrack.Tuple
	t.Range(t.Now(), func(f conntrack.Flow) bool {
		src, dst := f.Orig.Src(), f.Orig.Dst()
		sp, dp := e.portRules(snap, src.Addr()), e.portRules(snap, dst.Addr())
		var port uint16
		if pr := f.Orig.Proto(); pr == packet.ProtoTCP || pr == packet.ProtoUDP {
			port = dst.Port()
		}
		if ok, _, _ := e.judge(st, sp, dp, src.Addr(), dst.Addr(), f.Orig.Proto(), port); !ok {
			dead = append(dead, f.Orig)
		}
		return true
	})
	n := 0
	for _, k := range dead {
		if t.Delete(k) {
			n++
		}
	}
	np.cut.Add(uint64(n))
	return n
}

// judge decides a first packet from src to dst: sp and dp are the
// sender's and the receiver's rules when they are this node's pods. It
// returns the verdict, the deciding direction and the deciding policy
// index (the allowing one, -1 when none decided, or -1 for a denial: the
// caller names the isolating policies).
func (e *Engine) judge(st *polState, sp, dp *portPol, src, dst netip.Addr, proto uint8, port uint16) (bool, policy.Direction, int32) {
	pol := int32(-1)
	if sp != nil && sp.egress != nil {
		v := sp.egress.Check(dst, proto, port)
		if !v.Allowed {
			return false, policy.Egress, -1
		}
		pol = v.Policy
	}
	if dp != nil && dp.ingress != nil && !e.isNodeAddr(src) {
		v := dp.ingress.Check(src, proto, port)
		if !v.Allowed {
			return false, policy.Ingress, -1
		}
		pol = v.Policy
	}
	return true, policy.Ingress, pol
}

// isNodeAddr reports whether a is the node's: one of its host addresses
// or the pods' gateway (the kubelet's probes, the node's ingress).
func (e *Engine) isNodeAddr(a netip.Addr) bool {
	return a == e.gw4 || (a.Is6() && a == e.gw6) || e.isHostAddr(a)
}

// polFrag remembers a first IPv4 fragment's verdict for the rest of its
// datagram.
type polFrag struct {
	key     fragKey
	allowed bool
	at      conntrack.Time
}

const polFragSlots = 16

// policyStage judges the packet in frame (w.pp describes it) on its way
// from w.in to q under st, when sp (the input pod's) or dp (q's pod's) is
// isolated. It reports false when it dropped the packet.
func (w *worker) policyStage(st *polState, sp, dp *portPol, frame []byte) bool {
	if w.svcReply {
		return true
	}
	e := w.e
	np := e.pol
	pp := &w.pp
	t := np.cfg.Table
	now := w.ctNow(t)
	k, trackable := conntrack.FromParsed(pp)
	var flags uint8
	if trackable {
		flags = tcpFlags(frame, pp)
		if _, found, _ := t.TrackExisting(k, flags, now); found {
			return true
		}
	} else if pp.Proto == packet.ProtoICMPv4 || pp.Proto == packet.ProtoICMPv6 {
		if _, ok := t.TrackRelated(frame, pp, now); ok {
			return true
		}
	}
	var fk fragKey
	if pp.Version == 4 && (pp.Frag || pp.FragOff) {
		fk = fragKeyOf(frame, pp)
		if pp.FragOff {
			f := &w.polFrags[fk.slot()%polFragSlots]
			if f.key == fk && now-f.at <= 30 && f.allowed {
				return true
			}
			w.drop(DropPolicy)
			return false
		}
	}
	var port uint16
	if (pp.Proto == packet.ProtoTCP || pp.Proto == packet.ProtoUDP) && !pp.FragOff {
		port = pp.DstPort
	}
	ok, dir, idx := e.judge(st, sp, dp, pp.Src, pp.Dst, pp.Proto, port)
	if pp.Version == 4 && pp.Frag {
		w.polFrags[fk.slot()%polFragSlots] = polFrag{key: fk, allowed: ok, at: now}
	}
	if !ok {
		w.drop(DropPolicy)
		var rules *policy.Rules
		if dir == policy.Egress {
			np.deniedEg.Add(1)
			rules = sp.egress
		} else {
			np.deniedIn.Add(1)
			rules = dp.ingress
		}
		isolating := rules.Policies()
		for _, i := range isolating {
			if int(i) < len(st.denied[dir]) {
				st.denied[dir][i].Add(1)
			}
		}
		w.in.polRecent.add(np.seq.Add(1), now, PolicyVerdict{Src: pp.Src, Dst: pp.Dst, Proto: pp.Proto, Port: port, Direction: dir}, st.set, isolating)
		np.logDenied(pp, port, dir, st.set, isolating)
		return false
	}
	if trackable {
		if _, err := t.Track(k, flags, netip.Addr{}, now); err == nil {
			np.allowed.Add(1)
			var names []int32
			if idx >= 0 {
				names = []int32{idx}
			}
			w.in.polRecent.add(np.seq.Add(1), now, PolicyVerdict{Src: pp.Src, Dst: pp.Dst, Proto: pp.Proto, Port: port, Allowed: true, Direction: dir}, st.set, names)
			return true
		}
	}
	np.untracked.Add(1)
	return true
}

// logDenied logs a denied first packet when LogDenied is set, within the
// rate.
func (np *netpol) logDenied(pp *packet.Parsed, port uint16, dir policy.Direction, set *policy.Set, isolating []int32) {
	if !np.cfg.LogDenied {
		return
	}
	sec := time.Now().Unix()
	if old := np.logSecond.Load(); old != sec && np.logSecond.CompareAndSwap(old, sec) {
		np.logTokens.Store(int64(np.cfg.LogRate))
		if left := np.logLeft.Swap(0); left > 0 {
			np.log.Info("denied flows not logged (rate limit)", zap.Uint64("count", left))
		}
	}
	if np.logTokens.Add(-1) < 0 {
		np.logLeft.Add(1)
		return
	}
	np.log.Info("flow denied", zap.Stringer("direction", dir), zap.Stringer("src", pp.Src), zap.Stringer("dst", pp.Dst),
		zap.Uint8("proto", pp.Proto), zap.Uint16("port", port), zap.String("policies", policyNames(set, isolating)))
}

func policyNames(set *policy.Set, idx []int32) string {
	s := ""
	for i, x := range idx {
		if i > 0 {
			s += ","
		}
		ns, name := set.Policy(x)
		s += ns + "/" + name
	}
	return s
}

// polRecent is a port's ring of recently judged flows. Its worker writes
// it; PolicyRecent reads it.
type polRecent struct {
	mu   sync.Mutex
	ring [polRecentLen]polRecord
	n    uint64
}

const polRecentLen = 64

type polRecord struct {
	v   PolicyVerdict
	seq uint64
	at  conntrack.Time
	set *policy.Set
	pol [4]int32 // the policies named (at most 4 kept), -1 padded
	np  uint8
}

func (r *polRecent) add(seq uint64, now conntrack.Time, v PolicyVerdict, set *policy.Set, pols []int32) {
	r.mu.Lock()
	rec := &r.ring[r.n%polRecentLen]
	r.n++
	rec.v, rec.seq, rec.at, rec.set = v, seq, now, set
	rec.np = uint8(min(len(pols), len(rec.pol)))
	copy(rec.pol[:], pols)
	r.mu.Unlock()
}

// PolicyRecent returns the flows the engine judged most recently (at
// most 64 per port), newest first: those to or from the pod port with
// address a (any of its addresses), or every one when a is the zero Addr.
func (e *Engine) PolicyRecent(a netip.Addr) []PolicyVerdict {
	e.mu.Lock()
	np := e.pol
	e.mu.Unlock()
	if np == nil {
		return nil
	}
	ports := e.Ports()
	var addrs []netip.Addr
	if a.IsValid() {
		for _, p := range ports {
			if p.cfg.Kind == KindPod && p.hasAddr(a) {
				addrs = p.addrs
			}
		}
		if addrs == nil {
			addrs = []netip.Addr{a}
		}
	}
	var recs []polRecord
	for _, p := range ports {
		r := &p.polRecent
		r.mu.Lock()
		for i := uint64(0); i < min(r.n, polRecentLen); i++ {
			x := r.ring[(r.n-1-i)%polRecentLen]
			if addrs == nil || slices.Contains(addrs, x.v.Src) || slices.Contains(addrs, x.v.Dst) {
				recs = append(recs, x)
			}
		}
		r.mu.Unlock()
	}
	slices.SortFunc(recs, func(x, y polRecord) int { return cmp.Compare(y.seq, x.seq) })
	out := make([]PolicyVerdict, len(recs))
	for i, x := range recs {
		out[i] = x.v
		out[i].At = np.cfg.Table.Wall(x.at)
		if x.set != nil {
			out[i].Policy = policyNames(x.set, x.pol[:x.np])
		}
	}
	return out
}

// Policy returns the set in force (nil: none, or enforcement off).
func (e *Engine) Policy() *policy.Set {
	if st := e.state.Load().pol; st != nil {
		return st.set
	}
	return nil
}

// PolicyEnabled reports whether EnablePolicy was called.
func (e *Engine) PolicyEnabled() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pol != nil
}

// PolicyStats returns the enforcement's counters (zero when off).
func (e *Engine) PolicyStats() PolicyStats {
	e.mu.Lock()
	np := e.pol
	e.mu.Unlock()
	if np == nil {
		return PolicyStats{}
	}
	st := e.state.Load().pol
	s := PolicyStats{
		Allowed: np.allowed.Load(), AllowedUntraced: np.untracked.Load(),
		DeniedIngress: np.deniedIn.Load(), DeniedEgress: np.deniedEg.Load(), Cut: np.cut.Load(),
		DeniedByPolicy: map[PolicyKey]uint64{},
	}
	np.mu.Lock()
	for k, v := range np.retired {
		s.DeniedByPolicy[k] = v
	}
	for old := range np.retiring {
		if old != st {
			old.sumDenied(s.DeniedByPolicy)
		}
	}
	np.mu.Unlock()
	st.sumDenied(s.DeniedByPolicy)
	if st != nil && st.set != nil {
		s.Policies = st.set.NumPolicies()
		for i := range st.ports {
			if st.ports[i].isolated() {
				s.IsolatedPorts++
			}
		}
	}
	return s
}
