package tap_test

// Privileged tests: TAP devices in throwaway network namespaces. Two
// namespaces, each with a TAP whose kernel side is 10.99.0.x/24, are joined
// only by a Go copy loop (pump) over the devices, so ping and iperf3 between
// them cross ReadGSO/WriteGSO (or Read/Write) and nothing else. Smaller
// tests use the kernel of one namespace as the far end: it answers pings,
// sends USO super-packets from a UDP_SEGMENT socket, and verifies the
// checksums of what the device writes (the checksums of packets without
// offload flags are checked by the receiving stack).

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/internal/devtest"
	"github.com/podrouter/podrouter/router/link/internal/uring"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/packet"
)

const off = link.Headroom // offset of every frame in the tests' buffers

// fakeMAC is the far end's MAC when the test plays it.
var fakeMAC = net.HardwareAddr{0x02, 0x99, 0, 0, 0, 0x02}

// checkFDs is devtest.CheckFDs for these tests: the io_uring pool's idle
// rings are not the test's.
func checkFDs(t *testing.T) { devtest.CheckFDs(t, uring.Release) }

// create makes a TAP named name in ns and closes it at the end of the test.
func create(t *testing.T, ns *nstest.NS, name string, cfg tap.Config) *tap.Device {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	return devtest.In(t, ns, "Create "+name, func() (*tap.Device, error) { return tap.Create(name, cfg) })
}

// pump copies frames from src to dst until src is closed, as the engine
// forwards between two ports: with gso, through ReadGSO and WriteGSO,
// super-packets passing whole when dst takes them and cut with
// packet.GSOSegment when it does not; without, through Read and Write
// (devtest.Pump).
func pump(src, dst *tap.Device, gso bool, st *pumpStats) {
	if !gso {
		devtest.Pump(src, dst, off+tap.MaxFrame, st.count)
		return
	}
	bufs := make([][]byte, tap.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, off+tap.MaxFrame)
	}
	sizes := make([]int, len(bufs))
	descs := make([]packet.GSO, len(bufs))
	seg := make([][]byte, 256)
	for i := range seg {
		seg[i] = make([]byte, off+14+9000)
	}
	segSizes := make([]int, len(seg))
	var out [][]byte
	var outG []packet.GSO
	for {
		n, err := src.ReadGSO(bufs, sizes, descs, off)
		if err != nil {
			return
		}
		st.count(sizes[:n])
		out, outG = out[:0], outG[:0]
		used := 0
		for i := range n {
			frame := bufs[i][:off+sizes[i]]
			if dst.Offloads().Accepts(descs[i]) {
				out = append(out, frame)
				outG = append(outG, descs[i])
				continue
			}
			if nseg, _ := packet.GSOSegments(frame[off+14:], descs[i]); used+nseg > len(seg) {
				if _, err := dst.WriteGSO(out, outG, off); err != nil {
					return
				}
				out, outG, used = out[:0], outG[:0], 0
			}
			k, err := packet.GSOSegment(frame[off+14:], descs[i], seg[used:], segSizes[used:], off+14)
			if err != nil {
				panic(fmt.Sprintf("GSOSegment %+v: %v", descs[i], err))
			}
			for j := used; j < used+k; j++ {
				copy(seg[j][off:], frame[off:off+14])
				out = append(out, seg[j][:off+14+segSizes[j]])
				outG = append(outG, packet.GSO{})
			}
			used += k
		}
		if _, err := dst.WriteGSO(out, outG, off); err != nil {
			return
		}
	}
}

// pumpStats counts a pump's reads, the frames they returned and the
// largest frame.
type pumpStats struct{ reads, frames, maxFrame atomic.Uint64 }

// count counts a read that returned frames of sizes.
func (st *pumpStats) count(sizes []int) {
	st.reads.Add(1)
	st.frames.Add(uint64(len(sizes)))
	for _, sz := range sizes {
		if uint64(sz) > st.maxFrame.Load() {
			st.maxFrame.Store(uint64(sz))
		}
	}
}

// pair is a devtest.Pair of TAPs, A's configured as cfgA and B's as cfgB,
// joined by two pumps.
type pair struct {
	*devtest.Pair[*tap.Device]
	ab, ba pumpStats
}

func newPair(t *testing.T, cfgA, cfgB tap.Config, gso bool) *pair {
	t.Helper()
	cfg := map[string]tap.Config{"pra": cfgA, "prb": cfgB}
	p := &pair{Pair: devtest.NewPair(t, uring.Release, func(ns *nstest.NS, name string) *tap.Device {
		return create(t, ns, name, cfg[name])
	})}
	p.Go(func() { pump(p.DA, p.DB, gso, &p.ab) })
	p.Go(func() { pump(p.DB, p.DA, gso, &p.ba) })
	return p
}

// TestPairPingIperf joins two namespaces through two TAPs and the pump:
// ping over IPv4 and IPv6, then an iperf3 TCP stream. With offloads on both
// sides the super-packets pass whole (counted in Stats); with the receiving
// side off the pump cuts them (and the receiving kernel checks every
// checksum); with Read/Write the device cuts them itself; with offloads off
// the kernels hand over MTU-sized packets only.
func TestPairPingIperf(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "ping", "iperf3")
	noOff := tap.Config{DisableOffloads: true}
	tests := []struct {
		name     string
		a, b     tap.Config
		gso      bool
		wantGSO  bool // super-packets read from A
		seconds  int
		ipv6Perf bool
	}{
		{"offloads-on", tap.Config{}, tap.Config{}, true, true, 3, true},
		{"offloads-off", noOff, noOff, true, false, 3, false},
		{"receiver-off-pump-segments", tap.Config{}, noOff, true, true, 2, false},
		{"read-write-segments", tap.Config{}, tap.Config{}, false, true, 2, false},
		{"offloads-on-no-io_uring", tap.Config{}, tap.Config{}, true, true, 2, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Reads and writes go through io_uring where it is usable, except
			// in the no-io_uring case (readv and write(2), one frame each).
			if strings.HasSuffix(tc.name, "no-io_uring") {
				ioPath(t, false)
			}
			p := newPair(t, tc.a, tc.b, tc.gso)
			p.Ping(t)
			gbps := devtest.Iperf3(t, p.A, p.B, devtest.AddrB, tc.seconds)
			sa, sb := p.DA.Stats(), p.DB.Stats()
			t.Logf("iperf3 TCP A->B over IPv4: %.2f Gbit/s (offloads A %v, B %v, gso %v)", gbps, p.DA.Offloads(), p.DB.Offloads(), tc.gso)
			t.Logf("A: %+v", sa)
			t.Logf("B: %+v", sb)
			t.Logf("frames per read: A->B %.2f, B->A %.2f", float64(p.ab.frames.Load())/float64(p.ab.reads.Load()),
				float64(p.ba.frames.Load())/float64(p.ba.reads.Load()))
			if tc.ipv6Perf && !testing.Short() {
				t.Logf("iperf3 TCP A->B over IPv6: %.2f Gbit/s", devtest.Iperf3(t, p.A, p.B, devtest.AddrB6, 1))
			}
			if !tc.wantGSO && p.ab.maxFrame.Load() > 14+1500 {
				t.Errorf("without offloads A handed over a %d-byte frame", p.ab.maxFrame.Load())
			}
			if tc.wantGSO != (sa.RxGSO > 0) {
				t.Errorf("A read %d super-packets, want some: %v", sa.RxGSO, tc.wantGSO)
			}
			switch {
			case tc.wantGSO && tc.gso && p.DB.Offloads() != 0:
				if sb.TxGSO == 0 || sb.TxSoftware != 0 {
					t.Errorf("B: %d super-packets passed whole, %d cut in software; want some, none", sb.TxGSO, sb.TxSoftware)
				}
			case tc.wantGSO && !tc.gso:
				if sa.RxSegmented == 0 || sb.TxGSO != 0 {
					t.Errorf("Read cut %d super-packets, B wrote %d whole; want some, none", sa.RxSegmented, sb.TxGSO)
				}
			default:
				if sb.TxGSO != 0 {
					t.Errorf("B got %d super-packets, want none", sb.TxGSO)
				}
			}
			if sa.RxDropped+sb.RxDropped+sa.TxDropped+sb.TxDropped != 0 {
				t.Errorf("drops: A %+v, B %+v", sa, sb)
			}
		})
	}
}

// farEnd prepares ns for the tests that play the far end of a TAP
// themselves: the kernel side named dev gets 10.99.0.1/24 and is up, IPv6
// is off (no stray neighbor discovery) and 10.99.0.2 is a static neighbor
// at fakeMAC. It returns the kernel side's MAC.
func farEnd(t *testing.T, ns *nstest.NS, dev string) net.HardwareAddr {
	t.Helper()
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	devtest.Up(t, ns, dev, devtest.AddrA, netip.Addr{})
	ns.Run(t, "ip", "neigh", "replace", devtest.AddrB.String(), "lladdr", fakeMAC.String(), "dev", dev, "nud", "permanent")
	l, err := devtest.LinkIn(t, ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

func gv(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// ethIPv4 builds, with gVisor's header package, an Ethernet frame from
// fakeMAC/10.99.0.2 to dst/10.99.0.1 carrying l4 (protocol proto), at
// off in a buffer with room for a 64 KiB frame.
func ethIPv4(dst net.HardwareAddr, proto uint8, id uint16, l4 []byte) []byte {
	b := make([]byte, off+14+20+len(l4), off+tap.MaxFrame)
	header.Ethernet(b[off:]).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(fakeMAC), DstAddr: tcpip.LinkAddress(dst), Type: header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(b[off+14:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(20 + len(l4)), ID: id, TTL: 64, Protocol: proto,
		SrcAddr: gv(devtest.AddrB), DstAddr: gv(devtest.AddrA),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[off+34:], l4)
	return b
}

// echoRequest is an ICMP echo request frame to the kernel side.
func echoRequest(dst net.HardwareAddr, seq uint16) []byte {
	icmp := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize+32))
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(0x4242)
	icmp.SetSequence(seq)
	icmp.SetChecksum(header.ICMPv4Checksum(icmp, 0))
	return ethIPv4(dst, uint8(header.ICMPv4ProtocolNumber), seq, icmp)
}

// udpSuper is a UDP packet from 10.99.0.2:7000 to 10.99.0.1:port carrying
// payload. With gso it is a USO super-packet of size-byte segments with a
// partial checksum; otherwise a plain packet, its checksum partial or full.
func udpSuper(dst net.HardwareAddr, port uint16, payload []byte, gso bool, size uint16, partial bool) ([]byte, packet.GSO) {
	u := header.UDP(make([]byte, 8+len(payload)))
	u.Encode(&header.UDPFields{SrcPort: 7000, DstPort: port, Length: uint16(len(u))})
	copy(u[8:], payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gv(devtest.AddrB), gv(devtest.AddrA), uint16(len(u)))
	g := packet.GSO{NeedsCsum: partial || gso, CsumStart: 20, CsumOffset: 6}
	if g.NeedsCsum {
		u.SetChecksum(xsum)
	} else {
		u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, xsum)))
	}
	if gso {
		g.Type, g.Size, g.HdrLen = packet.GSOUDPL4, size, 28
	}
	return ethIPv4(dst, uint8(header.UDPProtocolNumber), 1, u), g
}

// listenUDP opens a UDP socket on 10.99.0.1:port in ns.
func listenUDP(t *testing.T, ns *nstest.NS, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(devtest.AddrA.AsSlice()), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// recvAll reads datagrams from c until want bytes came or a second passed
// without one, and returns them.
func recvAll(t *testing.T, c *net.UDPConn, want int) [][]byte {
	t.Helper()
	var got [][]byte
	total := 0
	buf := make([]byte, 70000)
	for total < want {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		got = append(got, bytes.Clone(buf[:n]))
		total += n
	}
	return got
}

// readUntil reads from d until a frame satisfies match or 2 s pass, and
// returns it with its descriptor. It reads with ReadGSO when gso is set.
func readUntil(t *testing.T, d *tap.Device, bufs [][]byte, gso bool, match func([]byte, packet.GSO) bool) ([]byte, packet.GSO) {
	t.Helper()
	sizes := make([]int, len(bufs))
	descs := make([]packet.GSO, len(bufs))
	type res struct {
		frame []byte
		g     packet.GSO
		err   error
	}
	done := make(chan res, 1)
	go func() {
		for {
			var n int
			var err error
			if gso {
				n, err = d.ReadGSO(bufs, sizes, descs, off)
			} else {
				n, err = d.Read(bufs, sizes, off)
			}
			if err != nil {
				done <- res{err: err}
				return
			}
			for i := range n {
				if f := bufs[i][off : off+sizes[i]]; match(f, descs[i]) {
					done <- res{frame: bytes.Clone(f), g: descs[i]}
					return
				}
			}
		}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("read: %v", r.err)
		}
		return r.frame, r.g
	case <-time.After(2 * time.Second):
		_ = d.Close() // ends the reader
		t.Fatal("no matching frame within 2 s")
	}
	return nil, packet.GSO{}
}

// isEchoReply matches the kernel's answer to echoRequest(seq).
func isEchoReply(seq uint16) func([]byte, packet.GSO) bool {
	return func(f []byte, _ packet.GSO) bool {
		if len(f) < 14+20+8 || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
			return false
		}
		ip := header.IPv4(f[14:])
		icmp := header.ICMPv4(ip.Payload())
		return ip.Protocol() == uint8(header.ICMPv4ProtocolNumber) && icmp.Type() == header.ICMPv4EchoReply && icmp.Sequence() == seq
	}
}

// TestKernelEcho writes echo requests to the kernel side and reads its
// replies, through Write/Read and WriteGSO/ReadGSO, and shows that neither
// allocates in steady state.
func TestKernelEcho(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := create(t, ns, "pre", tap.Config{MTU: 1400})
	mac := farEnd(t, ns, "pre")
	if l, _ := devtest.LinkIn(t, ns, "pre"); l.Attrs().MTU != 1400 {
		t.Fatalf("MTU %d, want 1400", l.Attrs().MTU)
	}
	bufs := devtest.Bufs(tap.BatchSize, off+tap.MaxFrame)
	for seq := uint16(1); seq <= 3; seq++ {
		if _, err := d.Write([][]byte{echoRequest(mac, seq)}, off); err != nil {
			t.Fatal(err)
		}
		f, g := readUntil(t, d, bufs, seq%2 == 0, isEchoReply(seq))
		if g != (packet.GSO{}) {
			t.Fatalf("echo reply with descriptor %+v", g)
		}
		if !header.IPv4(f[14:]).IsChecksumValid() || header.ICMPv4(header.IPv4(f[14:]).Payload()).Checksum() == 0 {
			t.Fatal("echo reply with a bad checksum")
		}
	}

	// Steady state: one echo out, its reply in, no allocation.
	req := echoRequest(mac, 100)
	out := [][]byte{req}
	gout := []packet.GSO{{}}
	sizes := make([]int, len(bufs))
	descs := make([]packet.GSO, len(bufs))
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := d.WriteGSO(out, gout, off); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ReadGSO(bufs, sizes, descs, off); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Write(out, off); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Read(bufs, sizes, off); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per echo round trip, want 0", allocs)
	}

	// A batch of two (written through io_uring where it is usable) and
	// their replies allocate nothing either.
	two := [][]byte{req, echoRequest(mac, 101)}
	allocs = testing.AllocsPerRun(50, func() {
		if _, err := d.Write(two, off); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(two); {
			n, err := d.Read(bufs, sizes, off)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch of two echoes, want 0", allocs)
	}
}

// TestWriteGSO writes a USO super-packet and a packet with a partial
// checksum to the kernel: passed whole to a TAP with offloads, cut and
// checksummed in software for one without; either way a socket in the
// namespace receives every datagram intact (the kernel drops any with a bad
// checksum).
// Each case runs with batches written through io_uring and frame by frame.
func TestWriteGSO(t *testing.T) {
	for _, c := range []struct{ disable, ring bool }{{false, true}, {true, true}, {false, false}, {true, false}} {
		disable := c.disable
		t.Run(fmt.Sprintf("offloads-disabled=%v/ring=%v", c.disable, c.ring), func(t *testing.T) {
			ioPath(t, c.ring)
			ns := nstest.New(t)
			checkFDs(t)
			d := create(t, ns, "prw", tap.Config{DisableOffloads: disable})
			mac := farEnd(t, ns, "prw")
			c := listenUDP(t, ns, 7001)
			payload := make([]byte, 4500)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			super, gs := udpSuper(mac, 7001, payload, true, 1000, true)
			plain, gp := udpSuper(mac, 7001, payload[:300], false, 0, true)
			full, gf := udpSuper(mac, 7001, payload[:200], false, 0, false)
			n, err := d.WriteGSO([][]byte{super, plain, full}, []packet.GSO{gs, gp, gf}, off)
			if err != nil || n != 3 {
				t.Fatalf("WriteGSO = %d, %v", n, err)
			}
			got := recvAll(t, c, len(payload)+500)
			want := [][]byte{payload[0:1000], payload[1000:2000], payload[2000:3000], payload[3000:4000], payload[4000:4500], payload[:300], payload[:200]}
			if len(got) != len(want) {
				t.Fatalf("received %d datagrams, want %d (stats %+v)", len(got), len(want), d.Stats())
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes, differs from the %d sent", i, len(got[i]), len(want[i]))
				}
			}
			s := d.Stats()
			if disable {
				if d.Offloads() != 0 || s.TxSoftware != 2 || s.TxGSO != 0 || s.TxFrames != 7 {
					t.Fatalf("offloads %v, stats %+v; want software for 2 packets, 7 frames", d.Offloads(), s)
				}
			} else if d.Offloads()&packet.OffloadUSO == 0 {
				t.Logf("kernel without USO (offloads %v): cut in software", d.Offloads())
			} else if s.TxSoftware != 0 || s.TxGSO != 1 || s.TxFrames != 3 {
				t.Fatalf("stats %+v; want 1 super-packet, 3 frames, no software", s)
			}

			// The same from concurrent writers, each with its own buffers.
			rc, _ := c.SyscallConn()
			_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) })
			const writers, rounds = 4, 10
			var wg sync.WaitGroup
			for range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					bufs := [][]byte{bytes.Clone(super), bytes.Clone(plain), bytes.Clone(full)}
					for range rounds {
						if _, err := d.WriteGSO(bufs, []packet.GSO{gs, gp, gf}, off); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			got = recvAll(t, c, writers*rounds*(len(payload)+500))
			if len(got) != writers*rounds*len(want) {
				t.Fatalf("concurrent writers: received %d datagrams, want %d (stats %+v)", len(got), writers*rounds*len(want), d.Stats())
			}
			for i, g := range got {
				if !slices.ContainsFunc(want, func(w []byte) bool { return bytes.Equal(g, w) }) {
					t.Fatalf("concurrent writers: datagram %d (%d bytes) is none of those sent", i, len(g))
				}
			}
		})
	}
}

// ioPath makes multi-frame writes and ReadGSO go through io_uring (ring)
// or one write(2) and readv(2) per frame for the rest of the test (devices
// that already read keep their ring).
func ioPath(t *testing.T, ring bool) {
	t.Helper()
	if ring {
		if err := uring.Available(); err != nil {
			t.Skipf("io_uring not usable here, batches are written frame by frame (the ring=false case): %v", err)
		}
	}
	prev := uring.SetFallback(!ring)
	t.Cleanup(func() { uring.SetFallback(prev) })
}

// TestReadSegments has the kernel send a USO super-packet (a UDP_SEGMENT
// socket) and reads it: whole with ReadGSO; cut into segments by ReadGSO
// when the buffers are smaller than MaxFrame; and by Read, over several
// calls when its batch is smaller than the segments' number.
func TestReadSegments(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := create(t, ns, "prr", tap.Config{})
	if d.Offloads()&packet.OffloadUSO == 0 {
		t.Skipf("skipped: the kernel refused USO (offloads %v)", d.Offloads())
	}
	farEnd(t, ns, "prr")
	var s *net.UDPConn
	if err := ns.Do(func() (err error) {
		s, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(devtest.AddrA.AsSlice()), Port: 7002}, &net.UDPAddr{IP: net.IP(devtest.AddrB.AsSlice()), Port: 7003})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc, _ := s.SyscallConn()
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 1000) }); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
	payload := make([]byte, 4500)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	isOurs := func(f []byte) bool {
		return len(f) >= 42 && header.Ethernet(f).Type() == header.IPv4ProtocolNumber &&
			header.IPv4(f[14:]).Protocol() == uint8(header.UDPProtocolNumber) && header.UDP(f[34:]).DestinationPort() == 7003
	}
	// checkSegs verifies segments of payload as they came out of the device.
	checkSegs := func(frames [][]byte) {
		t.Helper()
		var got []byte
		for i, f := range frames {
			ip := header.IPv4(f[14:])
			u := header.UDP(ip.Payload())
			if !ip.IsChecksumValid() || !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0)) {
				t.Fatalf("segment %d: bad checksum", i)
			}
			if len(u.Payload()) > 1000 {
				t.Fatalf("segment %d: %d bytes", i, len(u.Payload()))
			}
			got = append(got, u.Payload()...)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("segments carry %d bytes, differ from the %d sent", len(got), len(payload))
		}
	}

	t.Run("ReadGSO-whole", func(t *testing.T) {
		if _, err := s.Write(payload); err != nil {
			t.Fatal(err)
		}
		f, g := readUntil(t, d, devtest.Bufs(8, off+tap.MaxFrame), true, func(f []byte, _ packet.GSO) bool { return isOurs(f) })
		if g.Type != packet.GSOUDPL4 || g.Size != 1000 || !g.NeedsCsum || g.CsumStart != 20 || g.CsumOffset != 6 || g.HdrLen != 28 {
			t.Fatalf("descriptor %+v, want USO of 1000-byte segments", g)
		}
		out := devtest.Bufs(8, 1100)
		sizes := make([]int, 8)
		n, err := packet.GSOSegment(f[14:], g, out, sizes, 14)
		if err != nil || n != 5 {
			t.Fatalf("GSOSegment = %d, %v", n, err)
		}
		var frames [][]byte
		for i := range n {
			copy(out[i], f[:14])
			frames = append(frames, out[i][:14+sizes[i]])
		}
		checkSegs(frames)
	})
	collect := func(t *testing.T, read func() (int, [][]byte, []int, []packet.GSO, error)) (frames [][]byte, calls []int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for len(frames) < 5 && time.Now().Before(deadline) {
			n, bufs, sizes, descs, err := read()
			if err != nil {
				t.Fatal(err)
			}
			k := 0
			for i := range n {
				if f := bufs[i][off : off+sizes[i]]; isOurs(f) {
					if descs != nil && descs[i] != (packet.GSO{}) {
						t.Fatalf("segment with descriptor %+v", descs[i])
					}
					frames = append(frames, bytes.Clone(f))
					k++
				}
			}
			calls = append(calls, k)
		}
		return frames, calls
	}
	t.Run("ReadGSO-short-buffers", func(t *testing.T) {
		before := d.Stats().RxSegmented
		if _, err := s.Write(payload); err != nil {
			t.Fatal(err)
		}
		bufs, sizes, descs := devtest.Bufs(8, off+1100), make([]int, 8), make([]packet.GSO, 8)
		frames, _ := collect(t, func() (int, [][]byte, []int, []packet.GSO, error) {
			n, err := d.ReadGSO(bufs, sizes, descs, off)
			return n, bufs, sizes, descs, err
		})
		checkSegs(frames)
		if d.Stats().RxSegmented != before+1 {
			t.Fatalf("RxSegmented %d, want %d", d.Stats().RxSegmented, before+1)
		}
	})
	t.Run("Read-batch-of-2", func(t *testing.T) {
		if _, err := s.Write(payload); err != nil {
			t.Fatal(err)
		}
		bufs, sizes := devtest.Bufs(2, off+1100), make([]int, 2)
		frames, calls := collect(t, func() (int, [][]byte, []int, []packet.GSO, error) {
			n, err := d.Read(bufs, sizes, off)
			return n, bufs, sizes, nil, err
		})
		checkSegs(frames)
		if len(calls) != 3 || calls[0] != 2 || calls[1] != 2 || calls[2] != 1 {
			t.Fatalf("segments per Read %v, want [2 2 1]", calls)
		}
	})
	if s := d.Stats(); s.RxGSO < 3 || s.RxDropped != 0 {
		t.Fatalf("stats %+v: want 3 super-packets read, no drops", s)
	}
}

// TestPersist closes a persistent TAP, finds it still there with its
// address, re-attaches with Create, is refused a second attachment, and
// deletes it by clearing persistence before closing.
func TestPersist(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := create(t, ns, "prp", tap.Config{Persist: true})
	devtest.Up(t, ns, "prp", devtest.AddrA, netip.Addr{})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := devtest.LinkIn(t, ns, "prp"); err != nil {
		t.Fatalf("persistent TAP gone after Close: %v", err)
	}
	if out := ns.Run(t, "ip", "-4", "addr", "show", "dev", "prp"); !strings.Contains(out, devtest.AddrA.String()) {
		t.Fatalf("address lost: %s", out)
	}
	d2 := create(t, ns, "prp", tap.Config{Persist: true})
	if d2.Name() != "prp" {
		t.Fatalf("re-attached to %q", d2.Name())
	}
	if err := ns.Do(func() error { _, err := tap.Create("prp", tap.Config{}); return err }); !errors.Is(err, tap.ErrBusy) {
		t.Fatalf("second attachment: %v, want ErrBusy", err)
	}
	// Traffic flows on the re-attached descriptor.
	mac := farEnd(t, ns, "prp")
	if _, err := d2.Write([][]byte{echoRequest(mac, 7)}, off); err != nil {
		t.Fatal(err)
	}
	readUntil(t, d2, devtest.Bufs(8, off+tap.MaxFrame), true, isEchoReply(7))
	if err := d2.SetPersist(false); err != nil {
		t.Fatal(err)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := devtest.LinkIn(t, ns, "prp"); err == nil {
		t.Fatal("TAP still there after SetPersist(false) and Close")
	}

	// Create without Persist on a persistent TAP makes it go with Close.
	create(t, ns, "prq", tap.Config{Persist: true}).Close()
	create(t, ns, "prq", tap.Config{}).Close()
	if _, err := devtest.LinkIn(t, ns, "prq"); err == nil {
		t.Fatal("TAP still there after a non-persistent attachment closed")
	}
}

// TestFromFile wraps descriptors opened elsewhere: a TAP made in a pod's
// namespace and handed to a process in another (here the test's own), whose
// MTU must be set in the pod's namespace; and descriptors it must refuse.
func TestFromFile(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	f := devtest.OpenRaw(t, ns, "prf", unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
	d, err := tap.FromFile(f, tap.Config{MTU: 1300, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("FromFile left its file open: %v", err)
	}
	if d.Name() != "prf" || d.Offloads() == 0 {
		t.Fatalf("name %q, offloads %v", d.Name(), d.Offloads())
	}
	l, err := devtest.LinkIn(t, ns, "prf")
	if err != nil || l.Attrs().MTU != 1300 {
		t.Fatalf("MTU in the device's namespace: %v, %v; want 1300", l, err)
	}
	mac := farEnd(t, ns, "prf")
	if _, err := d.Write([][]byte{echoRequest(mac, 9)}, off); err != nil {
		t.Fatal(err)
	}
	readUntil(t, d, devtest.Bufs(8, off+tap.MaxFrame), true, isEchoReply(9))

	for _, tc := range []struct {
		name  string
		flags uint16
		want  error
	}{
		{"tun", unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR, tap.ErrNotTAP},
		{"no-vnet-hdr", unix.IFF_TAP | unix.IFF_NO_PI, tap.ErrNoVnetHdr},
	} {
		f := devtest.OpenRaw(t, ns, "prx", tc.flags)
		if _, err := tap.FromFile(f, tap.Config{}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := f.Stat(); err != nil {
			t.Errorf("%s: FromFile closed the file it refused: %v", tc.name, err)
		}
		_ = f.Close() // the TAP goes with it, freeing the name
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if _, err := tap.FromFile(null, tap.Config{}); !errors.Is(err, tap.ErrNotTAP) {
		t.Errorf("/dev/null: %v, want ErrNotTAP", err)
	}
	if _, err := tap.FromFile(null, tap.Config{MTU: 20}); !errors.Is(err, tap.ErrConfig) {
		t.Errorf("MTU 20: %v, want ErrConfig", err)
	}
}

// TestClose unblocks a blocked Read, is idempotent, and makes every later
// call fail with link.ErrClosed.
func TestClose(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := create(t, ns, "prc", tap.Config{})
	bufs := devtest.Bufs(4, off+tap.MaxFrame)
	devtest.CheckClose(t, d, bufs, bufs[:1])
	if _, err := d.Write(bufs[:1], 4); !errors.Is(err, tap.ErrHeadroom) {
		t.Fatalf("Write with 4 bytes of headroom: %v", err)
	}
	if _, err := devtest.LinkIn(t, ns, "prc"); err == nil {
		t.Fatal("non-persistent TAP still there after Close")
	}
}

// TestDetached deletes the TAP under an open device: a blocked Read and a
// later Write fail with ErrDetached instead of hanging or succeeding.
func TestDetached(t *testing.T) {
	ns := nstest.New(t)
	checkFDs(t)
	d := create(t, ns, "prd", tap.Config{})
	mac := farEnd(t, ns, "prd")
	devtest.CheckDetached(t, ns, d, "prd", devtest.Bufs(4, off+tap.MaxFrame), tap.ErrDetached)
	for _, ring := range []bool{false, true} {
		if ring && uring.Available() != nil {
			continue // the frame-by-frame path only
		}
		prev := uring.SetFallback(!ring)
		n, err := d.Write([][]byte{echoRequest(mac, 1), echoRequest(mac, 2)}, off)
		uring.SetFallback(prev)
		if n != 0 || !errors.Is(err, tap.ErrDetached) {
			t.Fatalf("Write (ring %v) on a deleted TAP: %d, %v, want 0, ErrDetached", ring, n, err)
		}
	}
	if _, err := d.Write([][]byte{echoRequest(mac, 1)}, off); !errors.Is(err, tap.ErrDetached) {
		t.Fatalf("Write on a deleted TAP: %v, want ErrDetached", err)
	}
}
