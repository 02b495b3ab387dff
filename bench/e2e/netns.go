package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	vnetns "github.com/vishvananda/netns"
)

var nsSeq atomic.Uint32

// netns is a throwaway network namespace of a case, named
// prb-<tag>-<pid>-<n> so that runs never collide; del removes it.
type netns struct{ name string }

func newNetns(tag string) (*netns, error) {
	n := &netns{name: fmt.Sprintf("prb-%s-%d-%d", tag, os.Getpid(), nsSeq.Add(1))}
	if err := sh("ip", "netns", "add", n.name); err != nil {
		return nil, err
	}
	if err := n.run("ip", "link", "set", "lo", "up"); err != nil {
		n.del()
		return nil, err
	}
	return n, nil
}

func (n *netns) path() string { return "/run/netns/" + n.name }

// del kills what runs inside and removes the namespace.
func (n *netns) del() {
	if out, err := exec.Command("ip", "netns", "pids", n.name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for range 50 {
		if exec.Command("ip", "netns", "del", n.name).Run() == nil {
			return
		}
		if _, err := os.Stat(n.path()); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmd is name args... run inside the namespace.
func (n *netns) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// run runs name args... inside the namespace; the error carries its output.
func (n *netns) run(name string, args ...string) error {
	return sh("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// do runs fn on an OS thread switched into the namespace: sockets and
// devices fn creates live there. The thread dies with its goroutine if
// switching back fails.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := vnetns.GetFromName(n.name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			errc <- fmt.Errorf("return to the original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// sh runs a command; the error carries its output.
func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// iperf3 runs the iperf3 client in client against a server at dst with
// args, retrying while the server is not listening yet, and returns its
// JSON report.
func iperf3(ctx context.Context, client *netns, dst, secs string, args ...string) (map[string]any, error) {
	var out []byte
	var err error
	for range 50 { // until the server listens
		out, err = client.cmd(ctx, "iperf3", append([]string{"-c", dst, "-J", "-t", secs}, args...)...).Output()
		if !bytes.Contains(out, []byte("unable to connect")) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var m map[string]any
	if jerr := json.Unmarshal(out, &m); jerr != nil {
		return nil, fmt.Errorf("iperf3 %v: %v, %v", args, err, jerr)
	}
	if e, _ := m["error"].(string); e != "" || err != nil {
		return nil, fmt.Errorf("iperf3 %v: %v %s", args, err, e)
	}
	return m, nil
}

// measure runs iperf3 from client to a server at dst in srv: one TCP
// stream, then UDP with 64-byte payloads as fast as iperf3 sends (packets
// received per second).
func measure(ctx context.Context, opt Options, srv, client *netns, dst string) (tcpGbps, udpKpps float64, err error) {
	secs := strconv.Itoa(max(1, int(opt.Duration.Seconds())))
	s := srv.cmd(ctx, "iperf3", "-s", "-B", dst)
	if err := s.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { _ = s.Process.Kill(); _ = s.Wait() }()
	m, err := iperf3(ctx, client, dst, secs)
	if err != nil {
		return 0, 0, err
	}
	tcpGbps = num(m, "end", "sum_received", "bits_per_second") / 1e9
	m, err = iperf3(ctx, client, dst, secs, "-u", "-b", "0", "-l", "64")
	if err != nil {
		return 0, 0, err
	}
	pkts := num(m, "end", "sum", "packets") - num(m, "end", "sum", "lost_packets")
	if s := num(m, "end", "sum", "seconds"); s > 0 {
		udpKpps = pkts / s / 1e3
	}
	return tcpGbps, udpKpps, nil
}

// num is the number at path in iperf3's JSON report (0 when absent).
func num(m map[string]any, path ...string) float64 {
	var v any = m
	for _, p := range path {
		mm, _ := v.(map[string]any)
		v = mm[p]
	}
	f, _ := v.(float64)
	return f
}
