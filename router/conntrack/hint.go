package conntrack

import "github.com/podrouter/podrouter/router/packet"

// Hints: a caller's cache of where a flow lives.
//
// A busy flow's packets mostly leave its record as it was: its word
// changes at most once a second (the expiry refresh) and on TCP state
// transitions. TrackExistingHint returns, with such a packet's Result, a
// Hint naming the flow's record, its shard's sequence and the word it
// saw. The caller keeps the Result beside the Hint (the load balancer
// keeps both per worker) and, for a later packet of the same tuple, asks
// Still: two atomic loads and the state machine's step, instead of the
// hash, the probe and the record reads of a lookup.
//
// Why it is safe: a record is freed only after every index slot naming it
// is removed, each removal under its shard's write lock with a sequence
// bump (index.go). The Hint's shard is the one holding the slot of the
// tuple it was made for, so an unchanged sequence means that slot, and so
// the record, still belong to the flow. An unchanged word means its state,
// expiry and translations (fixed while live) are as the Result says.

// Hint is where TrackExistingHint found a flow. Its zero value names
// none; Still reports false for it.
type Hint struct {
	shard *shard
	rec   *record
	seq   uint64
	word  uint64
	now   Time
	flags uint8 // the TCP flags that step looks at
	dir   Dir
	// absent: the tuple had no flow; it has none while the shard's
	// sequence stays (an insert of its flow bumps it).
	absent bool
}

// stepFlags are the TCP flags the state machine tells packets apart by
// (tcpClass).
const stepFlags = packet.TCPFlagRST | packet.TCPFlagSYN | packet.TCPFlagFIN | packet.TCPFlagACK

// Valid reports whether h names a flow.
func (h *Hint) Valid() bool { return h.rec != nil }

// Absent reports whether h records that its tuple had no flow.
func (h *Hint) Absent() bool { return h.absent }

// StillAbsent reports whether the tuple h was made for (Absent) still
// has no flow: no slot was inserted in its shard since.
func (t *Table) StillAbsent(h *Hint) bool {
	return h.absent && h.shard.seq.Load() == h.seq
}

// TrackExistingHint is TrackExisting that also fills h when the packet
// left its flow's record unchanged (no state transition, no refresh due),
// or, Absent, when the tuple has no flow; it clears h otherwise.
func (t *Table) TrackExistingHint(k Tuple, flags uint8, now Time, h *Hint) (res Result, found bool, err error) {
	res, err, found = t.trackFound(k, k.hash(t.seed), flags, now, h)
	return res, found, err
}

// Still reports whether a packet with TCP flags at now, of the tuple h was
// made for, would find its flow exactly as h saw it, and leave it so: then
// the Result that came with h is the packet's Result, and nothing in the
// table needs to change. When it reports false the caller tracks the
// packet in full (TrackExistingHint).
//
// What a packet does to a flow (step) depends only on the flow's word,
// the direction, the protocol, the flags' class and the time in whole
// seconds. So a packet of h's tuple with the same flags in the same
// second as the one that made h, finding the same word in the same
// record, does what that packet did: nothing.
func (t *Table) Still(h *Hint, flags uint8, now Time) bool {
	if h.rec == nil || now != h.now || flags&stepFlags != h.flags {
		return false
	}
	return h.rec.word.Load() == h.word && h.shard.seq.Load() == h.seq
}
