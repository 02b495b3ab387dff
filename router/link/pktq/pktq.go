// Package pktq is a bounded FIFO of packet copies in preallocated slots,
// for any number of writers and one reader: the in-process hand-over
// between two batch devices (linktest's pipes, the wireguard backend's
// queues to and from wireguard-go). Nothing allocates after New.
package pktq

import (
	"sync"

	"github.com/podrouter/podrouter/router/link"
)

// Queue is a bounded packet FIFO. Its methods are safe for concurrent use.
type Queue struct {
	mu      sync.Mutex
	cond    sync.Cond
	slots   [][]byte
	lens    []int
	head, n int
	closed  bool
	dropped uint64
}

// Written is what one Write did: the packets and bytes queued, and the
// packets dropped because the queue was full or a packet was larger than a
// slot.
type Written struct {
	Packets      int
	Bytes        uint64
	Full, TooBig uint64
}

// New returns a queue of capacity slots of maxPacket bytes each.
func New(capacity, maxPacket int) *Queue {
	q := &Queue{slots: make([][]byte, capacity), lens: make([]int, capacity)}
	for i := range q.slots {
		q.slots[i] = make([]byte, maxPacket)
	}
	q.cond.L = &q.mu
	return q
}

// Write copies each bufs[i][offset:] into a free slot; a packet that finds
// the queue full or is larger than a slot is dropped and counted. After
// Close it returns link.ErrClosed.
func (q *Queue) Write(bufs [][]byte, offset int) (Written, error) {
	var w Written
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return w, link.ErrClosed
	}
	for _, b := range bufs {
		p := b[offset:]
		switch {
		case len(p) > len(q.slots[0]):
			w.TooBig++
		case q.n == len(q.slots):
			w.Full++
		default:
			i := (q.head + q.n) % len(q.slots)
			q.lens[i] = copy(q.slots[i], p)
			q.n++
			w.Packets++
			w.Bytes += uint64(len(p))
		}
	}
	q.dropped += w.Full + w.TooBig
	if w.Packets > 0 {
		q.cond.Signal()
	}
	return w, nil
}

// Read blocks until a packet is queued, then moves up to len(bufs) of them
// to bufs[i][offset:], their lengths in sizes. A packet larger than the
// reader's buffer is dropped and counted, never truncated. After Close it
// returns what is still queued, then link.ErrClosed.
func (q *Queue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for q.n == 0 && !q.closed {
			q.cond.Wait()
		}
		if q.n == 0 {
			return 0, link.ErrClosed
		}
		k := 0
		for k < len(bufs) && q.n > 0 {
			i := q.head
			if q.lens[i] > len(bufs[k])-offset {
				q.dropped++
			} else {
				sizes[k] = copy(bufs[k][offset:], q.slots[i][:q.lens[i]])
				k++
			}
			q.head = (q.head + 1) % len(q.slots)
			q.n--
		}
		if k > 0 {
			return k, nil
		}
		// Every packet taken was too large: wait again.
	}
}

// Dropped returns how many packets the queue dropped: full, too large for
// a slot, or too large for the reader's buffer.
func (q *Queue) Dropped() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}

// Close wakes the reader; writes fail from now on.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}
