package ingress

// Idle flows hold no buffers: a relay waits until its source has data,
// then borrows a buffer from a pool for one read and one write (as
// egress's buf.go).

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
)

// bufSize fits any datagram and is a good TCP copy size.
const bufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// readBuf waits for data on c (waitData), then reads it into a buffer from
// the pool. bp is nil when the wait failed; otherwise the caller puts it
// back, whatever n and err are.
func readBuf(c *net.TCPConn) (bp *[]byte, n int, err error) {
	if err := waitData(c); err != nil {
		return nil, 0, err
	}
	bp = getBuf()
	n, err = c.Read(*bp)
	return bp, n, err
}

// waitData blocks until a read on c would not block (data, EOF or an
// error pending) without holding a buffer, and returns the socket error it
// found, if any (the peek consumes it). It peeks rather than waiting for
// readiness because the netpoller is edge-triggered: data left by an
// earlier short read raises no new edge.
func waitData(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
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
	return err
}
