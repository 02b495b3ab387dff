package netstackx

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// podPair builds two pods on 10.244.1.0/24 and fd00:10:244:1::/64, wired
// back to back. L2 pods ARP/solicit each other directly (on-link routes);
// L3 pods have the same routes, which with no link addressing just send
// everything out of the one port.
func podPair(t *testing.T, l3 bool, mtu int) (a, b *Pod) {
	t.Helper()
	mk := func(host byte) *Pod {
		p, err := NewPod(PodConfig{
			Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 1, host}), 24),
			Gateway:  netip.MustParseAddr("10.244.1.1"),
			Addr6:    netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 15: host}), 64),
			Gateway6: netip.MustParseAddr("fd00:10:244:1::1"),
			MTU:      mtu,
			L3:       l3,
		})
		if err != nil {
			t.Fatalf("NewPod: %v", err)
		}
		t.Cleanup(func() { _ = p.Close() })
		return p
	}
	a, b = mk(5), mk(6)
	stop := Wire(a.Device(), b.Device())
	t.Cleanup(stop)
	return a, b
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var framings = []struct {
	name string
	l3   bool
}{{"l2", false}, {"l3", true}}

func TestWiredPods(t *testing.T) {
	for _, f := range framings {
		t.Run(f.name, func(t *testing.T) {
			checkGoroutines(t)
			a, b := podPair(t, f.l3, 1500)
			for _, fam := range []struct {
				name string
				dst  netip.Addr
				port uint16 // one per family: a closed listener's port may still be held for a moment
			}{{"v4", b.Addr(), 8080}, {"v6", b.Addr6(), 8081}} {
				t.Run(fam.name+"/ping", func(t *testing.T) {
					for _, size := range []int{0, 56, 1400, 4000} {
						rtt, err := a.Ping(testContext(t), fam.dst, size)
						if err != nil {
							t.Fatalf("Ping(%s, %d): %v", fam.dst, size, err)
						}
						if rtt <= 0 {
							t.Errorf("Ping rtt = %v", rtt)
						}
					}
				})
				t.Run(fam.name+"/tcp", func(t *testing.T) {
					tcpEcho(t, a, b, netip.AddrPortFrom(fam.dst, fam.port), 4<<20)
				})
				t.Run(fam.name+"/udp", func(t *testing.T) {
					udpRequestResponse(t, a, b, netip.AddrPortFrom(fam.dst, 5353+fam.port-8080))
				})
			}
			if st := a.Stats(); st.Endpoint.OutboundDropTooBig != 0 || st.Endpoint.InboundDropInvalid != 0 {
				t.Errorf("unexpected drops: %+v", st)
			}
		})
	}
}

// tcpEcho sends size random bytes from a to an echo server on b and checks
// the SHA-256 of what the server received and of what came back.
func tcpEcho(t *testing.T, a, b *Pod, dst netip.AddrPort, size int) {
	t.Helper()
	ln, err := b.ListenTCP(dst.Port())
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer ln.Close()
	serverSum := make(chan [32]byte, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			close(serverSum)
			return
		}
		defer c.Close()
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(c, h), c); err != nil {
			t.Errorf("server copy: %v", err)
		}
		var s [32]byte
		h.Sum(s[:0])
		serverSum <- s
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	defer wg.Wait()

	c, err := a.DialTCP(testContext(t), dst)
	if err != nil {
		t.Fatalf("DialTCP(%s): %v", dst, err)
	}
	defer c.Close()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	want := sha256.Sum256(data)

	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		writeErr <- err
	}()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("client read: %v (after %d bytes)", err, n)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("client write: %v", err)
	}
	var got [32]byte
	h.Sum(got[:0])
	if got != want {
		t.Errorf("echoed %d bytes with sha256 %x, sent %d with %x", n, got, size, want)
	}
	if s := <-serverSum; s != want {
		t.Errorf("server received sha256 %x, sent %x", s, want)
	}
}

func udpRequestResponse(t *testing.T, a, b *Pod, dst netip.AddrPort) {
	t.Helper()
	srv, err := b.ListenUDP(dst.Port())
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	defer srv.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		_ = srv.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, from, err := srv.ReadFrom(buf)
		if err != nil {
			t.Errorf("server ReadFrom: %v", err)
			return
		}
		reply := append([]byte("re: "), buf[:n]...)
		if _, err := srv.WriteTo(reply, from); err != nil {
			t.Errorf("server WriteTo(%v): %v", from, err)
		}
	}()
	defer wg.Wait()

	c, err := a.DialUDP(dst)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	// The first datagram can be lost while the neighbour is resolved;
	// resend until a reply comes.
	buf := make([]byte, 2048)
	for try := 0; ; try++ {
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatalf("Write: %v", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			if got := string(buf[:n]); got != "re: hello" {
				t.Fatalf("reply %q, want %q", got, "re: hello")
			}
			return
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || try == 10 {
			t.Fatalf("Read: %v", err)
		}
	}
}

func TestNewPodValidates(t *testing.T) {
	good := PodConfig{Addr: netip.MustParsePrefix("10.244.1.5/24"), Gateway: netip.MustParseAddr("10.244.1.1")}
	tests := []struct {
		name   string
		modify func(*PodConfig)
		field  string
	}{
		{"no addr", func(c *PodConfig) { c.Addr = netip.Prefix{} }, "Addr"},
		{"v6 addr", func(c *PodConfig) { c.Addr = netip.MustParsePrefix("fd00::5/64") }, "Addr"},
		{"no gateway", func(c *PodConfig) { c.Gateway = netip.Addr{} }, "Gateway"},
		{"gateway off-link", func(c *PodConfig) { c.Gateway = netip.MustParseAddr("10.244.2.1") }, "Gateway"},
		{"gateway is addr", func(c *PodConfig) { c.Gateway = netip.MustParseAddr("10.244.1.5") }, "Gateway"},
		{"gateway6 without addr6", func(c *PodConfig) { c.Gateway6 = netip.MustParseAddr("fd00::1") }, "Gateway6"},
		{"addr6 is v4", func(c *PodConfig) { c.Addr6 = netip.MustParsePrefix("10.0.0.1/8") }, "Addr6"},
		{"mtu too small", func(c *PodConfig) { c.MTU = 50 }, "MTU"},
		{"mtu too small for v6", func(c *PodConfig) { c.Addr6 = netip.MustParsePrefix("fd00::5/64"); c.MTU = 1000 }, "MTU"},
		{"bad mac", func(c *PodConfig) { c.MAC = net.HardwareAddr{1, 2, 3} }, "MAC"},
		{"mac with l3", func(c *PodConfig) { c.MAC = testMAC; c.L3 = true }, "MAC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.modify(&cfg)
			p, err := NewPod(cfg)
			if err == nil {
				p.Close()
				t.Fatal("NewPod succeeded")
			}
			if !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("NewPod: %v; want an error naming %s", err, tt.field)
			}
		})
	}
	p, err := NewPod(good)
	if err != nil {
		t.Fatalf("NewPod(good): %v", err)
	}
	defer p.Close()
	if got, want := p.MAC().String(), "02:50:0a:f4:01:05"; got != want {
		t.Errorf("generated MAC = %s, want %s", got, want)
	}
}

func TestSniffSeesEchoReply(t *testing.T) {
	checkGoroutines(t)
	a, b := podPair(t, false, 1500)
	var mu sync.Mutex
	var replies int
	stop := a.Sniff(func(pkt []byte) {
		// IPv4, protocol ICMP, type echo reply, from b.
		if len(pkt) >= 21 && pkt[0]>>4 == 4 && pkt[9] == 1 && pkt[20] == 0 &&
			netip.AddrFrom4([4]byte(pkt[12:16])) == b.Addr() {
			mu.Lock()
			replies++
			mu.Unlock()
		}
	})
	if _, err := a.Ping(testContext(t), b.Addr(), 32); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	stop()
	stop() // idempotent
	mu.Lock()
	n := replies
	mu.Unlock()
	if n != 1 {
		t.Fatalf("sniffer saw %d echo replies, want 1", n)
	}
	if _, err := a.Ping(testContext(t), b.Addr(), 32); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if replies != 1 {
		t.Fatalf("sniffer called after stop")
	}
}

func TestPingTimeout(t *testing.T) {
	checkGoroutines(t)
	a, _ := podPair(t, true, 1500)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := a.Ping(ctx, netip.MustParseAddr("10.244.1.99"), 8)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping to nobody = %v, want context.DeadlineExceeded", err)
	}
}

func TestPodCloseIdempotent(t *testing.T) {
	checkGoroutines(t)
	a, b := podPair(t, false, 1500)
	if _, err := a.Ping(testContext(t), b.Addr(), 8); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	_ = a.Close()
	_ = a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.Ping(ctx, a.Addr(), 8); err == nil {
		t.Fatal("Ping to a closed pod succeeded")
	}
	if _, err := a.Ping(ctx, b.Addr(), 8); !errors.Is(err, ErrPodClosed) {
		t.Errorf("Ping from a closed pod = %v, want ErrPodClosed", err)
	}
	if _, err := a.ListenTCP(80); !errors.Is(err, ErrPodClosed) {
		t.Errorf("ListenTCP on a closed pod = %v, want ErrPodClosed", err)
	}
}

func TestDialTCPRefused(t *testing.T) {
	checkGoroutines(t)
	a, b := podPair(t, false, 1500)
	_, err := a.DialTCP(testContext(t), netip.AddrPortFrom(b.Addr(), 1))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("DialTCP to a closed port = %v, want ECONNREFUSED", err)
	}
}
