package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/internal/tunfd"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/podrouter/podrouter/router/link"
)

// kind is how tunfd reports this package's errors.
var kind = tunfd.Kind{Flag: unix.IFF_TUN, Name: "tun", ErrNot: ErrNotTUN, ErrBusy: ErrBusy, ErrConfig: ErrConfig}

// Device is an open TUN device carrying bare IP packets; a link.Device.
type Device struct {
	nt   *wgtun.NativeTun
	name string
	vnet bool // IFF_VNET_HDR: offloads on, Write needs VnetHdrLen of headroom
	mtu  int  // at creation, for the buffer check of Read

	closed atomic.Bool

	wmu   sync.Mutex // serialises Write (wireguard-go does too) and guards wbufs
	wbufs [][]byte   // Write's copy of the caller's slice headers, which GRO rearranges

	c struct {
		rxPackets, rxBytes, rxSplit, rxDropped atomic.Uint64
		txPackets, txBytes, txDropped          atomic.Uint64
	}
}

var (
	_ link.Device          = (*Device)(nil)
	_ tunfd.Setup[*Device] = setup{}
)

// Create creates (or attaches to) the TUN device name in the calling
// thread's network namespace with offloads on and, when mtu is not zero,
// sets its MTU. See Open.
func Create(name string, mtu int) (*Device, error) {
	return Open(name, Config{MTU: mtu})
}

// Open creates the TUN device name in the calling thread's network
// namespace, or attaches to it when it exists (a persistent TUN left by an
// earlier process), and configures it as cfg says. An empty name lets the
// kernel choose one. Addresses, routes and the device's state up or down are
// the caller's to configure.
func Open(name string, cfg Config) (*Device, error) {
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if !cfg.DisableOffloads {
		flags |= unix.IFF_VNET_HDR
	}
	return tunfd.Create(kind, name, flags, setup(cfg))
}

// FromFile makes a Device of an attached TUN descriptor opened elsewhere
// (e.g. in a pod's network namespace and passed over a unix socket); the
// device may live in any network namespace (cfg.MTU is set in the device's
// own). Offloads are on when the descriptor has IFF_VNET_HDR. On success the
// Device holds a duplicate of f's descriptor and f is closed; on failure f
// is left open, the caller's to close.
func FromFile(f *os.File, cfg Config) (*Device, error) {
	return tunfd.FromFile(kind, f, setup(cfg))
}

// setup is a Config as tunfd.Create and tunfd.FromFile use it.
type setup Config

// Check implements tunfd.Setup.
func (cfg setup) Check() error { return kind.CheckMTU(cfg.MTU) }

// Open implements tunfd.Setup: it configures fd, attached to the TUN name
// with flags, and hands it to wireguard-go. It owns fd: on error fd is
// closed.
func (cfg setup) Open(fd int, name string, flags uint16) (*Device, error) {
	handedOver := false
	defer func() {
		if !handedOver {
			_ = unix.Close(fd)
		}
	}()
	vnet := flags&unix.IFF_VNET_HDR != 0
	if vnet {
		// wireguard-go assumes the 10-byte header.
		if err := tunfd.SetVnetHdrLen(fd); err != nil {
			return nil, fmt.Errorf("tun %s: %w", name, err)
		}
	}
	mtu, err := cfg.MTU, error(nil)
	if mtu != 0 {
		err = tunfd.SetMTU(fd, name, mtu)
	} else {
		mtu, err = tunfd.MTU(fd, name)
	}
	if err != nil {
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	if err := tunfd.SetPersist(fd, cfg.Persist); err != nil {
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	// From here wireguard-go owns fd: the *os.File it wraps fd in closes
	// it, also when it fails (through the file's finalizer).
	handedOver = true
	dev, _, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	nt, ok := dev.(*wgtun.NativeTun)
	if !ok {
		_ = dev.Close()
		return nil, fmt.Errorf("tun %s: unexpected wireguard-go device %T", name, dev)
	}
	d := &Device{nt: nt, name: name, vnet: vnet, mtu: mtu, wbufs: make([][]byte, 0, nt.BatchSize())}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log.Info("tun attached", zap.String("tun", name), zap.Bool("offloads", vnet), zap.Int("mtu", mtu),
		zap.Bool("persist", cfg.Persist))
	return d, nil
}

// control runs fn on the descriptor, or returns link.ErrClosed.
func (d *Device) control(fn func(fd int) error) error {
	if d.closed.Load() {
		return link.ErrClosed
	}
	sc, err := d.nt.File().SyscallConn()
	if err != nil {
		return link.ErrClosed
	}
	var ferr error
	if err := sc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return link.ErrClosed
	}
	return ferr
}

// Name returns the device's name (in the network namespace it lives in).
func (d *Device) Name() string { return d.name }

// MTU returns the device's MTU now, read in the device's own namespace.
func (d *Device) MTU() (int, error) {
	mtu := 0
	err := d.control(func(fd int) (err error) {
		mtu, err = tunfd.MTU(fd, d.name)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("tun %s: %w", d.name, err)
	}
	return mtu, nil
}

// GSO reports whether the device moves super-packets with the kernel
// (IFF_VNET_HDR): cut on Read, coalesced on Write.
func (d *Device) GSO() bool { return d.vnet }

// SetPersist changes whether the device outlives its descriptor (see
// Config.Persist). Clearing it and then closing the Device deletes the TUN.
func (d *Device) SetPersist(on bool) error {
	if err := d.control(func(fd int) error { return tunfd.SetPersist(fd, on) }); err != nil {
		return fmt.Errorf("tun %s: %w", d.name, err)
	}
	return nil
}

// BatchSize implements link.Device: 128 with offloads (the most segments a
// read is cut into, and the batch Write coalesces over), else 1.
func (d *Device) BatchSize() int { return d.nt.BatchSize() }

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	return Stats{
		RxPackets: d.c.rxPackets.Load(), RxBytes: d.c.rxBytes.Load(), RxSplit: d.c.rxSplit.Load(),
		RxDropped: d.c.rxDropped.Load(), TxPackets: d.c.txPackets.Load(), TxBytes: d.c.txBytes.Load(),
		TxDropped: d.c.txDropped.Load(),
	}
}

// Close implements link.Device: it closes the descriptor (a persistent TUN
// stays, a non-persistent one is deleted by the kernel) and wakes a blocked
// Read with link.ErrClosed. Close is idempotent.
func (d *Device) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	return d.nt.Close()
}

// Read implements link.Device. It reads one packet from the kernel or, with
// offloads, one super-packet, which it cuts into segments in bufs[0],
// bufs[1], ... (segments beyond len(bufs) are dropped and counted: pass
// BatchSize buffers). Each buffer must hold an MTU-sized packet after
// offset. A packet the kernel hands over malformed is dropped and counted,
// and Read goes on to the next.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if len(sizes) < len(bufs) || offset < 0 {
		return 0, fmt.Errorf("tun %s: read with %d sizes for %d buffers, offset %d", d.name, len(sizes), len(bufs), offset)
	}
	for _, b := range bufs {
		if len(b)-offset < d.mtu {
			// wireguard-go's gsoSplit does not check the buffers it cuts into.
			return 0, fmt.Errorf("tun %s: read buffer of %d bytes at offset %d for MTU %d", d.name, len(b), offset, d.mtu)
		}
	}
	for {
		if d.closed.Load() {
			return 0, link.ErrClosed
		}
		n, err := d.nt.Read(bufs, sizes, offset)
		if err != nil && !errors.Is(err, wgtun.ErrTooManySegments) {
			var pe *os.PathError
			switch {
			case d.closed.Load():
				return 0, link.ErrClosed
			case errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD):
				// wireguard-go reports EBADFD (detached) as os.ErrClosed.
				return 0, fmt.Errorf("%w: %s", ErrDetached, d.name)
			case errors.As(err, &pe):
				return 0, fmt.Errorf("tun %s: read: %w", d.name, err)
			}
			// Not the descriptor's fault: a malformed packet or super-packet.
			d.c.rxDropped.Add(1)
			continue
		}
		if err != nil {
			d.c.rxDropped.Add(1) // the segments beyond the buffers
		}
		if n == 0 {
			continue
		}
		var bytes uint64
		for _, s := range sizes[:n] {
			bytes += uint64(s)
		}
		d.c.rxPackets.Add(uint64(n))
		d.c.rxBytes.Add(bytes)
		if n > 1 {
			d.c.rxSplit.Add(1)
		}
		return n, nil
	}
}

// Write implements link.Device. With offloads it coalesces the TCP and UDP
// segments of a flow within the batch into super-packets (wireguard-go's
// GRO), which it builds in the buffer of the flow's first packet: it may
// change that packet in place and grow it into the buffer's spare capacity
// (up to cap), so buffers must not share backing arrays beyond their
// length. It writes the virtio-net header in the headroom (offset >=
// VnetHdrLen, else ErrHeadroom). A packet the kernel refuses is counted in
// TxDropped and still accepted. Write is safe for concurrent use.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if d.vnet && offset < VnetHdrLen {
		return 0, ErrHeadroom
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.closed.Load() {
		return 0, link.ErrClosed
	}
	var bytes uint64
	for _, b := range bufs {
		bytes += uint64(len(b) - offset)
	}
	// wireguard-go rearranges and extends the slice headers it is given.
	d.wbufs = append(d.wbufs[:0], bufs...)
	_, err := d.nt.Write(d.wbufs, offset)
	clear(d.wbufs)
	dropped := 0
	if err != nil {
		switch {
		case d.closed.Load():
			return 0, link.ErrClosed
		case errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD):
			return 0, fmt.Errorf("%w: %s", ErrDetached, d.name)
		}
		dropped = writeErrors(err, len(bufs))
	}
	d.c.txPackets.Add(uint64(len(bufs) - dropped))
	d.c.txBytes.Add(bytes)
	d.c.txDropped.Add(uint64(dropped))
	return len(bufs), nil
}

// writeErrors returns how many of n packets a failed wireguard-go Write
// dropped: one per write(2) the kernel refused (each a *os.PathError in the
// joined error), or all n when it failed before writing (GRO refused the
// batch).
func writeErrors(err error, n int) int {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	refused := 0
	for _, e := range errs {
		var pe *os.PathError
		if errors.As(e, &pe) {
			refused++
		}
	}
	if refused == 0 {
		return n
	}
	return min(refused, n)
}
