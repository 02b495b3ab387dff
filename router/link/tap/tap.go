// Package tap is a pod's L2 port on a Linux TAP device opened with
// IFF_VNET_HDR, so that TCP and UDP super-packets (TSO, USO) and partial
// checksums cross between the kernel and the engine whole, as virtio-net
// moves them between a guest and its host.
//
//	kernel (pod netns) ── TAP fd ──► ReadGSO: readv(virtio hdr | frame) until
//	   EAGAIN or the batch is full; hdr ─► packet.GSO (offsets from the IP header)
//	                                  └─► Read: super-packets cut in software
//	engine ── WriteGSO: packet.GSO ─► virtio hdr in the headroom; one write(2)
//	   per frame; what Offloads does not cover is cut or checksummed first
//
// Design notes: the descriptor is non-blocking and registered with Go's
// netpoller, so a blocked Read costs no thread and Close wakes it. One read
// call drains what the kernel has queued (up to the batch) before it
// returns, which is where the batching comes from: a TAP has no recvmmsg.
// The virtio-net header is read into the device's own buffer (readv), so the
// caller's headroom stays untouched, and written from the caller's headroom,
// so a frame goes out in one write(2) without a copy. The offloads are
// negotiated from the most to the least (USO needs Linux 6.2): what
// TUNSETOFFLOAD accepts is both what the kernel hands us and what Offloads
// reports for writing, since a kernel that segments USO for a TAP's reader
// also takes USO from its writer.
package tap

import (
	"errors"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link/internal/tunfd"

	"github.com/podrouter/podrouter/router/packet"
)

// Errors returned by Create and FromFile (wrapped, with the device name or
// the ioctl that failed).
var (
	// ErrNotTAP means the name belongs to a device that is not a single-
	// queue TAP, or the file is not an attached TUN/TAP descriptor, or it is
	// a TUN (L3) device.
	ErrNotTAP = errors.New("tap: not a TAP device")
	// ErrNoVnetHdr means the TAP was opened without IFF_VNET_HDR, or with
	// packet information (no IFF_NO_PI): its frames would not be what this
	// package reads and writes. (Some kernels, Linux 6.18 among them, report
	// IFF_NO_PI in TUNGETIFF whether it is set or not: a descriptor opened
	// without it then passes, and its frames come with a 4-byte prefix.)
	ErrNoVnetHdr = errors.New("tap: TAP without IFF_VNET_HDR and IFF_NO_PI")
	// ErrBusy means the TAP exists and another descriptor is attached to it.
	ErrBusy = errors.New("tap: device is attached to another descriptor")
	// ErrConfig means the Config or the name is invalid.
	ErrConfig = errors.New("tap: invalid configuration")
	// ErrHeadroom is returned by Write and WriteGSO when the offset leaves
	// less room than the virtio-net header needs (VnetHdrLen bytes).
	ErrHeadroom = errors.New("tap: offset leaves no room for the virtio-net header")
	// ErrDetached is returned by Read and Write when the kernel has
	// detached the descriptor from its device (the device was deleted, e.g.
	// with its network namespace).
	ErrDetached = errors.New("tap: device deleted")
)

// VnetHdrLen is the length of the virtio-net header (struct
// virtio_net_hdr) in front of every frame on the descriptor: Write and
// WriteGSO need at least this much headroom.
const VnetHdrLen = tunfd.VnetHdrLen

// BatchSize is the largest number of frames one Read returns.
const BatchSize = 64

// MaxFrame is the largest frame the kernel hands over: an Ethernet header
// and a 64 KiB IPv6 super-packet. ReadGSO returns super-packets whole only
// into buffers with this much room after the offset; into smaller ones it
// cuts them into segments.
const MaxFrame = 14 + 40 + 65535

// Config configures a TAP device. The zero value is valid: offloads on,
// MTU left as the kernel has it, not persistent.
type Config struct {
	// MTU, when not zero, is set on the device (68..65535), in the network
	// namespace the device lives in.
	MTU int
	// Persist makes the device outlive its descriptor (TUNSETPERSIST): a
	// restarted daemon re-attaches with Create (same name, same netns) or a
	// descriptor from FromFile, and the pod's interface, addresses and
	// established connections are untouched in between. When false, a
	// persistent device found by Create or FromFile is made non-persistent,
	// so it goes when the device is closed.
	Persist bool
	// Owner and Group, when not zero, are the uid and gid allowed to attach
	// to the persistent device besides holders of CAP_NET_ADMIN.
	Owner, Group int
	// DisableOffloads negotiates no offloads: the kernel then hands over
	// only complete, checksummed packets of at most the MTU, and Offloads
	// is empty, so WriteGSO cuts and checksums every super-packet itself.
	// This is the fallback the device also takes when the kernel refuses
	// every offload.
	DisableOffloads bool
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Stats are the device's counters since it was opened.
type Stats struct {
	RxFrames    uint64 // frames read from the kernel
	RxBytes     uint64 // their bytes (Ethernet header on, virtio-net header off)
	RxGSO       uint64 // of them, super-packets (TSO, USO)
	RxCsum      uint64 // of them, with a partial checksum (super-packets included)
	RxSegmented uint64 // super-packets cut in software on read: by Read, or by ReadGSO for a buffer too small
	RxDropped   uint64 // frames dropped: bad virtio-net header, or a super-packet that could not be cut
	TxFrames    uint64 // frames written to the kernel
	TxBytes     uint64 // their bytes (virtio-net header off)
	TxGSO       uint64 // of them, super-packets passed whole
	TxSoftware  uint64 // packets WriteGSO cut or checksummed in software (not covered by Offloads)
	TxDropped   uint64 // frames the kernel refused (interface down, malformed)
}

// Offload sets Offloads reports, from the most a kernel grants to none.
const (
	offloadsTSO = packet.OffloadCsum | packet.OffloadTSO4 | packet.OffloadTSO6
	offloadsAll = offloadsTSO | packet.OffloadUSO
)
