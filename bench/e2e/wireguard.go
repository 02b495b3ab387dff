package main

// Case cross-node-wireguard: the cross-node topology (crossnode.go) over an
// encrypted underlay, built up to three ways in one run:
//
//	kernel-wireguard:    pod ═veth═ cni0 ─ wg0 (Linux WireGuard, 51820, wg(8)) ─ ul0 ═══ ul0 ─ wg0 ─ cni0 ═veth═ pod
//	                     (flannel's wireguard backend: the baseline)
//	wireguard-go:        the same with a wireguard-go TUN in each node, set up
//	                     through its UAPI socket (the userspace baseline; the
//	                     baseline where the kernel has no WireGuard)
//	podrouter-wireguard: pod eth0 (TAP) ─ engine ─ wireguard backend (51820) ─ ul0 ═══ ... ─ engine ─ TAP
//
// Every variant's pods have MTU 1440: the underlay's 1500 less WireGuard's
// 60 over IPv4 (node.PodMTU for podrouter). A kernel without WireGuard
// (no module: `ip link add type wireguard` fails) is said on one line, and
// the ratios are then taken against wireguard-go.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podrouter/podrouter/router/node"
)

func init() {
	register(Case{Name: "cross-node-wireguard", Baselines: []string{"kernel-wireguard", "wireguard-go"}, Run: runCrossNodeWireGuard})
}

// wgPort is the WireGuard port of every variant.
const wgPort = "51820"

// errUnavailable: this machine cannot build the variant (said, not an
// error of the run).
var errUnavailable = errors.New("unavailable")

func runCrossNodeWireGuard(ctx context.Context, opt Options) ([]Result, error) {
	for _, c := range []string{"iperf3", "ip", "ethtool"} {
		if _, err := exec.LookPath(c); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps)", c)
		}
	}
	impls := []struct {
		name  string
		build func(*xnTopo) (func(), error)
	}{
		{"kernel-wireguard", (*xnTopo).kernelWireGuard},
		{"wireguard-go", func(t *xnTopo) (func(), error) { return t.wireGuardGo(ctx, opt.WireGuardGo) }},
		{"podrouter-wireguard", func(t *xnTopo) (func(), error) { return t.podrouter(node.BackendWireGuard) }},
	}
	var res []Result
	var errs []error
	for _, impl := range impls {
		if ctx.Err() != nil {
			break
		}
		r, err := crossNodeOnce(ctx, opt, impl.name, impl.build)
		switch {
		case errors.Is(err, errUnavailable):
			fmt.Printf("case=cross-node-wireguard %s: %v\n", strings.ReplaceAll(impl.name, "-", " "), err)
		case err != nil:
			fmt.Fprintf(os.Stderr, "case=cross-node-wireguard impl=%s error: %v\n", impl.name, err)
			errs = append(errs, fmt.Errorf("%s: %w", impl.name, err))
		default:
			res = append(res, r)
		}
	}
	if len(res) == 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

// wgKeys returns a private key per node and their public keys.
func wgKeys() (priv, pub [2]node.Key, err error) {
	for i := range 2 {
		if priv[i], err = node.GenerateKey(); err != nil {
			return priv, pub, err
		}
		pub[i] = node.PublicKey(priv[i])
	}
	return priv, pub, nil
}

// wgRoute brings node i's WireGuard interface up with the pods' MTU and
// routes the other node's podCIDR into it.
func (t *xnTopo) wgRoute(i int, ifname string) error {
	for _, c := range [][]string{
		{"ip", "link", "set", ifname, "mtu", "1440", "up"},
		{"ip", "route", "add", xnPodCIDR(1 - i).String(), "dev", ifname},
	} {
		if err := t.nodes[i].run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// kernelWireGuard configures Linux WireGuard (wg0) on both nodes with
// wg(8), as flannel's wireguard backend does through netlink.
func (t *xnTopo) kernelWireGuard() (func(), error) {
	if _, err := t.nodes[0].NS.Run(context.Background(), "ip", "link", "add", "wg0", "type", "wireguard"); err != nil {
		return nil, fmt.Errorf("%w (ip link add type wireguard: %v)", errUnavailable, strings.TrimSpace(err.Error()))
	}
	if _, err := exec.LookPath("wg"); err != nil {
		return nil, fmt.Errorf("%w (wg(8) is not installed: make deps installs wireguard-tools)", errUnavailable)
	}
	priv, pub, err := wgKeys()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "podr-wgkeys-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for i, n := range t.nodes {
		if err := t.kernelPod(i, 1440); err != nil {
			return nil, err
		}
		keyFile := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(keyFile, []byte(priv[i].String()+"\n"), 0o600); err != nil {
			return nil, err
		}
		if i == 1 {
			if err := n.run("ip", "link", "add", "wg0", "type", "wireguard"); err != nil {
				return nil, err
			}
		}
		if err := n.run("wg", "set", "wg0", "private-key", keyFile, "listen-port", wgPort,
			"peer", pub[1-i].String(), "endpoint", xnUnder[1-i].String()+":"+wgPort, "allowed-ips", xnPodCIDR(1-i).String()); err != nil {
			return nil, err
		}
		if err := t.wgRoute(i, "wg0"); err != nil {
			return nil, err
		}
	}
	return func() {}, nil
}

// wireGuardGo runs wireguard-go (bin) in each node, configured through its
// UAPI socket. Its socket directory, /var/run/wireguard, is not per
// namespace: the interface names carry this process's pid.
func (t *xnTopo) wireGuardGo(ctx context.Context, bin string) (stop func(), err error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w (wireguard-go: %v; make tools builds it)", errUnavailable, err)
	}
	priv, pub, err := wgKeys()
	if err != nil {
		return nil, err
	}
	var cmds []*exec.Cmd
	var socks []string
	stop = func() {
		for _, c := range cmds {
			_ = c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = c.Process.Kill()
				<-done
			}
		}
		for _, s := range socks {
			_ = os.Remove(s)
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for i, n := range t.nodes {
		if err := t.kernelPod(i, 1440); err != nil {
			return nil, err
		}
		ifname := fmt.Sprintf("pwg%d%c", os.Getpid()%1000000, 'a'+i)
		c := n.cmd(context.WithoutCancel(ctx), bin, "-f", ifname)
		c.Env = append(os.Environ(), "LOG_LEVEL=error")
		var out strings.Builder
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			return nil, err
		}
		cmds = append(cmds, c)
		t.procs = append(t.procs, c.Process.Pid)
		sock := filepath.Join("/var/run/wireguard", ifname+".sock")
		socks = append(socks, sock)
		cfg := fmt.Sprintf("set=1\nprivate_key=%s\nlisten_port=%s\nreplace_peers=true\npublic_key=%s\nendpoint=%s:%s\nreplace_allowed_ips=true\nallowed_ip=%s\n\n",
			hex.EncodeToString(priv[i][:]), wgPort, hex.EncodeToString(pub[1-i][:]), xnUnder[1-i], wgPort, xnPodCIDR(1-i))
		if err := uapiSet(ctx, sock, cfg); err != nil {
			return nil, fmt.Errorf("wireguard-go %s: %w (its output: %q)", ifname, err, out.String())
		}
		if err := t.wgRoute(i, ifname); err != nil {
			return nil, err
		}
	}
	return stop, nil
}

// uapiSet sends a set operation to a WireGuard UAPI socket (waiting up to
// 10 s for it to appear) and checks the reply's errno.
func uapiSet(ctx context.Context, sock, cfg string) error {
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		var d net.Dialer
		if c, err = d.DialContext(ctx, "unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("UAPI socket: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(cfg)); err != nil {
		return fmt.Errorf("UAPI set: %w", err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("UAPI set reply: %w", err)
	}
	if reply := strings.TrimSpace(string(buf[:n])); reply != "errno=0" {
		return fmt.Errorf("UAPI set: %q", reply)
	}
	return nil
}
