package underlay

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/link"
)

// BenchmarkUnderlay measures the underlay alone over loopback: one peer
// device writing batches of 64 packets, the other underlay's RX device
// reading them on its own goroutine, as the engine would. pkt/s counts
// packets delivered by the RX device per second of the whole run (so
// receive-side socket drops, reported as loss-%, lower it). One
// sub-benchmark per encapsulation, inner packet size and offload setting.
func BenchmarkUnderlay(b *testing.B) {
	for _, encap := range []Encap{EncapUDP, EncapVXLAN} {
		for _, size := range []int{64, 1400} {
			for _, off := range []bool{false, true} {
				name := fmt.Sprintf("%v/%dB/offload=%v", encap, size, !off)
				b.Run(name, func(b *testing.B) { benchUnderlay(b, encap, size, off) })
			}
		}
	}
}

func benchUnderlay(b *testing.B, encap Encap, size int, noOffload bool) {
	cfg := Config{Encap: encap, Listen: lo4, MTU: 1500, NoOffload: noOffload}
	tx, rxu := newUnderlay(b, cfg), newUnderlay(b, cfg)
	introduce(b, tx, rxu)
	dev, rx := tx.PeerDevice("b"), rxu.RxDevice()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs := make([][]byte, rx.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, link.Headroom+2048)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := rx.Read(bufs, sizes, link.Headroom)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		_ = rx.Close()
		<-done
	}()
	const batch = 64
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = withHeadroom(ipv4Packet("10.244.1.2", "10.244.2.2", size-28, byte(i)))
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += batch {
		if _, err := dev.Write(bufs[:min(batch, b.N-i)], link.Headroom); err != nil {
			b.Fatal(err)
		}
	}
	// Wait for the receiver to catch up, or to stop making progress.
	for last, idle := got.Load(), 0; got.Load() < int64(b.N) && idle < 20; idle++ {
		time.Sleep(5 * time.Millisecond)
		if n := got.Load(); n != last {
			last, idle = n, 0
		}
	}
	el := time.Since(start)
	b.StopTimer()
	n := got.Load()
	b.ReportMetric(float64(n)/el.Seconds(), "pkt/s")
	b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss-%")
}
