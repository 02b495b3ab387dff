package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/packet"
)

// Pod is a lab pod, virtual or a network namespace: what the checks need.
// Its sockets (Dial*, Listen*) are the pod's own, whatever goroutine uses
// them.
type Pod interface {
	Name() string
	Addr() netip.Addr
	Addr6() netip.Addr // zero without IPv6
	MAC() net.HardwareAddr
	// Ping sends one ICMP echo request of size payload bytes and waits for
	// the reply, as long as ctx allows.
	Ping(ctx context.Context, dst netip.Addr, size int) (time.Duration, error)
	DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	DialUDP(dst netip.AddrPort) (net.Conn, error)
	ListenTCP(port uint16) (net.Listener, error)
	ListenUDP(port uint16) (net.PacketConn, error)
	Close() error
}

var _ Pod = (*netstackx.Pod)(nil)

// podSpec is one pod to build.
type podSpec struct {
	Name              string
	Addr, Addr6       netip.Prefix
	Gateway, Gateway6 netip.Addr
	MTU               int
}

func (s podSpec) addrs() []netip.Addr {
	a := []netip.Addr{s.Addr.Addr()}
	if s.Addr6.IsValid() {
		a = append(a, s.Addr6.Addr())
	}
	return a
}

// newPod builds a pod of the lab's mode and attaches it to n's engine.
func (l *Lab) newPod(n *Node, s podSpec) (Pod, error) {
	if l.cfg.PodMode == Netns {
		return l.env.newPod(n, s)
	}
	pod, err := netstackx.NewPod(netstackx.PodConfig{
		Name: s.Name, Addr: s.Addr, Gateway: s.Gateway, Addr6: s.Addr6, Gateway6: s.Gateway6, MTU: s.MTU,
	})
	if err != nil {
		return nil, err
	}
	if _, err := n.Eng.AddPort(pod.Device(), engine.PortConfig{
		Name: s.Name, Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(pod.MAC()), MTU: s.MTU, Addrs: s.addrs(),
	}); err != nil {
		_ = pod.Close()
		return nil, fmt.Errorf("attach %s: %w", s.Name, err)
	}
	return pod, nil
}
