package conntrack

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// shard is one part of the flow index: an open-addressing hash table with
// linear probing whose 8-byte slots hold the upper 32 bits of a key's hash
// and a record reference (index+1; 0 is an empty slot). The key itself
// lives in the record, so a slot costs 8 bytes, not a Go map's ~70 per
// entry, and holds no pointer for the GC to scan.
//
// Concurrency: only the table's single writer (Table.wmu) changes a shard,
// and it does so holding mu.Lock, with seq odd. Readers on the fast path
// take no lock: they read seq, probe with atomic loads, read the record
// with atomic loads, and retry when seq changed meanwhile (a seqlock). A
// reader that must update a record instead holds mu.RLock, which keeps
// every record it can reach from being freed.
type shard struct {
	seq atomic.Uint64
	tab atomic.Pointer[slots]
	mu  sync.RWMutex
	n   int // occupied slots; writer only
	_   [16]byte
}

type slots struct {
	s    []uint64
	mask uint32
}

const (
	minShardSlots = 64
	// maxLoadNum/maxLoadDen bounds the load factor before the shard doubles.
	maxLoadNum, maxLoadDen = 3, 4
)

func (s *shard) init() {
	s.tab.Store(&slots{s: make([]uint64, minShardSlots), mask: minShardSlots - 1})
}

func slot(h32, ref uint32) uint64 { return uint64(h32)<<32 | uint64(ref) }

// readBegin returns an even sequence number to validate reads against,
// waiting out a writer.
func (s *shard) readBegin() uint64 {
	for spins := 0; ; spins++ {
		v := s.seq.Load()
		if v&1 == 0 {
			return v
		}
		if spins > 16 {
			runtime.Gosched() // the writer may need this CPU
		}
	}
}

// writeBegin and writeEnd bracket a change of the slots; the caller is the
// writer.
func (s *shard) writeBegin() { s.mu.Lock(); s.seq.Add(1) }
func (s *shard) writeEnd()   { s.seq.Add(1); s.mu.Unlock() }

// insert adds (h32, ref); the caller is the writer and has checked that the
// key is absent.
func (s *shard) insert(h32, ref uint32) {
	t := s.tab.Load()
	if (s.n+1)*maxLoadDen > len(t.s)*maxLoadNum {
		// Build the bigger table while readers go on with the old one.
		nt := &slots{s: make([]uint64, 2*len(t.s))}
		nt.mask = uint32(len(nt.s) - 1)
		for _, v := range t.s {
			if v != 0 {
				nt.place(v)
			}
		}
		t = nt
		s.writeBegin()
		s.tab.Store(nt)
		t.place(slot(h32, ref))
		s.writeEnd()
	} else {
		s.writeBegin()
		t.place(slot(h32, ref))
		s.writeEnd()
	}
	s.n++
}

func (t *slots) place(v uint64) {
	i := uint32(v>>32) & t.mask
	for atomic.LoadUint64(&t.s[i]) != 0 {
		i = (i + 1) & t.mask
	}
	atomic.StoreUint64(&t.s[i], v)
}

// remove deletes the slot (h32, ref), keeping every probe chain intact by
// shifting later entries back (no tombstones). The caller is the writer.
// It reports whether the slot was there.
func (s *shard) remove(h32, ref uint32) bool {
	t := s.tab.Load()
	want := slot(h32, ref)
	i := h32 & t.mask
	for {
		v := atomic.LoadUint64(&t.s[i])
		if v == 0 {
			return false
		}
		if v == want {
			break
		}
		i = (i + 1) & t.mask
	}
	s.writeBegin()
	// Backward shift: move each following entry of the cluster into the
	// hole unless its home position lies cyclically in (hole, j].
	j := i
	for {
		j = (j + 1) & t.mask
		v := atomic.LoadUint64(&t.s[j])
		if v == 0 {
			break
		}
		home := uint32(v>>32) & t.mask
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			atomic.StoreUint64(&t.s[i], v)
			i = j
		}
	}
	atomic.StoreUint64(&t.s[i], 0)
	s.writeEnd()
	s.n--
	return true
}
