package tun_test

// Privileged tests: TUN devices in throwaway network namespaces. Two
// namespaces, each with a TUN whose kernel side is 10.99.0.x/24, are joined
// only by a Go copy loop (devtest.Pump): Read a batch from one, Write it
// to the other, so that the segments of a super-packet, cut on read, are
// coalesced again on write.

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/internal/devtest"
	"github.com/podrouter/podrouter/router/link/tun"
	"github.com/podrouter/podrouter/router/nstest"
)

const off = link.Headroom

// open makes a TUN named name in ns and closes it at the end of the test.
func open(t *testing.T, ns *nstest.NS, name string, cfg tun.Config) *tun.Device {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	return devtest.In(t, ns, "Open "+name, func() (*tun.Device, error) { return tun.Open(name, cfg) })
}

// newPair is a devtest.Pair of TUNs configured as cfg, joined by two
// devtest.Pumps: Read a batch from one, Write it to the other.
func newPair(t *testing.T, cfg tun.Config) *devtest.Pair[*tun.Device] {
	t.Helper()
	p := devtest.NewPair(t, nil, func(ns *nstest.NS, name string) *tun.Device { return open(t, ns, name, cfg) })
	p.Go(func() { devtest.Pump(p.DA, p.DB, off+65535, nil) })
	p.Go(func() { devtest.Pump(p.DB, p.DA, off+65535, nil) })
	return p
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
			if p.DA.GSO() == tc.cfg.DisableOffloads {
				t.Fatalf("GSO() = %v with DisableOffloads %v", p.DA.GSO(), tc.cfg.DisableOffloads)
			}
			p.Ping(t)
			gbps := devtest.Iperf3(t, p.A, p.B, devtest.AddrB, tc.seconds)
			// A late segment (a FIN's ACK, a retransmission) may be between
			// one device's read and the other's write when iperf3 exits:
			// wait for both directions to settle before comparing.
			sa, sb := p.DA.Stats(), p.DB.Stats()
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if sa.RxPackets == sb.TxPackets && sb.RxPackets == sa.TxPackets {
					break
				}
				sa, sb = p.DA.Stats(), p.DB.Stats()
			}
			t.Logf("iperf3 TCP A->B over IPv4: %.2f Gbit/s (offloads %v)", gbps, p.DA.GSO())
			t.Logf("A: %+v", sa)
			t.Logf("B: %+v", sb)
			if p.DA.GSO() != (sa.RxSplit > 0) {
				t.Errorf("A cut %d super-packets on read, want some: %v", sa.RxSplit, p.DA.GSO())
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
		SrcAddr: tcpip.AddrFrom4(devtest.AddrB.As4()), DstAddr: tcpip.AddrFrom4(devtest.AddrA.As4()),
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
	bufs := devtest.Bufs(d.BatchSize(), off+65535)
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
	devtest.CheckFDs(t, nil)
	f := devtest.OpenRaw(t, ns, "prf", unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
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
	devtest.Up(t, ns, "prf", devtest.AddrA, netip.Addr{})
	echo(t, d, 1)

	tap := devtest.OpenRaw(t, ns, "prx", unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
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
	devtest.CheckFDs(t, nil)
	d := open(t, ns, "prp", tun.Config{Persist: true})
	devtest.Up(t, ns, "prp", devtest.AddrA, netip.Addr{})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "ip", "-4", "addr", "show", "dev", "prp"); !strings.Contains(out, devtest.AddrA.String()) {
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
	if _, err := devtest.LinkIn(t, ns, "prp"); err == nil {
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
	devtest.CheckFDs(t, nil)
	d := open(t, ns, "prc", tun.Config{})
	if _, err := d.Write([][]byte{echoRequest(1)}, 4); !errors.Is(err, tun.ErrHeadroom) {
		t.Fatalf("Write with 4 bytes of headroom: %v", err)
	}
	devtest.CheckClose(t, d, devtest.Bufs(d.BatchSize(), off+1500), [][]byte{echoRequest(1)})
	if _, err := devtest.LinkIn(t, ns, "prc"); err == nil {
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
	devtest.CheckFDs(t, nil)
	d := open(t, ns, "prd", tun.Config{})
	devtest.CheckDetached(t, ns, d, "prd", devtest.Bufs(d.BatchSize(), off+1500), tun.ErrDetached)
	if _, err := d.Write([][]byte{echoRequest(1)}, off); !errors.Is(err, tun.ErrDetached) {
		t.Fatalf("Write on a deleted TUN: %v, want ErrDetached", err)
	}
}
