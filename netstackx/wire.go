package netstackx

import (
	"sync"

	"github.com/podrouter/podrouter/router/link"
)

// wireBufSize fits the largest IP packet in an Ethernet frame, after the
// headroom.
const wireBufSize = link.Headroom + 14 + 65535

// wireMaxBatch bounds a wire's per-direction buffers (64 x 64 KiB).
const wireMaxBatch = 64

// Wire joins two devices back to back: one goroutine per direction reads a
// batch from one device (leaving link.Headroom in front of every packet)
// and writes it to the other. It is the "direct netstack" ceiling of the
// benchmark ladder and the way to test pods without an engine.
//
// Wire owns the two devices from then on: stop closes both (the only way
// to unblock a Read) and waits for the copy loops to exit. A loop also
// exits when its source or destination device fails or closes. stop is
// idempotent.
func Wire(a, b link.Device) (stop func()) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(a, b) }()
	go func() { defer wg.Done(); pump(b, a) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
			wg.Wait()
		})
	}
}

func pump(src, dst link.Device) {
	n := min(src.BatchSize(), dst.BatchSize(), wireMaxBatch)
	n = max(n, 1)
	bufs := make([][]byte, n)
	out := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, wireBufSize)
	}
	for {
		k, err := src.Read(bufs, sizes, link.Headroom)
		if err != nil {
			return
		}
		for i := range k {
			out[i] = bufs[i][:link.Headroom+sizes[i]]
		}
		if _, err := dst.Write(out[:k], link.Headroom); err != nil {
			return
		}
	}
}
