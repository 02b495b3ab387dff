// Package linktest provides in-memory link.Devices for tests and
// benchmarks: a pipe whose two ends are devices, so a test can play the
// host behind an engine port, or two engines can be joined in one process.
package linktest

import (
	"sync"

	"github.com/podrouter/podrouter/router/link"
)

// End is one end of a Pipe. Packets written to one end are read from the
// other. It implements link.Device.
type End struct {
	rx    *queue // what this end reads
	tx    *queue // what this end writes (the peer's rx)
	batch int
}

var _ link.Device = (*End)(nil)

// Pipe returns two joined ends. Each direction buffers up to capacity
// packets of at most maxPacket bytes; beyond that, Write drops and counts.
func Pipe(capacity, maxPacket, batch int) (*End, *End) {
	a2b, b2a := newQueue(capacity, maxPacket), newQueue(capacity, maxPacket)
	return &End{rx: b2a, tx: a2b, batch: batch}, &End{rx: a2b, tx: b2a, batch: batch}
}

// Read implements link.Device.
func (e *End) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return e.rx.read(bufs, sizes, offset)
}

// Write implements link.Device.
func (e *End) Write(bufs [][]byte, offset int) (int, error) {
	return e.tx.write(bufs, offset)
}

// BatchSize implements link.Device.
func (e *End) BatchSize() int { return e.batch }

// Close closes both directions: the peer reads and writes ErrClosed too.
func (e *End) Close() error {
	e.rx.close()
	e.tx.close()
	return nil
}

// Dropped returns how many packets written to this end were dropped because
// the queue toward the peer was full or a packet was too large.
func (e *End) Dropped() uint64 {
	e.tx.mu.Lock()
	defer e.tx.mu.Unlock()
	return e.tx.dropped
}

// queue is a bounded FIFO of packet copies with preallocated slots.
type queue struct {
	mu      sync.Mutex
	cond    sync.Cond
	slots   [][]byte
	lens    []int
	head, n int
	closed  bool
	dropped uint64
}

func newQueue(capacity, maxPacket int) *queue {
	q := &queue{slots: make([][]byte, capacity), lens: make([]int, capacity)}
	for i := range q.slots {
		q.slots[i] = make([]byte, maxPacket)
	}
	q.cond.L = &q.mu
	return q
}

func (q *queue) write(bufs [][]byte, offset int) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, link.ErrClosed
	}
	for _, b := range bufs {
		p := b[offset:]
		if q.n == len(q.slots) || len(p) > len(q.slots[0]) {
			q.dropped++
			continue
		}
		i := (q.head + q.n) % len(q.slots)
		q.lens[i] = copy(q.slots[i], p)
		q.n++
	}
	q.cond.Signal()
	return len(bufs), nil
}

func (q *queue) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
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
			q.dropped++ // the reader's buffer is too small: drop, never truncate
		} else {
			sizes[k] = copy(bufs[k][offset:], q.slots[i][:q.lens[i]])
			k++
		}
		q.head = (q.head + 1) % len(q.slots)
		q.n--
	}
	if k == 0 {
		return q.readMore(bufs, sizes, offset)
	}
	return k, nil
}

// readMore waits again after every queued packet was dropped.
func (q *queue) readMore(bufs [][]byte, sizes []int, offset int) (int, error) {
	q.mu.Unlock()
	defer q.mu.Lock()
	return q.read(bufs, sizes, offset)
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}
