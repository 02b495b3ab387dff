package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
)

// captureRig is a daemon with an engine and three pods on in-memory links
// (no root): "abc123/eth0" and "abc456/eth0" attached, "def789/eth0"
// recorded but not attached.
type captureRig struct {
	d      *Daemon
	hostA  *linktest.End // the pod side of abc123's port
	hostB  *linktest.End
	ipA    netip.Addr
	ipB    netip.Addr
	macA   packet.MAC
	macB   packet.MAC
	portA  *engine.Port
	engine *engine.Engine
}

func newCaptureRig(t *testing.T) *captureRig {
	t.Helper()
	log := zaptest.NewLogger(t)
	e, err := engine.New(engine.Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	r := &captureRig{engine: e,
		ipA: netip.MustParseAddr("10.244.1.5"), ipB: netip.MustParseAddr("10.244.1.6"),
		macA: packet.MAC{2, 0, 0, 0, 0, 0xa}, macB: packet.MAC{2, 0, 0, 0, 0, 0xb}}
	r.d = &Daemon{cfg: Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, log: log, eng: e,
		pods: pods{eng: e, log: log, byID: map[api.AttachmentID]*pod{}}}
	add := func(cid string, ip netip.Addr, mac packet.MAC, attach bool) (*linktest.End, *engine.Port) {
		rec := record{AttachRequest: api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: cid, IfName: "eth0"},
			Netns: "/run/netns/" + cid, MAC: api.MAC(mac), MTU: 1500, Addrs: []netip.Addr{ip}}}
		pd := &pod{rec: rec}
		r.d.pods.byID[rec.AttachmentID] = pd
		if !attach {
			return nil, nil
		}
		host, dev := linktest.Pipe(256, 2048, 16)
		p, err := e.AddPort(dev, engine.PortConfig{Name: rec.String(), Kind: engine.KindPod, L2: true, PeerMAC: mac, MTU: 1500, Addrs: rec.Addrs})
		if err != nil {
			t.Fatal(err)
		}
		pd.port = p
		return host, p
	}
	r.hostA, r.portA = add("abc123", r.ipA, r.macA, true)
	r.hostB, _ = add("abc456", r.ipB, r.macB, true)
	add("def789", netip.MustParseAddr("10.244.1.7"), packet.MAC{2, 0, 0, 0, 0, 0xc}, false)
	return r
}

// udpFrame is an Ethernet/IPv4/UDP frame from the pod behind src.
func (r *captureRig) udpFrame(srcMAC packet.MAC, src, dst netip.Addr, payload int) []byte {
	f := make([]byte, packet.EthernetLen+packet.IPv4MinLen+packet.UDPLen+payload)
	packet.Ethernet(f).Encode(r.engine.GatewayMAC(), srcMAC, packet.EtherTypeIPv4)
	ip := f[packet.EthernetLen:]
	packet.IPv4(ip).Encode(packet.IPv4Fields{TotalLen: uint16(len(ip)), TTL: 64, Protocol: packet.ProtoUDP, Src: src, Dst: dst})
	u := ip[packet.IPv4MinLen:]
	binary.BigEndian.PutUint16(u[0:], 1000)
	binary.BigEndian.PutUint16(u[2:], 2000)
	binary.BigEndian.PutUint16(u[4:], uint16(packet.UDPLen+payload))
	return f
}

func TestFindPort(t *testing.T) {
	r := newCaptureRig(t)
	for _, tc := range []struct {
		name, pod, want string
		err             error
	}{
		{"port name", "abc123/eth0", "abc123/eth0", nil},
		{"address", "10.244.1.6", "abc456/eth0", nil},
		{"container ID", "abc456", "abc456/eth0", nil},
		{"unique prefix", "abc1", "abc123/eth0", nil},
		{"ambiguous prefix", "abc", "", api.ErrBadRequest},
		{"unknown name", "nope", "", api.ErrNotFound},
		{"unknown address", "10.244.1.99", "", api.ErrNotFound},
		{"recorded, not attached", "def7", "", api.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := (handler{r.d}).findPort(tc.pod)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("findPort(%q) = %v, want %v", tc.pod, err, tc.err)
				}
				return
			}
			if err != nil || p.Name() != tc.want {
				t.Fatalf("findPort(%q) = %v, %v; want %s", tc.pod, p, err, tc.want)
			}
		})
	}
	if _, err := (handler{r.d}).findPort("abc"); err == nil || !strings.Contains(err.Error(), "abc123/eth0, abc456/eth0") {
		t.Errorf("ambiguous prefix error does not list the matches: %v", err)
	}
}

// blockingPipe returns a pipe in blocking mode (as a shell's would be),
// unlike os.Pipe's.
func blockingPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w = os.NewFile(uintptr(fds[0]), "r"), os.NewFile(uintptr(fds[1]), "w")
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
	return r, w
}

func nonblocking(t *testing.T, f *os.File) bool {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fl int
	if err := rc.Control(func(fd uintptr) { fl, err = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.O_NONBLOCK != 0
}

// dupFile returns a copy of f's descriptor, as the API server hands one
// over (the handler owns and closes it).
func dupFile(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "passed")
}

func TestCaptureIntoPassedFD(t *testing.T) {
	r := newCaptureRig(t)
	pr, pw := blockingPipe(t)
	type res struct {
		st  api.CaptureStats
		err error
	}
	done := make(chan res, 1)
	go func() {
		st, err := (handler{r.d}).Capture(context.Background(), api.CaptureRequest{Pod: "abc1", Count: 4}, dupFile(t, pw))
		done <- res{st, err}
	}()
	// The header arrives at once (a live reader sees the capture start).
	hdr := make([]byte, 24)
	if _, err := io.ReadFull(pr, hdr); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint32(hdr) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(hdr[20:]) != 1 {
		t.Fatalf("pcap header % x: want magic and the Ethernet link type", hdr)
	}
	if _, err := (handler{r.d}).Capture(context.Background(), api.CaptureRequest{Pod: "10.244.1.5", Count: 1}, dupFile(t, pw)); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("a second capture on the port: %v, want ErrConflict", err)
	}
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	for range 2 { // a -> b and back: rx and tx on a's port
		_, _ = r.hostA.Write([][]byte{r.udpFrame(r.macA, r.ipA, r.ipB, 10)}, 0)
		if _, err := r.hostB.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
		_, _ = r.hostB.Write([][]byte{r.udpFrame(r.macB, r.ipB, r.ipA, 20)}, 0)
		if _, err := r.hostA.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	var got res
	select {
	case got = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("capture did not stop at its count")
	}
	if got.err != nil || got.st.Captured != 4 || got.st.Dropped != 0 || got.st.Port != "abc123/eth0" {
		t.Fatalf("capture: %+v, %v", got.st, got.err)
	}
	if nonblocking(t, pw) {
		t.Error("the passed descriptor's file was left non-blocking")
	}
	_ = pw.Close()
	rest, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	var lens []int
	for off := 0; off+16 <= len(rest); {
		n := int(binary.LittleEndian.Uint32(rest[off+8:]))
		lens = append(lens, n)
		off += 16 + n
	}
	want := []int{14 + 20 + 8 + 10, 14 + 20 + 8 + 20, 14 + 20 + 8 + 10, 14 + 20 + 8 + 20}
	if !slices.Equal(lens, want) {
		t.Fatalf("records of %v bytes, want %v", lens, want)
	}
}

// TestCaptureStalledReader: a reader that never reads must not hold the
// capture past its bound.
func TestCaptureStalledReader(t *testing.T) {
	r := newCaptureRig(t)
	_, pw := blockingPipe(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := (handler{r.d}).Capture(ctx, api.CaptureRequest{Pod: "abc123/eth0", Duration: 300 * time.Millisecond}, dupFile(t, pw))
		done <- err
	}()
	// More than a pipe holds (64 KiB), while the capture runs.
	frame := r.udpFrame(r.macA, r.ipA, r.ipB, 1400)
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	stop := time.Now().Add(250 * time.Millisecond)
	for time.Now().Before(stop) {
		_, _ = r.hostA.Write([][]byte{frame}, 0)
		if _, err := r.hostB.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, api.ErrInternal) || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("stalled capture: %v, want an internal error naming the timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("capture still blocked on a stalled reader")
	}
	if nonblocking(t, pw) {
		t.Error("the passed descriptor's file was left non-blocking")
	}
	if !r.portA.SwapTap(nil, nil) {
		t.Error("tap left on the port")
	}
}

func TestCaptureRefusesReadOnlyOutput(t *testing.T) {
	r := newCaptureRig(t)
	pr, _ := blockingPipe(t)
	if _, err := (handler{r.d}).Capture(context.Background(), api.CaptureRequest{Pod: "abc123", Count: 1}, dupFile(t, pr)); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("capture into a read-only fd: %v, want ErrBadRequest", err)
	}
	if _, err := (handler{r.d}).Capture(context.Background(), api.CaptureRequest{Pod: "zzz", Count: 1}, dupFile(t, pr)); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("capture of an unknown pod: %v, want ErrNotFound", err)
	}
}
