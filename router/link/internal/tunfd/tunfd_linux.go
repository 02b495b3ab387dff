package tunfd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CloneDevice is the device every TUN and TAP descriptor is opened from.
const CloneDevice = "/dev/net/tun"

// Kind is a device kind as the package that opens it sees it: its flag, its
// name in messages and the sentinel errors it documents.
type Kind struct {
	Flag uint16 // unix.IFF_TAP or unix.IFF_TUN
	Name string // "tap" or "tun", the first word of error messages
	// ErrNot is for a name or descriptor that is not a single-queue device
	// of this kind, ErrBusy for a device another descriptor is attached to,
	// ErrConfig for an invalid name or configuration.
	ErrNot, ErrBusy, ErrConfig error
}

// Setup is what the package of a kind does around the steps it shares:
// Check validates its configuration before any descriptor is opened or
// touched; Open configures fd, attached to the device name of the kind
// with flags (as TUNGETIFF reports them), and wraps it in a device, owning
// fd from then on (it closes it when it fails).
type Setup[D any] interface {
	Check() error
	Open(fd int, name string, flags uint16) (D, error)
}

// Create checks s, creates the device name of kind k with flags (k.Flag
// among them), or attaches to it when it exists, and hands the descriptor
// to s.Open. An empty name lets the kernel choose one.
func Create[D any](k Kind, name string, flags uint16, s Setup[D]) (D, error) {
	if err := s.Check(); err != nil {
		var zero D
		return zero, err
	}
	fd, err := k.create(name, flags)
	if err != nil {
		var zero D
		return zero, err
	}
	return open(k, fd, s)
}

// FromFile checks s, duplicates f's descriptor (close-on-exec) and hands
// the duplicate to s.Open. On success f is closed; on failure f is left
// open, the caller's to close.
func FromFile[D any](k Kind, f *os.File, s Setup[D]) (D, error) {
	var zero D
	if err := s.Check(); err != nil {
		return zero, err
	}
	fd, err := dup(f)
	if err != nil {
		return zero, fmt.Errorf("%s: %s: %w", k.Name, f.Name(), err)
	}
	d, err := open(k, fd, s)
	if err != nil {
		return zero, err
	}
	_ = f.Close()
	return d, nil
}

// open hands fd to s.Open when it is attached to a device of kind k, and
// closes it otherwise.
func open[D any](k Kind, fd int, s Setup[D]) (D, error) {
	name, flags, err := k.attached(fd)
	if err != nil {
		_ = unix.Close(fd)
		var zero D
		return zero, err
	}
	return s.Open(fd, name, flags)
}

// create opens CloneDevice non-blocking and attaches it to the device name,
// created when it does not exist, with flags. The descriptor returned is
// the caller's to close; on error none is left open.
func (k Kind) create(name string, flags uint16) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return -1, fmt.Errorf("%w: name %q: %v", k.ErrConfig, name, err)
	}
	fd, err := unix.Open(CloneDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("%s %s: open %s: %w", k.Name, name, CloneDevice, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		switch {
		case errors.Is(err, unix.EBUSY):
			return -1, fmt.Errorf("%w: %s", k.ErrBusy, name)
		case errors.Is(err, unix.EINVAL):
			return -1, fmt.Errorf("%w: %s exists and is not a single-queue %s", k.ErrNot, name, strings.ToUpper(k.Name))
		}
		return -1, fmt.Errorf("%s %s: TUNSETIFF: %w", k.Name, name, err)
	}
	return fd, nil
}

// attached returns the name and the flags of the device fd is attached to,
// or k.ErrNot when fd is not an attached TUN/TAP descriptor or its device
// is not of this kind.
func (k Kind) attached(fd int) (name string, flags uint16, err error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return "", 0, fmt.Errorf("%w: TUNGETIFF: %v", k.ErrNot, err)
	}
	name, flags = ifr.Name(), ifr.Uint16()
	if flags&(unix.IFF_TUN|unix.IFF_TAP) != k.Flag {
		return "", 0, fmt.Errorf("%w: %s has flags %#x", k.ErrNot, name, flags)
	}
	return name, flags, nil
}

// CheckMTU returns k.ErrConfig for an MTU that is neither zero (left as the
// kernel has it) nor in 68..65535.
func (k Kind) CheckMTU(mtu int) error {
	if mtu != 0 && (mtu < 68 || mtu > 65535) {
		return fmt.Errorf("%w: MTU %d out of range 68..65535", k.ErrConfig, mtu)
	}
	return nil
}

// dup returns a close-on-exec duplicate of f's descriptor, the caller's to
// close; f is untouched.
func dup(f *os.File) (int, error) {
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

// SetVnetHdrLen sets the virtio-net header of fd's packets to VnetHdrLen
// bytes (TUNSETVNETHDRSZ): a descriptor handed over may have been set to
// another size.
func SetVnetHdrLen(fd int) error {
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrLen); err != nil {
		return fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	return nil
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

// SetMTU sets the MTU of the device name behind fd, in the network
// namespace the device lives in.
func SetMTU(fd int, name string, mtu int) error {
	err := withLink(fd, name, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetMTU(l, mtu) })
	if err != nil {
		return fmt.Errorf("set MTU %d: %w", mtu, err)
	}
	return nil
}

// MTU returns the MTU of the device name behind fd, read in the network
// namespace the device lives in.
func MTU(fd int, name string) (int, error) {
	mtu := 0
	err := withLink(fd, name, func(_ *netlink.Handle, l netlink.Link) error { mtu = l.Attrs().MTU; return nil })
	if err != nil {
		return 0, fmt.Errorf("read MTU: %w", err)
	}
	return mtu, nil
}

// withLink runs fn with a netlink handle in the network namespace the
// device behind fd lives in (TUNGETDEVNETNS) and the device's link there;
// never by name in the caller's namespace, where the name may mean another
// device.
func withLink(fd int, name string, fn func(*netlink.Handle, netlink.Link) error) error {
	nsfd, err := unix.IoctlRetInt(fd, unix.TUNGETDEVNETNS)
	if err != nil {
		return fmt.Errorf("TUNGETDEVNETNS: %w", err)
	}
	ns := netns.NsHandle(nsfd)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in the device's netns: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link: %w", err)
	}
	return fn(h, l)
}
