package main

// Case egress: TCP from a pod to a server outside the cluster, through the
// unprivileged user-space ways out, same MTU (1500), same run.
//
//	outside netns: iperf3 -s on 198.51.100.2 ══veth══ node netns 198.51.100.1
//	node netns hosts each implementation's host sockets; a pod netns per run:
//	  podrouter:   pod eth0 (TAP, 10.244.1.50) ─ engine ─ egress Forwarder
//	               (gVisor netstack) ─ host sockets opened inside the node netns
//	  pasta:       pasta --netns pod (run inside the node netns)
//	  slirp4netns: slirp4netns --netns-type=path pod tap0 (inside the node netns)
//
// The server sees the node's address in every case. podrouter's engine and
// Forwarder run in this process (the daemon has no egress port yet); its
// Forwarder creates its sockets on a thread switched into the node netns, so
// they live there. Each implementation is measured in rounds, alternating,
// and its best round is reported: on a shared machine noise only ever slows
// a run down. Traffic stays inside the case's namespaces (198.51.100.0/24 is
// TEST-NET-2; the node netns has no other link).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	_ "github.com/podrouter/podrouter/netstackx/egress" // registers the netstack egress
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/node"
)

func init() {
	register(Case{Name: "egress", Baselines: []string{"slirp4netns"}, Run: runEgress})
}

const (
	egressMTU    = 1500
	egressRounds = 3
	egressServer = "198.51.100.2"
	egressNode   = "198.51.100.1"
)

var egressSeq atomic.Uint32

// egDialer opens the Forwarder's host sockets inside a namespace.
type egDialer struct {
	ns *netns
	d  net.Dialer
}

func (d *egDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := d.ns.do(func() error {
		var err error
		c, err = d.d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

type egImpl struct {
	name string
	// attach connects the pod namespace to the outside through the node
	// and returns what undoes it.
	attach func(ctx context.Context, node, pod *netns) (func(), error)
}

func runEgress(ctx context.Context, opt Options) ([]Result, error) {
	for _, c := range []string{"ip", "iperf3", "pasta", "slirp4netns"} {
		if _, err := exec.LookPath(c); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps)", c)
		}
	}
	node, err := newNetns("eg-node")
	if err != nil {
		return nil, err
	}
	defer node.del()
	out, err := newNetns("eg-out")
	if err != nil {
		return nil, err
	}
	defer out.del()
	for _, c := range [][]string{
		{"ip", "link", "add", "vn", "mtu", strconv.Itoa(egressMTU), "type", "veth", "peer", "name", "vo", "netns", out.name},
		{"ip", "addr", "add", egressNode + "/24", "dev", "vn"},
		{"ip", "link", "set", "vn", "up"},
	} {
		if err := node.run(c[0], c[1:]...); err != nil {
			return nil, err
		}
	}
	for _, c := range [][]string{
		{"ip", "link", "set", "vo", "mtu", strconv.Itoa(egressMTU)},
		{"ip", "addr", "add", egressServer + "/24", "dev", "vo"},
		{"ip", "link", "set", "vo", "up"},
	} {
		if err := out.run(c[0], c[1:]...); err != nil {
			return nil, err
		}
	}
	srv := out.cmd(ctx, "iperf3", "-s", "-B", egressServer)
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()

	impls := []egImpl{
		{"slirp4netns", egSlirp},
		{"pasta", egPasta},
		{"podrouter", egPodrouter},
	}
	best := map[string]float64{}
	var errs []error
	for round := range egressRounds {
		for _, im := range impls {
			gbps, err := egMeasure(ctx, opt, node, im)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s (round %d): %w", im.name, round+1, err))
				fmt.Fprintf(os.Stderr, "case=egress impl=%s round=%d error: %v\n", im.name, round+1, err)
				continue
			}
			fmt.Fprintf(os.Stderr, "case=egress impl=%s round=%d tcp_gbps=%.2f\n", im.name, round+1, gbps)
			best[im.name] = max(best[im.name], gbps)
		}
	}
	var res []Result
	for _, im := range impls {
		if g, ok := best[im.name]; ok {
			res = append(res, Result{Impl: im.name, TCPGbps: g})
		}
	}
	if len(res) == 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

// egMeasure builds a fresh pod namespace, attaches it with im and runs
// one iperf3 TCP stream from it to the server.
func egMeasure(ctx context.Context, opt Options, node *netns, im egImpl) (float64, error) {
	pod, err := newNetns("eg-pod")
	if err != nil {
		return 0, err
	}
	defer pod.del()
	undo, err := im.attach(ctx, node, pod)
	if err != nil {
		return 0, err
	}
	defer undo()
	secs := strconv.Itoa(max(1, int(opt.Duration.Seconds())))
	var outb []byte
	for range 100 { // until the path (and the server) is up
		outb, err = pod.cmd(ctx, "iperf3", "-c", egressServer, "-J", "-t", secs).Output()
		if !bytes.Contains(outb, []byte("unable to")) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var m struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(outb, &m); jerr != nil {
		return 0, fmt.Errorf("iperf3: %v, %v: %s", err, jerr, bytes.TrimSpace(outb))
	}
	if m.Error != "" || err != nil {
		return 0, fmt.Errorf("iperf3: %v %s", err, m.Error)
	}
	return m.End.SumReceived.BitsPerSecond / 1e9, nil
}

// egDaemon starts a long-running helper and returns what stops it.
func egDaemon(c *exec.Cmd) (func(), error) {
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
		return nil, fmt.Errorf("%s exited: %s", c.Args, bytes.TrimSpace(stderr.Bytes()))
	case <-time.After(300 * time.Millisecond):
	}
	return func() { _ = c.Process.Kill(); <-done }, nil
}

func egSlirp(ctx context.Context, node, pod *netns) (func(), error) {
	// slirp4netns configures tap0 in the pod: 10.0.2.100/24, default via
	// 10.0.2.2.
	return egDaemon(node.cmd(ctx, "slirp4netns", "--configure", "--mtu="+strconv.Itoa(egressMTU),
		"--disable-host-loopback", "--netns-type=path", pod.path(), "tap0"))
}

func egPasta(ctx context.Context, node, pod *netns) (func(), error) {
	return egDaemon(node.cmd(ctx, "pasta", "--config-net", "--foreground", "--quiet", "--ipv4-only", "--runas", "0:0",
		"--mtu", strconv.Itoa(egressMTU), "--address", "10.0.2.100", "--netmask", "24", "--gateway", "10.0.2.2",
		"--interface", "vn", "--no-map-gw", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
		"--netns", pod.path()))
}

func egPodrouter(_ context.Context, nodeNS, pod *netns) (func(), error) {
	podAddr := netip.MustParseAddr("10.244.1.50")
	dialer := &egDialer{ns: nodeNS}
	n, err := node.New(node.Config{
		PodCIDR:      netip.MustParsePrefix("10.244.1.0/24"),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		MTU:          egressMTU,
		Egress:       node.EgressConfig{Mode: node.EgressNetstack, Dial: dialer.DialContext},
		Logger:       zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	success := false
	defer func() {
		if !success {
			_ = n.Close()
		}
	}()
	if err := n.Start(); err != nil {
		return nil, err
	}
	e := n.Engine()
	var dev *tap.Device
	if err := pod.do(func() error {
		var err error
		dev, err = tap.Create("eth0", tap.Config{MTU: egressMTU})
		return err
	}); err != nil {
		return nil, err
	}
	if _, err := e.AddPort(dev, engine.PortConfig{Name: "pod", Kind: engine.KindPod, L2: true, MTU: egressMTU, Addrs: []netip.Addr{podAddr}}); err != nil {
		_ = dev.Close()
		return nil, err
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", podAddr.String() + "/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", e.Gateway().String()},
	} {
		if err := pod.run(c[0], c[1:]...); err != nil {
			return nil, err
		}
	}
	success = true
	return func() { _ = n.Close() }, nil
}
