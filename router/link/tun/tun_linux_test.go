package tun_test

// Privileged tests: TUN devices in throwaway network namespaces. Two
// namespaces, each with a TUN whose kernel side is 10.99.0.x/24, are joined
// only by a Go copy loop (pump): Read a batch from one, Write it to the
// other, so that the segments of a super-packet, cut on read, are coalesced
// again on write.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/tun"
	"github.com/podrouter/podrouter/router/nstest"
)

const off = link.Headroom

var (
	addrA  = netip.MustParseAddr("10.99.0.1")
	addrB  = netip.MustParseAddr("10.99.0.2")
	addrA6 = netip.MustParseAddr("fd99::1")
	addrB6 = netip.MustParseAddr("fd99::2")
)

// checkFDs fails the test when it ends with more open descriptors than it
// had when checkFDs was called (register it after the namespaces).
func checkFDs(t *testing.T) {
	t.Helper()
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := count()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for count() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := count(); n > before {
			t.Errorf("descriptor leak: %d open, %d before", n, before)
		}
	})
}

func open(t *testing.T, ns *nstest.NS, name string, cfg tun.Config) *tun.Device {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	var d *tun.Device
	if err := ns.Do(func() (err error) {
		d, err = tun.Open(name, cfg)
		return err
	}); err != nil {
		t.Fatalf("Open %s in %s: %v", name, ns.Name, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func linkIn(t *testing.T, ns *nstest.NS, name string) (netlink.Link, error) {
	t.Helper()
	var l netlink.Link
	err := ns.Do(func() (err error) {
		l, err = netlink.LinkByName(name)
		return err
	})
	return l, err
}

func up(t *testing.T, ns *nstest.NS, dev string, v4, v6 netip.Addr) {
	t.Helper()
	ns.Run(t, "ip", "addr", "replace", netip.PrefixFrom(v4, 24).String(), "dev", dev)
	if v6.IsValid() {
		ns.Run(t, "ip", "addr", "replace", netip.PrefixFrom(v6, 64).String(), "dev", dev, "nodad")
	}
	ns.Run(t, "ip", "link", "set", dev, "up")
}

// pump copies packets from src to dst until either is closed, a batch at
// a time (so dst can coalesce what src cut).
func pump(src, dst *tun.Device, wg *sync.WaitGroup) {
	defer wg.Done()
	bufs := make([][]byte, src.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, off+65535)
	}
	sizes := make([]int, len(bufs))
	out := make([][]byte, len(bufs))
	for {
		n, err := src.Read(bufs, sizes, off)
		if err != nil {
			return
		}
		for i := range n {
			out[i] = bufs[i][:off+sizes[i]]
		}
		if _, err := dst.Write(out[:n], off); err != nil {
			return
		}
	}
}

type pair struct {
	a, b   *nstest.NS
	da, db *tun.Device
	pumps  sync.WaitGroup
}

func newPair(t *testing.T, cfg tun.Config) *pair {
	t.Helper()
	p := &pair{a: nstest.New(t), b: nstest.New(t)}
	checkFDs(t)
	p.da = open(t, p.a, "pra", cfg)
	p.db = open(t, p.b, "prb", cfg)
	up(t, p.a, "pra", addrA, addrA6)
	up(t, p.b, "prb", addrB, addrB6)
	p.pumps.Add(2)
	go pump(p.da, p.db, &p.pumps)
	go pump(p.db, p.da, &p.pumps)
	t.Cleanup(func() {
		_ = p.da.Close()
		_ = p.db.Close()
		done := make(chan struct{})
		go func() { p.pumps.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("pumps still running 5 s after Close")
		}
	})
	return p
}

// iperf3 runs an iperf3 TCP test from client to srv and returns the
// receiver's Gbit/s.
func iperf3(t *testing.T, client, server *nstest.NS, srv netip.Addr, seconds int) float64 {
	t.Helper()
	nstest.RequireCommand(t, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+30)*time.Second)
	defer cancel()
	s := server.Command(ctx, "iperf3", "-s", "-1", "-B", srv.String(), "-p", "5201")
	if err := s.Start(); err != nil {
		t.Fatalf("iperf3 server: %v", err)
	}
	defer func() { cancel(); _ = s.Wait() }()
	family := "-4"
	if srv.Is6() {
		family = "-6"
	}
	var out []byte
	var err error
	for try := 0; try < 50; try++ {
		out, err = client.Command(ctx, "iperf3", family, "-c", srv.String(), "-p", "5201", "-t", fmt.Sprint(seconds), "-J").Output()
		if !strings.Contains(string(out), "unable to connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 output (%v):\n%s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// TestPairPingIperf joins two namespaces through two TUNs and the pump:
// ping over IPv4 and IPv6 and an iperf3 TCP stream, with offloads (the
// kernel's super-packets cut on read, coalesced again on write) and without.
func TestPairPingIperf(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "ping", "iperf3")
	for _, tc := range []struct {
		name    string
		cfg     tun.Config
		seconds int
	}{
		{"offloads-on", tun.Config{MTU: 1500}, 3},
		{"offloads-off", tun.Config{MTU: 1500, DisableOffloads: true}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, tc.cfg)
			if p.da.GSO() == tc.cfg.DisableOffloads {
				t.Fatalf("GSO() = %v with DisableOffloads %v", p.da.GSO(), tc.cfg.DisableOffloads)
			}
			p.a.Run(t, "ping", "-c", "3", "-i", "0.2", "-W", "2", addrB.String())
			p.a.Run(t, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", addrB6.String())
			seconds := tc.seconds
			if testing.Short() {
				seconds = 1
			}
			gbps := iperf3(t, p.a, p.b, addrB, seconds)
			// A late segment (a FIN's ACK, a retransmission) may be between
			// one device's read and the other's write when iperf3 exits:
			// wait for both directions to settle before comparing.
			sa, sb := p.da.Stats(), p.db.Stats()
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if sa.RxPackets == sb.TxPackets && sb.RxPackets == sa.TxPackets {
					break
				}
				sa, sb = p.da.Stats(), p.db.Stats()
			}
			t.Logf("iperf3 TCP A->B over IPv4: %.2f Gbit/s (offloads %v)", gbps, p.da.GSO())
			t.Logf("A: %+v", sa)
			t.Logf("B: %+v", sb)
			if p.da.GSO() != (sa.RxSplit > 0) {
				t.Errorf("A cut %d super-packets on read, want some: %v", sa.RxSplit, p.da.GSO())
			}
			if sa.RxDropped+sb.RxDropped+sa.TxDropped+sb.TxDropped != 0 {
				t.Errorf("drops: A %+v, B %+v", sa, sb)
			}
			if sa.RxPackets != sb.TxPackets || sb.RxPackets != sa.TxPackets {
				t.Errorf("packets read on one side and written on the other differ: A %+v, B %+v", sa, sb)
			}
		})
	}
}

// openRaw opens /dev/net/tun in ns with the given TUNSETIFF flags, as
// another process would, and returns it as a file.
func openRaw(t *testing.T, ns *nstest.NS, name string, flags uint16) *os.File {
	t.Helper()
	var f *os.File
	if err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq(name)
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// echoRequest is an ICMP echo request from 10.99.0.2 to 10.99.0.1.
func echoRequest(seq uint16) []byte {
	b := make([]byte, off+20+8+32)
	icmp := header.ICMPv4(b[off+20:])
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(0x4242)
	icmp.SetSequence(seq)
	icmp.SetChecksum(header.ICMPv4Checksum(icmp, 0))
	ip := header.IPv4(b[off:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b) - off), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(addrB.As4()), DstAddr: tcpip.AddrFrom4(addrA.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// echo writes an echo request to the kernel through d and waits for the
// reply.
func echo(t *testing.T, d *tun.Device, seq uint16) {
	t.Helper()
	if _, err := d.Write([][]byte{echoRequest(seq)}, off); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, off+65535)
	}
	sizes := make([]int, len(bufs))
	done := make(chan error, 1)
	go func() {
		for {
			n, err := d.Read(bufs, sizes, off)
			if err != nil {
				done <- err
				return
			}
			for i := range n {
				ip := header.IPv4(bufs[i][off : off+sizes[i]])
				if ip.IsValid(sizes[i]) && ip.Protocol() == uint8(header.ICMPv4ProtocolNumber) &&
					header.ICMPv4(ip.Payload()).Type() == header.ICMPv4EchoReply && header.ICMPv4(ip.Payload()).Sequence() == seq {
					done <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		_ = d.Close()
		t.Fatal("no echo reply within 2 s")
	}
}

// TestFromFile wraps a TUN opened in another namespace, sets its MTU there,
// talks to its kernel, and refuses a TAP.
func TestFromFile(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	f := openRaw(t, ns, "prf", unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
	d, err := tun.FromFile(f, tun.Config{MTU: 1300, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("FromFile left its file open: %v", err)
	}
	if mtu, err := d.MTU(); err != nil || mtu != 1300 || d.Name() != "prf" || !d.GSO() {
		t.Fatalf("MTU %d (%v), name %q, GSO %v", mtu, err, d.Name(), d.GSO())
	}
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
	up(t, ns, "prf", addrA, netip.Addr{})
	echo(t, d, 1)

	tap := openRaw(t, ns, "prx", unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
	if _, err := tun.FromFile(tap, tun.Config{}); !errors.Is(err, tun.ErrNotTUN) {
		t.Fatalf("TAP: %v, want ErrNotTUN", err)
	}
	if _, err := tap.Stat(); err != nil {
		t.Fatalf("FromFile closed the file it refused: %v", err)
	}
	if err := ns.Do(func() error { _, err := tun.Create("prx", 0); return err }); !errors.Is(err, tun.ErrNotTUN) {
		t.Fatalf("Create over a TAP's name: %v, want ErrNotTUN", err)
	}
}

// TestPersist closes a persistent TUN, finds it with its address, attaches
// again, is refused a second attachment, and deletes it.
func TestPersist(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := open(t, ns, "prp", tun.Config{Persist: true})
	up(t, ns, "prp", addrA, netip.Addr{})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "ip", "-4", "addr", "show", "dev", "prp"); !strings.Contains(out, addrA.String()) {
		t.Fatalf("persistent TUN or its address gone after Close: %s", out)
	}
	d2 := open(t, ns, "prp", tun.Config{Persist: true})
	if err := ns.Do(func() error { _, err := tun.Create("prp", 0); return err }); !errors.Is(err, tun.ErrBusy) {
		t.Fatalf("second attachment: %v, want ErrBusy", err)
	}
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
	echo(t, d2, 2)
	if err := d2.SetPersist(false); err != nil {
		t.Fatal(err)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := linkIn(t, ns, "prp"); err == nil {
		t.Fatal("TUN still there after SetPersist(false) and Close")
	}
	if err := d2.SetPersist(true); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("SetPersist after Close: %v", err)
	}
}

// TestClose unblocks a blocked Read and makes later calls fail with
// link.ErrClosed; Write wants its headroom.
func TestClose(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := open(t, ns, "prc", tun.Config{})
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, len(bufs))
	errc := make(chan error, 1)
	go func() {
		_, err := d.Read(bufs, sizes, off)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := d.Write([][]byte{echoRequest(1)}, 4); !errors.Is(err, tun.ErrHeadroom) {
		t.Fatalf("Write with 4 bytes of headroom: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, link.ErrClosed) {
			t.Fatalf("blocked Read returned %v, want link.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Read(bufs, sizes, off); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := d.Write([][]byte{echoRequest(1)}, off); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, err := linkIn(t, ns, "prc"); err == nil {
		t.Fatal("non-persistent TUN still there after Close")
	}
	if _, err := d.MTU(); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("MTU after Close: %v", err)
	}
}

// TestReadBufferCheck refuses buffers that cannot hold an MTU-sized packet
// (wireguard-go would write past them).
func TestReadBufferCheck(t *testing.T) {
	ns := nstest.New(t)
	d := open(t, ns, "prs", tun.Config{MTU: 1400})
	bufs := [][]byte{make([]byte, off+1399)}
	if _, err := d.Read(bufs, make([]int, 1), off); err == nil || !strings.Contains(err.Error(), "MTU 1400") {
		t.Fatalf("Read into a short buffer: %v", err)
	}
}

// TestDetached deletes the TUN under an open device: a blocked Read and a
// later Write fail with ErrDetached.
func TestDetached(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := open(t, ns, "prd", tun.Config{})
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, len(bufs))
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := d.Read(bufs, sizes, off); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	ns.Run(t, "ip", "link", "del", "prd")
	select {
	case err := <-errc:
		if !errors.Is(err, tun.ErrDetached) {
			t.Fatalf("Read on a deleted TUN: %v, want ErrDetached", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked 2 s after the TUN was deleted")
	}
	if _, err := d.Write([][]byte{echoRequest(1)}, off); !errors.Is(err, tun.ErrDetached) {
		t.Fatalf("Write on a deleted TUN: %v, want ErrDetached", err)
	}
}
