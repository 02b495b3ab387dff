package nstest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func exists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func TestNamespaceLifecycle(t *testing.T) {
	var name string
	t.Run("create", func(t *testing.T) {
		n := New(t)
		name = n.Name
		if !exists(name) {
			t.Fatal("namespace not created")
		}
		if out := n.Run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
			t.Fatalf("lo not up: %s", out)
		}
		// Only lo lives in a new namespace.
		if out := n.Run(t, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
			t.Fatalf("unexpected links: %s", out)
		}
	})
	if name != "" && exists(name) {
		t.Fatalf("namespace %s left behind", name)
	}
}

// TestHTTPInside: the client's connections start inside the namespace: a
// server on its loopback answers, one on the test process's loopback is
// out of reach.
func TestHTTPInside(t *testing.T) {
	n := New(t)
	var inside net.Listener
	if err := n.Do(func() (err error) { inside, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("inside"))
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(inside) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	if code, body := HTTPGet(t, n.HTTPClient(), "http://"+inside.Addr().String()+"/"); code != http.StatusTeapot || body != "inside" {
		t.Fatalf("GET from inside: %d %q", code, body)
	}
	outside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := n.DialContext(ctx, "tcp", outside.Addr().String()); err == nil {
		_ = c.Close()
		t.Fatal("dialled the test process's loopback from inside the namespace")
	}
}

// TestServe: every connection is handled, concurrently, and when the test
// ends the listener is closed and the handlers have returned.
func TestServe(t *testing.T) {
	var ln net.Listener
	var running, handled atomic.Int32
	t.Run("serve", func(t *testing.T) {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		Serve(t, ln, func(c net.Conn) {
			running.Add(1)
			defer running.Add(-1)
			defer c.Close()
			handled.Add(1)
			_, _ = io.Copy(c, c)
			time.Sleep(50 * time.Millisecond) // slow to return: Serve must wait
		})
		var conns []net.Conn
		for i := range 2 { // both open at once: each has its own handler
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, c)
			if _, err := c.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range conns {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
				t.Fatalf("connection %d: echoed %v, %v", i, b, err)
			}
		}
	})
	if n := running.Load(); n != 0 || handled.Load() != 2 {
		t.Fatalf("after the test: %d handlers running, %d ran; want 0 and 2", n, handled.Load())
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		_ = c.Close()
		t.Fatal("the listener still accepts after the test ended")
	}
}
