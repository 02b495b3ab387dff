// Package relaybuf holds what netstack relays share (netstackx/egress,
// pods' flows to host sockets, and netstackx/ingress, host sockets' flows
// to pods): idle flows hold no buffers. A relay waits until its source
// has data, then borrows a buffer from a pool for one read and one write.
// A node with ten thousand mostly idle connections then pays for goroutine
// stacks and gVisor's queued data, not for 2 x 64 KiB per connection.
package relaybuf

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
)

// Size fits any datagram and is a good TCP copy size.
const Size = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, Size); return &b }}

// Get borrows a Size buffer from the pool; Put returns it.
func Get() *[]byte  { return bufPool.Get().(*[]byte) }
func Put(b *[]byte) { bufPool.Put(b) }

// Read waits for data on c (WaitData), then reads it into a buffer from
// the pool. bp is nil when the wait failed; otherwise the caller puts it
// back, whatever n and err are.
func Read(c net.Conn) (bp *[]byte, n int, err error) {
	if err := WaitData(c); err != nil {
		return nil, 0, err
	}
	bp = Get()
	n, err = c.Read(*bp)
	return bp, n, err
}

// WaitData blocks until a read on c would not block (data, EOF or an
// error is pending), without a buffer, and returns the socket error it
// found, if any: the peek consumes it (SO_ERROR), so the caller takes it as
// its read's error. It peeks rather than just waiting for readiness
// because the netpoller is edge-triggered and data left by an earlier short
// read raises no new edge. For connections that are not sockets it
// returns at once (the caller's Read then blocks with its buffer).
func WaitData(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var one [1]byte
	var serr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			return false
		}
		serr = err
		return true
	})
	if serr != nil {
		return &net.OpError{Op: "read", Net: "peek", Err: os.NewSyscallError("recvfrom", serr)}
	}
	return err // the connection was closed meanwhile
}
