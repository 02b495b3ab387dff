package egress_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podrouter/podrouter/netstackx/egress"
	"github.com/podrouter/podrouter/router/packet"
)

// TestFlows: the snapshot lists a dial in flight, a spliced TCP flow with
// its host socket's tuple and half-close state, and a UDP flow with its
// expiry; filtering by pod and the bound work.
func TestFlows(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) { c.DialTimeout = time.Minute; c.UDPIdle = time.Hour })
	a, b := v.pod(t, 0), v.pod(t, 1)
	srv := v.serveAt(t, 7, echoHandler)
	usrv, _ := udpEcho(t)
	v.d.set(netip.AddrPortFrom(outside, 9), usrv)

	dialBlackhole(t, b, 1)
	waitFor(t, func() bool { return v.fwd.Stats().DialsInFlight == 1 }, "the blackhole dial in flight")

	c := dialTCP(t, a, netip.AddrPortFrom(outside, 7))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	pc, err := a.ListenUDP(5353)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("q"), &net.UDPAddr{IP: outside.AsSlice(), Port: 9}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}

	all, more := v.fwd.Flows(netip.Addr{}, 0)
	if more || len(all) != 3 {
		t.Fatalf("Flows: %d flows (more %v), want 3: %+v", len(all), more, all)
	}
	// Sorted by protocol (TCP 6 before UDP 17), then source.
	dial, tcpf, udpf := all[0], all[1], all[2]
	if tcpf.Src.Addr() != a.Addr() {
		dial, tcpf = tcpf, dial
	}
	if dial.Proto != packet.ProtoTCP || dial.State != egress.StateDialing || dial.Src.Addr() != b.Addr() ||
		dial.Dst != netip.AddrPortFrom(blackhole, 80) || dial.Local.IsValid() {
		t.Errorf("dialling flow: %+v", dial)
	}
	if tcpf.Proto != packet.ProtoTCP || tcpf.State != egress.StateEstablished || tcpf.Dst != netip.AddrPortFrom(outside, 7) ||
		tcpf.Remote != srv || tcpf.Local.Addr() != loopback || tcpf.Src.Port() == 0 || !tcpf.Expires.IsZero() {
		t.Errorf("TCP flow: %+v", tcpf)
	}
	if udpf.Proto != packet.ProtoUDP || udpf.Src != netip.AddrPortFrom(a.Addr(), 5353) || udpf.Remote != usrv ||
		udpf.Local.Addr() != loopback || time.Until(udpf.Expires) < 50*time.Minute {
		t.Errorf("UDP flow: %+v", udpf)
	}

	// The pod's FIN shows as pod-closed; the echo server then closes too.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		fs, _ := v.fwd.Flows(a.Addr(), 0)
		for _, f := range fs {
			if f.Proto == packet.ProtoTCP && f.State >= egress.StatePodClosed {
				return true
			}
		}
		return len(fs) == 1 // the TCP flow already ended
	}, "the TCP flow to show the pod's FIN")

	only, _ := v.fwd.Flows(b.Addr(), 0)
	if len(only) != 1 || only[0].State != egress.StateDialing {
		t.Errorf("Flows(b): %+v", only)
	}
	if one, more := v.fwd.Flows(netip.Addr{}, 1); len(one) != 1 || !more {
		t.Errorf("Flows(max 1): %d flows, more %v", len(one), more)
	}
	if s := egress.StateRemoteClosed.String(); s != "remote-closed" {
		t.Errorf("String: %q", s)
	}
}

// TestAllow: packets Config.Allow refuses never reach the stack or a
// host socket, and are counted.
func TestAllow(t *testing.T) {
	v := newEnv(t, func(c *egress.Config) {
		c.Allow = func(_, dst netip.Addr) bool { return dst != outside }
	})
	p := v.pod(t, 0)
	v.serveAt(t, 7, echoHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if c, err := p.DialTCP(ctx, netip.AddrPortFrom(outside, 7)); err == nil {
		_ = c.Close()
		t.Fatal("dial to a refused destination connected")
	}
	st := v.fwd.Stats()
	if st.NotAllowed == 0 || st.TCPDials != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDenyUDP: UDP to an address DenyUDP names (another node's underlay
// endpoint) never reaches a host socket and is counted; the same address on
// another port is relayed.
func TestDenyUDP(t *testing.T) {
	checkGoroutines(t)
	underlayEP := netip.AddrPortFrom(outside, 8472)
	v := newEnv(t, func(c *egress.Config) {
		c.DenyUDP = func(dst netip.AddrPort) bool { return dst == underlayEP }
	})
	p := v.pod(t, 0)
	srv, _ := udpEcho(t)
	v.d.set(underlayEP, srv)
	v.d.set(netip.AddrPortFrom(outside, 9), srv)
	pc, err := p.ListenUDP(5000)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	buf := make([]byte, 100)
	if _, err := pc.WriteTo([]byte("inject"), net.UDPAddrFromAddrPort(underlayEP)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return v.fwd.Stats().UnderlayDenied == 1 }, "the datagram to the underlay endpoint to be refused")
	if _, err := pc.WriteTo([]byte("ok"), &net.UDPAddr{IP: outside.AsSlice(), Port: 9}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "echo: ok" {
		t.Fatalf("other port: %q, %v", buf[:n], err)
	}
	if st := v.fwd.Stats(); st.UDPFlows != 1 || st.UnderlayDenied != 1 || st.NotAllowed != 0 {
		t.Fatalf("stats %+v", st)
	}
}
