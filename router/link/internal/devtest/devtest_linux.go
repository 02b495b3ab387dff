// Package devtest is the scaffolding that the privileged tests of the
// kernel devices (tap, tun) share: two throwaway network namespaces, each
// with a device whose kernel side has an address, joined only by a Go copy
// loop (a Pair and Pump); iperf3 between them; descriptors opened as another
// process would open them (OpenRaw); a check for leaked descriptors; and
// the checks of Close and of a deleted device that every device passes.
package devtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/nstest"
)

// The kernel sides' addresses: A's device has AddrA/24 and AddrA6/64, B's
// AddrB/24 and AddrB6/64.
var (
	AddrA, AddrB   = netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	AddrA6, AddrB6 = netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::2")
)

// CheckFDs fails the test when it ends with more open descriptors than it
// had when CheckFDs was called. Register it after the namespaces (whose
// handles are closed later) and before the devices. settle, when not nil,
// runs before each count (e.g. to release descriptors a pool keeps idle,
// which are not the test's).
func CheckFDs(t *testing.T, settle func()) {
	t.Helper()
	count := func() int {
		if settle != nil {
			settle()
		}
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := count()
	t.Cleanup(func() {
		// Descriptors of exited helpers close asynchronously; wait a little.
		deadline := time.Now().Add(2 * time.Second)
		for count() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := count(); n > before {
			t.Errorf("descriptor leak: %d open, %d before", n, before)
		}
	})
}

// In runs open in ns (on a thread switched into it), fails the test with
// what when it fails, and closes the device it returns at the end of the
// test.
func In[D io.Closer](t *testing.T, ns *nstest.NS, what string, open func() (D, error)) D {
	t.Helper()
	var d D
	if err := ns.Do(func() (err error) {
		d, err = open()
		return err
	}); err != nil {
		t.Fatalf("%s in %s: %v", what, ns.Name, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// Bufs returns n buffers of size bytes.
func Bufs(n, size int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b
}

// LinkIn returns the link name in ns.
func LinkIn(t *testing.T, ns *nstest.NS, name string) (netlink.Link, error) {
	t.Helper()
	var l netlink.Link
	err := ns.Do(func() (err error) {
		l, err = netlink.LinkByName(name)
		return err
	})
	return l, err
}

// Up gives the kernel side of dev in ns the address v4/24 and, when valid,
// v6/64, and brings it up.
func Up(t *testing.T, ns *nstest.NS, dev string, v4, v6 netip.Addr) {
	t.Helper()
	ns.Run(t, "ip", "addr", "replace", netip.PrefixFrom(v4, 24).String(), "dev", dev)
	if v6.IsValid() {
		ns.Run(t, "ip", "addr", "replace", netip.PrefixFrom(v6, 64).String(), "dev", dev, "nodad")
	}
	ns.Run(t, "ip", "link", "set", dev, "up")
}

// Pump copies packets from src to dst with Read and Write, a batch of
// src.BatchSize() at a time (so dst can coalesce what src cut), into
// buffers of size bytes at offset link.Headroom, until either is closed.
// seen, when not nil, is given the sizes of each batch read.
func Pump(src, dst link.Device, size int, seen func(sizes []int)) {
	const off = link.Headroom
	bufs := Bufs(src.BatchSize(), size)
	sizes := make([]int, len(bufs))
	out := make([][]byte, len(bufs))
	for {
		n, err := src.Read(bufs, sizes, off)
		if err != nil {
			return
		}
		if seen != nil {
			seen(sizes[:n])
		}
		for i := range n {
			out[i] = bufs[i][:off+sizes[i]]
		}
		if _, err := dst.Write(out[:n], off); err != nil {
			return
		}
	}
}

// Pair is two namespaces, A and B, each with a device (DA named "pra" in A,
// DB "prb" in B) whose kernel side is up with AddrA and AddrA6, AddrB and
// AddrB6, and the copy loops the test starts with Go.
type Pair[D link.Device] struct {
	A, B   *nstest.NS
	DA, DB D
	loops  sync.WaitGroup
}

// NewPair makes the namespaces, registers CheckFDs with settle, opens the
// devices with open (which closes them at the end of the test, as In does)
// and brings their kernel sides up. At the end of the test it closes both
// devices and fails the test when a loop started with Go has not returned
// 5 s later.
func NewPair[D link.Device](t *testing.T, settle func(), open func(ns *nstest.NS, name string) D) *Pair[D] {
	t.Helper()
	p := &Pair[D]{A: nstest.New(t), B: nstest.New(t)}
	CheckFDs(t, settle)
	p.DA = open(p.A, "pra")
	p.DB = open(p.B, "prb")
	Up(t, p.A, "pra", AddrA, AddrA6)
	Up(t, p.B, "prb", AddrB, AddrB6)
	t.Cleanup(func() {
		_ = p.DA.Close()
		_ = p.DB.Close()
		done := make(chan struct{})
		go func() { p.loops.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("pumps still running 5 s after Close")
		}
	})
	return p
}

// Go runs loop, a copy loop between the devices that returns once either
// is closed, in a goroutine of its own.
func (p *Pair[D]) Go(loop func()) {
	p.loops.Add(1)
	go func() {
		defer p.loops.Done()
		loop()
	}()
}

// Ping pings B's kernel side from A's, three times over IPv4 and twice over
// IPv6, failing the test when a ping is lost.
func (p *Pair[D]) Ping(t *testing.T) {
	t.Helper()
	nstest.RequireCommand(t, "ping")
	p.A.Run(t, "ping", "-c", "3", "-i", "0.2", "-W", "2", AddrB.String())
	p.A.Run(t, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", AddrB6.String())
}

// Iperf3 runs an iperf3 TCP test of the given seconds (one with -short)
// from client to a server at srv in server's namespace, and returns the
// receiver's Gbit/s.
func Iperf3(t *testing.T, client, server *nstest.NS, srv netip.Addr, seconds int) float64 {
	t.Helper()
	nstest.RequireCommand(t, "iperf3")
	if testing.Short() {
		seconds = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+30)*time.Second)
	defer cancel()
	s := server.Command(ctx, "iperf3", "-s", "-1", "-B", srv.String(), "-p", "5201")
	var serr bytes.Buffer
	s.Stderr = &serr
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
	for try := 0; try < 50; try++ { // until the server listens
		out, err = client.Command(ctx, "iperf3", family, "-c", srv.String(), "-p", "5201", "-t", fmt.Sprint(seconds), "-J").Output()
		if !strings.Contains(string(out), "unable to connect") { // iperf3 -J may exit 0 on it
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s\nserver: %s", err, out, serr.String())
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	if res.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 moved no data:\n%s", out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// OpenRaw opens /dev/net/tun in ns with the given TUNSETIFF flags, as
// another process would (e.g. a CNI plugin: blocking), and returns it as a
// file, closed at the end of the test.
func OpenRaw(t *testing.T, ns *nstest.NS, name string, flags uint16) *os.File {
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

// readErrs reads from d into bufs in a goroutine, once or, with until,
// until a Read fails, and sends the last Read's error.
func readErrs(d link.Device, bufs [][]byte, until bool) <-chan error {
	sizes := make([]int, len(bufs))
	errc := make(chan error, 1)
	go func() {
		for {
			_, err := d.Read(bufs, sizes, link.Headroom)
			if err != nil || !until {
				errc <- err
				return
			}
		}
	}()
	return errc
}

// CheckClose checks the Close contract on d, to which nothing arrives: a
// Read into bufs blocks until Close, then returns link.ErrClosed; a second
// Close returns nil; Read and a Write of write (at link.Headroom) then fail
// with link.ErrClosed.
func CheckClose(t *testing.T, d link.Device, bufs, write [][]byte) {
	t.Helper()
	errc := readErrs(d, bufs, false)
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("Read returned before Close: %v", err)
	default:
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
	if _, err := d.Read(bufs, make([]int, len(bufs)), link.Headroom); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := d.Write(write, link.Headroom); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

// CheckDetached deletes the device name in ns under d while Reads into
// bufs are under way: within 2 s one must fail with want (the package's
// error for a deleted device).
func CheckDetached(t *testing.T, ns *nstest.NS, d link.Device, name string, bufs [][]byte, want error) {
	t.Helper()
	errc := readErrs(d, bufs, true)
	time.Sleep(100 * time.Millisecond)
	ns.Run(t, "ip", "link", "del", name)
	select {
	case err := <-errc:
		if !errors.Is(err, want) {
			t.Fatalf("Read on deleted %s: %v, want %v", name, err, want)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("Read still blocked 2 s after %s was deleted", name)
	}
}
