// Package nstest gives privileged tests throwaway network namespaces from
// router/tempns (named podr-<pid>-test-<n>, so that a later run sweeps
// what a crashed run left behind), with lo up, deleted (with every process
// inside killed) in t.Cleanup. Tests that need it call RequireRoot first,
// which skips with the reason when the process lacks the privileges.
//
// With a namespace come the helpers a network test needs around it, which
// work in any namespace: dialing and HTTP from inside one (NS.DialContext,
// NS.HTTPClient, HTTPGet), and a server that lives as long as the test
// (Serve).
package nstest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/tempns"
)

// RequireRoot skips the test unless it runs as root with /dev/net/tun and
// the ip command available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, TAP devices); CI runs as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: /dev/net/tun unavailable: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is missing; run .ci/deps as root")
	}
}

// RequireCommand skips the test unless every named command is on PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("skipped: %s is not installed; run .ci/deps as root", n)
		}
	}
}

// NS is a throwaway network namespace of a test: a tempns.NS (Do,
// Command, Delete, Path) whose Run fails the test, with its name as a
// field.
type NS struct {
	*tempns.NS
	Name string
}

// New creates a namespace with lo up. It is deleted when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	ns, err := tempns.New("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Log(err)
		}
	})
	return &NS{NS: ns, Name: ns.Name()}
}

// Run runs a command inside the namespace and returns its output, failing
// the test when it fails.
func (n *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := n.NS.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err) // it carries the output
	}
	return out
}

// DialContext dials from inside the namespace: the socket is created on a
// thread switched into it, and stays there whatever thread uses it later.
// It has net.Dialer's signature, so an *NS serves as the dialer of code
// that takes one.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections are made inside the
// namespace (a server on its loopback is reachable), one connection a
// request, each request within 5 seconds.
func (n *NS) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       n.DialContext,
	}}
}

// HTTPGet fetches url with c and returns the status code and the body,
// failing the test when the request or the body's read fails.
func HTTPGet(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// Serve runs handler, in a goroutine of its own, for every connection ln
// accepts, until the test ends: then it closes ln and waits for the
// handlers, which must return once their peer has gone. ln may be a
// listener opened inside a namespace (NS.Do) or in the test's own.
func Serve(t testing.TB, ln net.Listener, handler func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handler(c)
			}()
		}
	}()
}
