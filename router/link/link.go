// Package link defines the port contract of the engine: anything that moves
// packet batches (a pod's TAP or TUN, the node uplink, the underlay, a
// netstack, an in-memory test link).
//
// The model is wireguard-go's tun.Device: batch I/O into caller-owned buffers
// with headroom, so that a port can write its own headers (virtio-net header,
// Ethernet, encapsulation) in front of a packet without copying it.
package link

import "errors"

// ErrClosed is returned by Read and Write once the device is closed.
var ErrClosed = errors.New("link: device closed")

// Headroom is the number of bytes the engine leaves in front of every
// packet it hands to Device.Write (the offset argument is at least this), so a
// device may prepend up to this many bytes of its own headers in place.
const Headroom = 64

// Device is one port of the engine.
//
// Buffer ownership: the caller owns every buffer passed to Read and Write.
// A device never retains a buffer (or a slice of it) after the call returns;
// what it needs later, it copies.
type Device interface {
	// Read blocks until at least one packet is available, then reads up to
	// len(bufs) packets. Packet i is copied to bufs[i][offset:] and its length
	// stored in sizes[i]; len(sizes) >= len(bufs). It returns the number of
	// packets read. bufs[i][:offset] is left untouched. After Close, Read
	// returns ErrClosed. Read is called by one goroutine at a time.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write sends the packets bufs[i][offset:]. The device may overwrite
	// bufs[i][:offset] (headroom) with its own headers, and may rewrite a
	// packet in place or grow it into bufs[i]'s spare capacity (GRO
	// coalescing, as wireguard-go's tun does), so a caller hands each
	// packet in a buffer of its own. It returns the
	// number of packets accepted; a packet the device had to drop (full
	// queue, peer gone) still counts as accepted, and an error means the
	// device itself is broken or closed. Write is safe for concurrent use
	// by many goroutines.
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the largest number of packets Read returns at once and
	// the batch size Write is most efficient with.
	BatchSize() int

	// Close releases the device. A blocked Read returns ErrClosed. Close is
	// idempotent.
	Close() error
}
