package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
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
// received per second). The TCP stream's CPU time is counted per process,
// so that other load on the machine stays out of it: the iperf3 client
// (its own report) and server, this process (podrouter nodes built
// in-process), pids (the variant's other processes: a daemon,
// wireguard-go) and every kernel thread (softirq and workqueue work done
// outside those processes, such as kernel WireGuard's crypto; other
// users' kernel work enters here too). Softirq work done in a process's
// context is that process's system time (no IRQ time accounting).
func measure(ctx context.Context, opt Options, srv, client *netns, dst string, pids ...int) (Result, error) {
	return measureVia(ctx, opt, srv, client, dst, dst, pids...)
}

// measureVia is measure with the server bound to bind and the client
// connecting to dst (a Service address that leads to bind).
func measureVia(ctx context.Context, opt Options, srv, client *netns, bind, dst string, pids ...int) (Result, error) {
	secs := strconv.Itoa(max(1, int(opt.Duration.Seconds())))
	s := srv.cmd(ctx, "iperf3", "-s", "-B", bind)
	if err := s.Start(); err != nil {
		return Result{}, err
	}
	defer func() { _ = s.Process.Kill(); _ = s.Wait() }()
	pids = append([]int{os.Getpid(), s.Process.Pid}, pids...)
	before := cpuTicks(pids)
	m, err := iperf3(ctx, client, dst, secs)
	if err != nil {
		return Result{}, err
	}
	after := cpuTicks(pids)
	var r Result
	r.TCPGbps = num(m, "end", "sum_received", "bits_per_second") / 1e9
	if t := num(m, "end", "sum_received", "seconds"); t > 0 && r.TCPGbps > 0 && after >= before {
		cpuSecs := float64(after-before)/clockTicks + num(m, "end", "cpu_utilization_percent", "host_total")/100*t
		r.CPUPerGbps = cpuSecs / t / r.TCPGbps
	}
	m, err = iperf3(ctx, client, dst, secs, "-u", "-b", "0", "-l", "64")
	if err != nil {
		return Result{}, err
	}
	pkts := num(m, "end", "sum", "packets") - num(m, "end", "sum", "lost_packets")
	if s := num(m, "end", "sum", "seconds"); s > 0 {
		r.UDPKpps = pkts / s / 1e3
	}
	return r, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// cpuTicks returns the CPU time (user and system, in clock ticks) used so
// far by the processes pids and by every kernel thread (children of
// kthreadd, pid 2). A process that is gone counts 0.
func cpuTicks(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		t, _ := procTicks(pid)
		sum += t
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || slices.Contains(pids, pid) {
			continue
		}
		if t, ppid := procTicks(pid); ppid == 2 {
			sum += t
		}
	}
	return sum
}

// procTicks returns utime+stime of /proc/<pid>/stat and the process's
// parent pid (0, 0 when it cannot be read).
func procTicks(pid int) (ticks uint64, ppid int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // state is f[0], ppid f[1], utime f[11], stime f[12]
		return 0, 0
	}
	ppid, _ = strconv.Atoi(f[1])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st, ppid
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
