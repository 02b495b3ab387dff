package cni_test

// End-to-end tests (root): the real daemon binary in a throwaway "node"
// netns, pods as throwaway netns, set up by the real cnitool through the
// real podrouter-cni and host-local binaries. Nothing touches the host's
// own network namespace: the node's uplink, its routes (only the test's
// podCIDR) and its address (on the node netns's lo) live in the node netns.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/podrouter/podrouter/cni"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/nstest"
)

// helperEnv makes the test binary act as a small tool inside a netns:
// "http-serve ADDR" serves GET / with "hello from ADDR"; "http-get URL"
// prints the body.
const helperEnv = "PODROUTER_E2E_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case panicHelper:
		cni.Main(skel.CNIFuncs{
			Add: func(*skel.CmdArgs) error { return panicAdd() },
			Del: func(*skel.CmdArgs) error { return panicDel() },
		})
		os.Exit(0)
	case "http-serve":
		addr := os.Args[len(os.Args)-1]
		err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "hello from %s", addr)
		}))
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	case "http-get":
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(os.Args[len(os.Args)-1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_, _ = io.Copy(os.Stdout, resp.Body)
		_ = resp.Body.Close()
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string // podrouter and podrouter-cni, built for this run
	toolDir   string // cnitool and host-local (.cache/bin of the repo)
	buildErr  error
)

// repoRoot returns the module root.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// buildBinaries builds podrouter and podrouter-cni into a temporary
// directory, and cnitool and host-local into .cache/bin when missing.
func buildBinaries(t *testing.T) (bin, tools string) {
	t.Helper()
	buildOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "podrouter-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		toolDir = filepath.Join(root, ".cache", "bin")
		build := func(out, pkg string) error {
			c := exec.Command("go", "build", "-o", out, pkg)
			c.Dir = root
			if b, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
			}
			return nil
		}
		for _, b := range []struct{ out, pkg string }{
			{filepath.Join(binDir, "podrouter"), "./cmd/podrouter"},
			{filepath.Join(binDir, "podrouter-cni"), "./cmd/podrouter-cni"},
		} {
			if buildErr = build(b.out, b.pkg); buildErr != nil {
				return
			}
		}
		for _, b := range []struct{ out, pkg string }{
			{filepath.Join(toolDir, "cnitool"), "github.com/containernetworking/cni/cnitool"},
			{filepath.Join(toolDir, "host-local"), "github.com/containernetworking/plugins/plugins/ipam/host-local"},
		} {
			if _, err := os.Stat(b.out); err == nil {
				continue
			}
			if buildErr = build(b.out, b.pkg); buildErr != nil {
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir, toolDir
}

// node is one test node: a netns with the daemon in it, and the CNI
// configuration that reaches that daemon.
type node struct {
	t        *testing.T
	cniArgs  string // CNI_ARGS for cnitool ("": none)
	ns       *nstest.NS
	bin      string
	cniPath  string
	podCIDR  netip.Prefix
	nodeIP   netip.Addr
	uplink   string
	dir      string // state, run, net, ipam
	socket   string
	netDir   string
	ipamDir  string
	confList []byte

	mu     sync.Mutex
	daemon *exec.Cmd
	exited chan struct{}
	logs   *bytes.Buffer
}

const netName = "podr-e2e"

// newNode builds a node netns with a podCIDR 10.250.X.0/24 and the node
// address 10.251.X.1 on its lo, and writes the conflist. It does not start
// the daemon.
func newNode(t *testing.T) *node {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "iperf3", "ping")
	bin, tools := buildBinaries(t)
	x := 1 + rand.IntN(250)
	n := &node{
		t:       t,
		ns:      nstest.New(t),
		bin:     bin,
		cniPath: bin + string(os.PathListSeparator) + tools,
		podCIDR: netip.MustParsePrefix(fmt.Sprintf("10.250.%d.0/24", x)),
		nodeIP:  netip.MustParseAddr(fmt.Sprintf("10.251.%d.1", x)),
		uplink:  fmt.Sprintf("prt%05x", rand.IntN(1<<20)),
		dir:     t.TempDir(),
		logs:    &bytes.Buffer{},
	}
	n.socket = filepath.Join(n.dir, "run", "podrouter.sock")
	n.netDir = filepath.Join(n.dir, "net")
	n.ipamDir = filepath.Join(n.dir, "ipam")
	n.ns.Run(t, "ip", "addr", "add", n.nodeIP.String()+"/32", "dev", "lo")
	n.confList = []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q},"dns":{"nameservers":["10.96.0.10"]}}]}`,
		netName, n.socket, n.ipamDir))
	if err := os.MkdirAll(n.netDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.netDir, "10-podr.conflist"), n.confList, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stopDaemon(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("daemon log:\n%s", n.logText())
		}
	})
	return n
}

func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// startDaemon starts the daemon in the node netns, with the extra flags
// given, and waits until it is ready; it returns how long that took.
func (n *node) startDaemon(extra ...string) time.Duration {
	n.t.Helper()
	t0 := time.Now()
	c := n.ns.Command(context.Background(), filepath.Join(n.bin, "podrouter"), append([]string{"daemon",
		"--pod-cidr", n.podCIDR.String(), "--node-ip", n.nodeIP.String(),
		"--state-dir", filepath.Join(n.dir, "state"), "--socket", n.socket, "--uplink", n.uplink,
		"--log-level", "info"}, extra...)...)
	c.Stdout = lockedWriter{&n.mu, n.logs}
	c.Stderr = lockedWriter{&n.mu, n.logs}
	if err := c.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = c.Wait(); close(exited) }()
	n.mu.Lock()
	n.daemon, n.exited = c, exited
	n.mu.Unlock()
	cl := n.client()
	for {
		st, err := cl.Status(context.Background())
		if err == nil && st.Ready {
			return time.Since(t0)
		}
		select {
		case <-exited:
			n.t.Fatalf("daemon exited during start:\n%s", n.logText())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(t0) > 15*time.Second {
			n.t.Fatalf("daemon not ready after 15s: %v\n%s", err, n.logText())
		}
	}
}

// stopDaemon signals the daemon and waits for it to exit.
func (n *node) stopDaemon(sig syscall.Signal) {
	n.mu.Lock()
	c, exited := n.daemon, n.exited
	n.daemon = nil
	n.mu.Unlock()
	if c == nil {
		return
	}
	_ = c.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = c.Process.Kill()
		<-exited
		n.t.Errorf("daemon did not exit on %v", sig)
	}
}

func (n *node) daemonPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.daemon.Process.Pid
}

// cli runs the podrouter CLI against n's daemon (--socket added) and
// returns its combined output.
func (n *node) cli(args ...string) ([]byte, error) {
	return exec.Command(filepath.Join(n.bin, "podrouter"), append(args, "--socket", n.socket)...).CombinedOutput()
}

func (n *node) client() *api.Client { return &api.Client{Path: n.socket, Timeout: 5 * time.Second} }

// pod is a pod netns with its interface added by cnitool.
type pod struct {
	ns  *nstest.NS
	ip  netip.Addr
	mac string
}

// cnitool runs cnitool cmd for the netns and returns its output.
func (n *node) cnitool(cmd string, netns *nstest.NS) ([]byte, error) {
	return n.cnitoolNet(cmd, netName, netns)
}

// cnitoolNet is cnitool for network name.
func (n *node) cnitoolNet(cmd, name string, netns *nstest.NS) ([]byte, error) {
	c := exec.Command(filepath.Join(toolDir, "cnitool"), cmd, name, "/run/netns/"+netns.Name)
	c.Env = append(os.Environ(), "CNI_PATH="+n.cniPath, "NETCONFPATH="+n.netDir)
	if n.cniArgs != "" {
		c.Env = append(c.Env, "CNI_ARGS="+n.cniArgs)
	}
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	return out.Bytes(), err
}

// addPod makes a pod netns, runs the setup funcs in it, and runs CNI ADD
// for it.
func (n *node) addPod(setup ...func(*nstest.NS)) *pod {
	n.t.Helper()
	p := &pod{ns: nstest.New(n.t)}
	for _, f := range setup {
		f(p.ns)
	}
	// DEL is idempotent: this one also clears libcni's result cache
	// (/var/lib/cni/results) for pods a test GC'd or left.
	n.t.Cleanup(func() { _, _ = n.cnitool("del", p.ns) })
	out, err := n.cnitool("add", p.ns)
	if err != nil {
		n.t.Fatalf("cnitool add: %v\n%s\ndaemon:\n%s", err, out, n.logText())
	}
	var res struct {
		Interfaces []struct {
			Name, Mac, Sandbox string
			Mtu                int
		}
		IPs []struct {
			Address   string
			Gateway   string
			Interface *int
		}
		Routes []struct{ Dst, GW string }
		DNS    struct{ Nameservers []string }
	}
	if err := json.Unmarshal(out, &res); err != nil {
		n.t.Fatalf("cnitool add result: %v\n%s", err, out)
	}
	gw := n.podCIDR.Addr().Next().String()
	if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "eth0" || res.Interfaces[0].Sandbox != "/run/netns/"+p.ns.Name ||
		res.Interfaces[0].Mtu != 1500 || len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != 0 ||
		res.IPs[0].Gateway != gw || len(res.Routes) != 1 || res.Routes[0].Dst != "0.0.0.0/0" || res.Routes[0].GW != gw ||
		len(res.DNS.Nameservers) != 1 {
		n.t.Fatalf("incomplete ADD result:\n%s", out)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil || !n.podCIDR.Contains(pfx.Addr()) || pfx.Bits() != n.podCIDR.Bits() {
		n.t.Fatalf("ADD address %q not in %s", res.IPs[0].Address, n.podCIDR)
	}
	p.ip, p.mac = pfx.Addr(), res.Interfaces[0].Mac
	return p
}

func ping(t *testing.T, from *nstest.NS, to netip.Addr) {
	t.Helper()
	from.Run(t, "ping", "-c", "2", "-i", "0.2", "-W", "2", to.String())
}

func tapExists(t *testing.T, p *pod) bool {
	t.Helper()
	out := p.ns.Run(t, "ip", "-o", "link", "show")
	return strings.Contains(out, "eth0")
}

// ipamFiles lists host-local's reservations (address files).
func ipamFiles(t *testing.T, n *node) []string {
	t.Helper()
	return ipamFilesIn(t, filepath.Join(n.ipamDir, netName))
}

func ipamFilesIn(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// httpServe serves HTTP in p's netns on port 8080 until the test ends.
func httpServe(t *testing.T, p *pod) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := p.ns.Command(ctx, os.Args[0], "-test.run=^$", p.ip.String()+":8080")
	c.Env = append(os.Environ(), helperEnv+"=http-serve")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = c.Wait() })
}

// httpGet fetches url from inside netns.
func httpGet(t *testing.T, from *nstest.NS, url string) string {
	t.Helper()
	var last string
	for i := 0; i < 20; i++ { // the server may still be starting
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c := from.Command(ctx, os.Args[0], "-test.run=^$", url)
		c.Env = append(os.Environ(), helperEnv+"=http-get")
		out, err := c.CombinedOutput()
		cancel()
		if err == nil {
			return string(out)
		}
		last = fmt.Sprintf("%v: %s", err, out)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s: %s", url, last)
	return ""
}

// iperfResult is what the tests read of iperf3 -J.
type iperfResult struct {
	End struct {
		SumSent struct {
			Bytes       float64 `json:"bytes"`
			BitsPerSec  float64 `json:"bits_per_second"`
			Retransmits int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes      float64 `json:"bytes"`
			BitsPerSec float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct {
			Packets     int     `json:"packets"`
			LostPercent float64 `json:"lost_percent"`
			BitsPerSec  float64 `json:"bits_per_second"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs an iperf3 server in srv (one test) and a client in cli.
func iperf(t *testing.T, srv, cli *pod, port int, args ...string) (iperfResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := srv.ns.Command(ctx, "iperf3", "-s", "-1", "-B", srv.ip.String(), "-p", strconv.Itoa(port))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Process.Kill(); _ = s.Wait() }()
	var out []byte
	var err error
	for i := 0; i < 50; i++ { // until the server listens
		c := cli.ns.Command(ctx, "iperf3", append([]string{"-c", srv.ip.String(), "-p", strconv.Itoa(port), "-J"}, args...)...)
		out, err = c.Output()
		var r iperfResult
		if jerr := json.Unmarshal(out, &r); jerr == nil && strings.Contains(r.Error, "unable to connect") {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		break
	}
	var r iperfResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return r, fmt.Errorf("iperf3: %v, %v: %s", err, jerr, out)
	}
	if err != nil || r.Error != "" {
		return r, fmt.Errorf("iperf3: %v: %s", err, r.Error)
	}
	return r, nil
}

func cniConfigList(t *testing.T, n *node) (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	t.Helper()
	list, err := libcni.ConfListFromBytes(n.confList)
	if err != nil {
		t.Fatal(err)
	}
	return libcni.NewCNIConfig(filepath.SplitList(n.cniPath), nil), list
}

// TestPods: three pods on one node: ping, HTTP, iperf3 TCP and UDP between
// pods, node <-> pod through the uplink, the operator CLI, CHECK, DEL twice,
// GC with valid attachments, STATUS, a clean SIGTERM stop and DEL without
// the daemon.
func TestPods(t *testing.T) {
	n := newNode(t)
	n.startDaemon()
	pods := []*pod{n.addPod(), n.addPod(), n.addPod()}

	t.Run("ping", func(t *testing.T) {
		for i, a := range pods {
			for j, b := range pods {
				if i != j {
					ping(t, a.ns, b.ip)
				}
			}
			ping(t, a.ns, n.podCIDR.Addr().Next()) // the gateway
		}
	})
	t.Run("node-pod", func(t *testing.T) {
		ping(t, n.ns, pods[0].ip)
		ping(t, pods[1].ns, n.nodeIP)
		httpServe(t, pods[2])
		url := fmt.Sprintf("http://%s:8080/", pods[2].ip)
		if got := httpGet(t, n.ns, url); got != "hello from "+pods[2].ip.String()+":8080" {
			t.Errorf("node GET %s = %q", url, got)
		}
		if got := httpGet(t, pods[0].ns, url); got != "hello from "+pods[2].ip.String()+":8080" {
			t.Errorf("pod GET %s = %q", url, got)
		}
	})
	t.Run("iperf3", func(t *testing.T) {
		secs := "2"
		if testing.Short() {
			secs = "1"
		}
		r, err := iperf(t, pods[1], pods[0], 5201, "-t", secs)
		if err != nil {
			t.Fatal(err)
		}
		if r.End.SumReceived.Bytes <= 0 {
			t.Fatalf("TCP: nothing received: %+v", r.End)
		}
		t.Logf("TCP pod->pod: %.2f Gbit/s, %d retransmits", r.End.SumReceived.BitsPerSec/1e9, r.End.SumSent.Retransmits)
		// 100 Mbit/s; 20 under -short, which the race detector's run uses
		// (it slows the daemon several times over).
		rate := "100M"
		if testing.Short() {
			rate = "20M"
		}
		r, err = iperf(t, pods[0], pods[1], 5202, "-u", "-b", rate, "-l", "1200", "-t", secs)
		if err != nil {
			t.Fatal(err)
		}
		if r.End.Sum.Packets == 0 || r.End.Sum.LostPercent > 10 {
			t.Fatalf("UDP: %d packets, %.1f%% lost", r.End.Sum.Packets, r.End.Sum.LostPercent)
		}
		t.Logf("UDP pod->pod at %sbit/s: %d packets, %.2f%% lost", rate, r.End.Sum.Packets, r.End.Sum.LostPercent)
	})
	t.Run("cli", func(t *testing.T) {
		run := func(args ...string) []byte {
			out, err := n.cli(args...)
			if err != nil {
				t.Fatalf("podrouter %v: %v\n%s", args, err, out)
			}
			return out
		}
		var st api.Status
		if err := json.Unmarshal(run("status", "--json"), &st); err != nil || !st.Ready || st.Attachments != 3 || st.Uplink != n.uplink {
			t.Errorf("status --json: %+v %v", st, err)
		}
		var ports []api.Port
		if err := json.Unmarshal(run("ports", "--json"), &ports); err != nil || len(ports) != 5 { // 3 pods, uplink, egress
			t.Fatalf("ports --json: %d ports, %v", len(ports), err)
		}
		for _, p := range ports {
			if p.Kind != "egress" && (p.RxPackets == 0 || p.TxPackets == 0) {
				t.Errorf("port %s: rx %d tx %d packets after traffic", p.Name, p.RxPackets, p.TxPackets)
			}
		}
		var routes []api.Route
		if err := json.Unmarshal(run("routes", "--json"), &routes); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{n.nodeIP.String() + "/32": "egress", n.podCIDR.String(): "unreachable"}
		for _, p := range pods {
			want[p.ip.String()+"/32"] = "local"
		}
		for _, r := range routes {
			if want[r.Prefix.String()] == r.Kind {
				delete(want, r.Prefix.String())
			}
		}
		if len(want) > 0 {
			t.Errorf("routes lack %v: %+v", want, routes)
		}
		for _, cmd := range []string{"status", "routes", "ports", "pods"} {
			out := string(run(cmd))
			if !strings.Contains(out, pods[0].ip.String()) && cmd != "status" || cmd == "status" && !strings.Contains(out, "ready:") {
				t.Errorf("podrouter %s table:\n%s", cmd, out)
			}
		}
	})
	t.Run("check", func(t *testing.T) {
		for _, p := range pods {
			if out, err := n.cnitool("check", p.ns); err != nil {
				t.Fatalf("cnitool check: %v\n%s", err, out)
			}
		}
		// Break pod 0's default route: CHECK must notice.
		pods[0].ns.Run(t, "ip", "route", "del", "default")
		if out, err := n.cnitool("check", pods[0].ns); err == nil || !strings.Contains(string(out), "route") {
			t.Errorf("cnitool check without the default route: %v\n%s", err, out)
		}
		pods[0].ns.Run(t, "ip", "route", "add", "default", "via", n.podCIDR.Addr().Next().String())
	})
	t.Run("del-twice", func(t *testing.T) {
		p := pods[2]
		for i := range 2 {
			if out, err := n.cnitool("del", p.ns); err != nil {
				t.Fatalf("cnitool del #%d: %v\n%s", i+1, err, out)
			}
		}
		if tapExists(t, p) {
			t.Error("eth0 left after DEL")
		}
		if files := ipamFiles(t, n); len(files) != 2 {
			t.Errorf("IPAM reservations after DEL: %v, want 2", files)
		}
		as, err := n.client().Attachments(context.Background())
		if err != nil || len(as) != 2 {
			t.Errorf("attachments after DEL: %d, %v", len(as), err)
		}
		// DEL of a netns that no longer exists.
		p.ns.Delete()
		if out, err := n.cnitool("del", p.ns); err != nil {
			t.Fatalf("cnitool del, netns gone: %v\n%s", err, out)
		}
	})
	t.Run("gc", func(t *testing.T) {
		cn, list := cniConfigList(t, n)
		as, err := n.client().Attachments(context.Background())
		if err != nil || len(as) != 2 {
			t.Fatalf("attachments: %d, %v", len(as), err)
		}
		keep, drop := as[0], as[1]
		if drop.Netns == "/run/netns/"+pods[0].ns.Name {
			keep, drop = drop, keep
		}
		err = cn.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: keep.IfName}}})
		if err != nil {
			t.Fatalf("GC: %v", err)
		}
		as, err = n.client().Attachments(context.Background())
		if err != nil || len(as) != 1 || as[0].AttachmentID != keep.AttachmentID {
			t.Fatalf("attachments after GC: %+v, %v", as, err)
		}
		if files := ipamFiles(t, n); len(files) != 1 || files[0] != keep.Addrs[0].String() {
			t.Errorf("IPAM reservations after GC: %v, want %s", files, keep.Addrs[0])
		}
		if tapExists(t, pods[1]) {
			t.Error("GC left pod 1's eth0")
		}
		ping(t, pods[0].ns, n.podCIDR.Addr().Next())
	})
	t.Run("status", func(t *testing.T) {
		cn, list := cniConfigList(t, n)
		if err := cn.GetStatusNetworkList(context.Background(), list); err != nil {
			t.Fatalf("STATUS with the daemon up: %v", err)
		}
		// SIGTERM: a clean stop; the pod keeps its interface.
		n.stopDaemon(syscall.SIGTERM)
		if !tapExists(t, pods[0]) {
			t.Error("pod 0 lost eth0 when the daemon stopped")
		}
		if strings.Contains(n.ns.Run(t, "ip", "-o", "link"), n.uplink) {
			t.Error("uplink left after the daemon stopped")
		}
		err := cn.GetStatusNetworkList(context.Background(), list)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
			t.Fatalf("STATUS with the daemon down: %v, want code 50", err)
		}
	})
	t.Run("del-daemon-gone", func(t *testing.T) {
		if out, err := n.cnitool("del", pods[0].ns); err != nil {
			t.Fatalf("cnitool del, daemon gone: %v\n%s", err, out)
		}
		if tapExists(t, pods[0]) {
			t.Error("eth0 left after DEL")
		}
		if files := ipamFiles(t, n); len(files) != 0 {
			t.Errorf("IPAM reservations after the last DEL: %v", files)
		}
		// The next daemon finds the record of a pod whose TAP is gone
		// and drops it.
		n.startDaemon()
		st, err := n.client().Status(context.Background())
		if err != nil || st.Attachments != 0 || st.Reattached != 0 || st.ReattachFailed != 0 {
			t.Errorf("status after restart: %+v, %v", st, err)
		}
	})
}

// TestDaemonRestartUnderLoad kills the daemon (SIGKILL) while an iperf3 TCP
// stream runs between two pods, and starts it again: the stream must
// complete without a reset, and the pods must reach each other again within
// a second of the restart.
func TestDaemonRestartUnderLoad(t *testing.T) {
	n := newNode(t)
	n.startDaemon()
	a, b := n.addPod(), n.addPod()

	// Pings every 10 ms, with timestamps, for the whole test.
	ctx, cancel := context.WithCancel(context.Background())
	pc := a.ns.Command(ctx, "ping", "-D", "-i", "0.01", "-W", "1", b.ip.String())
	stdout, err := pc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var replies []time.Time
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "[") || !strings.Contains(line, "bytes from") {
				continue
			}
			ts, _, _ := strings.Cut(line[1:], "]")
			f, err := strconv.ParseFloat(ts, 64)
			if err != nil {
				continue
			}
			mu.Lock()
			replies = append(replies, time.Unix(0, int64(f*1e9)))
			mu.Unlock()
		}
	}()
	defer func() { cancel(); _ = pc.Wait(); <-readDone }()

	secs := 6
	if testing.Short() {
		secs = 4
	}
	type result struct {
		r   iperfResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := iperf(t, b, a, 5201, "-t", strconv.Itoa(secs))
		done <- result{r, err}
	}()
	time.Sleep(time.Duration(secs) * time.Second / 3)
	killed := time.Now()
	n.stopDaemon(syscall.SIGKILL)
	restarted := time.Now()
	readyAfter := n.startDaemon()
	res := <-done
	if res.err != nil {
		t.Fatalf("iperf3 across the restart: %v\ndaemon:\n%s", res.err, n.logText())
	}
	if res.r.End.SumReceived.Bytes <= 0 {
		t.Fatalf("iperf3 received nothing: %+v", res.r.End)
	}
	st, err := n.client().Status(context.Background())
	if err != nil || st.Reattached != 2 || st.ReattachFailed != 0 {
		t.Fatalf("status after restart: %+v, %v", st, err)
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	var before, after time.Time
	for _, r := range replies {
		if r.Before(killed) {
			before = r
		} else if r.After(restarted) && after.IsZero() {
			after = r
		}
	}
	mu.Unlock()
	if before.IsZero() || after.IsZero() {
		t.Fatalf("no ping replies around the restart (before %v, after %v)", before, after)
	}
	reach := after.Sub(restarted)
	t.Logf("restart under load: daemon ready %v after exec, re-attach %v; pods reachable %v after the restart (%v after the kill); "+
		"iperf3 TCP %.2f Gbit/s over %ds, %d retransmits, no reset",
		readyAfter.Round(time.Millisecond), st.ReattachTime.Round(time.Microsecond), reach.Round(time.Millisecond),
		after.Sub(killed).Round(time.Millisecond), res.r.End.SumReceived.BitsPerSec/1e9, secs, res.r.End.SumSent.Retransmits)
	if reach > time.Second {
		t.Errorf("pods reachable %v after the restart, want within 1s", reach)
	}
}

// TestAddDelCycles runs ADD and DEL 200 times (20 with -short) on one netns
// and checks that nothing stays behind: no TAP, no IPAM reservation, no
// attachment, and the daemon's fds and goroutines back where they were.
func TestAddDelCycles(t *testing.T) {
	n := newNode(t)
	n.startDaemon()
	p := &pod{ns: nstest.New(t)}
	t.Cleanup(func() { _, _ = n.cnitool("del", p.ns) })
	cycle := func(i int) {
		if out, err := n.cnitool("add", p.ns); err != nil {
			t.Fatalf("cycle %d: add: %v\n%s", i, err, out)
		}
		if out, err := n.cnitool("del", p.ns); err != nil {
			t.Fatalf("cycle %d: del: %v\n%s", i, err, out)
		}
	}
	cycle(0) // warm-up: the daemon's first connections, lazily made state
	st0, err := n.client().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.daemonPID()))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	fd0 := fds()
	cycles := 200
	if testing.Short() {
		cycles = 20
	}
	t0 := time.Now()
	for i := 1; i <= cycles; i++ {
		cycle(i)
	}
	t.Logf("%d ADD/DEL cycles in %v (%v per cycle)", cycles, time.Since(t0).Round(time.Millisecond), (time.Since(t0) / time.Duration(cycles)).Round(time.Microsecond))
	if tapExists(t, p) {
		t.Error("eth0 left after the cycles")
	}
	if out := p.ns.Run(t, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
		t.Errorf("links left in the pod netns:\n%s", out)
	}
	if files := ipamFiles(t, n); len(files) != 0 {
		t.Errorf("IPAM reservations left: %v", files)
	}
	deadline := time.Now().Add(3 * time.Second)
	var st api.Status
	for {
		st, err = n.client().Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Goroutines <= st0.Goroutines && fds() <= fd0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Attachments != 0 {
		t.Errorf("attachments left: %d", st.Attachments)
	}
	if st.Goroutines > st0.Goroutines {
		t.Errorf("daemon goroutines %d -> %d after %d cycles", st0.Goroutines, st.Goroutines, cycles)
	}
	if f := fds(); f > fd0 {
		t.Errorf("daemon fds %d -> %d after %d cycles", fd0, f, cycles)
	}
	if ents, err := os.ReadDir(filepath.Join(n.dir, "state", "attachments")); err != nil || len(ents) != 0 {
		t.Errorf("attachment records left: %d, %v", len(ents), err)
	}
}

// TestAddRollback makes ADD fail at each stage and checks that it leaves
// nothing behind.
func TestAddRollback(t *testing.T) {
	n := newNode(t)
	p := &pod{ns: nstest.New(t)}
	t.Cleanup(func() {
		_, _ = n.cnitool("del", p.ns)
		_, _ = n.cnitoolNet("del", "podr-other", p.ns)
	})
	noTrace := func(t *testing.T, dir string) {
		t.Helper()
		if files := ipamFilesIn(t, dir); len(files) != 0 {
			t.Errorf("IPAM reservations left: %v", files)
		}
		as, err := n.client().Attachments(context.Background())
		if err == nil && len(as) != 0 {
			t.Errorf("attachments left: %+v", as)
		}
	}
	t.Run("daemon-down", func(t *testing.T) {
		out, err := n.cnitool("add", p.ns)
		if err == nil || !strings.Contains(string(out), "not ready") {
			t.Fatalf("ADD without the daemon: %v\n%s", err, out)
		}
		if tapExists(t, p) {
			t.Error("eth0 created")
		}
		noTrace(t, filepath.Join(n.ipamDir, netName))
	})
	n.startDaemon()
	t.Run("interface-exists", func(t *testing.T) {
		p.ns.Run(t, "ip", "link", "add", "eth0", "type", "bridge")
		out, err := n.cnitool("add", p.ns)
		if err == nil || !strings.Contains(string(out), "already exists") {
			t.Fatalf("ADD over an existing eth0: %v\n%s", err, out)
		}
		if !strings.Contains(p.ns.Run(t, "ip", "-d", "link", "show", "eth0"), "bridge") {
			t.Error("the existing eth0 was touched")
		}
		p.ns.Run(t, "ip", "link", "del", "eth0")
		noTrace(t, filepath.Join(n.ipamDir, netName))
	})
	t.Run("attach-refused", func(t *testing.T) {
		// A second network with its own host-local store and a range of
		// one address hands out the first pod's address again: the daemon
		// refuses the second attach.
		first := n.addPod()
		otherDir := filepath.Join(n.dir, "ipam-other")
		other := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"podr-other","plugins":[{"type":"podrouter-cni","socket":%q,`+
			`"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q,"rangeStart":%q,"rangeEnd":%q}]]}}]}`,
			n.socket, otherDir, n.podCIDR, first.ip, first.ip)
		if err := os.WriteFile(filepath.Join(n.netDir, "20-other.conflist"), []byte(other), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := n.cnitoolNet("add", "podr-other", p.ns)
		if err == nil || !strings.Contains(string(out), "conflict") {
			t.Fatalf("ADD of an address in use: %v\n%s", err, out)
		}
		if tapExists(t, p) {
			t.Error("eth0 left after the refused attach")
		}
		if files := ipamFilesIn(t, otherDir+"/podr-other"); len(files) != 0 {
			t.Errorf("IPAM reservations left: %v", files)
		}
		ping(t, first.ns, n.podCIDR.Addr().Next())
	})
}

// metricsBase is the daemon's default --metrics-addr.
const metricsBase = "http://127.0.0.1:9602"

// scrape fetches /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, c *http.Client) metricSet {
	t.Helper()
	resp, err := c.Get(metricsBase + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return metricSet{t, fams}
}

type metricSet struct {
	t    *testing.T
	fams map[string]*dto.MetricFamily
}

// get returns the value of family name's series whose labels include
// want, summed over the matching series (0 when none match).
func (m metricSet) get(name string, want map[string]string) float64 {
	m.t.Helper()
	f, ok := m.fams[name]
	if !ok {
		m.t.Fatalf("no metric family %s", name)
	}
	sum := 0.0
next:
	for _, s := range f.GetMetric() {
		for _, l := range s.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		switch {
		case s.GetCounter() != nil:
			sum += s.GetCounter().GetValue()
		case s.GetGauge() != nil:
			sum += s.GetGauge().GetValue()
		}
	}
	return sum
}

// TestOperability runs the daemon with its default metrics address and
// JSON logs, two pods, and checks what an operator sees: /healthz and
// /readyz, /metrics moving by exactly the traffic sent, a pcap written by
// `podrouter pcap` that tcpdump reads back, `podrouter peers` and status,
// and structured logs with nothing logged per packet.
func TestOperability(t *testing.T) {
	nstest.RequireCommand(t, "tcpdump")
	n := newNode(t)
	n.startDaemon("--log-format", "json")
	hc := n.ns.HTTPClient()

	t.Run("health", func(t *testing.T) {
		if code, body := nstest.HTTPGet(t, hc, metricsBase+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("/healthz: %d %q", code, body)
		}
		if code, body := nstest.HTTPGet(t, hc, metricsBase+"/readyz"); code != 200 || body != "ok\n" {
			t.Errorf("/readyz of a ready daemon: %d %q", code, body)
		}
	})
	// The node is IPv4 only, and so are its pods here: a pod's kernel
	// otherwise sends IPv6 router solicitations and MLD reports for ~10 s
	// after its eth0 comes up, which the engine counts as multicast drops,
	// and the counts below are exact.
	noIPv6 := func(ns *nstest.NS) {
		ns.Run(t, "sh", "-c", "echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6")
	}
	// a is added as the kubelet does, naming its pod in CNI_ARGS; b as a
	// runtime that names none.
	n.cniArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f;K8S_POD_INFRA_CONTAINER_ID=x"
	a := n.addPod(noIPv6)
	n.cniArgs = ""
	b := n.addPod(noIPv6)
	portOf := map[netip.Addr]string{}
	as, err := n.client().Attachments(context.Background())
	if err != nil || len(as) != 2 {
		t.Fatalf("attachments: %+v, %v", as, err)
	}
	for _, at := range as {
		portOf[at.Addrs[0]] = at.Port
	}
	pa, pb := portOf[a.ip], portOf[b.ip]

	t.Run("metrics", func(t *testing.T) {
		// Warm up: both pods resolve each other (ARP) before the count.
		ping(t, a.ns, b.ip)
		logLines := strings.Count(n.logText(), "\n")
		const pings = 50
		before := scrape(t, hc)
		a.ns.Run(t, "ping", "-q", "-c", strconv.Itoa(pings), "-i", "0.01", "-W", "2", b.ip.String())
		// a's series are labelled with its namespace and pod (and its
		// interface as the port), b's with its port name.
		sel := map[string]map[string]string{
			pa: {"namespace": "shop", "pod": "cart-7d9f", "port": "eth0"},
			pb: {"namespace": "", "pod": "", "port": pb},
		}
		with := func(port string, kv ...string) map[string]string {
			l := maps.Clone(sel[port])
			for i := 0; i+1 < len(kv); i += 2 {
				l[kv[i]] = kv[i+1]
			}
			return l
		}
		pkts := func(m metricSet, port, dir string) float64 {
			return m.get("podrouter_port_packets_total", with(port, "direction", dir))
		}
		// The engine counts a batch once it is written: wait for the last
		// reply to be counted.
		var after metricSet
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			after = scrape(t, hc)
			if pkts(after, pa, "tx")-pkts(before, pa, "tx") >= pings || time.Now().After(deadline) {
				break
			}
		}
		// Echo requests cross a (rx) then b (tx), replies b (rx) then a
		// (tx). The only other packets a pod may send meanwhile are a
		// neighbour re-probe of its peer or the gateway (at most one
		// each way).
		var deltas []string
		for _, c := range []struct{ port, dir string }{{pa, "rx"}, {pb, "tx"}, {pb, "rx"}, {pa, "tx"}} {
			d := pkts(after, c.port, c.dir) - pkts(before, c.port, c.dir)
			if d < pings || d > pings+2 {
				t.Errorf("%s %s: %v packets during %d pings, want %d..%d", c.port, c.dir, d, pings, pings, pings+2)
			}
			deltas = append(deltas, fmt.Sprintf("%s %s %v", c.port, c.dir, d))
		}
		t.Logf("packets during %d pings: %s", pings, strings.Join(deltas, ", "))
		// ICMP echo frames are 98 bytes (14 Ethernet + 20 IPv4 + 8 ICMP + 56).
		if d := after.get("podrouter_port_bytes_total", with(pb, "direction", "tx")) -
			before.get("podrouter_port_bytes_total", with(pb, "direction", "tx")); d < 98*pings || d > 98*pings+2*98 {
			t.Errorf("%s tx bytes: %v during %d pings, want %d (+ at most two ARP frames)", pb, d, pings, 98*pings)
		}
		for _, port := range []string{pa, pb} {
			if d := after.get("podrouter_port_drops_total", with(port)) -
				before.get("podrouter_port_drops_total", with(port)); d != 0 {
				t.Errorf("%s: %v drops during the pings", port, d)
			}
		}
		for _, c := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"podrouter_api_requests_total", map[string]string{"op": "attach", "result": "ok"}, 2},
			{"podrouter_api_requests_total", map[string]string{"op": "attach", "result": "internal"}, 0},
			{"podrouter_attachments", map[string]string{"state": "attached"}, 2},
			{"podrouter_attachments", map[string]string{"state": "unattached"}, 0},
			{"podrouter_ports", map[string]string{"kind": "pod"}, 2},
			{"podrouter_ports", map[string]string{"kind": "uplink"}, 1},
			{"podrouter_routes", nil, 5}, // two pods, the node IP, the podCIDR, 0.0.0.0/0 to egress
			{"podrouter_ready", nil, 1},
			{"podrouter_reattach_pods", map[string]string{"result": "failed"}, 0},
		} {
			if got := after.get(c.name, c.labels); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		if got := after.get("podrouter_api_requests_total", map[string]string{"op": "status", "result": "ok"}); got < 1 {
			t.Errorf("status requests (CNI ADD asks first) = %v", got)
		}
		if got := strings.Count(n.logText(), "\n"); got != logLines {
			t.Errorf("the daemon logged %d lines during the pings:\n%s", got-logLines, n.logText())
		}
	})

	t.Run("pcap", func(t *testing.T) {
		// Pings run until the capture has its 8 packets.
		ctx, cancel := context.WithCancel(context.Background())
		pinger := a.ns.Command(ctx, "ping", "-i", "0.05", b.ip.String())
		if err := pinger.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = pinger.Wait() }()
		file := filepath.Join(n.dir, "a.pcap")
		out, err := n.cli("pcap", a.ip.String(), "-c", "8", "-w", file, "--duration", "20s")
		if err != nil {
			t.Fatalf("podrouter pcap: %v\n%s", err, out)
		}
		if want := "captured 8 packets (0 dropped) on " + pa + "\n"; string(out) != want {
			t.Errorf("podrouter pcap said %q, want %q", out, want)
		}
		dump, err := exec.Command("tcpdump", "-n", "-e", "-r", file).CombinedOutput()
		if err != nil {
			t.Fatalf("tcpdump -r: %v\n%s", err, dump)
		}
		var reqs, reps, lines int
		for _, l := range strings.Split(string(dump), "\n") {
			switch {
			case strings.Contains(l, a.ip.String()+" > "+b.ip.String()+": ICMP echo request"):
				reqs++
			case strings.Contains(l, b.ip.String()+" > "+a.ip.String()+": ICMP echo reply"):
				reps++
			}
			if strings.Contains(l, "ethertype IPv4") {
				lines++
			}
		}
		// 8 consecutive packets of a steady ping: requests and replies
		// alternate, whichever the capture started with.
		if lines != 8 || reqs < 3 || reps < 3 || reqs+reps != 8 || !strings.Contains(string(dump), a.mac) {
			t.Errorf("tcpdump read %d frames, %d echo requests %s > %s, %d replies, MAC %s:\n%s", lines, reqs, a.ip, b.ip, reps, a.mac, dump)
		}

		// Live: the pcap on stdout, piped into tcpdump, stopped by Ctrl-C.
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		var live, liveErr bytes.Buffer
		td := exec.Command("tcpdump", "-n", "-r", "-")
		td.Stdin, td.Stdout, td.Stderr = pr, &live, &live
		pc := exec.Command(filepath.Join(n.bin, "podrouter"), "pcap", pa, "--duration", "30s", "--socket", n.socket)
		pc.Stdout, pc.Stderr = pw, &liveErr
		if err := td.Start(); err != nil {
			t.Fatal(err)
		}
		if err := pc.Start(); err != nil {
			t.Fatal(err)
		}
		_ = pr.Close()
		_ = pw.Close()
		time.Sleep(time.Second)
		t0 := time.Now()
		_ = pc.Process.Signal(os.Interrupt)
		perr := pc.Wait()
		stopped := time.Since(t0)
		_ = td.Wait()
		if perr != nil || stopped > 3*time.Second || !strings.HasPrefix(liveErr.String(), "captured ") {
			t.Errorf("pcap to stdout stopped by SIGINT: %v after %v, stderr %q", perr, stopped, liveErr.String())
		}
		t.Logf("live capture stopped by SIGINT after 1s: %s", strings.TrimSpace(liveErr.String()))
		if c := strings.Count(live.String(), ": ICMP echo request"); c < 5 {
			t.Errorf("tcpdump -r - of the live capture saw %d echo requests in 1s of pings every 50ms:\n%s", c, live.String())
		}

		// The uplink is an L3 port: raw IP, the node's side of a ping.
		nodePing := a.ns.Command(ctx, "ping", "-i", "0.05", n.nodeIP.String())
		if err := nodePing.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = nodePing.Wait() }()
		upFile := filepath.Join(n.dir, "up.pcap")
		if out, err := n.cli("pcap", n.uplink, "-c", "4", "-w", upFile); err != nil || !strings.HasPrefix(string(out), "captured 4 packets") {
			t.Fatalf("podrouter pcap %s: %v\n%s", n.uplink, err, out)
		}
		dump, err = exec.Command("tcpdump", "-n", "-r", upFile).CombinedOutput()
		if err != nil || !strings.Contains(string(dump), "link-type RAW") ||
			!strings.Contains(string(dump), a.ip.String()+" > "+n.nodeIP.String()+": ICMP echo request") {
			t.Errorf("tcpdump -r of the uplink capture: %v\n%s", err, dump)
		}

		// An unknown pod is an error naming it, and leaves no file.
		bad := filepath.Join(n.dir, "none.pcap")
		out, err = n.cli("pcap", "10.250.254.254", "-w", bad)
		if err == nil || !strings.Contains(string(out), "not found") {
			t.Errorf("pcap of an unknown pod: %v\n%s", err, out)
		}
		if _, err := os.Stat(bad); !os.IsNotExist(err) {
			t.Errorf("failed capture left %s: %v", bad, err)
		}
	})

	t.Run("cli", func(t *testing.T) {
		out, err := n.cli("peers", "--json")
		if err != nil || strings.TrimSpace(string(out)) != "[]" {
			t.Errorf("peers --json on a node without peers: %v %q", err, out)
		}
		out, err = n.cli("status")
		if err != nil || !strings.Contains(string(out), "readiness:") || !strings.Contains(string(out), "ok") {
			t.Errorf("status: %v\n%s", err, out)
		}
		m := scrape(t, hc)
		if got := m.get("podrouter_api_requests_total", map[string]string{"op": "capture", "result": "ok"}); got != 3 {
			t.Errorf("capture requests ok = %v, want 3", got)
		}
		if got := m.get("podrouter_api_requests_total", map[string]string{"op": "capture", "result": "not-found"}); got != 1 {
			t.Errorf("capture requests not-found = %v, want 1", got)
		}
	})

	t.Run("logs", func(t *testing.T) {
		msgs := map[string]int{}
		for _, l := range strings.Split(strings.TrimSpace(n.logText()), "\n") {
			var e struct {
				Level, Msg, Logger string
			}
			if err := json.Unmarshal([]byte(l), &e); err != nil || e.Level == "" || e.Msg == "" {
				t.Errorf("not a structured log line: %q (%v)", l, err)
				continue
			}
			msgs[e.Level+" "+e.Msg]++
		}
		for _, want := range []string{"info ready", "info serving metrics and health", "info pod attached", "info capture done"} {
			if msgs[want] == 0 {
				t.Errorf("no %q log line; got %v", want, msgs)
			}
		}
		if msgs["info pod attached"] != 2 {
			t.Errorf("%d 'pod attached' lines, want 2", msgs["info pod attached"])
		}
	})
}
