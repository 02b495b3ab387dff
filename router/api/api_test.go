package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

// TestListenSocketDir: Listen makes a missing socket directory 0700 and
// leaves an existing one's mode alone (--socket /run/podrouter.sock must
// not chmod /run); the socket is 0600 either way.
func TestListenSocketDir(t *testing.T) {
	uid := uint32(os.Getuid())
	for _, c := range []struct {
		name     string
		existing os.FileMode // 0: the directory is missing
		nested   bool        // its parent is missing too
		want     os.FileMode
	}{
		{name: "missing", want: 0o700},
		{name: "missing-parent", nested: true, want: 0o700},
		{name: "existing-0755", existing: 0o755, want: 0o755},
		{name: "existing-0711", existing: 0o711, want: 0o711},
		{name: "existing-1777", existing: os.ModeSticky | 0o777, want: os.ModeSticky | 0o777},
		{name: "existing-0700", existing: 0o700, want: 0o700},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			if c.nested {
				dir = filepath.Join(dir, "podrouter")
			}
			if c.existing != 0 {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				// Chmod: Mkdir's mode is masked by the umask and
				// drops the sticky bit.
				if err := os.Chmod(dir, c.existing); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "api.sock")
			s, err := Listen(ServerConfig{Path: path, AllowUID: &uid, Logger: zaptest.NewLogger(t)}, &fakeHandler{})
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			defer s.Close()
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode() & (os.ModePerm | os.ModeSticky); got != c.want {
				t.Errorf("socket directory mode %v, want %v", got, c.want)
			}
			fi, err = os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Errorf("socket mode %v, want a socket 0600", fi.Mode())
			}
		})
	}
	t.Run("not-a-directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(ServerConfig{Path: filepath.Join(file, "api.sock"), AllowUID: &uid}, &fakeHandler{}); err == nil {
			t.Fatal("Listen under a regular file succeeded")
		}
	})
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
		{"port mappings", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
				{HostPort: 53, ContainerPort: 53, Protocol: "udp", HostIP: netip.MustParseAddr("192.0.2.1")}}
		}, true},
		{"port mapping sctp", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "sctp"}}
		}, false},
		{"port mapping port 0", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{{HostPort: 0, ContainerPort: 1, Protocol: "tcp"}}
		}, false},
		{"port mapping mapped host IP", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "tcp", HostIP: netip.MustParseAddr("::ffff:10.0.0.1")}}
		}, false},
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

// captureHandler is fakeHandler with OpCapture: it writes one line naming
// the pod into the passed fd, or (pod "wait") waits for its context.
type captureHandler struct {
	fakeHandler
	mu  sync.Mutex
	got []CaptureRequest
}

func (h *captureHandler) Capture(ctx context.Context, req CaptureRequest, out *os.File) (CaptureStats, error) {
	defer out.Close()
	h.mu.Lock()
	h.got = append(h.got, req)
	h.mu.Unlock()
	switch req.Pod {
	case "missing":
		return CaptureStats{}, fmt.Errorf("%w: no pod or port %q", ErrNotFound, req.Pod)
	case "wait":
		<-ctx.Done()
		return CaptureStats{Port: "w/eth0", Captured: 7, Dropped: 1}, nil
	}
	if _, err := fmt.Fprintf(out, "pcap of %s\n", req.Pod); err != nil {
		return CaptureStats{}, err
	}
	return CaptureStats{Port: req.Pod + "/eth0", Captured: req.Count}, nil
}

func (h *captureHandler) last() CaptureRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.got[len(h.got)-1]
}

func startCaptureServer(t *testing.T, timeout time.Duration, h Handler, observe func(Op, Code, time.Duration)) (*Server, *Client) {
	t.Helper()
	uid := uint32(os.Getuid())
	s, err := Listen(ServerConfig{Path: filepath.Join(t.TempDir(), "run", "api.sock"), AllowUID: &uid, Timeout: timeout,
		Observe: observe, Logger: zaptest.NewLogger(t)}, h)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, &Client{Path: s.Path(), Timeout: timeout}
}

func TestCapturePassesDescriptor(t *testing.T) {
	h := &captureHandler{}
	_, c := startCaptureServer(t, 2*time.Second, h, nil)
	ctx := context.Background()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := c.Capture(ctx, CaptureRequest{Pod: "p1", Count: 3}, w)
	if err != nil || st.Captured != 3 || st.Port != "p1/eth0" {
		t.Fatalf("Capture = %+v, %v", st, err)
	}
	_ = w.Close() // the handler closed its copy: EOF after the line
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "pcap of p1\n" {
		t.Fatalf("read through the passed fd: %q, %v", b, err)
	}
	// Defaults: the bound comes with the request.
	if got := h.last(); got.Duration != MaxCaptureDuration || got.Snaplen != MaxSnaplen {
		t.Errorf("count-only capture reached the handler as %+v, want Duration %v", got, MaxCaptureDuration)
	}
	_, w2, _ := os.Pipe()
	defer w2.Close()
	if _, err := c.Capture(ctx, CaptureRequest{Pod: "p2"}, w2); err != nil {
		t.Fatal(err)
	}
	if got := h.last(); got.Duration != DefaultCaptureDuration {
		t.Errorf("unbounded capture reached the handler as %+v, want Duration %v", got, DefaultCaptureDuration)
	}
	if _, err := c.Capture(ctx, CaptureRequest{Pod: "missing", Count: 1}, w2); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown pod: %v, want ErrNotFound", err)
	}
}

func TestCaptureBounds(t *testing.T) {
	h := &captureHandler{}
	_, c := startCaptureServer(t, 2*time.Second, h, nil)
	_, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, tc := range []struct {
		name string
		req  CaptureRequest
	}{
		{"no pod", CaptureRequest{Count: 1}},
		{"pod with space", CaptureRequest{Pod: "a b", Count: 1}},
		{"negative count", CaptureRequest{Pod: "p", Count: -1}},
		{"count too big", CaptureRequest{Pod: "p", Count: MaxCaptureCount + 1}},
		{"duration too long", CaptureRequest{Pod: "p", Duration: MaxCaptureDuration + time.Second}},
		{"negative duration", CaptureRequest{Pod: "p", Duration: -time.Second}},
		{"snaplen", CaptureRequest{Pod: "p", Snaplen: MaxSnaplen + 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Capture(context.Background(), tc.req, w); !errors.Is(err, ErrBadRequest) {
				t.Errorf("client: %v, want ErrBadRequest", err)
			}
			// The server checks too (a client that skips Normalize).
			req := tc.req
			if _, err := c.do(context.Background(), request{Op: OpCapture, Capture: &req}, w); !errors.Is(err, ErrBadRequest) {
				t.Errorf("server: %v, want ErrBadRequest", err)
			}
		})
	}
	if _, err := c.do(context.Background(), request{Op: OpCapture, Capture: &CaptureRequest{Pod: "p", Count: 1}}, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("capture without an fd: %v, want ErrBadRequest", err)
	}
	if _, err := c.do(context.Background(), request{Op: OpCapture}, w); !errors.Is(err, ErrBadRequest) {
		t.Errorf("capture without its request: %v, want ErrBadRequest", err)
	}
	if len(h.got) != 0 {
		t.Errorf("the handler saw invalid requests: %+v", h.got)
	}
	// A daemon whose handler does not capture says so.
	_, c2 := startCaptureServer(t, 2*time.Second, struct{ Handler }{&fakeHandler{}}, nil)
	if _, err := c2.Capture(context.Background(), CaptureRequest{Pod: "p", Count: 1}, w); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "does not capture") {
		t.Errorf("capture on a handler without Capture: %v", err)
	}
}

// TestCaptureOutlivesTimeout: a capture runs for its duration, past the
// server's per-request timeout, and ends early when the client asks.
func TestCaptureOutlivesTimeout(t *testing.T) {
	h := &captureHandler{}
	s, c := startCaptureServer(t, 200*time.Millisecond, h, nil)
	_, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	t0 := time.Now()
	st, err := c.Capture(context.Background(), CaptureRequest{Pod: "wait", Duration: 600 * time.Millisecond}, w)
	took := time.Since(t0)
	if err != nil || st.Captured != 7 || st.Dropped != 1 {
		t.Fatalf("capture past the timeout: %+v, %v", st, err)
	}
	if took < 600*time.Millisecond || took > 3*time.Second {
		t.Errorf("capture of 600ms (+200ms timeout) took %v", took)
	}

	// The client stops a long capture early and still gets the stats.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 = time.Now()
	st, err = c.Capture(ctx, CaptureRequest{Pod: "wait", Duration: time.Minute}, w)
	if took := time.Since(t0); err != nil || st.Captured != 7 || took > 2*time.Second {
		t.Fatalf("capture stopped by the client after %v: %+v, %v", took, st, err)
	}

	// Closing the server ends a capture in progress; it still replies.
	type res struct {
		st  CaptureStats
		err error
	}
	done := make(chan res, 1)
	go func() {
		st, err := c.Capture(context.Background(), CaptureRequest{Pod: "wait", Duration: time.Minute}, w)
		done <- res{st, err}
	}()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		h.mu.Lock()
		n := len(h.got)
		h.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("third capture never reached the handler")
		}
	}
	t0 = time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if took := time.Since(t0); r.err != nil || r.st.Captured != 7 || took > time.Second {
		t.Fatalf("capture ended by Close after %v: %+v, %v", took, r.st, r.err)
	}
}

func TestObserve(t *testing.T) {
	var mu sync.Mutex
	var got []string
	observe := func(op Op, code Code, _ time.Duration) {
		mu.Lock()
		got = append(got, string(op)+"/"+string(code))
		mu.Unlock()
	}
	s, c := startCaptureServer(t, 2*time.Second, &captureHandler{fakeHandler: fakeHandler{attached: map[AttachmentID]Attachment{}}}, observe)
	ctx := context.Background()
	_, _ = c.Status(ctx)
	_ = c.Detach(ctx, AttachmentID{ContainerID: "nope", IfName: "eth0"})
	_, _ = c.do(ctx, request{Op: "reboot"}, nil)
	_, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, _ = c.Capture(ctx, CaptureRequest{Pod: "p", Count: 1}, w)
	conn, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "garbage\n")
	_, _ = io.ReadAll(conn)
	conn.Close()
	want := []string{"status/", "detach/not-found", "unknown/bad-request", "capture/", "unknown/bad-request"}
	// Observe runs after the reply is written: wait for the last one.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(want) || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Observe runs after the reply is written, so a client's next request
	// may be observed first: compare the multisets.
	slices.Sort(got)
	slices.Sort(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("observed %v, want %v", got, want)
	}
}

// TestAnswer checks the client's reading of a reply's answer: the
// exchange's error first, then a missing answer as ErrInternal naming what
// is missing, else the answer itself.
func TestAnswer(t *testing.T) {
	st := Status{PID: 7}
	errDown := fmt.Errorf("%w: refused", ErrUnavailable)
	for _, tc := range []struct {
		name    string
		v       *Status
		err     error
		want    Status
		wantErr error
		msg     string
	}{
		{"answer", &st, nil, st, nil, ""},
		{"exchange error", nil, errDown, Status{}, ErrUnavailable, "api: daemon unavailable: refused"},
		{"missing", nil, nil, Status{}, ErrInternal, "api: internal error: status reply without the status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := answer(tc.v, tc.err, "status reply without the status")
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err != nil && err.Error() != tc.msg {
				t.Errorf("message %q, want %q", err.Error(), tc.msg)
			}
			if got.PID != tc.want.PID {
				t.Errorf("got PID %d, want %d", got.PID, tc.want.PID)
			}
		})
	}
}

// TestPortMappingJSON: a mapping without a host IP leaves it out, and both
// forms read back as they were.
func TestPortMappingJSON(t *testing.T) {
	for _, m := range []PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: netip.MustParseAddr("fd00::1")},
	} {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !m.HostIP.IsValid() && strings.Contains(string(b), "hostIP") {
			t.Errorf("%s: zero host IP written", b)
		}
		var got PortMapping
		if err := json.Unmarshal(b, &got); err != nil || got != m {
			t.Errorf("%s read back as %+v, %v", b, got, err)
		}
	}
}
