package lab

// Netns pods: a network namespace per pod (router/tempns, named
// podr-<pid>-<pod>-<n>), whose eth0 is a TAP device held by the engine,
// configured as a CNI plugin would (addresses, default routes via the
// node's gateway). The pod's sockets are opened on a thread switched into
// its namespace, and keep it.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/tempns"
)

// ErrPrivileges means netns pods cannot be built here.
var ErrPrivileges = errors.New("netns pods need root (CAP_NET_ADMIN, CAP_SYS_ADMIN), /dev/net/tun and the ip command")

// netnsEnv builds and removes the lab's namespaces.
type netnsEnv struct {
	log *zap.Logger
}

func newNetnsEnv(log *zap.Logger) (*netnsEnv, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not root", ErrPrivileges)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrivileges, err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrivileges, err)
	}
	_ = tempns.Sweep() // leftovers of labs (and tests, benchmarks) that are gone
	return &netnsEnv{log: log}, nil
}

func (e *netnsEnv) close() error { return nil }

// nsPod is a netns pod.
type nsPod struct {
	name        string
	ns          *tempns.NS
	addr, addr6 netip.Addr
	mac         net.HardwareAddr
}

var _ Pod = (*nsPod)(nil)

// newPod creates the pod's namespace and TAP, configures it and attaches
// the TAP to n's engine.
func (e *netnsEnv) newPod(n *Node, s podSpec) (Pod, error) {
	p := &nsPod{name: s.Name, addr: s.Addr.Addr()}
	if s.Addr6.IsValid() {
		p.addr6 = s.Addr6.Addr()
	}
	var dev *tap.Device
	// eth0 runs inside the namespace: the TAP with the pod's addresses and
	// default routes.
	eth0 := func() error {
		var err error
		if dev, err = tap.Create("eth0", tap.Config{MTU: s.MTU, Logger: e.log.With(zap.String("pod", s.Name))}); err != nil {
			return err
		}
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		p.mac = eth.Attrs().HardwareAddr
		for _, a := range []netip.Prefix{s.Addr, s.Addr6} {
			if !a.IsValid() {
				continue
			}
			na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
			if a.Addr().Is6() {
				na.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(eth, na); err != nil {
				return fmt.Errorf("address %s: %w", a, err)
			}
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return fmt.Errorf("eth0 up: %w", err)
		}
		for _, gw := range []netip.Addr{s.Gateway, s.Gateway6} {
			if !gw.IsValid() {
				continue
			}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	}
	// A failed setup closes the TAP; tempns.New then deletes the namespace.
	ns, err := tempns.New(s.Name, func(ns *tempns.NS) error {
		err := ns.Do(eth0)
		if err != nil && dev != nil {
			_ = dev.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", s.Name, err)
	}
	p.ns = ns
	if _, err := n.Eng.AddPort(dev, engine.PortConfig{
		Name: s.Name, Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(p.mac), MTU: s.MTU, Addrs: s.addrs(),
	}); err != nil {
		_ = dev.Close()
		_ = p.Close()
		return nil, fmt.Errorf("attach %s: %w", s.Name, err)
	}
	return p, nil
}

func (p *nsPod) Name() string          { return p.name }
func (p *nsPod) Addr() netip.Addr      { return p.addr }
func (p *nsPod) Addr6() netip.Addr     { return p.addr6 }
func (p *nsPod) MAC() net.HardwareAddr { return p.mac }

// NetNS returns the name of the pod's network namespace (ip netns).
func (p *nsPod) NetNS() string { return p.ns.Name() }

func (p *nsPod) DialTCP(ctx context.Context, dst netip.AddrPort) (c net.Conn, err error) {
	err = p.ns.Do(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	return c, err
}

func (p *nsPod) DialUDP(dst netip.AddrPort) (c net.Conn, err error) {
	err = p.ns.Do(func() error {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	return c, err
}

func (p *nsPod) ListenTCP(port uint16) (ln net.Listener, err error) {
	err = p.ns.Do(func() error {
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		return err
	})
	return ln, err
}

func (p *nsPod) ListenUDP(port uint16) (c net.PacketConn, err error) {
	err = p.ns.Do(func() error {
		c, err = net.ListenPacket("udp", ":"+strconv.Itoa(int(port)))
		return err
	})
	return c, err
}

// Ping sends an ICMP echo request from a raw socket in the pod.
func (p *nsPod) Ping(ctx context.Context, dst netip.Addr, size int) (time.Duration, error) {
	network, laddr := "ip4:icmp", "0.0.0.0"
	typ, reply := byte(packet.ICMPv4Echo), byte(packet.ICMPv4EchoReply)
	if dst.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
		typ, reply = packet.ICMPv6EchoRequest, packet.ICMPv6EchoReply
	}
	var c net.PacketConn
	if err := p.ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	id, seq := binary.BigEndian.Uint16(idb[:2]), binary.BigEndian.Uint16(idb[2:])
	msg := make([]byte, 8+size)
	msg[0] = typ
	binary.BigEndian.PutUint16(msg[4:6], id)
	binary.BigEndian.PutUint16(msg[6:8], seq)
	if dst.Is4() { // the kernel sums ICMPv6 itself
		binary.BigEndian.PutUint16(msg[2:4], ^packet.Checksum(msg, 0))
	}
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, err
	}
	buf := make([]byte, 65536)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("ping %s: %w", dst, ctx.Err())
			}
			return 0, err
		}
		b := buf[:n]
		if len(b) >= 8 && b[0] == reply && binary.BigEndian.Uint16(b[4:6]) == id && binary.BigEndian.Uint16(b[6:8]) == seq {
			return time.Since(start), nil
		}
	}
}

// Close deletes the pod's namespace (with every process in it). The TAP
// goes with it; the engine closes its descriptor. Idempotent.
func (p *nsPod) Close() error { return p.ns.Delete() }
