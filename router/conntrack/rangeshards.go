package conntrack

import "sync/atomic"

// RangeShards calls fn with a snapshot of every live flow at time now, one
// index shard at a time, until fn returns false: it copies one shard's
// flows under that shard's read lock, then calls fn for them with no lock
// held (fn may call the table). Lookups never wait for it; inserts and
// deletes that hash to the shard being copied wait for one shard's copy
// at most (about MaxEntries/Shards flows), unlike Range, which holds the
// table's writer lock per slab chunk. Each flow is reported once, from its
// original tuple's slot; flows created or removed meanwhile may or may not
// be seen. It allocates one buffer per call, reused across shards.
func (t *Table) RangeShards(now Time, fn func(Flow) bool) {
	var buf []Flow
	for si := range t.shards {
		s := &t.shards[si]
		buf = buf[:0]
		s.mu.RLock()
		tab := s.tab.Load()
		for i := range tab.s {
			v := atomic.LoadUint64(&tab.s[i])
			if v == 0 {
				continue
			}
			rec := t.rec(uint32(v))
			w := rec.word.Load()
			if w&wLive == 0 || w&wDying != 0 || expired(w, now) {
				continue
			}
			k := rec.orig()
			if h := k.hash(t.seed); t.shardOf(h) != s || uint32(h>>32) != uint32(v>>32) {
				continue // the NAT reply tuple's slot: reported from the original's
			}
			buf = append(buf, t.flowOf(uint32(v), w))
		}
		s.mu.RUnlock()
		for _, f := range buf {
			if !fn(f) {
				return
			}
		}
	}
}
