package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/podrouter/podrouter/router/tempns"
)

// netns is a throwaway network namespace of a case (router/tempns: named
// podr-<pid>-<tag>-<n>, so that runs never collide and a later run sweeps
// what a killed one left), under the short names the cases call; del
// removes it.
type netns struct {
	*tempns.NS
	name string
}

func newNetns(tag string) (*netns, error) {
	ns, err := tempns.New(tag, nil)
	if err != nil {
		return nil, err
	}
	return &netns{NS: ns, name: ns.Name()}, nil
}

func (n *netns) path() string { return n.Path() }

// del kills what runs inside and removes the namespace.
func (n *netns) del() { _ = n.Delete() }

// cmd is name args... run inside the namespace.
func (n *netns) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return n.Command(ctx, name, args...)
}

// run runs name args... inside the namespace; the error carries its output.
func (n *netns) run(name string, args ...string) error {
	_, err := n.Run(context.Background(), name, args...)
	return err
}

// do runs fn on an OS thread switched into the namespace: sockets and
// devices fn creates live there.
func (n *netns) do(fn func() error) error { return n.Do(fn) }

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
