package cni_test

// The "outside" of the egress tests: a netns joined to the node netns by
// a veth pair, its servers, and sockets opened inside a netns.

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/nstest"
)

// outside is the outside netns and its addresses.
type outside struct {
	ns     *nstest.NS
	addr   netip.Addr   // the outside's own address
	nodeIP netip.Addr   // the node's end of the veth: what the outside sees
	stuck  netip.Prefix // routed to the outside, never answered
}

// newOutside joins a new netns to n's by a veth pair.
func newOutside(t *testing.T, n *node) *outside {
	t.Helper()
	x := 1 + rand.IntN(250)
	o := &outside{
		ns:     nstest.New(t),
		addr:   netip.MustParseAddr(fmt.Sprintf("10.253.%d.2", x)),
		nodeIP: netip.MustParseAddr(fmt.Sprintf("10.253.%d.1", x)),
		stuck:  netip.MustParsePrefix(fmt.Sprintf("10.254.%d.0/24", x)),
	}
	id := rand.IntN(1 << 20)
	nodeEnd, outEnd := fmt.Sprintf("pen%05x", id), fmt.Sprintf("peo%05x", id)
	// Both ends are born in the node netns (deleted with it); one moves.
	n.ns.Run(t, "ip", "link", "add", nodeEnd, "type", "veth", "peer", "name", outEnd)
	n.ns.Run(t, "ip", "link", "set", outEnd, "netns", o.ns.Name)
	n.ns.Run(t, "ip", "addr", "add", o.nodeIP.String()+"/24", "dev", nodeEnd)
	n.ns.Run(t, "ip", "link", "set", nodeEnd, "up")
	n.ns.Run(t, "ip", "route", "add", o.stuck.String(), "via", o.addr.String())
	o.ns.Run(t, "ip", "addr", "add", o.addr.String()+"/24", "dev", outEnd)
	o.ns.Run(t, "ip", "link", "set", outEnd, "up")
	// A new netns does not forward (net.ipv4.ip_forward is 0): o.stuck
	// packets die there without an ICMP error.
	if out := o.ns.Run(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "0" {
		t.Fatalf("the outside netns forwards: ip_forward %q", out)
	}
	return o
}

// listen opens a listener inside ns (the socket stays there, whatever
// thread uses it later).
func listen(t *testing.T, ns *nstest.NS, network, addr string) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	err := ns.Do(func() error {
		var err error
		if strings.HasPrefix(network, "udp") {
			pc, err = net.ListenPacket(network, addr)
		} else {
			ln, err = net.Listen(network, addr)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln, pc
}

// holdServer accepts TCP connections on ln and holds them open (reading
// until EOF) until the test ends; it counts the connections it saw.
type holdServer struct {
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func serveHold(t *testing.T, ln net.Listener) *holdServer {
	h := &holdServer{}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			_ = c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

// serveEcho runs the outside's servers on its address until the test
// ends: HTTP on port 8080 answering "you are PEER", and a UDP echo on port
// 9000 answering "DATAGRAM from PEER" (PEER as addr:port).
func (o *outside) serveEcho(t *testing.T) {
	t.Helper()
	hln, _ := listen(t, o.ns, "tcp", o.addr.String()+":8080")
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "you are %s", r.RemoteAddr)
	})}
	go func() { _ = hs.Serve(hln) }()
	t.Cleanup(func() { _ = hs.Close() })
	_, upc := listen(t, o.ns, "udp", o.addr.String()+":9000")
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		buf := make([]byte, 2048)
		for {
			k, from, err := upc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = upc.WriteTo([]byte(fmt.Sprintf("%s from %s", buf[:k], from)), from)
		}
	}()
	t.Cleanup(func() { _ = upc.Close(); <-udpDone })
}

// udpEcho sends datagram "ping i" from pc to the outside's UDP echo, and
// checks that the reply comes from the echo's address and that the echo
// saw the datagram from address wantSrc. It returns the source the echo
// saw (addr:port).
func (o *outside) udpEcho(t *testing.T, pc net.PacketConn, i int, wantSrc netip.Addr) string {
	t.Helper()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.addr, 9000))
	if _, err := pc.WriteTo([]byte(fmt.Sprintf("ping %d", i)), dst); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	k, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("datagram %d: %v", i, err)
	}
	reply := string(buf[:k])
	want := fmt.Sprintf("ping %d from %s:", i, wantSrc)
	if !strings.HasPrefix(reply, want) || from.String() != dst.String() {
		t.Fatalf("reply %q from %v, want %q... from %v", reply, from, want, dst)
	}
	return strings.TrimPrefix(reply, fmt.Sprintf("ping %d from ", i))
}
