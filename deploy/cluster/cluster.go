// Package cluster runs a real Kubernetes cluster on one machine, with
// podrouter as its pod network: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler on the host, and nodes that
// each have their own network and mount namespace, containerd, kubelet,
// root directories, cgroup parent and CNI directories. kube-proxy is not
// run. `make cluster` (deploy/cluster/clusterctl) holds one; the cluster
// e2e tests and `make conformance` use it.
//
//	host netns:  etcd ─ kube-apiserver ─ controller-manager (podCIDRs) ─ scheduler
//	             bridge podrbr-ID (ADDR.254) ─┬─ veth ─ node-1 netns (ADDR.1)
//	                                          └─ veth ─ node-2 netns (ADDR.2)
//	each node:   holder process (mount ns: / rshared; own /sys; per-node
//	             /etc/cni/net.d, /opt/cni/bin, /var/lib/kubelet, /run/containerd,
//	             /var/lib/podrouter, /run/podrouter, /run/netns, ...)
//	             └─ containerd (cgroup /podr-ID/node-N/system) ─ shims ─ pods
//	             └─ kubelet (cgroupRoot /podr-ID/node-N; failCgroupV1: false)
//	Up: pki ─► control plane ─► nodes (import images) ─► kubelets register
//	    ─► kubectl apply -k deploy/ (the DaemonSet; optional) ─► nodes Ready
//	    ─► addons (CoreDNS, addons/coredns.yaml; not waited for)
//	Down: kubelets, containerd ─► every process in the cluster's cgroups
//	      ─► holders (their mounts go with their mount namespaces) ─► netns,
//	      bridge, cgroups, directories
//
// Design notes. A node is a network namespace (what its hostNetwork pods
// and its podrouter daemon see) plus a mount namespace, so that the
// DaemonSet's hostPath volumes (/etc/cni/net.d, /opt/cni/bin, ...) are the
// node's own, as they would be on a machine of its own. The mount
// namespace is held by a "holder" process; containerd and kubelet join it
// and the netns with nsenter, so they can be stopped and restarted on
// their own. Everything a cluster creates is named from its ID and listed
// in its directory (state.json), so that Down, from another process,
// removes what a crashed or killed holder left. The underlay bridge has no
// route beyond its own /24: no node has a default route, and nothing
// reaches any address outside the namespaces the cluster created.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podrouter/podrouter/router/kube/kubepki"
	"github.com/podrouter/podrouter/router/kube/kubeproc"
)

// Defaults.
const (
	// BaseDir holds one directory per cluster (state.json, logs, PKI, the
	// nodes' root directories). On disk, not tmpfs: the nodes' image
	// snapshots live there.
	BaseDir = "/var/lib/podrouter-cluster"
	// ClusterCIDR is kube-controller-manager's --cluster-cidr and the
	// net-conf's Network (deploy/configmap.yaml).
	ClusterCIDR = "10.244.0.0/16"
	// ServiceCIDR is the API server's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"
	// ClusterDNS is the kubelets' clusterDNS (the tenth address of
	// ServiceCIDR, as kubeadm picks it).
	ClusterDNS = "10.96.0.10"
	// KubeVersion is the version the kube binaries are built at
	// (deploy/kubetools/go.mod); the kubelet refuses cgroup v1 from 1.35 on
	// unless failCgroupV1 is false, which this package sets.
	KubeVersion = "v1.37.2"
)

// Config says what Up builds. The zero value with Bin set is a two-node
// cluster without the DaemonSet.
type Config struct {
	// Nodes is the number of nodes (default 2).
	Nodes int
	// Bin holds the binaries: kube-apiserver, etcd, kubectl, kubelet,
	// kube-controller-manager, kube-scheduler, containerd,
	// containerd-shim-runc-v2, ctr and runc.
	Bin string
	// Images are OCI image tarballs (`make images`) imported into every
	// node's containerd, with the names they carry.
	Images []string
	// SandboxImage is the pause image's name (one of Images).
	SandboxImage string
	// Deploy, when set, is a kustomization directory (deploy/) applied once
	// the nodes have registered, with Image as the podrouter image; the
	// addons (CoreDNS: CoreDNSImage should be among Images) follow it.
	Deploy string
	Image  string
	// ReadyTimeout bounds the wait for every node to be Ready (default
	// 120 s; without Deploy the nodes stay NotReady and Up does not wait).
	ReadyTimeout time.Duration
	// Log receives progress lines (default: discarded).
	Log func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	ID  string
	Dir string
	// Kubeconfig is an admin kubeconfig (system:masters).
	Kubeconfig string
	// Server is the API server's URL.
	Server string
	// Config and Client are the admin's.
	Config *rest.Config
	Client kubernetes.Interface
	// Nodes are the nodes, in order.
	Nodes []*Node
	// Prefix is the underlay's /24; the bridge has .254, node i has .i.
	Prefix netip.Prefix

	cfg     Config
	pki     *kubepki.PKI
	control []*kubeproc.Proc
	egress  *egressProxy // the API server's way to the pods (egress.go)
	mu      sync.Mutex
	closed  bool
}

// state is what Down needs to remove a cluster from another process.
type state struct {
	ID     string   `json:"id"`
	Pid    int      `json:"pid"` // the process that ran Up
	Bridge string   `json:"bridge"`
	Netns  []string `json:"netns"`
	Veths  []string `json:"veths"`
	Cgroup string   `json:"cgroup"`
	// Holders are the nodes' holder pids (their mount namespaces).
	Holders []int `json:"holders"`
}

// ErrNoBinaries is returned by Up when a binary is missing.
var ErrNoBinaries = errors.New("cluster: binaries missing (run `make cluster-tools`)")

// Binaries are the names Up needs in Config.Bin.
var Binaries = []string{"kube-apiserver", "etcd", "kubectl", "kubelet", "kube-controller-manager",
	"kube-scheduler", "containerd", "containerd-shim-runc-v2", "ctr", "runc"}

// Up starts a cluster. On error everything it made is removed again.
func Up(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster: needs root (network and mount namespaces, cgroups)")
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.Nodes < 1 || cfg.Nodes > 200 {
		return nil, fmt.Errorf("cluster: %d nodes: want 1 to 200", cfg.Nodes)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 120 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	bin, err := filepath.Abs(cfg.Bin)
	if err != nil {
		return nil, err
	}
	cfg.Bin = bin
	for i, img := range cfg.Images {
		// ctr runs in the node's mount namespace, from another directory.
		if cfg.Images[i], err = filepath.Abs(img); err != nil {
			return nil, err
		}
		if _, err := os.Stat(cfg.Images[i]); err != nil {
			return nil, fmt.Errorf("cluster: image: %w", err)
		}
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(cfg.Bin, b)); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrNoBinaries, filepath.Join(cfg.Bin, b))
		}
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("cluster: %s not found (iproute2, util-linux, mount)", tool)
		}
	}
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	c = &Cluster{ID: id, Dir: filepath.Join(BaseDir, id), cfg: cfg}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := c.Down(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	began := time.Now()
	st := &state{ID: id, Pid: os.Getpid(), Bridge: "podrbr-" + id, Cgroup: "/podr-" + id}
	if err := c.saveState(st); err != nil {
		return c, err
	}
	if err := c.underlay(st); err != nil {
		return c, err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return c, err
	}
	cfg.Log("control plane at %s (%v)", c.Server, time.Since(began).Round(time.Millisecond))
	for i := 1; i <= cfg.Nodes; i++ {
		n, err := c.startNode(ctx, st, i)
		if n != nil {
			c.Nodes = append(c.Nodes, n)
			if c.egress != nil {
				c.egress.via.CompareAndSwap(nil, n)
			}
		}
		if err != nil {
			return c, err
		}
		if err := c.saveState(st); err != nil {
			return c, err
		}
		cfg.Log("node %s: containerd and kubelet started (%v)", n.Name, time.Since(began).Round(time.Millisecond))
	}
	if err := c.waitRegistered(ctx); err != nil {
		return c, err
	}
	cfg.Log("nodes registered (%v)", time.Since(began).Round(time.Millisecond))
	if cfg.Deploy != "" {
		// Before the DaemonSet, each kubelet reports why its node is not
		// Ready (no CNI configuration yet): kept for the tests.
		if err := c.recordNotReady(ctx); err != nil {
			return c, err
		}
		applied := time.Now()
		if err := c.Apply(ctx, cfg.Deploy, cfg.Image); err != nil {
			return c, err
		}
		if err := c.waitFirstRunning(ctx, "kube-podrouter", cfg.ReadyTimeout); err != nil {
			return c, err
		}
		cfg.Log("first podrouter pod Running %v after the DaemonSet apply", time.Since(applied).Round(time.Millisecond))
		if err := c.WaitReady(ctx, cfg.ReadyTimeout); err != nil {
			return c, err
		}
		cfg.Log("nodes Ready %v after the DaemonSet apply (%v in all)", time.Since(applied).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
		// The addons (CoreDNS) once every node is Ready, so that the
		// scheduler spreads the replicas (applied earlier, both went to
		// the first node Ready). Up does not wait for them (see
		// addons.go); it logs their state.
		if err := c.applyAddons(ctx); err != nil {
			return c, err
		}
		if st, err := c.CoreDNSState(ctx); err != nil {
			cfg.Log("CoreDNS: %v", err)
		} else {
			cfg.Log("CoreDNS (not waited for: its readiness needs the kubernetes Service): %s", st)
		}
	}
	return c, nil
}

// saveState writes state.json.
func (c *Cluster) saveState(st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.Dir, "state.json"))
}

// adminClient loads the admin kubeconfig.
func (c *Cluster) adminClient() error {
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 100, 200
	cl, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	c.Config, c.Client = rc, cl
	return nil
}

// Kubectl runs kubectl with the admin kubeconfig and returns its output
// (stdout and stderr); the error carries the output too.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--kubeconfig=" + c.Kubeconfig, "--cache-dir=" + filepath.Join(c.Dir, "kubectl-cache")}, args...)
	out, err := exec.CommandContext(ctx, filepath.Join(c.cfg.Bin, "kubectl"), full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Down removes the cluster: processes, mounts (with their mount
// namespaces), namespaces, devices, cgroups and its directory. It is
// idempotent.
func (c *Cluster) Down() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, n := range c.Nodes {
		n.stopProcs()
	}
	for i := len(c.control) - 1; i >= 0; i-- {
		c.control[i].Stop(stopGrace)
	}
	if c.egress != nil {
		c.egress.close()
	}
	st, err := readState(c.Dir)
	if err != nil {
		errs = append(errs, err)
	}
	if st != nil {
		errs = append(errs, removeState(st))
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// readState reads dir/state.json.
func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("cluster: %s/state.json: %w", dir, err)
	}
	return &st, nil
}

// removeState removes what st lists: every process in the cluster's
// cgroups, the holders, the network namespaces, veths and bridge.
func removeState(st *state) error {
	var errs []error
	if st.Cgroup != "" {
		if err := removeCgroup(st.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pid := range st.Holders {
		killHolder(pid)
	}
	for _, ns := range st.Netns {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range append(st.Veths, st.Bridge) {
		if l == "" {
			continue
		}
		if out, err := exec.Command("ip", "link", "del", l).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			errs = append(errs, fmt.Errorf("cluster: ip link del %s: %w: %s", l, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// DownAll removes every cluster under BaseDir (`make cluster-down`),
// whether its holder process still runs or not.
func DownAll() error {
	ents, err := os.ReadDir(BaseDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		dir := filepath.Join(BaseDir, e.Name())
		st, err := readState(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st != nil {
			if st.Pid != os.Getpid() && st.Pid > 0 {
				// The process that holds it (make cluster) goes first: its
				// children die with it (Pdeathsig).
				killHolder(st.Pid)
			}
			if err := removeState(st); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Held returns the directory of a cluster that a live process holds (make
// cluster), or "" when none does.
func Held() (string, error) {
	ents, err := os.ReadDir(BaseDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		dir := filepath.Join(BaseDir, e.Name())
		st, err := readState(dir)
		if err != nil || st == nil || st.Pid <= 0 {
			continue
		}
		if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.Pid)); err == nil && strings.Contains(string(cmd), "clusterctl") {
			if _, err := os.Stat(filepath.Join(dir, "kubeconfig")); err == nil {
				return dir, nil
			}
		}
	}
	return "", nil
}

// Bin is the path of the cluster's binary name (one of Binaries).
func (c *Cluster) Bin(name string) string { return filepath.Join(c.cfg.Bin, name) }
