// Package tun is an L3 port on a Linux TUN device: the node uplink (podr0),
// through which the node reaches its pods and they reach it, and the
// optional L3 link of a pod. It wraps wireguard-go's TUN (the model of the
// link.Device contract), which opens the device with IFF_VNET_HDR and does
// the offload work in software on its side of the descriptor:
//
//	kernel ── TSO/USO super-packet ──► Read: one read(2), cut into MTU-sized
//	   packets (wireguard-go's gsoSplit), checksums finished
//	engine ── Write(batch) ──► TCP/UDP segments of one flow coalesced (GRO)
//	   into super-packets in the first one's buffer ──► one write(2) each
//
// Design notes: wireguard-go's CreateTUN also watches the device through a
// netlink socket and a once-a-second probe, whose events nobody here reads;
// this package uses its unmonitored constructor instead, and does by itself,
// in the device's own network namespace, the few things CreateTUN does by
// name in the caller's (the MTU), so a descriptor opened in another
// namespace is handled right. The device is a link.Device, not a
// link.GSODevice: wireguard-go does not expose the virtio-net descriptors,
// so super-packets cross it as segments.
package tun

import (
	"errors"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link/internal/tunfd"
)

// DefaultName is the node uplink's device name.
const DefaultName = "podr0"

// Errors returned by Open, Create and FromFile (wrapped, with the device
// name), and by Read and Write.
var (
	// ErrNotTUN means the name belongs to a device that is not a single-
	// queue TUN, or the file is not an attached TUN/TAP descriptor, or it is
	// a TAP (L2) device.
	ErrNotTUN = errors.New("tun: not a TUN device")
	// ErrBusy means the TUN exists and another descriptor is attached to it.
	ErrBusy = errors.New("tun: device is attached to another descriptor")
	// ErrConfig means the Config or the name is invalid.
	ErrConfig = errors.New("tun: invalid configuration")
	// ErrHeadroom is returned by Write when the device speaks virtio-net
	// (GSO) and offset leaves less than VnetHdrLen bytes in front.
	ErrHeadroom = errors.New("tun: offset leaves no room for the virtio-net header")
	// ErrDetached is returned by Read and Write when the kernel has detached
	// the descriptor from its device (the device was deleted).
	ErrDetached = errors.New("tun: device deleted")
)

// VnetHdrLen is the headroom Write needs in front of each packet when the
// device has offloads (wireguard-go writes the virtio-net header there).
const VnetHdrLen = tunfd.VnetHdrLen

// Config configures a TUN device. The zero value is valid: offloads on,
// MTU left as the kernel has it, not persistent.
type Config struct {
	// MTU, when not zero, is set on the device (68..65535), in the network
	// namespace the device lives in.
	MTU int
	// Persist makes the device outlive its descriptor (TUNSETPERSIST), so
	// the routes through it survive a daemon restart. When false, a
	// persistent device found by Open or FromFile is made non-persistent.
	Persist bool
	// DisableOffloads opens the device without IFF_VNET_HDR (Open and
	// Create only; with FromFile the descriptor's flags decide): the kernel
	// then hands over complete packets of at most the MTU, one per Read,
	// and Write writes each packet as it is.
	DisableOffloads bool
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Stats are the device's counters since it was opened.
type Stats struct {
	RxPackets uint64 // packets returned by Read
	RxBytes   uint64 // their bytes
	RxSplit   uint64 // super-packets read from the kernel and cut into more than one packet
	RxDropped uint64 // packets or super-packets dropped on read (malformed, too many segments)
	TxPackets uint64 // packets written to the kernel (counted before coalescing)
	TxBytes   uint64 // bytes of the packets given to Write
	TxDropped uint64 // packets the kernel refused (interface down, malformed)
}
