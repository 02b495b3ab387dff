package underlay

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr: a msghdr and the byte count the kernel fills
// in. Go pads it to the alignment of Msghdr, as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sendmmsg sends the messages hs on the non-blocking socket fd and returns
// how many went. The iovecs' buffers must stay reachable (they do: the
// messages hold the pointers) and unmoved (Go's heap does not move).
func sendmmsg(fd int, hs []mmsghdr) (int, syscall.Errno) {
	r, _, e := syscall.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), 0, 0, 0)
	return int(r), e
}

// recvmmsg receives up to len(hs) datagrams on the non-blocking socket fd
// and returns how many arrived.
func recvmmsg(fd int, hs []mmsghdr) (int, syscall.Errno) {
	r, _, e := syscall.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), 0, 0, 0)
	return int(r), e
}

// putSegmentCmsg writes a UDP_SEGMENT control message (the GSO segment
// size) into b, which is CmsgSpace(2) bytes.
func putSegmentCmsg(b []byte, size uint16) {
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[unix.CmsgLen(0)])) = size
}
