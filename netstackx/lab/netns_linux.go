package lab

// Netns pods: a network namespace per pod, named prl-<pid>-<pod>, whose
// eth0 is a TAP device held by the engine, configured as a CNI plugin
// would (addresses, default routes via the node's gateway). The pod's
// sockets are opened on a thread switched into its namespace, and keep it.

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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/packet"
)

// ErrPrivileges means netns pods cannot be built here.
var ErrPrivileges = errors.New("netns pods need root (CAP_NET_ADMIN, CAP_SYS_ADMIN), /dev/net/tun and the ip command")

const nsPrefix = "prl-"

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
	sweepNamespaces()
	return &netnsEnv{log: log}, nil
}

func (e *netnsEnv) close() error { return nil }

// sweepNamespaces removes namespaces of labs whose process is gone.
func sweepNamespaces() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			deleteNamespace(ent.Name())
		}
	}
}

// deleteNamespace kills what runs in the namespace and removes it.
func deleteNamespace(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for range 50 {
		if exec.Command("ip", "netns", "del", name).Run() == nil {
			return
		}
		if _, err := os.Stat("/run/netns/" + name); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inNS runs fn on a locked OS thread switched into h.
func inNS(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked (and dies with the goroutine) if it
		// cannot switch back.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("return to the original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// nsPod is a netns pod.
type nsPod struct {
	name, ns    string
	h           netns.NsHandle
	addr, addr6 netip.Addr
	mac         net.HardwareAddr
}

var _ Pod = (*nsPod)(nil)

// newPod creates the pod's namespace and TAP, configures it and attaches
// the TAP to n's engine.
func (e *netnsEnv) newPod(n *Node, s podSpec) (Pod, error) {
	name := fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), s.Name)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	p := &nsPod{name: s.Name, ns: name, addr: s.Addr.Addr()}
	if s.Addr6.IsValid() {
		p.addr6 = s.Addr6.Addr()
	}
	success := false
	defer func() {
		if !success {
			_ = p.Close()
		}
	}()
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	p.h = h
	var dev *tap.Device
	err = inNS(h, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
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
	})
	if err != nil {
		if dev != nil {
			_ = dev.Close()
		}
		return nil, fmt.Errorf("pod %s in %s: %w", s.Name, name, err)
	}
	if _, err := n.Eng.AddPort(dev, engine.PortConfig{
		Name: s.Name, Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(p.mac), MTU: s.MTU, Addrs: s.addrs(),
	}); err != nil {
		_ = dev.Close()
		return nil, fmt.Errorf("attach %s: %w", s.Name, err)
	}
	success = true
	return p, nil
}

func (p *nsPod) Name() string          { return p.name }
func (p *nsPod) Addr() netip.Addr      { return p.addr }
func (p *nsPod) Addr6() netip.Addr     { return p.addr6 }
func (p *nsPod) MAC() net.HardwareAddr { return p.mac }

// NetNS returns the name of the pod's network namespace (ip netns).
func (p *nsPod) NetNS() string { return p.ns }

func (p *nsPod) DialTCP(ctx context.Context, dst netip.AddrPort) (c net.Conn, err error) {
	err = inNS(p.h, func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	return c, err
}

func (p *nsPod) DialUDP(dst netip.AddrPort) (c net.Conn, err error) {
	err = inNS(p.h, func() error {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	return c, err
}

func (p *nsPod) ListenTCP(port uint16) (ln net.Listener, err error) {
	err = inNS(p.h, func() error {
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		return err
	})
	return ln, err
}

func (p *nsPod) ListenUDP(port uint16) (c net.PacketConn, err error) {
	err = inNS(p.h, func() error {
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
	if err := inNS(p.h, func() (err error) {
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
func (p *nsPod) Close() error {
	if p.h.IsOpen() {
		_ = p.h.Close()
		p.h = netns.None()
	}
	if p.ns != "" {
		deleteNamespace(p.ns)
		p.ns = ""
	}
	return nil
}
