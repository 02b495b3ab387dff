package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// fakeHandler records what the server hands it. Attach reads one line from
// the passed file to prove it is the client's descriptor.
type fakeHandler struct {
	mu       sync.Mutex
	attached map[AttachmentID]Attachment
	gotData  string
}

func (h *fakeHandler) Attach(_ context.Context, req AttachRequest, tap *os.File) (Attachment, error) {
	defer tap.Close()
	buf := make([]byte, 64)
	n, err := tap.Read(buf)
	if err != nil {
		return Attachment{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gotData = string(buf[:n])
	if _, ok := h.attached[req.AttachmentID]; ok {
		return Attachment{}, fmt.Errorf("%w: already attached", ErrConflict)
	}
	a := Attachment{AttachRequest: req, Port: req.String(), PortIndex: 3, Created: time.Unix(1, 0).UTC()}
	h.attached[req.AttachmentID] = a
	return a, nil
}

func (h *fakeHandler) Detach(_ context.Context, id AttachmentID) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.attached[id]; !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	delete(h.attached, id)
	return nil
}

func (h *fakeHandler) Status(context.Context) (Status, error) {
	return Status{Ready: true, PID: 42, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}, Gateway: netip.MustParseAddr("10.250.0.1")}, nil
}

func (h *fakeHandler) Routes(context.Context) ([]Route, error) {
	return []Route{{Prefix: netip.MustParsePrefix("10.250.0.5/32"), Kind: "local", Port: 1, PortName: "p"}}, nil
}

func (h *fakeHandler) Ports(context.Context) ([]Port, error) {
	return []Port{{Index: 1, Name: "p", Kind: "pod", Drops: map[string]uint64{"no-route": 2}}}, nil
}

func (h *fakeHandler) Attachments(context.Context) ([]Attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Attachment
	for _, a := range h.attached {
		out = append(out, a)
	}
	return out, nil
}

func startServer(t *testing.T, allow uint32) (*Server, *fakeHandler, *Client) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "run")
	h := &fakeHandler{attached: map[AttachmentID]Attachment{}}
	s, err := Listen(ServerConfig{Path: filepath.Join(dir, "api.sock"), AllowUID: &allow, Timeout: 2 * time.Second, Logger: zaptest.NewLogger(t)}, h)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, h, &Client{Path: s.Path(), Timeout: 2 * time.Second}
}

func testRequest(id string) AttachRequest {
	return AttachRequest{
		AttachmentID: AttachmentID{ContainerID: id, IfName: "eth0"},
		Netns:        "/var/run/netns/x",
		MAC:          MAC{0x0a, 0x58, 10, 250, 0, 5},
		MTU:          1500,
		Addrs:        []netip.Addr{netip.MustParseAddr("10.250.0.5")},
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("skipped: no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestAttachPassesDescriptor(t *testing.T) {
	s, h, c := startServer(t, uint32(os.Getuid()))
	fi, err := os.Stat(filepath.Dir(s.Path()))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	fi, err = os.Stat(s.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := w.WriteString("hello through SCM_RIGHTS"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := c.Attach(ctx, testRequest("abc123"), r)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if a.PortIndex != 3 || a.ContainerID != "abc123" || a.MAC != (MAC{0x0a, 0x58, 10, 250, 0, 5}) || a.Addrs[0] != netip.MustParseAddr("10.250.0.5") {
		t.Errorf("attachment = %+v", a)
	}
	if h.gotData != "hello through SCM_RIGHTS" {
		t.Errorf("handler read %q through the passed fd", h.gotData)
	}
	if _, err := w.WriteString("again"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach(ctx, testRequest("abc123"), r); !errors.Is(err, ErrConflict) {
		t.Errorf("second Attach: %v, want ErrConflict", err)
	}
	as, err := c.Attachments(ctx)
	if err != nil || len(as) != 1 {
		t.Fatalf("Attachments = %v, %v", as, err)
	}
	if err := c.Detach(ctx, a.AttachmentID); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	err = c.Detach(ctx, a.AttachmentID)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Detach: %v, want ErrNotFound", err)
	}
	if strings.Count(err.Error(), "not found") != 1 {
		t.Errorf("error text repeats the sentinel: %q", err)
	}
}

func TestReadOnlyOps(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid()))
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || !st.Ready || st.PID != 42 || st.Gateway != netip.MustParseAddr("10.250.0.1") {
		t.Errorf("Status = %+v, %v", st, err)
	}
	rs, err := c.Routes(ctx)
	if err != nil || len(rs) != 1 || rs[0].PortName != "p" {
		t.Errorf("Routes = %+v, %v", rs, err)
	}
	ps, err := c.Ports(ctx)
	if err != nil || len(ps) != 1 || ps[0].Drops["no-route"] != 2 {
		t.Errorf("Ports = %+v, %v", ps, err)
	}
}

func TestBadRequests(t *testing.T) {
	s, _, c := startServer(t, uint32(os.Getuid()))
	ctx := context.Background()
	before := openFDs(t)
	for _, tc := range []struct {
		name string
		req  request
		fd   bool
	}{
		{"unknown op", request{Op: "reboot"}, false},
		{"attach without fd", request{Op: OpAttach, Attach: ptr(testRequest("a1"))}, false},
		{"attach without body", request{Op: OpAttach}, true},
		{"status with fd", request{Op: OpStatus}, true},
		{"detach bad id", request{Op: OpDetach, ID: &AttachmentID{ContainerID: "-x", IfName: "eth0"}}, false},
		{"attach bad ifname", request{Op: OpAttach, Attach: ptr(func() AttachRequest { r := testRequest("a2"); r.IfName = "a/b"; return r }())}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f *os.File
			if tc.fd {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				defer w.Close()
				f = r
			}
			if _, err := c.do(ctx, tc.req, f); !errors.Is(err, ErrBadRequest) {
				t.Errorf("err = %v, want ErrBadRequest", err)
			}
		})
	}
	// Raw garbage and a wrong protocol version.
	for _, line := range []string{"not json\n", `{"v":99,"op":"status"}` + "\n", `{"v":1,"op":"status","extra":1}` + "\n"} {
		conn, err := net.Dial("unix", s.Path())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(conn, line); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.Contains(string(b), `"code":"bad-request"`) {
			t.Errorf("%q: reply %q, want bad-request", line, b)
		}
	}
	// The server closed every fd it was sent (allow the runtime a moment).
	deadline := time.Now().Add(2 * time.Second)
	for openFDs(t) > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := openFDs(t); after > before {
		t.Errorf("open fds %d -> %d: the server leaks passed descriptors", before, after)
	}
}

func ptr[T any](v T) *T { return &v }

func TestPeerCredentialsRefused(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid())+4242)
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrPermission) {
		t.Fatalf("Status from a refused uid: %v, want ErrPermission", err)
	}
}

func TestListenStaleAndRunning(t *testing.T) {
	s, _, _ := startServer(t, uint32(os.Getuid()))
	uid := uint32(os.Getuid())
	if _, err := Listen(ServerConfig{Path: s.Path(), AllowUID: &uid}, &fakeHandler{}); !errors.Is(err, ErrDaemonRunning) {
		t.Fatalf("second Listen on a live socket: %v, want ErrDaemonRunning", err)
	}
	// A stale socket file (nobody listening) is replaced.
	dir := t.TempDir()
	path := filepath.Join(dir, "s", "api.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s2, err := Listen(ServerConfig{Path: path, AllowUID: &uid}, &fakeHandler{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("existing 0755 socket dir not tightened to 0700: %v %v", fi.Mode().Perm(), err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

func TestClientUnavailable(t *testing.T) {
	c := &Client{Path: filepath.Join(t.TempDir(), "absent.sock"), Timeout: time.Second}
	if _, err := c.Status(context.Background()); !IsUnavailable(err) {
		t.Fatalf("Status on an absent socket: %v, want ErrUnavailable", err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid()))
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			if _, err := c.Status(context.Background()); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("goroutines %d -> %d after the requests", before, n)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*AttachRequest)
		ok   bool
	}{
		{"ok", func(*AttachRequest) {}, true},
		{"empty container", func(r *AttachRequest) { r.ContainerID = "" }, false},
		{"container leading dash", func(r *AttachRequest) { r.ContainerID = "-abc" }, false},
		{"container with dots", func(r *AttachRequest) { r.ContainerID = "cnitool-a.b_c" }, true},
		{"long ifname", func(r *AttachRequest) { r.IfName = "abcdefghijklmnop" }, false},
		{"relative netns", func(r *AttachRequest) { r.Netns = "netns/x" }, false},
		{"multicast mac", func(r *AttachRequest) { r.MAC[0] = 1 }, false},
		{"zero mac", func(r *AttachRequest) { r.MAC = MAC{} }, false},
		{"mtu", func(r *AttachRequest) { r.MTU = 10 }, false},
		{"no addrs", func(r *AttachRequest) { r.Addrs = nil }, false},
		{"mapped addr", func(r *AttachRequest) { r.Addrs = []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRequest("abc")
			tc.mod(&r)
			err := r.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Validate = %v, want ErrBadRequest", err)
			}
		})
	}
}

func TestMACText(t *testing.T) {
	var m MAC
	if err := m.UnmarshalText([]byte("0a:58:0a:fa:00:05")); err != nil || m != (MAC{0x0a, 0x58, 0x0a, 0xfa, 0, 5}) {
		t.Fatalf("UnmarshalText = %v, %v", m, err)
	}
	if b, _ := m.MarshalText(); string(b) != "0a:58:0a:fa:00:05" {
		t.Fatalf("MarshalText = %s", b)
	}
	if err := m.UnmarshalText([]byte("00:11:22:33:44:55:66:77")); err == nil {
		t.Fatal("8-byte MAC accepted")
	}
}
