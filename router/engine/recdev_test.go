package engine

import (
	"sync"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// recDev is a device for tests that drive a port's path themselves
// (newWorker): Read blocks until Close and Write records copies of what the
// engine writes.
type recDev struct {
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	out    []gsoFrame
}

func newRecDev() *recDev { return &recDev{closed: make(chan struct{})} }

func (d *recDev) Read([][]byte, []int, int) (int, error) {
	<-d.closed
	return 0, link.ErrClosed
}

func (d *recDev) Write(bufs [][]byte, offset int) (int, error) {
	return d.record(bufs, nil, offset)
}

func (d *recDev) record(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, b := range bufs {
		f := gsoFrame{b: append([]byte(nil), b[offset:]...)}
		if gso != nil {
			f.g = gso[i]
		}
		d.out = append(d.out, f)
	}
	return len(bufs), nil
}

func (d *recDev) take() []gsoFrame {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.out
	d.out = nil
	return out
}

func (d *recDev) BatchSize() int { return 8 }
func (d *recDev) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// recGSODev is a recDev that is a link.GSODevice taking offloads o.
type recGSODev struct {
	*recDev
	o packet.Offloads
}

func (d recGSODev) ReadGSO(bufs [][]byte, sizes []int, _ []packet.GSO, offset int) (int, error) {
	return d.Read(bufs, sizes, offset)
}

func (d recGSODev) WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	for _, g := range gso {
		if !d.o.Accepts(g) {
			panic("engine wrote an offload the device does not accept")
		}
	}
	return d.record(bufs, gso, offset)
}

func (d recGSODev) Offloads() packet.Offloads { return d.o }
