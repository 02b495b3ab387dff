// Package uring moves batches of frames to and from TAP descriptors with
// one io_uring_enter(2) per batch instead of one write(2) or readv(2) per
// frame.
//
// A TAP descriptor takes one frame per write, so a batch of 64 frames costs
// 64 system calls, and after each the writer may be switched out for the pod
// its frame woke. On a machine where a system call is costly (a
// paravirtualised guest) that is most of a small packet's cost. One ring
// submits the whole batch: the kernel performs the writes one after the
// other inside a single call, each exactly as write(2) would (the TAP
// descriptor is non-blocking and always writable, so none is deferred), and
// the receiver is woken once per batch, not once per frame. Reads are the
// same with RWF_NOWAIT, so the reads that find the queue empty complete in
// the same call instead of waiting.
//
// Writers share a pool of rings: a writer takes one for a batch and gives
// it back, so there are about as many rings as writers running at once; a
// device's reader keeps a ring of its own (New). Where io_uring is missing
// or refused (an old kernel, kernel.io_uring_disabled, a seccomp profile)
// Get returns nil, New an error, and the devices move frame by frame;
// PODROUTER_URING=0 forces that fallback.
package uring

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Entries is a ring's submission queue size, the most frames one
// io_uring_enter submits; WriteBatch splits larger batches.
const Entries = 64

const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	opReadv        = 1  // IORING_OP_READV
	opWrite        = 23 // IORING_OP_WRITE
	enterGetEvents = 1  // IORING_ENTER_GETEVENTS
	featSingleMmap = 1  // IORING_FEAT_SINGLE_MMAP

	maxIdle = 64 // rings kept in the pool beyond that are closed
)

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// params is struct io_uring_params.
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

// sqe is struct io_uring_sqe (64 bytes).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

// cqe is struct io_uring_cqe (16 bytes; rings are not set up with CQE32).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// Ring is one io_uring instance used for batches of writes by one writer
// at a time (take it with Get, give it back with Put).
type Ring struct {
	fd     int
	sqRing []byte
	cqRing []byte // nil when the kernel maps both queues together
	sqeMem []byte

	sqTail, sqHead *uint32
	sqMask         uint32
	sqArray        []uint32
	sqes           []sqe
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []cqe

	res    [Entries]int32
	broken bool // an io_uring_enter failed: closed by Put

	// Frames is scratch for the batch a writer is building (capacity
	// Entries), so that building one allocates nothing.
	Frames [][]byte
}

var (
	probeOnce sync.Once
	probeErr  error

	poolMu sync.Mutex
	pool   []*Ring

	fallback atomic.Bool
)

// Available reports whether batched writes are in use, and if not, why.
func Available() error {
	probeOnce.Do(func() {
		if v := os.Getenv("PODROUTER_URING"); v == "0" || v == "off" || v == "false" {
			probeErr = errors.New("disabled by PODROUTER_URING")
			return
		}
		r, err := newRing()
		if err != nil {
			probeErr = err
			return
		}
		Put(r)
	})
	return probeErr
}

// Get returns a ring from the pool (a new one when the pool is empty), or
// nil when io_uring cannot be used (see Available).
func Get() *Ring {
	if fallback.Load() || Available() != nil {
		return nil
	}
	poolMu.Lock()
	if n := len(pool); n > 0 {
		r := pool[n-1]
		pool = pool[:n-1]
		poolMu.Unlock()
		return r
	}
	poolMu.Unlock()
	r, err := newRing()
	if err != nil {
		return nil // out of descriptors or memory: the caller writes frame by frame
	}
	return r
}

// Put gives r back to the pool.
func Put(r *Ring) {
	if r == nil {
		return
	}
	poolMu.Lock()
	if !r.broken && len(pool) < maxIdle {
		pool = append(pool, r)
		r = nil
	}
	poolMu.Unlock()
	if r != nil {
		r.close()
	}
}

// New returns a ring of the caller's own, outside the pool (a device's
// reader keeps one), or why there is none (see Available).
func New() (*Ring, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if fallback.Load() {
		return nil, errors.New("io_uring turned off (SetFallback)")
	}
	return newRing()
}

// Close releases a ring from New. Operations in flight finish first (in
// the kernel), but none is: every call waits for its own.
func (r *Ring) Close() { r.close() }

// Release closes the rings idle in the pool (tests counting descriptors
// call it; later Gets make new ones).
func Release() {
	poolMu.Lock()
	idle := pool
	pool = nil
	poolMu.Unlock()
	for _, r := range idle {
		r.close()
	}
}

// SetFallback makes Get return nil (on) or rings again (off), and returns
// the previous setting: tests use it to exercise the frame-by-frame path.
func SetFallback(on bool) bool { return fallback.Swap(on) }

func newRing() (*Ring, error) {
	var p params
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, Entries, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd), Frames: make([][]byte, 0, Entries)}
	unix.CloseOnExec(r.fd)
	if err := r.mmap(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *Ring) mmap(p *params) error {
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(cqe{})))
	single := p.features&featSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqRing, err = unix.Mmap(r.fd, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring mmap SQ ring: %w", err)
	}
	cq := r.sqRing
	if !single {
		if r.cqRing, err = unix.Mmap(r.fd, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			return fmt.Errorf("io_uring mmap CQ ring: %w", err)
		}
		cq = r.cqRing
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(sqe{}))
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring mmap SQEs: %w", err)
	}
	r.sqHead = (*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&cq[p.cqOff.cqes])), p.cqEntries)
	if p.sqEntries < Entries || p.cqEntries < Entries {
		return fmt.Errorf("io_uring: %d/%d entries, want %d", p.sqEntries, p.cqEntries, Entries)
	}
	return nil
}

func (r *Ring) close() {
	for _, m := range [][]byte{r.sqeMem, r.cqRing, r.sqRing} {
		if m != nil {
			_ = unix.Munmap(m)
		}
	}
	_ = unix.Close(r.fd)
}

// WriteBatch writes each of frames (at most Entries) to fd as write(2)
// would, with one io_uring_enter, and returns once all have completed:
// res[i] is frame i's byte count or, when negative, its errno. The frames
// must be heap memory. An error is io_uring_enter's own; the frames it
// leaves without a result have -EIO. res is the ring's: read it before
// giving the ring back.
func (r *Ring) WriteBatch(fd int, frames [][]byte) (res []int32, err error) {
	return batch(r, opWrite, 0, fd, frames)
}

// ReadvBatch queues one readv(2) of fd per iovec list (at most Entries
// lists) and returns once all have completed, with one io_uring_enter:
// res[i] is list i's byte count or negative errno, as WriteBatch. The reads
// are RWF_NOWAIT: one that finds nothing completes at once with -EAGAIN
// instead of waiting for data (a descriptor that cannot honour that gives
// -EOPNOTSUPP). The kernel performs the reads in order, so the data read is
// in list order. The iovecs and what they point to must be heap memory.
func (r *Ring) ReadvBatch(fd int, iovs [][]unix.Iovec) (res []int32, err error) {
	return batch(r, opReadv, unix.RWF_NOWAIT, fd, iovs)
}

// batch submits one op per item (its address and length: a frame's bytes,
// or an iovec list) and waits for all.
func batch[T any](r *Ring, op uint8, rwFlags uint32, fd int, items [][]T) ([]int32, error) {
	if len(items) > Entries {
		return nil, fmt.Errorf("io_uring: %d operations in one batch (at most %d)", len(items), Entries)
	}
	tail := atomic.LoadUint32(r.sqTail)
	for i, v := range items {
		var addr uint64
		if len(v) > 0 {
			addr = uint64(uintptr(unsafe.Pointer(&v[0])))
		}
		r.queue(tail, i, op, fd, addr, uint32(len(v)), rwFlags)
	}
	err := r.run(tail, uint32(len(items)))
	runtime.KeepAlive(items)
	return r.res[:len(items)], err
}

// queue fills the i-th entry after tail (user data i; offset -1: the
// descriptor's current position, as read(2) and write(2)).
func (r *Ring) queue(tail uint32, i int, op uint8, fd int, addr uint64, n, rwFlags uint32) {
	idx := (tail + uint32(i)) & r.sqMask
	r.sqes[idx] = sqe{opcode: op, fd: int32(fd), off: ^uint64(0), addr: addr, len: n, rwFlags: rwFlags, userData: uint64(i)}
	r.sqArray[idx] = idx
	r.res[i] = -int32(unix.EIO)
}

// run submits the n entries queued after tail and waits until all have
// completed, their results in r.res.
func (r *Ring) run(tail, n uint32) error {
	atomic.StoreUint32(r.sqTail, tail+n)
	var reaped uint32
	var err error
	busy := 0
	for reaped < n {
		toSubmit := atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(n-reaped), enterGetEvents, 0, 0)
		reaped += r.reap()
		switch errno {
		case 0, unix.EINTR:
			continue
		case unix.EAGAIN, unix.EBUSY: // short of memory or completion space for now
			if busy++; busy < 1000 {
				continue
			}
		}
		err = fmt.Errorf("io_uring_enter: %w", errno)
		break
	}
	if err != nil {
		// Operations the kernel has not completed may still read their frames:
		// the ring is not used again (Put closes it, and closing waits for
		// them in the kernel).
		r.broken = true
	}
	return err
}

// reap moves completions to r.res and returns how many there were.
func (r *Ring) reap() uint32 {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		c := &r.cqes[h&r.cqMask]
		if c.userData < Entries {
			r.res[c.userData] = c.res
		}
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}
