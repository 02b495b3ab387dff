package cni

// The pod side: eth0 as a persistent TAP inside the pod's netns.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// podIf is what ADD configures on the pod's interface.
type podIf struct {
	name   string
	mac    packet.MAC
	mtu    int
	ips    []*current.IPConfig // Address with the podCIDR's mask, Gateway set
	routes []netip.Prefix      // destinations via their family's gateway
	gw4    netip.Addr
	gw6    netip.Addr
}

// tapFile returns a descriptor of dev's TAP for the daemon: dev's own (a
// duplicate) when the tap package hands it out, else a new descriptor
// attached to the same persistent TAP by name, after dev is closed (the
// persistent device stays). It runs inside the pod's netns, where the name
// is looked up. dev is closed either way.
func tapFile(dev *tap.Device) (*os.File, error) {
	if d, ok := any(dev).(interface{ File() (*os.File, error) }); ok {
		f, err := d.File()
		_ = dev.Close()
		return f, err
	}
	name := dev.Name()
	if err := dev.Close(); err != nil {
		return nil, fmt.Errorf("close TAP %s: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	// The flags tap.Create gave the device; the daemon's tap.FromFile
	// checks them and negotiates the offloads on its descriptor.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("attach to TAP %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// errIfExists: the pod's netns already has an interface of the name ADD
// was asked to create (another container's, or the one an earlier ADD
// made). ADD fails and leaves it alone.
var errIfExists = errors.New("interface already exists in the netns")

// setupPodIf creates and configures the pod's interface inside netns and
// returns a descriptor of its TAP for the daemon, and the interface's
// index. On error nothing it created is left in the netns, and an
// interface of that name that was there before (errIfExists) is not
// touched.
func setupPodIf(netns ns.NetNS, pi *podIf) (f *os.File, index int, err error) {
	err = netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
		if l, err := netlink.LinkByName(pi.name); err == nil {
			return fmt.Errorf("%w: %s (a %s, index %d)", errIfExists, pi.name, l.Type(), l.Attrs().Index)
		}
		dev, err := tap.Create(pi.name, tap.Config{MTU: pi.mtu, Persist: true})
		if err != nil {
			return fmt.Errorf("create TAP %s: %w", pi.name, err)
		}
		// The TAP is this call's from here: look it up once, by name
		// right after its creation, and delete it by index on failure.
		l, err := netlink.LinkByName(pi.name)
		if err != nil {
			_ = dev.SetPersist(false) // the kernel deletes it with the fd
			_ = dev.Close()
			return fmt.Errorf("look up the new TAP %s: %w", pi.name, err)
		}
		success := false
		defer func() {
			if !success {
				_ = dev.Close()
				_ = netlink.LinkDel(l)
			}
		}()
		file, err := tapFile(dev)
		if err != nil {
			return err
		}
		if err := configureLink(l, pi); err != nil {
			_ = file.Close()
			return err
		}
		f, index = file, l.Attrs().Index
		success = true
		return nil
	})
	return f, index, err
}

func configureLink(l netlink.Link, pi *podIf) error {
	if err := netlink.LinkSetHardwareAddr(l, net.HardwareAddr(pi.mac[:])); err != nil {
		return fmt.Errorf("%s: set MAC %s: %w", pi.name, pi.mac, err)
	}
	if err := netlink.LinkSetMTU(l, pi.mtu); err != nil {
		return fmt.Errorf("%s: set MTU %d: %w", pi.name, pi.mtu, err)
	}
	for _, ipc := range pi.ips {
		a := &netlink.Addr{IPNet: &ipc.Address}
		if ipc.Address.IP.To4() == nil {
			// The engine answers NDP for the whole podCIDR: nothing
			// to detect, and no second of DAD before the pod can talk.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("%s: add address %s: %w", pi.name, ipc.Address.String(), err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: set up: %w", pi.name, err)
	}
	for _, dst := range pi.routes {
		gw := pi.gw4
		if dst.Addr().Is6() {
			gw = pi.gw6
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: route.IPNet(dst), Gw: gw.AsSlice()}
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: route %s via %s: %w", pi.name, dst, gw, err)
		}
	}
	return nil
}

// deleteLinkIndex deletes the interface with index in netns: the rollback
// of an ADD that created it.
func deleteLinkIndex(netns ns.NetNS, index int) error {
	return netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(index)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
}

// deletePodIf deletes the pod's TAP in the netns at path. A missing netns
// or interface is not an error (DEL is idempotent); an interface of that
// name that is not a TAP is left alone.
func deletePodIf(path, name string) error {
	if path == "" {
		return nil
	}
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return err
		}
		if _, ok := l.(*netlink.Tuntap); !ok {
			return nil
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	})
	if netnsGone(err) {
		return nil
	}
	return err
}

// netnsGone reports whether err says the netns path is not (or no longer)
// a network namespace.
func netnsGone(err error) bool {
	var notNS ns.NSPathNotNSErr
	var noNS ns.NSPathNotExistErr
	return errors.As(err, &notNS) || errors.As(err, &noNS)
}
