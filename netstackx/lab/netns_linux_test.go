package lab

// Privileged: labs of network-namespace pods (TAPs held by the engines).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/nstest"
)

func TestNetnsLab(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "ping")
	state := filepath.Join(t.TempDir(), "lab.json")
	l := startLab(t, Config{Nodes: 2, Pods: 2, PodMode: Netns, Backend: "vxlan", StateFile: state})
	allPairsOK(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	same, cross := l.throughputPairs()
	for _, pair := range [][2]Pod{same, cross} {
		if g, err := Throughput(ctx, pair[0], pair[1], 300*time.Millisecond); err != nil || g <= 0 {
			t.Errorf("throughput %s -> %s: %v Gbit/s, %v", pair[0].Name(), pair[1].Name(), g, err)
		}
	}

	// Held, the lab runs commands in its pods: the kernel's ping across
	// nodes sees two routed hops.
	held := make(chan error, 1)
	hctx, stop := context.WithCancel(ctx)
	go func() { held <- l.Hold(hctx, io.Discard) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no state file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dst := l.Nodes[1].Pods[0].Addr().String()
	cmd, err := ExecCommand(ctx, state, "n0-pod-0", []string{"ping", "-c", "1", "-W", "5", dst})
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ttl=62") {
		t.Errorf("ping %s from n0-pod-0: %v\n%s(want ttl=62: two routed hops)", dst, err, out)
	}
	if _, err := ExecCommand(ctx, state, "n9-pod-9", []string{"true"}); !errors.Is(err, ErrNoPod) {
		t.Errorf("exec in a pod that is not there: %v", err)
	}
	stop()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left behind: %v", err)
	}

	// Close removes the namespaces.
	var names []string
	for _, p := range l.Pods() {
		names = append(names, p.(interface{ NetNS() string }).NetNS())
	}
	l.Close()
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind: %v", n, err)
		}
	}
}

func TestExecVirtualPod(t *testing.T) {
	state := filepath.Join(t.TempDir(), "lab.json")
	l := startLab(t, Config{Pods: 2, StateFile: state})
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() { held <- l.Hold(ctx, io.Discard) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no state file")
		}
	}
	if _, err := ExecCommand(ctx, state, "pod-0", []string{"true"}); !errors.Is(err, ErrVirtualPod) {
		t.Errorf("exec in a virtual pod: %v, want ErrVirtualPod", err)
	}
	// A second lab cannot hold the same state file.
	if err := l.Hold(ctx, io.Discard); !errors.Is(err, ErrHeld) {
		t.Errorf("second Hold: %v, want ErrHeld", err)
	}
	cancel()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if _, err := ExecCommand(context.Background(), state, "pod-0", []string{"true"}); !errors.Is(err, ErrNoLab) {
		t.Errorf("exec after the lab stopped: %v, want ErrNoLab", err)
	}
}

// TestNetnsThreeNodes: HTTP and iperf3 between kernel pods on three nodes
// (udp backend).
func TestNetnsThreeNodes(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "iperf3")
	state := filepath.Join(t.TempDir(), "lab.json")
	l := startLab(t, Config{Nodes: 3, Pods: 1, PodMode: Netns, Backend: "udp", NoIPv6: true, StateFile: state})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, c := l.Nodes[0].Pods[0], l.Nodes[2].Pods[0]

	// HTTP: a server in n2's pod, a client in n0's; the server sees the
	// client's pod address.
	ln, err := c.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return a.DialTCP(ctx, netip.MustParseAddrPort(addr))
	}}}
	resp, err := client.Get("http://" + netip.AddrPortFrom(c.Addr(), 8080).String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "hello "+a.Addr().String()+":") {
		t.Errorf("HTTP answer %q, want the client's pod address", body)
	}
	client.CloseIdleConnections()

	// iperf3, TCP and UDP, run inside the pods through lab exec.
	held := make(chan error, 1)
	hctx, stop := context.WithCancel(ctx)
	go func() { held <- l.Hold(hctx, io.Discard) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no state file")
		}
	}
	server, err := ExecCommand(ctx, state, c.Name(), []string{"iperf3", "-s", "-1", "-B", c.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	for _, args := range [][]string{{"-t", "1"}, {"-t", "1", "-u", "-b", "100M"}} {
		var out []byte
		for range 50 { // until the server listens
			cmd, err := ExecCommand(ctx, state, a.Name(), append([]string{"iperf3", "-c", c.Addr().String()}, args...))
			if err != nil {
				t.Fatal(err)
			}
			if out, err = cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "unable to connect") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(string(out), "receiver") {
			t.Errorf("iperf3 %v:\n%s", args, out)
		}
		if args[len(args)-1] == "1" { // the TCP run done, serve the UDP one
			_ = server.Wait()
			if server, err = ExecCommand(ctx, state, c.Name(), []string{"iperf3", "-s", "-1", "-B", c.Addr().String()}); err != nil {
				t.Fatal(err)
			}
			if err := server.Start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
