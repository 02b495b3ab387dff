package netstackx_test

// Virtual pods through the real engine: the whole datapath without
// privileges.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

var (
	podCIDR     = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6    = netip.MustParsePrefix("fd00:10:244:1::/64")
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	gw4         = netip.MustParseAddr("10.244.1.1")
	gw6         = netip.MustParseAddr("fd00:10:244:1::1")
	// The "outside" network behind the egress port: TEST-NET-1, which only
	// ever exists inside this process.
	outsideNet = netip.MustParsePrefix("192.0.2.0/24")
	outsideGW  = netip.MustParseAddr("192.0.2.1")
	outsideIP  = netip.MustParseAddr("192.0.2.10")
)

type node struct {
	e    *engine.Engine
	pods []*netstackx.Pod
}

func newEngine(t testing.TB) *engine.Engine {
	t.Helper()
	cfg := engine.Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, ClusterCIDRs: []netip.Prefix{clusterCIDR, podCIDR6}}
	if tt, ok := t.(*testing.T); ok {
		cfg.Logger = zaptest.NewLogger(tt)
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// addPod makes pod number i (address .i+1) and attaches it on an L2 port.
func addPod(t testing.TB, e *engine.Engine, i, mtu int) *netstackx.Pod {
	t.Helper()
	a4 := netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 1)})
	a6 := netip.MustParseAddr("fd00:10:244:1::" + string(rune('0'+i+1)))
	p, err := netstackx.NewPod(netstackx.PodConfig{
		Name: "pod" + string(rune('0'+i)), Addr: netip.PrefixFrom(a4, 24), Gateway: gw4,
		Addr6: netip.PrefixFrom(a6, 64), Gateway6: gw6, MTU: mtu,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if _, err := e.AddPort(p.Device(), engine.PortConfig{
		Name: p.Name(), Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(p.MAC()), MTU: mtu, Addrs: []netip.Addr{a4, a6},
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

// addOutside attaches an L3 virtual host, 192.0.2.10 with MTU 1500, as the
// egress port with the given (link) MTU and routes 192.0.2.0/24 to it.
func addOutside(t testing.TB, e *engine.Engine, mtu int) (*netstackx.Pod, *engine.Port) {
	t.Helper()
	h, err := netstackx.NewPod(netstackx.PodConfig{Name: "outside", Addr: netip.PrefixFrom(outsideIP, 24), Gateway: outsideGW, MTU: 1500, L3: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	port, err := e.AddPort(h.Device(), engine.PortConfig{Name: "outside", Kind: engine.KindEgress, MTU: mtu})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetRoutes([]route.Route{{Prefix: outsideNet, NextHop: route.ToEgress(portIndex(e, port))}}); err != nil {
		t.Fatal(err)
	}
	return h, port
}

func portIndex(e *engine.Engine, p *engine.Port) int32 {
	for i := int32(0); ; i++ {
		if q := e.PortByIndex(i); q == p {
			return i
		} else if q == nil && i > 1000 {
			panic("port not found")
		}
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// serveEcho runs a TCP echo server on port 7 of p until the test ends.
// Cleanup closes the listener and every accepted connection, so a transfer
// that failed mid-way cannot keep the test waiting for its echo goroutine.
func serveEcho(t testing.TB, p *netstackx.Pod) {
	ln, err := p.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echoTransfer sends n pseudo-random bytes through p's echo connection to
// dst and checks the SHA-256 of what comes back.
func echoTransfer(t *testing.T, p *netstackx.Pod, dst netip.AddrPort, n int) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	c, err := p.DialTCP(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	sent, got := sha256.New(), sha256.New()
	errc := make(chan error, 1)
	go func() {
		rng := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, 64<<10)
		for left := n; left > 0; {
			k := min(left, len(buf))
			_, _ = rng.Read(buf[:k])
			sent.Write(buf[:k])
			if _, err := c.Write(buf[:k]); err != nil {
				errc <- err
				return
			}
			left -= k
		}
		errc <- nil
	}()
	if m, err := io.CopyN(got, c, int64(n)); err != nil {
		t.Fatalf("read %d of %d bytes: %v", m, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("checksum of the echoed stream differs")
	}
}

func TestPodsThroughEngine(t *testing.T) {
	e := newEngine(t)
	a, b := addPod(t, e, 1, 1500), addPod(t, e, 2, 1500)
	serveEcho(t, b)

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []netip.Addr{b.Addr(), b.Addr6(), gw4, gw6} {
			if _, err := a.Ping(ctxT(t, 5*time.Second), dst, 1000); err != nil {
				t.Errorf("ping %s: %v", dst, err)
			}
		}
	})
	t.Run("tcp 100MB", func(t *testing.T) {
		n := 100 << 20
		if testing.Short() {
			n = 10 << 20
		}
		echoTransfer(t, a, netip.AddrPortFrom(b.Addr(), 7), n)
	})
	t.Run("tcp6", func(t *testing.T) {
		echoTransfer(t, a, netip.AddrPortFrom(b.Addr6(), 7), 1<<20)
	})
	t.Run("udp", func(t *testing.T) {
		srv, err := b.ListenUDP(53)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = srv.WriteTo(append([]byte("re:"), buf[:n]...), from)
			}
		}()
		c, err := a.DialUDP(netip.AddrPortFrom(b.Addr(), 53))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 20 {
			msg := []byte{byte(i), 'x', 'y'}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
			if want := append([]byte("re:"), msg...); !bytes.Equal(buf[:n], want) {
				t.Fatalf("got %q want %q", buf[:n], want)
			}
		}
	})
	for _, p := range e.Ports() {
		s := p.Stats()
		if s.TotalDrops() != 0 {
			t.Errorf("port %s dropped %v", p.Name(), s.Drops)
		}
	}
}

// sniffICMP collects ICMP/ICMPv6 error packets arriving at p.
func sniffICMP(t *testing.T, p *netstackx.Pod) <-chan []byte {
	ch := make(chan []byte, 16)
	stop := p.Sniff(func(pkt []byte) {
		var pp packet.Parsed
		if packet.Parse(pkt, false, &pp) != packet.OK {
			return
		}
		ty := pp.ICMPType()
		if (pp.Version == 4 && ty >= 0 && packet.IsICMPv4Error(uint8(ty))) || (pp.Version == 6 && ty >= 0 && packet.IsICMPv6Error(uint8(ty))) {
			select {
			case ch <- append([]byte(nil), pkt...):
			default:
			}
		}
	})
	t.Cleanup(stop)
	return ch
}

func waitICMP(t *testing.T, ch <-chan []byte) (pp packet.Parsed, icmp packet.ICMP) {
	t.Helper()
	select {
	case pkt := <-ch:
		packet.Parse(pkt, false, &pp)
		return pp, packet.ICMP(pkt[pp.L4Off:pp.IPEnd])
	case <-time.After(5 * time.Second):
		t.Fatal("no ICMP error arrived")
	}
	panic("unreachable")
}

func TestTTLExpiryReachesSender(t *testing.T) {
	e := newEngine(t)
	a := addPod(t, e, 1, 1500)
	h, _ := addOutside(t, e, 1500)
	got := make(chan uint8, 4)
	stop := h.Sniff(func(pkt []byte) {
		var pp packet.Parsed
		if packet.Parse(pkt, false, &pp) == packet.OK && pp.Proto == packet.ProtoUDP {
			got <- pp.TTL
		}
	})
	defer stop()
	errs := sniffICMP(t, a)

	// TTL 1 on a routed hop: time exceeded, from the gateway, at the sender.
	if err := a.SendUDPWithTTL(netip.AddrPortFrom(outsideIP, 9), 1, []byte("expire")); err != nil {
		t.Fatal(err)
	}
	pp, c := waitICMP(t, errs)
	if c.Type() != packet.ICMPv4TimeExceeded || pp.Src != gw4 {
		t.Fatalf("got ICMP type %d from %s, want time exceeded from %s", c.Type(), pp.Src, gw4)
	}
	// TTL 2 passes, arriving with TTL 1.
	if err := a.SendUDPWithTTL(netip.AddrPortFrom(outsideIP, 9), 2, []byte("pass")); err != nil {
		t.Fatal(err)
	}
	select {
	case ttl := <-got:
		if ttl != 1 {
			t.Fatalf("arrived with TTL %d, want 1", ttl)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("TTL 2 packet not delivered")
	}
}

func TestUnreachable(t *testing.T) {
	e := newEngine(t)
	a := addPod(t, e, 1, 1500)
	// dialFails: the sender's stack aborts a connecting TCP socket on this
	// error, as Linux does for all of them. gVisor ignores ICMPv6 address
	// unreachable (code 3) on receipt, so a gVisor dial there waits for its
	// timeout; the error itself is checked through the ping.
	cases := []struct {
		name      string
		dst       netip.Addr
		code      uint8
		v6        bool
		dialFails bool
	}{
		{"unrouted cluster address", netip.MustParseAddr("10.244.7.5"), packet.ICMPv4NetUnreachable, false, true},
		{"no pod at a podCIDR address", netip.MustParseAddr("10.244.1.200"), packet.ICMPv4HostUnreachable, false, true},
		{"outside with no egress", netip.MustParseAddr("192.0.2.99"), packet.ICMPv4NetUnreachable, false, true},
		{"unrouted IPv6 address", netip.MustParseAddr("2001:db8::1"), packet.ICMPv6NoRoute, true, true},
		{"no pod at a podCIDR6 address", netip.MustParseAddr("fd00:10:244:1::99"), packet.ICMPv6AddrUnreachable, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Ping(ctxT(t, 5*time.Second), tc.dst, 56)
			var ie *netstackx.ICMPError
			if !errors.As(err, &ie) {
				t.Fatalf("ping: %v, want an ICMP error", err)
			}
			wantType := uint8(packet.ICMPv4DstUnreachable)
			if tc.v6 {
				wantType = packet.ICMPv6DstUnreachable
			}
			if ie.Type != wantType || ie.Code != tc.code || ie.IPv6 != tc.v6 {
				t.Fatalf("got %+v, want type %d code %d", ie, wantType, tc.code)
			}
			if !tc.dialFails {
				return
			}
			// A TCP dial fails at once instead of hanging.
			start := time.Now()
			if c, err := a.DialTCP(ctxT(t, 10*time.Second), netip.AddrPortFrom(tc.dst, 80)); err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("dial took %s", d)
			}
		})
	}
}

func TestPathMTUDiscovery(t *testing.T) {
	e := newEngine(t)
	a := addPod(t, e, 1, 1500)
	h, port := addOutside(t, e, 1300)
	serveEcho(t, h)
	errs := sniffICMP(t, a)
	echoTransfer(t, a, netip.AddrPortFrom(outsideIP, 7), 4<<20)
	pp, c := waitICMP(t, errs)
	if c.Type() != packet.ICMPv4DstUnreachable || c.Code() != packet.ICMPv4FragNeeded || c.Rest() != 1300 || pp.Src != gw4 {
		t.Fatalf("got ICMP %d/%d mtu %d from %s, want frag-needed mtu 1300 from the gateway", c.Type(), c.Code(), c.Rest(), pp.Src)
	}
	var tooBig uint64
	for _, p := range e.Ports() {
		tooBig += p.Stats().Drops[engine.DropTooBig]
	}
	if tooBig == 0 {
		t.Fatal("no packet was too big: the test did not exercise PMTUD")
	}
	if s := port.Stats(); s.TxPackets == 0 {
		t.Fatal("nothing reached the outside host")
	}
}

// BenchmarkPodToPodTCP measures, in one run, TCP throughput between two
// virtual pods through the engine and between two netstacks wired directly
// (the ceiling: the same endpoints joined by plain copy loops), and reports
// both and their ratio. Each op moves 16 MiB over each path on long-lived
// connections, alternating paths so machine noise hits both alike.
func BenchmarkPodToPodTCP(b *testing.B) {
	const chunk = 16 << 20
	for _, mtu := range []int{1500, 9000} {
		b.Run(mtuName(mtu), func(b *testing.B) {
			e := newEngine(b)
			ea, eb := addPod(b, e, 1, mtu), addPod(b, e, 2, mtu)
			da, db := wiredPair(b, mtu)
			viaEngine := newStream(b, ea, eb, chunk)
			direct := newStream(b, da, db, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			var tEngine, tDirect time.Duration
			for range b.N {
				tEngine += viaEngine.round(b)
				tDirect += direct.round(b)
			}
			b.StopTimer()
			gE := float64(b.N) * chunk * 8 / tEngine.Seconds() / 1e9
			gD := float64(b.N) * chunk * 8 / tDirect.Seconds() / 1e9
			b.ReportMetric(gE, "engine-Gbit/s")
			b.ReportMetric(gD, "direct-Gbit/s")
			b.ReportMetric(gE/gD, "ratio")
		})
	}
}

func mtuName(m int) string {
	if m == 1500 {
		return "mtu1500"
	}
	return "mtu9000"
}

// wiredPair makes two pods of the podCIDR joined directly by netstackx.Wire.
func wiredPair(tb testing.TB, mtu int) (*netstackx.Pod, *netstackx.Pod) {
	mk := func(i byte) *netstackx.Pod {
		p, err := netstackx.NewPod(netstackx.PodConfig{Name: "w", Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 1, i}), 24), Gateway: gw4, MTU: mtu})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = p.Close() })
		return p
	}
	a, z := mk(10), mk(11)
	stop := netstackx.Wire(a.Device(), z.Device())
	tb.Cleanup(stop)
	return a, z
}

// stream is a long-lived TCP connection from one pod to a sink on another
// that acknowledges every chunk with one byte.
type stream struct {
	c     net.Conn
	buf   []byte
	ack   []byte
	chunk int
}

func newStream(tb testing.TB, from, to *netstackx.Pod, chunk int) *stream {
	ln, err := to.ListenTCP(5201)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			if _, err := io.ReadFull(c, buf[:0]); err != nil {
				return
			}
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, int64(chunk)), buf); err != nil {
				return
			}
			if _, err := c.Write([]byte{1}); err != nil {
				return
			}
		}
	}()
	c, err := from.DialTCP(ctxT(tb, 10*time.Second), netip.AddrPortFrom(to.Addr(), 5201))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close(); _ = ln.Close(); <-done })
	return &stream{c: c, buf: make([]byte, 256<<10), ack: make([]byte, 1), chunk: chunk}
}

// round sends one chunk and waits for its acknowledgement.
func (s *stream) round(tb testing.TB) time.Duration {
	start := time.Now()
	_ = s.c.SetDeadline(start.Add(time.Minute))
	for left := s.chunk; left > 0; {
		n, err := s.c.Write(s.buf[:min(left, len(s.buf))])
		if err != nil {
			tb.Fatal(err)
		}
		left -= n
	}
	if _, err := io.ReadFull(s.c, s.ack); err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}

var _ = link.Headroom
