package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podrouter/podrouter/router/kube/kubeproc"
	"github.com/podrouter/podrouter/router/tempns"
)

// DefaultSandboxImage is containerd 2.4's default pause image.
const DefaultSandboxImage = "registry.k8s.io/pause:3.10.2"

// nodeDirs are the host paths each node has its own copy of (bind mounts
// in its mount namespace): the DaemonSet's hostPath volumes, and the
// kubelet's and containerd's default directories.
var nodeDirs = []string{
	"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/podrouter", "/var/lib/podrouter", "/run/flannel",
	"/run/netns", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
	"/var/lib/containerd", "/run/containerd",
}

// holderScript runs in the node's new mount namespace, inside its netns:
// its own /sys (so the node sees its own network devices there), the
// cgroup hierarchies moved back under it, the node's directories bound
// over the host's, then / made rshared (the kubelet needs shared mounts
// for mount propagation). The bind and move mounts come first: a mount
// under a shared one cannot be moved.
const holderScript = `set -eu
cg="$NODE_DIR/.cgroup"
mkdir -p "$cg"
mount --rbind /sys/fs/cgroup "$cg"
mount -t sysfs -o rw,nosuid,nodev,noexec sysfs /sys
mount --move "$cg" /sys/fs/cgroup
for d in $NODE_DIRS; do
	mkdir -p "$NODE_DIR/root$d" "$d"
	mount --bind "$NODE_DIR/root$d" "$d"
done
mount --make-rshared /
touch "$NODE_DIR/holder.ready"
exec sleep infinity
`

// Node is one node of the cluster.
type Node struct {
	Name string
	// Addr is its underlay address (its InternalIP).
	Addr netip.Addr
	// Netns is its network namespace (/run/netns/NAME).
	Netns string
	// Dir is its directory (logs, configuration, root/ with its own copies
	// of nodeDirs).
	Dir string

	// NotReadyBefore is the node's Ready condition (reason: message)
	// before the network was deployed (Config.Deploy).
	NotReadyBefore string

	c          *Cluster
	cgroup     string
	holder     *kubeproc.Proc
	containerd *kubeproc.Proc
	kubelet    *kubeproc.Proc
}

// startNode creates node i: netns, holder, containerd (with the images),
// kubelet.
func (c *Cluster) startNode(ctx context.Context, st *state, i int) (*Node, error) {
	netns, err := c.nodeNetwork(st, i)
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name:   "node-" + strconv.Itoa(i),
		Addr:   c.nodeAddr(i),
		Netns:  netns,
		Dir:    filepath.Join(c.Dir, "node-"+strconv.Itoa(i)),
		c:      c,
		cgroup: st.Cgroup + "/node-" + strconv.Itoa(i),
	}
	if err := os.MkdirAll(filepath.Join(n.Dir, "logs"), 0o755); err != nil {
		return n, err
	}
	if err := makeCgroup(n.cgroup + "/system"); err != nil {
		return n, err
	}
	n.holder, err = kubeproc.Start(n.log("holder"), []string{
		"PODROUTER_CLUSTER=" + c.ID, "NODE_DIR=" + n.Dir, "NODE_DIRS=" + strings.Join(nodeDirs, " "),
	}, "unshare", "--mount", "--propagation", "private", "--",
		"nsenter", "--net=/run/netns/"+netns, "--", "sh", "-c", holderScript)
	if err != nil {
		return n, err
	}
	st.Holders = append(st.Holders, n.holder.Pid())
	if err := c.saveState(st); err != nil {
		return n, err
	}
	if err := waitFor(ctx, n.Name+" mount namespace", 30*time.Second, n.holder, func() (bool, error) {
		_, err := os.Stat(filepath.Join(n.Dir, "holder.ready"))
		return err == nil, err
	}); err != nil {
		return n, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	for _, img := range c.cfg.Images {
		if out, err := n.Exec(ctx, filepath.Join(c.cfg.Bin, "ctr"), "--address=/run/containerd/containerd.sock",
			"-n", "k8s.io", "images", "import", "--local", img); err != nil {
			return n, fmt.Errorf("cluster: %s: import %s: %w: %s", n.Name, img, err, out)
		}
	}
	return n, n.startKubelet()
}

// log is the path of the node's log of component.
func (n *Node) log(component string) string {
	return filepath.Join(n.Dir, "logs", component+".log")
}

// Log is the path of the node's log of component (containerd, kubelet).
func (n *Node) Log(component string) string { return n.log(component) }

// enter returns the nsenter prefix that runs a command in the node's
// mount and network namespaces.
func (n *Node) enter() []string {
	return []string{"nsenter", "--target=" + strconv.Itoa(n.holder.Pid()), "--mount", "--net", "--"}
}

// Exec runs a command in the node's namespaces (as its hostNetwork pods
// and its kubelet see the machine) and returns its combined output.
func (n *Node) Exec(ctx context.Context, name string, args ...string) (string, error) {
	argv := append(n.enter(), name)
	out, err := exec.CommandContext(ctx, argv[0], append(argv[1:], args...)...).CombinedOutput()
	return string(out), err
}

// DialContext dials address from the node's network namespace, as its
// hostNetwork pods would: the socket is made on a thread switched into
// the namespace, and stays there whatever thread uses it later.
func (n *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := tempns.DoIn("/run/netns/"+n.Netns, func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// startContainerd writes the node's containerd configuration and starts
// containerd in the node's namespaces and system cgroup.
func (n *Node) startContainerd(ctx context.Context) error {
	sandbox := n.c.cfg.SandboxImage
	if sandbox == "" {
		sandbox = DefaultSandboxImage
	}
	conf := fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = %t
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    use_internal_loopback = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    BinaryName = %q
    SystemdCgroup = false
`, sandbox, !hasCap(capSysResource), filepath.Join(n.c.cfg.Bin, "runc"))
	confPath := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	var err error
	n.containerd, err = kubeproc.Start(n.log("containerd"), n.env(), append(n.enter(),
		filepath.Join(n.c.cfg.Bin, "containerd"), "--config="+confPath)...)
	if err != nil {
		return err
	}
	if err := joinCgroup(n.cgroup+"/system", n.containerd.Pid()); err != nil {
		return fmt.Errorf("%w; containerd log tail:\n%s", err, kubeproc.Tail(n.containerd.Log, 3000))
	}
	return waitFor(ctx, n.Name+" containerd", 60*time.Second, n.containerd, func() (bool, error) {
		out, err := n.Exec(ctx, filepath.Join(n.c.cfg.Bin, "ctr"), "--address=/run/containerd/containerd.sock", "version")
		if err != nil {
			return false, errors.New(strings.TrimSpace(out))
		}
		return true, nil
	})
}

// env is the environment of the node's processes: the binaries on PATH
// (containerd finds its shim there) and the cluster's mark.
func (n *Node) env() []string {
	return []string{"PODROUTER_CLUSTER=" + n.c.ID, "PATH=" + n.c.cfg.Bin + ":" + os.Getenv("PATH")}
}

// startKubelet writes the node's kubelet configuration and credentials
// and starts the kubelet.
func (n *Node) startKubelet() error {
	cert, err := n.c.pki.Client("system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	kc := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := os.WriteFile(kc, n.c.pki.Kubeconfig(n.c.Server, "system:node:"+n.Name, cert), 0o600); err != nil {
		return err
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid); kubelet 1.35 and later refuse it
# unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %q
cgroupsPerQOS: true
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %q
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [%q]
failSwapOn: false
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
serializeImagePulls: false
# The nodes share one disk and one memory: evict on nothing but the
# obvious, and never garbage-collect the imported images.
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
protectKernelDefaults: false
maxPods: 150
`, n.cgroup, n.c.pki.CAFile, ClusterDNS)
	confPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	n.kubelet, err = kubeproc.Start(n.log("kubelet"), n.env(), append(n.enter(),
		filepath.Join(n.c.cfg.Bin, "kubelet"),
		"--config="+confPath,
		"--kubeconfig="+kc,
		"--hostname-override="+n.Name,
		"--node-ip="+n.Addr.String(),
		"--v=1")...)
	if err != nil {
		return err
	}
	if err := joinCgroup(n.cgroup+"/system", n.kubelet.Pid()); err != nil {
		return fmt.Errorf("%w; kubelet log tail:\n%s", err, kubeproc.Tail(n.kubelet.Log, 3000))
	}
	return nil
}

// stopProcs stops the kubelet, then containerd (the pods and shims go
// with the cgroups, in Down), then the holder.
func (n *Node) stopProcs() {
	for _, p := range []*kubeproc.Proc{n.kubelet, n.containerd, n.holder} {
		if p != nil {
			p.Stop(stopGrace)
		}
	}
}

// RestartKubelet stops and starts the node's kubelet.
func (n *Node) RestartKubelet() error {
	n.kubelet.Stop(stopGrace)
	return n.startKubelet()
}

// killHolder kills pid if it is one of a cluster's processes (its
// environment carries PODROUTER_CLUSTER) or a clusterctl: a pid reused
// by anything else is left alone.
func killHolder(pid int) {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return
	}
	cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if !strings.Contains(string(env), "PODROUTER_CLUSTER=") && !strings.Contains(string(cmd), "clusterctl") {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// capSysResource is CAP_SYS_RESOURCE's number.
const capSysResource = 24

// hasCap reports whether this process has capability cap in its
// effective set. Without CAP_SYS_RESOURCE (some sandboxes drop it) no
// process may lower an oom_score_adj, and runc fails to start the pods
// the kubelet gives a negative one (the pause container, critical and
// Guaranteed pods): containerd's restrict_oom_score_adj then clamps those
// to its own value instead.
func hasCap(cap uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<cap) != 0
		}
	}
	return false
}
