package pcap

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	podCIDR = netip.MustParsePrefix("10.244.1.0/24")
	addrA   = netip.MustParseAddr("10.244.1.2")
	addrB   = netip.MustParseAddr("10.244.1.3")
	macA    = packet.MAC{2, 0, 0, 0, 0, 0xa}
	macB    = packet.MAC{2, 0, 0, 0, 0, 0xb}
)

func frame(e *engine.Engine, src packet.MAC, from, to netip.Addr, seq byte) []byte {
	const n = 32
	f := make([]byte, packet.EthernetLen+packet.IPv4MinLen+packet.UDPLen+n)
	packet.Ethernet(f).Encode(e.GatewayMAC(), src, packet.EtherTypeIPv4)
	ip := f[packet.EthernetLen:]
	packet.IPv4(ip).Encode(packet.IPv4Fields{TotalLen: uint16(len(ip)), TTL: 64, Protocol: packet.ProtoUDP, Src: from, Dst: to})
	u := ip[packet.IPv4MinLen:]
	binary.BigEndian.PutUint16(u[0:], 1000)
	binary.BigEndian.PutUint16(u[2:], 2000)
	binary.BigEndian.PutUint16(u[4:], packet.UDPLen+n)
	u[packet.UDPLen] = seq
	return f
}

// readPcap parses a classic pcap file independently of Writer.
func readPcap(t *testing.T, b []byte) (LinkType, [][]byte) {
	t.Helper()
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Fatal("bad pcap header")
	}
	lt := LinkType(binary.LittleEndian.Uint32(b[20:]))
	var pkts [][]byte
	for off := 24; off < len(b); {
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		orig := int(binary.LittleEndian.Uint32(b[off+12:]))
		if incl != orig || off+16+incl > len(b) {
			t.Fatalf("bad record at %d: incl %d orig %d", off, incl, orig)
		}
		pkts = append(pkts, b[off+16:off+16+incl])
		off += 16 + incl
	}
	return lt, pkts
}

// twoPods returns an engine (closed when the test ends) with two L2 pod
// ports, a (addrA, macA) and b (addrB, macB), and the hosts' ends of
// their links.
func twoPods(t *testing.T) (e *engine.Engine, pa *engine.Port, ha, hb *linktest.End) {
	t.Helper()
	e, err := engine.New(engine.Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	ha, da := linktest.Pipe(64, 2000, 16)
	hb, db := linktest.Pipe(64, 2000, 16)
	pa, err = e.AddPort(da, engine.PortConfig{Name: "a", Kind: engine.KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(db, engine.PortConfig{Name: "b", Kind: engine.KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	return e, pa, ha, hb
}

func TestCapturePort(t *testing.T) {
	e, pa, ha, hb := twoPods(t)
	var out bytes.Buffer
	done := make(chan Stats)
	go func() {
		st, err := Capture(context.Background(), pa, &out, Options{Count: 6, Duration: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	// Wait until the tap is installed (SwapTap(nil, nil) fails once it is).
	for deadline := time.Now().Add(2 * time.Second); ; {
		if !pa.SwapTap(nil, nil) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := Capture(context.Background(), pa, &bytes.Buffer{}, Options{Count: 1}); err != ErrBusy {
		t.Fatalf("a second capture on the port: %v, want ErrBusy", err)
	}
	bufs, sizes := [][]byte{make([]byte, 2000)}, []int{0}
	for i := range 3 { // a -> b (rx on a), b -> a (tx on a)
		_, _ = ha.Write([][]byte{frame(e, macA, addrA, addrB, byte(i))}, 0)
		if _, err := hb.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
		_, _ = hb.Write([][]byte{frame(e, macB, addrB, addrA, byte(10+i))}, 0)
		if _, err := ha.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	st := <-done
	if st.Captured != 6 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	lt, pkts := readPcap(t, out.Bytes())
	if lt != LinkEthernet || len(pkts) != 6 {
		t.Fatalf("link type %d, %d packets", lt, len(pkts))
	}
	var seqs []byte
	for _, p := range pkts {
		var pp packet.Parsed
		if packet.Parse(p, true, &pp) != packet.OK {
			t.Fatal("captured frame does not parse")
		}
		seqs = append(seqs, p[pp.L4Off+packet.UDPLen])
	}
	if !bytes.Equal(seqs, []byte{0, 10, 1, 11, 2, 12}) {
		t.Fatalf("captured in order %v", seqs)
	}
	// The tap is gone: the port is free for the next capture.
	if !pa.SwapTap(nil, nil) {
		t.Fatal("tap left installed")
	}

	t.Run("tcpdump reads it", func(t *testing.T) {
		if _, err := exec.LookPath("tcpdump"); err != nil {
			t.Skip("skipped: tcpdump not installed (run .ci/deps as root)")
		}
		f := filepath.Join(t.TempDir(), "a.pcap")
		if err := os.WriteFile(f, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := exec.Command("tcpdump", "-n", "-r", f).CombinedOutput()
		if err != nil {
			t.Fatalf("tcpdump: %v\n%s", err, got)
		}
		if n := strings.Count(string(got), "UDP, length 32"); n != 6 {
			t.Fatalf("tcpdump saw %d UDP packets:\n%s", n, got)
		}
		if !strings.Contains(string(got), "10.244.1.2.1000 > 10.244.1.3.2000") {
			t.Fatalf("tcpdump output:\n%s", got)
		}
	})
}

func TestCaptureStopsAtDuration(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, da := linktest.Pipe(4, 2000, 4)
	pa, err := e.AddPort(da, engine.PortConfig{Name: "a", MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var out bytes.Buffer
	st, err := Capture(context.Background(), pa, &out, Options{Duration: 100 * time.Millisecond})
	if err != nil || st.Captured != 0 {
		t.Fatalf("%+v %v", st, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
	if lt, pkts := readPcap(t, out.Bytes()); lt != LinkRaw || len(pkts) != 0 {
		t.Fatalf("link type %d, %d packets", lt, len(pkts))
	}
}

// flushRecorder is a Flusher that records what reached the underlying
// writer at each flush.
type flushRecorder struct {
	buf     bytes.Buffer // written, not yet flushed
	flushed bytes.Buffer
	flushes chan int // size of flushed data after each flush
}

func (f *flushRecorder) Write(b []byte) (int, error) { return f.buf.Write(b) }
func (f *flushRecorder) Flush() error {
	_, _ = f.buf.WriteTo(&f.flushed)
	f.flushes <- f.flushed.Len()
	return nil
}

// TestCaptureFlushes: a buffered writer is flushed after the header and
// whenever the queue is drained, so a live reader sees each packet; a
// capture on a busy port writes nothing at all.
func TestCaptureFlushes(t *testing.T) {
	e, pa, ha, hb := twoPods(t)
	w := &flushRecorder{flushes: make(chan int, 16)}
	done := make(chan Stats, 1)
	go func() {
		st, err := Capture(context.Background(), pa, w, Options{Count: 2, Duration: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	if n := <-w.flushes; n != 24 {
		t.Fatalf("first flush: %d bytes, want the 24-byte header", n)
	}
	var busy bytes.Buffer
	if _, err := Capture(context.Background(), pa, &busy, Options{Count: 1}); err != ErrBusy || busy.Len() != 0 {
		t.Fatalf("capture on a busy port: %v, wrote %d bytes; want ErrBusy and nothing", err, busy.Len())
	}
	f := frame(e, macA, addrA, addrB, 1)
	bufs, sizes := [][]byte{make([]byte, 2000)}, []int{0}
	_, _ = ha.Write([][]byte{f}, 0)
	if _, err := hb.Read(bufs, sizes, 0); err != nil {
		t.Fatal(err)
	}
	// The one queued packet is flushed before the capture ends.
	if n := <-w.flushes; n != 24+16+len(f) {
		t.Fatalf("flush after one packet: %d bytes, want %d", n, 24+16+len(f))
	}
	_, _ = ha.Write([][]byte{f}, 0)
	if _, err := hb.Read(bufs, sizes, 0); err != nil {
		t.Fatal(err)
	}
	if st := <-done; st.Captured != 2 {
		t.Fatalf("stats %+v", st)
	}
	if n := <-w.flushes; n != 24+2*(16+len(f)) {
		t.Fatalf("final flush: %d bytes", n)
	}
}
