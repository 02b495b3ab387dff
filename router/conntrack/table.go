// Package conntrack is podrouter's connection tracker: a flow table keyed
// by 5-tuple, with netfilter's TCP state machine and timeouts, UDP and ICMP
// echo flows, a hard entry limit with early drop of unreplied flows,
// per-source (per-pod) limits, and source NAT recorded in the flow (port
// allocation per external address, incremental checksum rewrites). The
// masquerade decision, flannel's --ip-masq, is Policy.
//
//	packet ─► FromParsed ─► Track(tuple, TCP flags, SNAT address?, now)
//	   found: advance state, refresh timeout (one CAS, shard read lock)
//	   new:   writer lock ─► limits (early drop) ─► NAT port ─► insert
//	─► Result{Dir, State, NAT} ─► Rewrite(frame) ─► forward
//
// Design notes. Memory is the constraint at a million flows: a Go map costs
// 70-100 bytes per key before the entry itself. So a flow is one 48-byte
// record in a chunked slab (no pointers: the GC never scans it), and the
// index is sharded open addressing whose 8-byte slots hold a hash tag and
// a record reference (index.go). A flow without NAT needs one slot for both
// directions because the hash is symmetric (tuple.go); a NAT flow adds a
// slot for its translated reply tuple.
//
// Readers take no lock: each shard is a seqlock, and a lookup probes the
// slots and reads the record with atomic loads, then retries if the
// shard's sequence moved (readers never write shared memory, so cores do
// not bounce a lock's cache line). A packet that changes its flow (a state
// transition, or a timeout refresh: expiry has one-second resolution, so a
// busy flow's word changes at most once a second) takes the shard's read
// lock and updates the record's packed state word (expiry, TCP state,
// flags) with a CAS. Inserts and deletes are serialized by one writer
// mutex (they are rare next to lookups, and one writer makes a NAT flow's
// two slots and the per-source counts trivially consistent). A record is
// freed only after every slot naming it is gone, each removal under its
// shard's write lock and sequence bump, so a reader holding a read lock
// never sees a record reused under it, and a lock-free reader that raced
// with the reuse sees the sequence change and retries.
//
// The clock is read by the caller, once per batch (Now), and passed to the
// hot-path methods: time.Now costs about 60 ns in a VM, more than a lookup.
package conntrack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/packet"
)

// Errors returned by Track. The table counts each under a DropReason.
var (
	// ErrTableFull: the hard limit is reached and no unreplied or expired
	// flow could be dropped early to make room.
	ErrTableFull = errors.New("conntrack: table full")
	// ErrSourceLimit: the flow's source address has its maximum of flows.
	ErrSourceLimit = errors.New("conntrack: per-source flow limit reached")
	// ErrPortsExhausted: no free port (or ICMP identifier) is left in the
	// external address's range for this destination.
	ErrPortsExhausted = errors.New("conntrack: NAT ports exhausted")
	// ErrInvalid: the packet does not fit its flow's state (a SYN/ACK
	// from the originator, a FIN before the handshake, ...) or cannot start
	// a flow (a TCP segment without SYN, an echo reply). The flow is
	// unchanged.
	ErrInvalid = errors.New("conntrack: packet invalid for the flow's state")
	// ErrNoSNATAddr: Track was asked to translate to an address that is
	// not in Config.SNAT, or of the other family.
	ErrNoSNATAddr = errors.New("conntrack: not a configured SNAT address")
	// ErrClash: a translated flow's reply tuple is already another flow's
	// (the same client port reaching one backend through two Services).
	ErrClash = errors.New("conntrack: translated reply tuple in use")
)

// DropReason counts why Track refused a packet.
type DropReason uint8

// Drop reasons.
const (
	DropTableFull      DropReason = iota // ErrTableFull
	DropSourceLimit                      // ErrSourceLimit
	DropPortsExhausted                   // ErrPortsExhausted
	DropInvalid                          // ErrInvalid
	DropNoSNATAddr                       // ErrNoSNATAddr
	DropClash                            // ErrClash
	numDropReasons
)

var dropNames = [numDropReasons]string{"table-full", "source-limit", "ports-exhausted", "invalid", "no-snat-addr", "clash"}

// String returns the reason's kebab-case name.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// Defaults.
const (
	DefaultMaxEntries = 262144
	DefaultShards     = 64
	// DefaultPortMin and DefaultPortMax are Linux's ip_local_port_range.
	DefaultPortMin = 32768
	DefaultPortMax = 60999
	// maxPortTries bounds the candidates one allocation checks (netfilter
	// tries 128 at most); a smaller range is searched whole.
	maxPortTries = 1024
)

// SNATAddr is an external address flows may be translated to, with the
// range of source ports (and ICMP echo identifiers) handed out on it.
type SNATAddr struct {
	Addr netip.Addr
	// PortMin..PortMax, inclusive; zero for both means DefaultPortMin..DefaultPortMax.
	PortMin, PortMax uint16
}

// Config configures a Table. Zero fields take their documented defaults.
type Config struct {
	// MaxEntries is the hard limit on flows (default DefaultMaxEntries).
	MaxEntries int
	// MaxPerSource limits the flows of one original source address (one
	// pod). Default MaxEntries/16, at least 1; it may equal MaxEntries.
	MaxPerSource int
	// Timeouts per state; zero fields take netfilter's defaults.
	Timeouts Timeouts
	// SNAT lists the external addresses Track may translate to (at most
	// 255, each at most once).
	SNAT []SNATAddr
	// Shards is the number of index shards, a power of two (default
	// DefaultShards).
	Shards int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Time is a table timestamp: whole seconds since the table was created,
// by its clock. Read it with Table.Now once per batch of packets.
type Time uint32

// Flow is a snapshot of one tracked flow.
type Flow struct {
	Orig      Tuple // the first packet's tuple, before NAT
	Reply     Tuple // the tuple replies arrive with (to the SNAT address for a NAT flow)
	State     State // TCP state; StateNone for UDP and ICMP
	SeenReply bool  // a packet went the reply way
	Assured   bool  // an established TCP flow or a UDP stream: never dropped early
	NAT       bool  // source NAT applies
	DNAT      bool  // destination NAT applies (a Service flow; Reply's source is the backend)
	Expires   Time  // when the flow expires unless a packet refreshes it
}

// Result says what Track did with a packet. It is kept to a few words so
// that it comes back in registers.
type Result struct {
	// NATAddr, when valid, is the translation (see NAT): for Dir ==
	// Original the packet's source must become NATAddr:NATPort, for Reply
	// its destination must (the pod's own address and port). For ICMP echo
	// the port is the identifier. Rewrite does it.
	NATAddr netip.Addr
	NATPort uint16
	// DNATAddr, when valid, is the destination translation (see DNAT):
	// for Dir == Original the packet's destination must become
	// DNATAddr:DNATPort (the backend), for Reply its source must (the
	// Service address). RewriteDNAT does it.
	DNATAddr netip.Addr
	DNATPort uint16
	Dir      Dir
	State    State // after the packet
	Flags    ResultFlags
	// origin is the caller's label of a DNAT flow (TrackDNATFrom), in
	// both directions; 0: none.
	origin uint16
}

// ResultFlags are what else happened to a packet in Track.
type ResultFlags uint8

// Result flags.
const (
	// ResultNew: the packet created the flow.
	ResultNew ResultFlags = 1 << iota
	// ResultIgnored: the packet was accepted without advancing the flow (a
	// late retransmission of the handshake); the timeout was not refreshed.
	ResultIgnored
)

// NAT reports whether the flow is translated.
func (r *Result) NAT() bool { return r.NATAddr.IsValid() }

// DNAT reports whether the flow's destination is translated.
func (r *Result) DNAT() bool { return r.DNATAddr.IsValid() }

// Origin returns the label the flow was created with (TrackDNATFrom), or
// 0.
func (r *Result) Origin() uint16 { return r.origin }

// IsNew reports whether the packet created the flow.
func (r *Result) IsNew() bool { return r.Flags&ResultNew != 0 }

// Ignored reports whether the packet left the flow as it was.
func (r *Result) Ignored() bool { return r.Flags&ResultIgnored != 0 }

// Stats is a snapshot of a table's counters.
type Stats struct {
	Entries    int    // flows in the table
	Sources    int    // source addresses with at least one flow
	Inserts    uint64 // flows created
	Deletes    uint64 // flows removed, for any reason
	Expired    uint64 // removed because their timeout passed
	EarlyDrops uint64 // unreplied flows evicted to make room
	Drops      map[DropReason]uint64
}

// Table is a connection tracking table. Its methods are safe for
// concurrent use; it owns no goroutines (call Reap periodically).
type Table struct {
	cfg   Config
	to    secs
	seed  uint64
	epoch time.Time
	log   *zap.Logger

	shards    []shard
	shardMask uint64
	chunks    []atomic.Pointer[chunk]
	dchunks   []atomic.Pointer[dchunk] // DNAT targets, parallel to chunks, made on first use
	snat      []snatAddr

	// The writer lock serializes inserts and deletes and guards the fields
	// below it.
	wmu      sync.Mutex
	count    int
	hw       uint32   // records ever handed out (the slab's high water)
	free     []uint32 // freed record indexes
	perSrc   map[srcKey]int32
	rng      *rand.Rand
	reapNext uint32
	dropNext uint64

	inserts, deletes, expired, earlyDrops atomic.Uint64
	drops                                 [numDropReasons]atomic.Uint64
}

type srcKey struct {
	a  [2]uint64
	v6 bool
}

type snatAddr struct {
	w        [2]uint64 // the address as a Tuple holds it
	v6       bool
	addr     netip.Addr
	min, max uint16
}

// record is one flow: 48 bytes, no pointers. Every field is read and
// written atomically: lock-free readers may read a record the writer is
// recycling (and then retry).
type record struct {
	word atomic.Uint64    // see the word layout below
	key  [5]atomic.Uint64 // the original tuple; key[4] = meta | NAT port<<48
}

func (r *record) orig() Tuple {
	return Tuple{
		src:  [2]uint64{r.key[0].Load(), r.key[1].Load()},
		dst:  [2]uint64{r.key[2].Load(), r.key[3].Load()},
		meta: r.key[4].Load() & metaMask,
	}
}

func (r *record) natPort() uint16 { return uint16(r.key[4].Load() >> 48) }

func (r *record) set(k *Tuple, natPort uint16) {
	r.key[0].Store(k.src[0])
	r.key[1].Store(k.src[1])
	r.key[2].Store(k.dst[0])
	r.key[3].Store(k.dst[1])
	r.key[4].Store(k.meta | uint64(natPort)<<48)
}

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
)

type chunk [chunkSize]record

// dnatRec is a DNAT flow's destination translation (its backend), beside
// the record in a parallel slab that exists only for chunks that held a
// DNAT flow: tables that never translate destinations (egress SNAT) pay
// nothing, and a DNAT flow costs 24 bytes more than a plain one. Written
// by the writer before the record's word is published with flagDNAT.
// port holds the backend's port in bits 0-15 and the flow's origin label
// (TrackDNATFrom) in bits 16-31.
type dnatRec struct {
	addr [2]atomic.Uint64
	port atomic.Uint64
}

type dchunk [chunkSize]dnatRec

// The record's state word:
//
//	bits  0-31 expiry (Time)
//	bits 32-39 TCP state
//	bits 40-47 flags
//	bits 48-55 SNAT address index + 1 (0: no NAT); fixed while live
//	bits 56-63 creation Time mod 256 (UDP's two-second stream rule)
const (
	flagLive      = 1 << 0
	flagSeenReply = 1 << 1
	flagAssured   = 1 << 2
	flagDying     = 1 << 3
	flagDNAT      = 1 << 4 // fixed while live: the destination is translated (dnatRec)

	wLive  = uint64(flagLive) << 40
	wDying = uint64(flagDying) << 40
	wDNAT  = uint64(flagDNAT) << 40
)

func wordOf(exp Time, st State, flags uint8, nat uint8, born Time) uint64 {
	return uint64(exp) | uint64(st)<<32 | uint64(flags)<<40 | uint64(nat)<<48 | uint64(uint8(born))<<56
}

func wExpiry(w uint64) Time { return Time(uint32(w)) }
func wState(w uint64) State { return State(w >> 32) }
func wFlags(w uint64) uint8 { return uint8(w >> 40) }
func wNAT(w uint64) uint8   { return uint8(w >> 48) }
func wBorn(w uint64) uint8  { return uint8(w >> 56) }
func expired(w uint64, now Time) bool {
	return int32(uint32(now)-uint32(wExpiry(w))) >= 0
}

// New validates cfg and returns an empty table.
func New(cfg Config) (*Table, error) {
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxEntries < 1 || cfg.MaxEntries > 1<<30 {
		return nil, fmt.Errorf("conntrack: MaxEntries %d outside [1, %d]", cfg.MaxEntries, 1<<30)
	}
	if cfg.MaxPerSource == 0 {
		cfg.MaxPerSource = max(cfg.MaxEntries/16, 1)
	}
	if cfg.MaxPerSource < 1 || cfg.MaxPerSource > cfg.MaxEntries {
		return nil, fmt.Errorf("conntrack: MaxPerSource %d outside [1, MaxEntries=%d]", cfg.MaxPerSource, cfg.MaxEntries)
	}
	if cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	if cfg.Shards < 1 || cfg.Shards > 1<<16 || cfg.Shards&(cfg.Shards-1) != 0 {
		return nil, fmt.Errorf("conntrack: Shards %d: want a power of two in [1, 65536]", cfg.Shards)
	}
	to, err := cfg.Timeouts.resolve()
	if err != nil {
		return nil, err
	}
	if len(cfg.SNAT) > 255 {
		return nil, fmt.Errorf("conntrack: %d SNAT addresses, at most 255", len(cfg.SNAT))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	t := &Table{
		cfg:       cfg,
		to:        to,
		seed:      rand.Uint64(),
		epoch:     cfg.Now(),
		log:       cfg.Logger.Named("conntrack"),
		shards:    make([]shard, cfg.Shards),
		shardMask: uint64(cfg.Shards - 1),
		chunks:    make([]atomic.Pointer[chunk], (cfg.MaxEntries+chunkSize-1)/chunkSize),
		dchunks:   make([]atomic.Pointer[dchunk], (cfg.MaxEntries+chunkSize-1)/chunkSize),
		perSrc:    map[srcKey]int32{},
		rng:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	for i := range t.shards {
		t.shards[i].init()
	}
	for i, s := range cfg.SNAT {
		if !s.Addr.IsValid() || s.Addr.Zone() != "" || s.Addr.IsUnspecified() || s.Addr.IsMulticast() {
			return nil, fmt.Errorf("conntrack: SNAT[%d]: %v is not a unicast address", i, s.Addr)
		}
		if s.PortMin == 0 && s.PortMax == 0 {
			s.PortMin, s.PortMax = DefaultPortMin, DefaultPortMax
		}
		if s.PortMin == 0 || s.PortMin > s.PortMax {
			return nil, fmt.Errorf("conntrack: SNAT[%d] %v: port range %d-%d: want 1 <= min <= max", i, s.Addr, s.PortMin, s.PortMax)
		}
		for _, o := range t.snat {
			if o.addr == s.Addr {
				return nil, fmt.Errorf("conntrack: SNAT[%d]: %v listed twice", i, s.Addr)
			}
		}
		t.snat = append(t.snat, snatAddr{w: words(s.Addr), v6: s.Addr.Is6(), addr: s.Addr, min: s.PortMin, max: s.PortMax})
	}
	t.log.Info("conntrack table created", zap.Int("maxEntries", cfg.MaxEntries),
		zap.Int("maxPerSource", cfg.MaxPerSource), zap.Int("shards", cfg.Shards), zap.Int("snatAddrs", len(t.snat)))
	return t, nil
}

// Now reads the table's clock.
func (t *Table) Now() Time {
	d := t.cfg.Now().Sub(t.epoch)
	if d < 0 {
		return 0
	}
	return Time(d / time.Second)
}

// Wall converts a table time to the wall-clock time it stands for (by the
// table's clock, Config.Now).
func (t *Table) Wall(x Time) time.Time { return t.epoch.Add(time.Duration(x) * time.Second) }

// Timeouts returns the resolved timeouts.
func (t *Table) Timeouts() Timeouts {
	s := func(v uint32) time.Duration { return time.Duration(v) * time.Second }
	return Timeouts{
		TCPSynSent: s(t.to.tcp[StateSynSent]), TCPSynRecv: s(t.to.tcp[StateSynRecv]),
		TCPEstablished: s(t.to.tcp[StateEstablished]), TCPFinWait: s(t.to.tcp[StateFinWait]),
		TCPCloseWait: s(t.to.tcp[StateCloseWait]), TCPLastAck: s(t.to.tcp[StateLastAck]),
		TCPTimeWait: s(t.to.tcp[StateTimeWait]), TCPClose: s(t.to.tcp[StateClose]),
		UDP: s(t.to.udp), UDPStream: s(t.to.udpStream), ICMP: s(t.to.icmpTO),
	}
}

func (t *Table) rec(ref uint32) *record {
	i := ref - 1
	return &t.chunks[i>>chunkBits].Load()[i&(chunkSize-1)]
}

func (t *Table) shardOf(h uint64) *shard { return &t.shards[h&t.shardMask] }

// snatAt returns SNAT address number nat (1-based, as in the state word),
// or nil: a lock-free reader may see a word torn by reuse, so the index is
// checked.
func (t *Table) snatAt(nat uint8) *snatAddr {
	if nat == 0 || int(nat) > len(t.snat) {
		return nil
	}
	return &t.snat[nat-1]
}

// dnatOf returns the DNAT target of record ref, or nil when its chunk
// has none (a lock-free reader may see a torn word: checked).
func (t *Table) dnatOf(ref uint32) *dnatRec {
	i := ref - 1
	c := t.dchunks[i>>chunkBits].Load()
	if c == nil {
		return nil
	}
	return &c[i&(chunkSize-1)]
}

// replyOf returns the tuple replies of the flow in record ref (state word
// w) arrive with.
func (t *Table) replyOf(ref uint32, w uint64) Tuple {
	rec := t.rec(ref)
	r := rec.orig().Reply()
	if wFlags(w)&flagDNAT != 0 {
		if d := t.dnatOf(ref); d != nil {
			r.src = [2]uint64{d.addr[0].Load(), d.addr[1].Load()}
			r.meta = r.meta&^0xffff | d.port.Load()&0xffff
		}
	}
	if sa := t.snatAt(wNAT(w)); sa != nil {
		r.dst = sa.w
		r.meta = r.meta&^(0xffff<<16) | uint64(rec.natPort())<<16
	}
	return r
}

// find looks k up in tab and returns the record reference and k's
// direction, or 0. It only loads atomically: a lock-free caller validates
// the result with the shard's sequence.
func (t *Table) find(tab *slots, k *Tuple, h32 uint32) (uint32, Dir) {
	i := h32 & tab.mask
	for {
		v := atomic.LoadUint64(&tab.s[i])
		if v == 0 {
			return 0, 0
		}
		if uint32(v>>32) == h32 {
			ref := uint32(v)
			rec := t.rec(ref)
			s0, s1 := rec.key[0].Load(), rec.key[1].Load()
			d0, d1 := rec.key[2].Load(), rec.key[3].Load()
			m := rec.key[4].Load()
			if s0 == k.src[0] && s1 == k.src[1] && d0 == k.dst[0] && d1 == k.dst[1] && m&metaMask == k.meta {
				return ref, Original
			}
			if w := rec.word.Load(); wFlags(w)&flagDNAT != 0 {
				if t.replyOf(ref, w) == *k {
					return ref, Reply
				}
			} else if d0 == k.src[0] && d1 == k.src[1] {
				rm := swapPorts(m & metaMask)
				if sa := t.snatAt(wNAT(rec.word.Load())); sa != nil {
					if k.dst == sa.w && k.meta == rm&^(0xffff<<16)|(m>>48)<<16 {
						return ref, Reply
					}
				} else if s0 == k.dst[0] && s1 == k.dst[1] && k.meta == rm {
					return ref, Reply
				}
			}
		}
		i = (i + 1) & tab.mask
	}
}

// Lookup returns what Track would return for a packet with tuple k (its
// direction, the flow's state and NAT), without changing the flow, and
// false when k belongs to no live flow. It takes no lock and never
// allocates.
func (t *Table) Lookup(k Tuple, now Time) (r Result, ok bool) {
	h := k.hash(t.seed)
	s := t.shardOf(h)
	h32 := uint32(h >> 32)
	for {
		v := s.readBegin()
		ref, dir := t.find(s.tab.Load(), &k, h32)
		ok = false
		if ref != 0 {
			rec := t.rec(ref)
			if w := rec.word.Load(); w&wDying == 0 && !expired(w, now) {
				r, ok = t.result(ref, w, dir), true
			}
		}
		if s.seq.Load() == v {
			return r, ok
		}
	}
}

// Get returns a snapshot of the live flow k belongs to and k's direction
// in it.
func (t *Table) Get(k Tuple, now Time) (Flow, Dir, bool) {
	h := k.hash(t.seed)
	s := t.shardOf(h)
	s.mu.RLock()
	defer s.mu.RUnlock()
	ref, dir := t.find(s.tab.Load(), &k, uint32(h>>32))
	if ref == 0 {
		return Flow{}, 0, false
	}
	rec := t.rec(ref)
	w := rec.word.Load()
	if w&wDying != 0 || expired(w, now) {
		return Flow{}, 0, false
	}
	return t.flowOf(ref, w), dir, true
}

func (t *Table) flowOf(ref uint32, w uint64) Flow {
	fl := wFlags(w)
	return Flow{
		Orig: t.rec(ref).orig(), Reply: t.replyOf(ref, w), State: wState(w),
		SeenReply: fl&flagSeenReply != 0, Assured: fl&flagAssured != 0, NAT: wNAT(w) != 0,
		DNAT:    fl&flagDNAT != 0,
		Expires: wExpiry(w),
	}
}

// Track records a packet with tuple k (and, for TCP, flags: the TCP
// header's flag byte) at time now. A packet of a known flow advances its
// state and refreshes its timeout; a packet that may start a flow (a TCP
// SYN, any UDP datagram, an ICMP echo request) creates one, translated to
// snat when snat is valid (one of Config.SNAT; see Policy). Replies are
// matched by the translated reply tuple.
//
// A packet that changes nothing (the flow's timeout was refreshed earlier
// in the same second, no state transition) costs a lock-free lookup.
// On ErrInvalid the Result still describes the flow when there is one (a
// caller that forwards invalid packets anyway can rewrite them). Track
// never allocates once the table has grown to its working size.
func (t *Table) Track(k Tuple, flags uint8, snat netip.Addr, now Time) (Result, error) {
	return t.track(k, flags, netip.AddrPort{}, snat, 0, now)
}

// TrackDNAT is Track for a flow whose destination is translated: a packet
// that creates a flow has it sent to dnat (a Service's backend; same
// family as k) and, when snat is valid, from snat (a hairpin: a pod that
// reaches itself through its Service). The Result carries both
// translations (DNAT, NAT). A packet of a known flow, either way, is
// tracked as Track does, whatever dnat says: the backend is chosen once.
// A new flow whose reply tuple (dnat to k's source) is another flow's
// fails with ErrClash.
func (t *Table) TrackDNAT(k Tuple, flags uint8, dnat netip.AddrPort, snat netip.Addr, now Time) (Result, error) {
	return t.track(k, flags, dnat, snat, 0, now)
}

// TrackDNATFrom is TrackDNAT that labels a flow it creates with origin,
// which every later Result of the flow, either way, returns (Origin): the
// engine keeps there where a flow came from, to send its replies back the
// same way. A packet of a known flow leaves the flow's label as it was.
func (t *Table) TrackDNATFrom(k Tuple, flags uint8, dnat netip.AddrPort, snat netip.Addr, origin uint16, now Time) (Result, error) {
	return t.track(k, flags, dnat, snat, origin, now)
}

func (t *Table) track(k Tuple, flags uint8, dnat netip.AddrPort, snat netip.Addr, origin uint16, now Time) (Result, error) {
	h := k.hash(t.seed)
	if res, err, found := t.trackFound(k, h, flags, now, nil); found {
		return res, err
	}
	return t.insert(k, h, flags, dnat, snat, origin, now)
}

// TrackExisting is Track for a packet of a flow that must exist already:
// found is false, and nothing is created, when k belongs to no live flow.
// The load balancer calls it first and picks a backend (TrackDNAT) only
// for a packet that starts a flow.
func (t *Table) TrackExisting(k Tuple, flags uint8, now Time) (res Result, found bool, err error) {
	res, err, found = t.trackFound(k, k.hash(t.seed), flags, now, nil)
	return res, found, err
}

// trackFound advances the live flow k belongs to, and reports
// found=false when there is none (or it is expired or dying: insert
// replaces it). A non-nil hint is filled when the packet left the flow
// unchanged, or when k has no flow (Absent), and cleared otherwise
// (hint.go).
func (t *Table) trackFound(k Tuple, h uint64, flags uint8, now Time, hint *Hint) (Result, error, bool) {
	s := t.shardOf(h)
	h32 := uint32(h >> 32)
	proto := k.Proto()
	if hint != nil {
		*hint = Hint{}
	}
	for {
		v := s.readBegin()
		ref, dir := t.find(s.tab.Load(), &k, h32)
		if ref == 0 {
			if s.seq.Load() != v {
				continue
			}
			if hint != nil {
				*hint = Hint{shard: s, seq: v, absent: true}
			}
			return Result{}, nil, false // new flow
		}
		rec := t.rec(ref)
		w := rec.word.Load()
		nw, ignored, err, live := t.step(w, dir, proto, flags, now)
		var res Result
		if live && nw == w {
			res = t.result(ref, w, dir)
			if ignored {
				res.Flags |= ResultIgnored
			}
		}
		if s.seq.Load() != v {
			continue
		}
		if !live {
			return Result{}, nil, false // expired or being deleted: the insert path replaces it
		}
		if nw == w {
			if hint != nil && !ignored && err == nil {
				*hint = Hint{shard: s, rec: rec, seq: v, word: w, now: now, flags: flags & stepFlags, dir: dir}
			}
			return res, t.count1(err), true
		}
		// The record must change: hold the read lock (the record cannot
		// be freed under it) and CAS.
		s.mu.RLock()
		if ref, dir := t.find(s.tab.Load(), &k, h32); ref != 0 {
			res, err, ok := t.advance(ref, dir, proto, flags, now)
			if ok {
				s.mu.RUnlock()
				return res, t.count1(err), true
			}
		}
		s.mu.RUnlock()
		return Result{}, nil, false
	}
}

func (t *Table) count1(err error) error {
	if err == ErrInvalid {
		t.drops[DropInvalid].Add(1)
	}
	return err
}

// step computes what a packet in direction dir does to a flow whose state
// word is w: the new word (w itself when nothing changes), whether the
// packet was ignored, ErrInvalid, and live=false when the flow is expired
// or dying (or w is torn: a lock-free reader checks before indexing).
func (t *Table) step(w uint64, dir Dir, proto uint8, flags uint8, now Time) (nw uint64, ignored bool, err error, live bool) {
	st, fl := wState(w), wFlags(w)
	if w&wDying != 0 || fl&flagLive == 0 || st >= numStates || expired(w, now) {
		return w, false, nil, false
	}
	var timeout uint32
	switch proto {
	case packet.ProtoTCP:
		next := tcpTransitions[dir&1][tcpClass(flags)][st]
		switch next {
		case sIV:
			return w, false, ErrInvalid, true
		case sIG:
			return w, true, nil, true // no state change, no timeout refresh
		}
		if dir == Original && (st == StateTimeWait || st == StateClose) && next == StateSynSent {
			// Reopened (RFC 1122): a fresh handshake on the same tuple.
			fl &^= flagSeenReply | flagAssured
		}
		if (st == StateSynRecv || st == StateEstablished) && next == StateEstablished {
			fl |= flagAssured
		}
		st = next
		timeout = t.to.tcp[st]
	case packet.ProtoUDP:
		timeout = t.to.udp
		if dir == Reply {
			fl |= flagSeenReply
		}
		// Netfilter's UDP stream rule: traffic both ways and still active
		// two seconds after the flow began.
		if fl&flagSeenReply != 0 && uint8(now)-wBorn(w) >= 2 {
			fl |= flagAssured
		}
		if fl&flagAssured != 0 {
			timeout = t.to.udpStream
		}
	default: // ICMP echo
		timeout = t.to.icmpTO
	}
	if dir == Reply {
		fl |= flagSeenReply
	}
	return wordOf(now+Time(timeout), st, fl, wNAT(w), Time(wBorn(w))), false, nil, true
}

// advance applies a packet to rec with a CAS; ok is false when the flow
// is expired or dying. The caller holds a lock that keeps rec alive.
func (t *Table) advance(ref uint32, dir Dir, proto uint8, flags uint8, now Time) (res Result, err error, ok bool) {
	rec := t.rec(ref)
	for {
		w := rec.word.Load()
		nw, ignored, err, live := t.step(w, dir, proto, flags, now)
		if !live {
			return Result{}, nil, false
		}
		if nw == w || rec.word.CompareAndSwap(w, nw) {
			res = t.result(ref, nw, dir)
			if ignored {
				res.Flags |= ResultIgnored
			}
			return res, err, true
		}
	}
}

func (t *Table) result(ref uint32, w uint64, dir Dir) Result {
	if w&(0xff<<48|wDNAT) == 0 {
		return Result{Dir: dir, State: wState(w)} // inlined: the common case
	}
	return t.natResult(ref, w, dir)
}

func (t *Table) natResult(ref uint32, w uint64, dir Dir) Result {
	rec := t.rec(ref)
	r := Result{Dir: dir, State: wState(w)}
	m := rec.key[4].Load()
	v6 := m&metaV6 != 0
	if sa := t.snatAt(wNAT(w)); sa != nil {
		if dir == Original {
			r.NATAddr, r.NATPort = sa.addr, uint16(m>>48)
		} else {
			r.NATAddr, r.NATPort = addrOf([2]uint64{rec.key[0].Load(), rec.key[1].Load()}, v6), uint16(m)
		}
	}
	if w&wDNAT != 0 {
		var dp uint64
		d := t.dnatOf(ref)
		if d != nil {
			dp = d.port.Load()
			r.origin = uint16(dp >> 16)
		}
		if dir == Reply {
			r.DNATAddr, r.DNATPort = addrOf([2]uint64{rec.key[2].Load(), rec.key[3].Load()}, v6), uint16(m>>16)
		} else if d != nil {
			r.DNATAddr = addrOf([2]uint64{d.addr[0].Load(), d.addr[1].Load()}, v6)
			r.DNATPort = uint16(dp)
		}
	}
	return r
}

// mayCreate reports whether a packet with tuple k and flags starts a flow.
func mayCreate(k *Tuple, flags uint8) bool {
	switch k.Proto() {
	case packet.ProtoTCP:
		return tcpClass(flags) == tcpSYN
	case packet.ProtoUDP:
		return true
	case packet.ProtoICMPv4, packet.ProtoICMPv6:
		return k.dstPort() == 0 // an echo request (FromParsed)
	}
	return false
}

func (t *Table) fail(r DropReason, err error) (Result, error) {
	t.drops[r].Add(1)
	return Result{}, err
}

// insert is Track's slow path, under the writer lock.
func (t *Table) insert(k Tuple, h uint64, flags uint8, dnat netip.AddrPort, snat netip.Addr, origin uint16, now Time) (Result, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	s := t.shardOf(h)
	// The writer needs no shard lock to read the index.
	if ref, dir := t.find(s.tab.Load(), &k, uint32(h>>32)); ref != 0 {
		res, err, ok := t.advance(ref, dir, k.Proto(), flags, now)
		if ok { // another writer inserted it meanwhile
			return res, t.count1(err)
		}
		t.deleteLocked(ref, expired(t.rec(ref).word.Load(), now))
	}
	if !mayCreate(&k, flags) {
		return t.fail(DropInvalid, ErrInvalid)
	}
	sk := srcKey{k.src, k.v6()}
	if t.perSrc[sk] >= int32(t.cfg.MaxPerSource) {
		return t.fail(DropSourceLimit, ErrSourceLimit)
	}
	if t.count >= t.cfg.MaxEntries && !t.earlyDropLocked(h, now) {
		return t.fail(DropTableFull, ErrTableFull)
	}
	// The reply tuple before SNAT: from the backend when translated.
	base := k.Reply()
	fl := uint8(flagLive)
	if dnat.IsValid() {
		if dnat.Addr().Is6() != k.v6() || dnat.Addr().Is4In6() {
			return t.fail(DropInvalid, ErrInvalid)
		}
		base.src = words(dnat.Addr())
		base.meta = base.meta&^0xffff | uint64(dnat.Port())
		fl |= flagDNAT
	}
	var nat uint8
	var natPort uint16
	if snat.IsValid() {
		i := t.snatIndex(snat, k.v6())
		if i < 0 {
			return t.fail(DropNoSNATAddr, ErrNoSNATAddr)
		}
		nat = uint8(i + 1)
		p, ok := t.allocPortLocked(&base, i, now)
		if !ok {
			return t.fail(DropPortsExhausted, ErrPortsExhausted)
		}
		natPort = p
	} else if dnat.IsValid() && !t.freeLocked(&base, now) {
		return t.fail(DropClash, ErrClash)
	}
	ref := t.allocRecordLocked()
	rec := t.rec(ref)
	rec.set(&k, natPort)
	if dnat.IsValid() {
		d := t.dnatSlotLocked(ref)
		a := base.src
		d.addr[0].Store(a[0])
		d.addr[1].Store(a[1])
		d.port.Store(uint64(dnat.Port()) | uint64(origin)<<16)
	}
	var st State
	timeout := t.to.icmpTO
	switch k.Proto() {
	case packet.ProtoTCP:
		st = StateSynSent
		timeout = t.to.tcp[st]
	case packet.ProtoUDP:
		timeout = t.to.udp
	}
	w := wordOf(now+Time(timeout), st, fl, nat, now)
	rec.word.Store(w)
	t.publishLocked(ref, w)
	t.count++
	t.perSrc[sk]++
	t.inserts.Add(1)
	res := t.result(ref, w, Original)
	res.Flags |= ResultNew
	return res, nil
}

// publishLocked makes record ref (state word w) findable: its original
// key, and for a NAT or DNAT flow its translated reply key.
func (t *Table) publishLocked(ref uint32, w uint64) {
	o := t.rec(ref).orig()
	h := o.hash(t.seed)
	t.shardOf(h).insert(uint32(h>>32), ref)
	if w&(0xff<<48|wDNAT) != 0 {
		r := t.replyOf(ref, w)
		h := r.hash(t.seed)
		t.shardOf(h).insert(uint32(h>>32), ref)
	}
}

// dnatSlotLocked returns record ref's DNAT target, making its chunk's
// parallel slab on first use.
func (t *Table) dnatSlotLocked(ref uint32) *dnatRec {
	i := ref - 1
	c := &t.dchunks[i>>chunkBits]
	if c.Load() == nil {
		c.Store(new(dchunk))
	}
	return &c.Load()[i&(chunkSize-1)]
}

// freeLocked reports whether no live flow has tuple r (either way),
// removing an expired one that has it.
func (t *Table) freeLocked(r *Tuple, now Time) bool {
	h := r.hash(t.seed)
	ref, _ := t.find(t.shardOf(h).tab.Load(), r, uint32(h>>32))
	if ref != 0 && expired(t.rec(ref).word.Load(), now) {
		t.deleteLocked(ref, true)
		ref = 0
	}
	return ref == 0
}

func (t *Table) snatIndex(a netip.Addr, v6 bool) int {
	for i := range t.snat {
		if t.snat[i].addr == a && t.snat[i].v6 == v6 {
			return i
		}
	}
	return -1
}

// allocPortLocked picks a port of SNAT address i for a flow whose reply
// tuple before SNAT is base, such that the translated reply tuple is
// unused: the original source port (base's destination port) when it is
// in range and free (as netfilter prefers), else the first free one from
// a random start. Ports are unique per (address, protocol, destination).
func (t *Table) allocPortLocked(base *Tuple, i int, now Time) (uint16, bool) {
	sa := &t.snat[i]
	free := func(p uint16) bool {
		r := Tuple{src: base.src, dst: sa.w, meta: base.meta&^(0xffff<<16) | uint64(p)<<16}
		return t.freeLocked(&r, now) // an expired flow holds no port
	}
	if sp := base.dstPort(); sp >= sa.min && sp <= sa.max && free(sp) {
		return sp, true
	}
	n := uint32(sa.max-sa.min) + 1
	start := t.rng.Uint32N(n)
	for j := range min(n, maxPortTries) {
		p := sa.min + uint16((start+j)%n)
		if free(p) {
			return p, true
		}
	}
	return 0, false
}

func (t *Table) allocRecordLocked() uint32 {
	if n := len(t.free); n > 0 {
		i := t.free[n-1]
		t.free = t.free[:n-1]
		return i + 1
	}
	i := t.hw
	t.hw++
	c := &t.chunks[i>>chunkBits]
	if c.Load() == nil {
		c.Store(new(chunk))
	}
	return i + 1
}

// deleteLocked removes the flow in record ref: its slots, each under its
// shard's write lock and sequence bump, then the record. expired says why
// (counted). The caller holds wmu.
func (t *Table) deleteLocked(ref uint32, expired bool) {
	rec := t.rec(ref)
	var w uint64
	for {
		w = rec.word.Load()
		if rec.word.CompareAndSwap(w, w|wDying) {
			break
		}
	}
	o := rec.orig()
	h := o.hash(t.seed)
	t.shardOf(h).remove(uint32(h>>32), ref)
	if w&(0xff<<48|wDNAT) != 0 {
		r := t.replyOf(ref, w)
		h := r.hash(t.seed)
		t.shardOf(h).remove(uint32(h>>32), ref)
	}
	sk := srcKey{o.src, o.v6()}
	if n := t.perSrc[sk] - 1; n > 0 {
		t.perSrc[sk] = n
	} else {
		delete(t.perSrc, sk)
	}
	if expired {
		t.expired.Add(1)
	}
	rec.word.Store(0)
	rec.set(&Tuple{}, 0)
	t.free = append(t.free, ref-1)
	t.count--
	t.deletes.Add(1)
}

// earlyDropLocked makes room for one flow, as netfilter's early_drop: it
// looks at the flows near the new key's slot (then near a rotating
// position in another shard) and removes the first expired or unassured
// one. It reports whether it removed one.
func (t *Table) earlyDropLocked(h uint64, now Time) bool {
	const window = 32 // flows looked at per shard
	try := func(s *shard, start uint32) bool {
		tab := s.tab.Load()
		i, seen := start&tab.mask, 0
		for range len(tab.s) {
			v := tab.s[i]
			i = (i + 1) & tab.mask
			if v == 0 {
				continue
			}
			if seen++; seen > window {
				return false
			}
			ref := uint32(v)
			w := t.rec(ref).word.Load()
			if w&wDying != 0 {
				continue
			}
			if exp := expired(w, now); exp || wFlags(w)&flagAssured == 0 {
				t.deleteLocked(ref, exp)
				if !exp {
					t.earlyDrops.Add(1)
				}
				return true
			}
		}
		return false
	}
	if try(t.shardOf(h), uint32(h>>32)) {
		return true
	}
	for range 4 {
		t.dropNext++
		if try(&t.shards[t.dropNext&t.shardMask], uint32(t.rng.Uint64())) {
			return true
		}
	}
	return false
}

// Reap removes up to max expired flows, scanning the slab from where the
// previous call stopped; call it periodically (every second or so). It
// returns how many it removed. The writer lock is held for at most a few
// thousand records at a time.
func (t *Table) Reap(now Time, max int) int {
	const batch = 4096
	removed := 0
	t.wmu.Lock()
	total := t.hw
	t.wmu.Unlock()
	for scanned := uint32(0); scanned < total && removed < max; {
		t.wmu.Lock()
		for i := 0; i < batch && scanned < total && removed < max; i++ {
			if t.reapNext >= t.hw {
				t.reapNext = 0
			}
			ref := t.reapNext + 1
			t.reapNext++
			scanned++
			w := t.rec(ref).word.Load()
			if w&wLive != 0 && w&wDying == 0 && expired(w, now) {
				t.deleteLocked(ref, true)
				removed++
			}
		}
		t.wmu.Unlock()
	}
	return removed
}

// Delete removes the flow k belongs to (either direction) and reports
// whether there was one.
func (t *Table) Delete(k Tuple) bool {
	h := k.hash(t.seed)
	t.wmu.Lock()
	defer t.wmu.Unlock()
	ref, _ := t.find(t.shardOf(h).tab.Load(), &k, uint32(h>>32))
	if ref == 0 {
		return false
	}
	t.deleteLocked(ref, false)
	return true
}

// DeleteSource removes every flow whose original source address is src
// (a pod that went away) and returns how many it removed.
func (t *Table) DeleteSource(src netip.Addr) int {
	a, v6 := words(src), src.Is6()
	n := 0
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.perSrc[srcKey{a, v6}] == 0 {
		return 0
	}
	for i := uint32(0); i < t.hw; i++ {
		rec := t.rec(i + 1)
		w := rec.word.Load()
		if o := rec.orig(); w&wLive != 0 && o.src == a && o.v6() == v6 {
			t.deleteLocked(i+1, false)
			n++
		}
	}
	return n
}

// Range calls fn with a snapshot of every live flow at time now, until fn
// returns false. The table is not locked while fn runs (it may call the
// table); flows created or removed meanwhile may or may not be seen.
func (t *Table) Range(now Time, fn func(Flow) bool) {
	buf := make([]Flow, 0, chunkSize)
	for c := uint32(0); ; c++ {
		buf = buf[:0]
		t.wmu.Lock()
		if c*chunkSize >= t.hw {
			t.wmu.Unlock()
			return
		}
		for i := c * chunkSize; i < min((c+1)*chunkSize, t.hw); i++ {
			rec := t.rec(i + 1)
			w := rec.word.Load()
			if w&wLive != 0 && w&wDying == 0 && !expired(w, now) {
				buf = append(buf, t.flowOf(i+1, w))
			}
		}
		t.wmu.Unlock()
		for _, f := range buf {
			if !fn(f) {
				return
			}
		}
	}
}

// Len returns the number of flows in the table, expired ones not yet
// reaped included.
func (t *Table) Len() int {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	return t.count
}

// SourceLen returns the number of flows whose original source is src.
func (t *Table) SourceLen(src netip.Addr) int {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	return int(t.perSrc[srcKey{words(src), src.Is6()}])
}

// Stats returns a snapshot of the counters.
func (t *Table) Stats() Stats {
	t.wmu.Lock()
	st := Stats{Entries: t.count, Sources: len(t.perSrc)}
	t.wmu.Unlock()
	st.Inserts, st.Deletes = t.inserts.Load(), t.deletes.Load()
	st.Expired, st.EarlyDrops = t.expired.Load(), t.earlyDrops.Load()
	st.Drops = map[DropReason]uint64{}
	for i := range t.drops {
		if v := t.drops[i].Load(); v != 0 {
			st.Drops[DropReason(i)] = v
		}
	}
	return st
}
