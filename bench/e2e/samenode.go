package main

// Case same-node: two pods on one node, built twice in one run.
//
//	kernel-bridge: pod-a eth0 ═veth═ br0 ═veth═ eth0 pod-b   (flannel's cni0; the reference)
//	podrouter:     pod-a eth0 (TAP) ─ engine ─ (TAP) eth0 pod-b
//	               the real daemon in a node netns, pods added by podrouter-cni
//	               through libcni with host-local IPAM
//
// Each is measured with iperf3: one TCP stream (Gbit/s at the receiver) and
// UDP with 64-byte payloads sent as fast as iperf3 can (packets/s received).
// Every namespace, the daemon and its files are the case's own, removed when
// it ends; traffic stays inside them (10.250.200.0/24, 10.250.201.0/24).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(Case{Name: "same-node", Baselines: []string{"kernel-bridge"}, Run: runSameNode})
}

func runSameNode(ctx context.Context, opt Options) ([]Result, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("iperf3 is not installed (make deps)")
	}
	var res []Result
	var errs []error
	if r, err := sameNodeKernel(ctx, opt); err != nil {
		// Kernels without veth (some sandboxes) cannot build the reference;
		// podrouter is still measured.
		errs = append(errs, fmt.Errorf("kernel-bridge: %w", err))
		fmt.Fprintf(os.Stderr, "case=same-node impl=kernel-bridge error: %v\n", err)
	} else {
		res = append(res, r)
	}
	if r, err := sameNodePodrouter(ctx, opt); err != nil {
		errs = append(errs, fmt.Errorf("podrouter: %w", err))
	} else {
		res = append(res, r)
	}
	if len(res) == 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

// sameNodeKernel: two pods on a Linux bridge over veth pairs.
func sameNodeKernel(ctx context.Context, opt Options) (Result, error) {
	node, err := newNetns("sn")
	if err != nil {
		return Result{}, err
	}
	defer node.del()
	var pods []*netns
	defer func() {
		for _, p := range pods {
			p.del()
		}
	}()
	if err := node.run("ip", "link", "add", "br0", "type", "bridge"); err != nil {
		return Result{}, err
	}
	if err := node.run("ip", "link", "set", "br0", "up"); err != nil {
		return Result{}, err
	}
	for i := range 2 {
		p, err := newNetns("sn")
		if err != nil {
			return Result{}, err
		}
		pods = append(pods, p)
		host := fmt.Sprintf("veth%d", i)
		for _, c := range [][]string{
			{"ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", p.name},
			{"ip", "link", "set", host, "master", "br0"},
			{"ip", "link", "set", host, "up"},
		} {
			if err := node.run(c[0], c[1:]...); err != nil {
				return Result{}, fmt.Errorf("(veth needed) %w", err)
			}
		}
		for _, c := range [][]string{
			{"ip", "addr", "add", fmt.Sprintf("10.250.201.%d/24", 2+i), "dev", "eth0"},
			{"ip", "link", "set", "eth0", "up"},
		} {
			if err := p.run(c[0], c[1:]...); err != nil {
				return Result{}, err
			}
		}
	}
	r, err := measure(ctx, opt, pods[1], pods[0], "10.250.201.3")
	r.Impl = "kernel-bridge"
	return r, err
}

// sameNodePodrouter: two pods attached by podrouter-cni to the daemon.
func sameNodePodrouter(ctx context.Context, opt Options) (Result, error) {
	n, err := startPodNode(ctx, opt, "sn", 2)
	if err != nil {
		return Result{}, err
	}
	defer n.close()
	r, err := measure(ctx, opt, n.pods[1], n.pods[0], n.ips[1].String(), n.daemon.Process.Pid)
	if err != nil {
		return Result{}, fmt.Errorf("%w\ndaemon: %s", err, n.logs.String())
	}
	r.Impl = "podrouter"
	return r, nil
}

// podNode is a podrouter daemon in its own node netns with pods attached
// by podrouter-cni (through libcni, host-local IPAM on 10.250.200.0/24),
// each pod's interface eth0 a TAP.
type podNode struct {
	daemon *exec.Cmd
	logs   *bytes.Buffer
	api    *api.Client
	pods   []*netns
	ips    []netip.Addr // of pods[i]
	undo   []func()     // close runs them last first
}

// close detaches the pods and removes them, stops the daemon and removes
// the node's netns and files.
func (n *podNode) close() {
	for i := len(n.undo) - 1; i >= 0; i-- {
		n.undo[i]()
	}
}

// startPodNode starts the daemon in a node netns and attaches npods pods;
// tag names the namespaces.
func startPodNode(ctx context.Context, opt Options, tag string, npods int) (*podNode, error) {
	n := &podNode{logs: &bytes.Buffer{}}
	success := false
	defer func() {
		if !success {
			n.close()
		}
	}()
	bin, err := filepath.Abs(filepath.Dir(opt.Podrouter))
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"podrouter", "podrouter-cni"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s not built (make build): %w", b, err)
		}
	}
	tools, err := filepath.Abs(filepath.Join(".cache", "bin"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(tools, "host-local")); err != nil {
		if err := sh("go", "build", "-o", filepath.Join(tools, "host-local"), "github.com/containernetworking/plugins/plugins/ipam/host-local"); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "podrouter-bench-")
	if err != nil {
		return nil, err
	}
	n.undo = append(n.undo, func() { os.RemoveAll(dir) })
	node, err := newNetns(tag)
	if err != nil {
		return nil, err
	}
	n.undo = append(n.undo, node.del)
	socket := filepath.Join(dir, "run", "podrouter.sock")
	d := node.cmd(context.Background(), filepath.Join(bin, "podrouter"), "daemon", "--pod-cidr", "10.250.200.0/24",
		"--state-dir", filepath.Join(dir, "state"), "--socket", socket, "--uplink", fmt.Sprintf("prb%d", os.Getpid()%100000),
		"--log-level", "warn")
	d.Stdout, d.Stderr = n.logs, n.logs
	if err := d.Start(); err != nil {
		return nil, err
	}
	n.daemon = d
	n.undo = append(n.undo, func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() })
	n.api = &api.Client{Path: socket, Timeout: time.Second}
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if st, err := n.api.Status(ctx); err == nil && st.Ready {
			break
		}
		if time.Since(t0) > 10*time.Second {
			return nil, fmt.Errorf("daemon not ready: %s", n.logs.String())
		}
	}
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podr-bench","plugins":[{"type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q}}]}`,
		socket, filepath.Join(dir, "ipam"))))
	if err != nil {
		return nil, err
	}
	cn := libcni.NewCNIConfigWithCacheDir([]string{bin, tools}, filepath.Join(dir, "cache"), nil)
	for i := range npods {
		p, err := newNetns(tag)
		if err != nil {
			return nil, err
		}
		rc := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench%d", i), NetNS: p.path(), IfName: "eth0"}
		n.undo = append(n.undo, func() {
			_ = cn.DelNetworkList(context.Background(), list, rc)
			p.del()
		})
		n.pods = append(n.pods, p)
		r, err := cn.AddNetworkList(ctx, list, rc)
		if err != nil {
			return nil, fmt.Errorf("CNI ADD: %w", err)
		}
		b, _ := json.Marshal(r)
		var res struct {
			IPs []struct{ Address netip.Prefix }
		}
		if err := json.Unmarshal(b, &res); err != nil || len(res.IPs) == 0 {
			return nil, fmt.Errorf("CNI ADD result %s: %v", b, err)
		}
		n.ips = append(n.ips, res.IPs[0].Address.Addr())
	}
	success = true
	return n, nil
}
