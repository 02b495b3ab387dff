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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	bin, err := filepath.Abs(filepath.Dir(opt.Podrouter))
	if err != nil {
		return Result{}, err
	}
	for _, b := range []string{"podrouter", "podrouter-cni"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return Result{}, fmt.Errorf("%s not built (make build): %w", b, err)
		}
	}
	tools, err := filepath.Abs(filepath.Join(".cache", "bin"))
	if err != nil {
		return Result{}, err
	}
	if _, err := os.Stat(filepath.Join(tools, "host-local")); err != nil {
		if err := sh("go", "build", "-o", filepath.Join(tools, "host-local"), "github.com/containernetworking/plugins/plugins/ipam/host-local"); err != nil {
			return Result{}, err
		}
	}
	dir, err := os.MkdirTemp("", "podrouter-bench-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	node, err := newNetns("sn")
	if err != nil {
		return Result{}, err
	}
	defer node.del()
	socket := filepath.Join(dir, "run", "podrouter.sock")
	var logs bytes.Buffer
	d := node.cmd(context.Background(), filepath.Join(bin, "podrouter"), "daemon", "--pod-cidr", "10.250.200.0/24",
		"--state-dir", filepath.Join(dir, "state"), "--socket", socket, "--uplink", fmt.Sprintf("prb%d", os.Getpid()%100000),
		"--log-level", "warn")
	d.Stdout, d.Stderr = &logs, &logs
	if err := d.Start(); err != nil {
		return Result{}, err
	}
	defer func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() }()
	cl := &api.Client{Path: socket, Timeout: time.Second}
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if st, err := cl.Status(ctx); err == nil && st.Ready {
			break
		}
		if time.Since(t0) > 10*time.Second {
			return Result{}, fmt.Errorf("daemon not ready: %s", logs.String())
		}
	}
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podr-bench","plugins":[{"type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q}}]}`,
		socket, filepath.Join(dir, "ipam"))))
	if err != nil {
		return Result{}, err
	}
	cn := libcni.NewCNIConfigWithCacheDir([]string{bin, tools}, filepath.Join(dir, "cache"), nil)
	var pods []*netns
	var ips []string
	defer func() {
		for i, p := range pods {
			_ = cn.DelNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench%d", i), NetNS: p.path(), IfName: "eth0"})
			p.del()
		}
	}()
	for i := range 2 {
		p, err := newNetns("sn")
		if err != nil {
			return Result{}, err
		}
		pods = append(pods, p)
		r, err := cn.AddNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench%d", i), NetNS: p.path(), IfName: "eth0"})
		if err != nil {
			return Result{}, fmt.Errorf("CNI ADD: %w", err)
		}
		b, _ := json.Marshal(r)
		var res struct{ IPs []struct{ Address string } }
		if err := json.Unmarshal(b, &res); err != nil || len(res.IPs) == 0 {
			return Result{}, fmt.Errorf("CNI ADD result %s: %v", b, err)
		}
		ip, _, _ := strings.Cut(res.IPs[0].Address, "/")
		ips = append(ips, ip)
	}
	r, err := measure(ctx, opt, pods[1], pods[0], ips[1], d.Process.Pid)
	if err != nil {
		return Result{}, fmt.Errorf("%w\ndaemon: %s", err, logs.String())
	}
	r.Impl = "podrouter"
	return r, nil
}
