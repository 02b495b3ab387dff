// Package tunfd holds the descriptor handling that the tap and tun devices
// share: duplicating a /dev/net/tun descriptor handed over as an *os.File,
// and the persist flag.
package tunfd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Dup returns a close-on-exec duplicate of f's descriptor, the caller's to
// close; f is untouched.
func Dup(f *os.File) (int, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := sc.Control(func(raw uintptr) {
		fd, derr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return fd, nil
}

// SetPersist sets (on) or clears TUNSETPERSIST on fd: a persistent device
// outlives its last descriptor.
func SetPersist(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, v); err != nil {
		return fmt.Errorf("TUNSETPERSIST %d: %w", v, err)
	}
	return nil
}
