package egress

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// DialPing opens an unprivileged ICMP echo socket (SOCK_DGRAM,
// IPPROTO_ICMP or IPPROTO_ICMPV6) connected to dst. The kernel permits it
// to processes whose group is in net.ipv4.ping_group_range (both
// families); otherwise it fails with EACCES. It picks the echo identifier
// and fills the checksum of what is written. The socket is created in the
// calling thread's network namespace.
func DialPing(_ context.Context, dst netip.Addr) (net.Conn, error) {
	if !dst.IsValid() {
		return nil, &net.OpError{Op: "dial", Net: "ping", Err: syscall.EINVAL}
	}
	dst = dst.Unmap()
	family, proto := syscall.AF_INET6, syscall.IPPROTO_ICMPV6
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Addr: dst.As16()}
	if dst.Is4() {
		family, proto = syscall.AF_INET, syscall.IPPROTO_ICMP
		sa = &syscall.SockaddrInet4{Addr: dst.As4()}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "ping", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: os.NewSyscallError("socket", err)}
	}
	if err := syscall.Connect(fd, sa); err != nil {
		syscall.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "ping", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: os.NewSyscallError("connect", err)}
	}
	f := os.NewFile(uintptr(fd), "ping")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "ping", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: err}
	}
	return c, nil
}
