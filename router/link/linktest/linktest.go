// Package linktest provides in-memory link.Devices for tests and
// benchmarks: a pipe whose two ends are devices, so a test can play the
// host behind an engine port, or two engines can be joined in one process.
package linktest

import (
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/pktq"
)

// End is one end of a Pipe. Packets written to one end are read from the
// other. It implements link.Device.
type End struct {
	rx    *pktq.Queue // what this end reads
	tx    *pktq.Queue // what this end writes (the peer's rx)
	batch int
}

var _ link.Device = (*End)(nil)

// Pipe returns two joined ends. Each direction buffers up to capacity
// packets of at most maxPacket bytes; beyond that, Write drops and counts.
func Pipe(capacity, maxPacket, batch int) (*End, *End) {
	a2b, b2a := pktq.New(capacity, maxPacket), pktq.New(capacity, maxPacket)
	return &End{rx: b2a, tx: a2b, batch: batch}, &End{rx: a2b, tx: b2a, batch: batch}
}

// Read implements link.Device.
func (e *End) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return e.rx.Read(bufs, sizes, offset)
}

// Write implements link.Device.
func (e *End) Write(bufs [][]byte, offset int) (int, error) {
	if _, err := e.tx.Write(bufs, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// BatchSize implements link.Device.
func (e *End) BatchSize() int { return e.batch }

// Close closes both directions: the peer reads and writes ErrClosed too.
func (e *End) Close() error {
	e.rx.Close()
	e.tx.Close()
	return nil
}

// Dropped returns how many packets written to this end were dropped because
// the queue toward the peer was full or a packet was too large.
func (e *End) Dropped() uint64 {
	return e.tx.Dropped()
}
