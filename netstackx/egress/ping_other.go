//go:build !linux

package egress

import (
	"context"
	"net"
	"net/netip"
	"syscall"
)

// DialPing is only implemented on Linux; elsewhere echo requests are
// counted as PingUnsupported.
func DialPing(context.Context, netip.Addr) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "ping", Err: syscall.EPROTONOSUPPORT}
}
