package kube

// End to end: two `podrouter daemon --kube` processes, each in its own
// network namespace joined by a veth (the underlay), against the test API
// server with deploy/'s ServiceAccount token. The API server listens on the
// host's loopback; each namespace reaches it through a proxy listening on
// the namespace's loopback.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podrouter/podrouter/router/nstest"
)

// proxyInto listens on 127.0.0.1 inside ns and forwards every connection to
// target (an address of this, the host's, namespace). It returns the port.
func proxyInto(t *testing.T, ns *nstest.NS, target string) int {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	nstest.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		u, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer u.Close()
		go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
		_, _ = io.Copy(c, u)
	})
	return ln.Addr().(*net.TCPAddr).Port
}

type e2eNode struct {
	name, podCIDR, ip string
	veth              string // the underlay link (nodePair)
	ns                *nstest.NS
	dir               string
	logs              bytes.Buffer
	mu                sync.Mutex
	cmd               *exec.Cmd
	done              chan struct{}
}

func (n *e2eNode) Write(b []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.Write(b)
}

func (n *e2eNode) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.String()
}

// nodePair makes node-a (pod CIDR 10.244.1.0/24) and node-b
// (10.244.2.0/24), each in a namespace of its own with a directory under
// dir, joined by a veth named vethPrefix and five random hex digits, on
// which they have the addresses underlay.x.1 and underlay.x.2 (a /24, x
// random).
func nodePair(t *testing.T, dir, underlay, vethPrefix string) []*e2eNode {
	t.Helper()
	x := 1 + rand.IntN(250)
	nodes := []*e2eNode{
		{name: "node-a", podCIDR: "10.244.1.0/24", ip: fmt.Sprintf("%s.%d.1", underlay, x)},
		{name: "node-b", podCIDR: "10.244.2.0/24", ip: fmt.Sprintf("%s.%d.2", underlay, x)},
	}
	for _, n := range nodes {
		n.ns = nstest.New(t)
		n.dir = filepath.Join(dir, n.name)
	}
	veth := fmt.Sprintf("%s%05x", vethPrefix, rand.IntN(1<<20))
	nodes[0].ns.Run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", veth, "netns", nodes[1].ns.Name)
	for _, n := range nodes {
		n.veth = veth
		n.ns.Run(t, "ip", "addr", "add", n.ip+"/24", "dev", veth)
		n.ns.Run(t, "ip", "link", "set", veth, "up")
	}
	return nodes
}

// start starts n.cmd, the node's daemon, with its output in n's log. When
// the test ends the daemon gets SIGTERM (SIGKILL after 10 seconds), and its
// log is printed if the test failed.
func (n *e2eNode) start(t *testing.T) {
	t.Helper()
	n.cmd.Stdout, n.cmd.Stderr = n, n
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", n.name, n.logText())
		}
	})
}

func TestKubeModeDaemons(t *testing.T) { kubeModeDaemons(t, "vxlan") }

// TestKubeModeDaemonsWireGuard: the same over the wireguard backend; each
// daemon makes its key in its state directory and learns the other's
// public key from its Node's annotations.
func TestKubeModeDaemonsWireGuard(t *testing.T) { kubeModeDaemons(t, "wireguard") }

// TestKubeModeDaemonsHostGW: the same over host-gw: each node's host
// routes the other's podCIDR via its InternalIP, nothing encapsulated.
func TestKubeModeDaemonsHostGW(t *testing.T) { kubeModeDaemons(t, "host-gw") }

func kubeModeDaemons(t *testing.T, backend string) {
	nstest.RequireRoot(t)
	c, admin, _ := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin, cniBin, tools := buildE2E(t, ctx, dir)
	netConf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"`+backend+`"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	nodes := nodePair(t, dir, "10.252", "pru")
	for _, n := range nodes {
		if err := createNode(ctx, admin, n.name, n.podCIDR, n.ip, nil); err != nil {
			t.Fatal(err)
		}
	}
	token := c.ServiceAccountConfig(t, "kube-podrouter", "podrouter").BearerToken
	for _, n := range nodes {
		if backend == "host-gw" { // the hosts route the pods' packets
			n.ns.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
		}
		port := proxyInto(t, n.ns, strings.TrimPrefix(c.Host, "https://"))
		kc := filepath.Join(dir, n.name+".kubeconfig")
		if err := os.WriteFile(kc, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: k, cluster: {server: "https://127.0.0.1:%d", certificate-authority: %q}}]
users: [{name: sa, user: {token: %q}}]
contexts: [{name: k, context: {cluster: k, user: sa}}]
current-context: k
`, port, c.CAFile, token), 0o600); err != nil {
			t.Fatal(err)
		}
		n.cmd = n.ns.Command(context.Background(), bin, "daemon", "--kube", "--kubeconfig", kc, "--node-name", n.name,
			"--net-conf", netConf, "--state-dir", filepath.Join(n.dir, "state"), "--socket", filepath.Join(n.dir, "api.sock"),
			"--uplink", "podr0", "--metrics-addr", "off", "--log-level", "debug",
			"--cni-conf", filepath.Join(n.dir, "net.d", "10-podrouter.conflist"), "--cni-data-dir", filepath.Join(n.dir, "ipam"), "--subnet-env", filepath.Join(n.dir, "subnet.env"))
		n.start(t)
	}

	// Each daemon's peer table names the other node with its podCIDR
	// (host-gw: its host routes the other's podCIDR via its address).
	for i, n := range nodes {
		other := nodes[1-i]
		deadline := time.Now().Add(60 * time.Second)
		for backend == "host-gw" {
			r := n.ns.Run(t, "ip", "route", "show", other.podCIDR)
			if strings.Contains(r, "via "+other.ip+" dev "+n.veth) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: host route to %s: %q, want via %s", n.name, other.podCIDR, r, other.ip)
			}
			time.Sleep(200 * time.Millisecond)
		}
		for backend != "host-gw" {
			out, err := exec.CommandContext(ctx, bin, "peers", "--json", "--socket", filepath.Join(n.dir, "api.sock")).Output()
			var peers []struct {
				Name     string   `json:"name"`
				Prefixes []string `json:"prefixes"`
			}
			if err == nil && json.Unmarshal(out, &peers) == nil && slices.ContainsFunc(peers, func(p struct {
				Name     string   `json:"name"`
				Prefixes []string `json:"prefixes"`
			}) bool {
				// Its podCIDR, and its node addresses as /32s (the host
				// reaches every node's pods through the peer).
				return p.Name == "peer-"+other.name && slices.Equal(p.Prefixes, []string{other.podCIDR, other.ip + "/32"})
			}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: peers %s (%v): want %s with %s", n.name, out, err, other.name, other.podCIDR)
			}
			select {
			case <-n.done:
				t.Fatalf("%s exited", n.name)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	// Their Nodes carry the annotations and NetworkUnavailable=False; a
	// wireguard node announces the public key of the private key in its
	// state directory, which podrouter status shows too.
	port, mtu := "8472", "1450"
	switch backend {
	case "wireguard":
		port, mtu = "51820", "1440"
	case "host-gw":
		port, mtu = "0", "1500"
	}
	for _, n := range nodes {
		wantKey := ""
		if backend == "wireguard" {
			out, err := exec.CommandContext(ctx, bin, "status", "--json", "--socket", filepath.Join(n.dir, "api.sock")).Output()
			var st struct {
				Backend   string `json:"backend"`
				PublicKey string `json:"publicKey"`
			}
			if err != nil || json.Unmarshal(out, &st) != nil || st.Backend != "wireguard" || st.PublicKey == "" {
				t.Fatalf("%s: status %s (%v): want the wireguard backend and a public key", n.name, out, err)
			}
			fi, err := os.Stat(filepath.Join(n.dir, "state", "wireguard.key"))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s: key file %v %v: want mode 0600", n.name, fi, err)
			}
			wantKey = st.PublicKey
		}
		waitNodeReal(t, ctx, admin, n.name, func(node *corev1.Node) bool {
			a := node.Annotations
			return a[AnnotEndpoint] == n.ip+":"+port && a[FlannelPublicIP] == n.ip && (backend != "vxlan" || a[AnnotVTEPMAC] != "") &&
				a[AnnotPublicKey] == wantKey && (wantKey == "" || a[FlannelBackendData] == `{"PublicKey":"`+wantKey+`"}`) &&
				slices.ContainsFunc(node.Status.Conditions, func(c corev1.NodeCondition) bool {
					return c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse
				})
		})
		env, err := os.ReadFile(filepath.Join(n.dir, "subnet.env"))
		wantSubnet := "FLANNEL_SUBNET=" + strings.TrimSuffix(n.podCIDR, "0/24") + "1/24\n"
		if err != nil || !strings.Contains(string(env), wantSubnet) || !strings.Contains(string(env), "FLANNEL_MTU="+mtu+"\n") {
			t.Errorf("%s subnet.env %q, %v: want %q and MTU %s", n.name, env, err, wantSubnet, mtu)
		}
	}

	// A pod on each node through the CNI plugin and the conflist the daemon
	// wrote; they ping each other across the underlay.
	pingAcross(t, ctx, nodes, cniBin, tools)
}

func waitNodeReal(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string, ok func(*corev1.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && ok(n) {
			return
		}
		if time.Now().After(deadline) {
			if n != nil {
				t.Fatalf("node %s: annotations %v conditions %+v (%v)", name, n.Annotations, n.Status.Conditions, err)
			}
			t.Fatalf("node %s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildE2E builds podrouter and podrouter-cni into dir, and cnitool and
// host-local into .cache/bin unless there already.
func buildE2E(t *testing.T, ctx context.Context, dir string) (bin, cniBin, tools string) {
	t.Helper()
	nstest.RequireCommand(t, "ping")
	bin = filepath.Join(dir, "podrouter")
	cniBin = filepath.Join(dir, "cni")
	tools, err := filepath.Abs("../../.cache/bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct{ out, pkg string }{
		{bin, "../../cmd/podrouter"},
		{filepath.Join(cniBin, "podrouter-cni"), "../../cmd/podrouter-cni"},
		{filepath.Join(tools, "cnitool"), "github.com/containernetworking/cni/cnitool"},
		{filepath.Join(tools, "host-local"), "github.com/containernetworking/plugins/plugins/ipam/host-local"},
	} {
		if _, err := os.Stat(b.out); err == nil && strings.HasPrefix(b.out, tools) {
			continue
		}
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return bin, cniBin, tools
}

// pingAcross adds a pod to each node with the CNI plugin and the conflist in
// the node's dir/net.d, and pings between them both ways (the second time
// with 1400-byte DF packets: the pod MTU is 1450).
func pingAcross(t *testing.T, ctx context.Context, nodes []*e2eNode, cniBin, tools string) []string {
	t.Helper()
	var podIPs []string
	var pods []*nstest.NS
	for _, n := range nodes {
		pod := nstest.New(t)
		run := func(cmd string) ([]byte, error) {
			c := exec.CommandContext(ctx, filepath.Join(tools, "cnitool"), cmd, "podrouter", "/run/netns/"+pod.Name)
			c.Env = append(os.Environ(), "CNI_PATH="+cniBin+string(os.PathListSeparator)+tools, "NETCONFPATH="+filepath.Join(n.dir, "net.d"))
			return c.CombinedOutput()
		}
		t.Cleanup(func() { _, _ = run("del") })
		out, err := run("add")
		if err != nil {
			t.Fatalf("%s: cnitool add: %v\n%s", n.name, err, out)
		}
		var res struct{ IPs []struct{ Address string } }
		if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("%s: cnitool add result %s: %v", n.name, out, err)
		}
		podIPs = append(podIPs, strings.Split(res.IPs[0].Address, "/")[0])
		pods = append(pods, pod)
	}
	pods[0].Run(t, "ping", "-c", "3", "-i", "0.2", "-W", "5", podIPs[1])
	pods[1].Run(t, "ping", "-c", "3", "-i", "0.2", "-W", "5", "-s", "1400", "-M", "do", podIPs[0])
	return podIPs
}
