package netstackx

import (
	"io"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkWiredTCP measures one TCP stream between two L2 pods at MTU
// 1500 joined by Wire: the "direct netstack" rung of the benchmark ladder,
// the ceiling for anything that puts an engine between two netstack pods.
func BenchmarkWiredTCP(b *testing.B) {
	a, z := benchPair(b)
	ln, err := z.ListenTCP(5001)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		done <- n
	}()
	c, err := a.DialTCP(b.Context(), netip.AddrPortFrom(z.Addr(), 5001))
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	// A b.N loop, not b.Loop: the timer must run until the receiver has
	// drained the stream, so ns/op and Gbit/s measure the same thing.
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.(interface{ CloseWrite() error }).CloseWrite()
	n := <-done
	elapsed := time.Since(start)
	b.StopTimer()
	_ = c.Close()
	if n != int64(b.N)*chunk {
		b.Fatalf("received %d bytes, sent %d", n, int64(b.N)*chunk)
	}
	b.ReportMetric(float64(n)*8/elapsed.Seconds()/1e9, "Gbit/s")
	st := a.Stats()
	b.ReportMetric(float64(st.TCPRetransmits), "retrans")
	b.ReportMetric(float64(st.Endpoint.OutboundDropFull+z.Stats().Endpoint.OutboundDropFull), "qdrops")
}

func benchPair(b *testing.B) (a, z *Pod) {
	mk := func(host byte) *Pod {
		p, err := NewPod(PodConfig{
			Addr:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 1, host}), 24),
			Gateway: netip.MustParseAddr("10.244.1.1"),
			MTU:     1500,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = p.Close() })
		return p
	}
	a, z = mk(5), mk(6)
	b.Cleanup(Wire(a.Device(), z.Device()))
	return a, z
}
