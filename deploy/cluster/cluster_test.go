package cluster_test

// The cluster e2e suite: one real two-node cluster (deploy/cluster) with
// podrouter's DaemonSet from deploy/, and pods of the agnhost image that
// the upstream e2e suite uses. Needs root and `make cluster-tools images`;
// skips without them, fails under PODROUTER_REQUIRE_CLUSTER=1 (make test).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podrouter/podrouter/deploy/cluster"
)

// Environment.
const (
	envRequire = "PODROUTER_REQUIRE_CLUSTER"
	// envImages overrides the image directory (default .cache/images).
	envImages = "PODROUTER_IMAGES"
)

// The images `make images` builds (their names are the tar files').
const (
	agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	pauseImage   = "registry.k8s.io/pause:3.10.2"
	podrouterImg = "podrouter:dev"
)

// repoRoot is the repository's root (two levels up from deploy/cluster).
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(wd))
}

// imageFile is the tarball of image in dir (imagetool's naming).
func imageFile(dir, image string) string {
	return filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(image)+".tar")
}

// skipOrFail skips the test (fails it under PODROUTER_REQUIRE_CLUSTER=1).
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(envRequire) == "1" {
		t.Fatalf(format+" ("+envRequire+"=1)", args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// upCluster starts the cluster with the DaemonSet, or skips.
func upCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped in -short: a whole cluster (make test runs it once, without -short)")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (network and mount namespaces, cgroups)")
	}
	root := repoRoot(t)
	bin := filepath.Join(root, ".cache", "kube", "bin")
	for _, b := range cluster.Binaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			skipOrFail(t, "%s missing (make cluster-tools)", b)
		}
	}
	imgDir := os.Getenv(envImages)
	if imgDir == "" {
		imgDir = filepath.Join(root, ".cache", "images")
	}
	var images []string
	for _, img := range []string{podrouterImg, pauseImage, agnhostImage, cluster.CoreDNSImage} {
		f := imageFile(imgDir, img)
		if _, err := os.Stat(f); err != nil {
			skipOrFail(t, "%s missing (make images)", f)
		}
		images = append(images, f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := cluster.Up(ctx, cluster.Config{
		Bin: bin, Images: images, SandboxImage: pauseImage,
		Deploy: filepath.Join(root, "deploy"), Image: podrouterImg,
		Log: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s kubelet log tail:\n%s", n.Name, tailFile(n.Log("kubelet"), 3000))
			}
			if out, err := c.Kubectl(context.Background(), "-n", "kube-podrouter", "logs", "-l", "app.kubernetes.io/name=podrouter", "--tail=40", "--prefix"); err == nil {
				t.Logf("podrouter logs:\n%s", out)
			}
		}
		if err := c.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	return c
}

// tailFile returns the last n bytes of path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b[max(len(b)-n, 0):])
}

// agnhostPod is a netexec pod (HTTP 8080, UDP 8081) on node.
func agnhostPod(name, node string, hostNetwork bool, port int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "podrouter-e2e"}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			HostNetwork:                   hostNetwork,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name:  "netexec",
				Image: agnhostImage,
				Args:  []string{"netexec", fmt.Sprintf("--http-port=%d", port), fmt.Sprintf("--udp-port=%d", port+1)},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt(port)}},
					PeriodSeconds: 2,
				},
				LivenessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt(port)}},
					PeriodSeconds: 2, FailureThreshold: 3,
				},
			}},
		},
	}
}

// runPods creates pods in namespace ns and waits until each is Ready.
func runPods(t *testing.T, c *cluster.Cluster, ns string, pods ...*corev1.Pod) map[string]*corev1.Pod {
	t.Helper()
	ctx := context.Background()
	for _, p := range pods {
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
	}
	out := map[string]*corev1.Pod{}
	deadline := time.Now().Add(2 * time.Minute)
	for _, p := range pods {
		for {
			got, err := c.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err == nil && podReady(got) {
				out[p.Name] = got
				break
			}
			if time.Now().After(deadline) {
				desc, _ := c.Kubectl(ctx, "-n", ns, "describe", "pod", p.Name)
				t.Fatalf("pod %s not Ready after 2m (%v):\n%s", p.Name, err, desc)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	return out
}

// podReady reports whether p's Ready condition is True.
func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// namespace creates a test namespace, deleted at the end.
func namespace(t *testing.T, c *cluster.Cluster, name string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The default ServiceAccount comes from the controller-manager.
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s: no default ServiceAccount after 1m", name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

// exec runs argv in pod's first container and returns its output.
func exec(c *cluster.Cluster, ns, pod string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Kubectl(ctx, append([]string{"-n", ns, "exec", pod, "--"}, argv...)...)
}

// dial has pod's netexec (HTTP on 127.0.0.1:port of url) dial the
// target in url's query, and checks the one answer is want.
func dial(c *cluster.Cluster, ns, pod, url, want string) error {
	out, err := exec(c, ns, pod, "curl", "-g", "-q", "-s", "--max-time", "10", url)
	if err != nil {
		return err
	}
	var res struct{ Responses, Errors []string }
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); err != nil {
		return fmt.Errorf("%s: %w: %s", url, err, out)
	}
	if len(res.Responses) != 1 || res.Responses[0] != want {
		return fmt.Errorf("%s: want [%s], got %s", url, want, strings.TrimSpace(out))
	}
	return nil
}

// retry runs fn until it succeeds or 20 s pass (the first packets of a
// new flow may meet an ARP/ND resolution).
func retry(fn func() error) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Second)
	}
}

func TestCluster(t *testing.T) {
	c := upCluster(t)
	// Before the DaemonSet the kubelets said the network was missing, as
	// with any CNI; Up waited for Ready after it.
	for _, n := range c.Nodes {
		if !strings.Contains(n.NotReadyBefore, "NetworkPluginNotReady") {
			t.Errorf("%s before the network: %q, want NetworkPluginNotReady", n.Name, n.NotReadyBefore)
		}
	}
	ns := namespace(t, c, "podrouter-e2e")
	pb, pc := agnhostPod("b", "node-1", false, 8080), agnhostPod("c", "node-2", false, 8080)
	pb.Labels["svc"], pc.Labels["svc"] = "web", "web"
	pods := runPods(t, c, ns,
		agnhostPod("a", "node-1", false, 8080),
		pb, pc,
		agnhostPod("h", "node-2", true, 8090),
	)
	ip := func(name string) string { return pods[name].Status.PodIP }
	// What /hostname answers: the pod's name, or for the hostNetwork pod
	// the machine's (the nodes share this machine's UTS namespace).
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"b": "b", "c": "c", "h": hostname}
	t.Logf("pods: a %s, b %s (node-1); c %s, h %s (node-2, hostNetwork)", ip("a"), ip("b"), ip("c"), ip("h"))

	// TCP (agnhost's /dial makes the pod itself connect), UDP (netexec's
	// UDP "hostname" command) and ICMP, from a to b (same node), to c
	// (across nodes) and to h (a hostNetwork pod on the other node).
	for _, tc := range []struct{ name, to string }{
		{"same-node", "b"},
		{"cross-node", "c"},
		{"to-hostNetwork", "h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := "8080"
			if tc.to == "h" {
				port = "8090"
			}
			for _, proto := range []string{"http", "udp"} {
				p := port
				if proto == "udp" {
					p = map[string]string{"8080": "8081", "8090": "8091"}[port]
				}
				url := fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=%s&host=%s&port=%s&tries=1", proto, ip(tc.to), p)
				if err := retry(func() error {
					return dial(c, ns, "a", url, want[tc.to])
				}); err != nil {
					t.Errorf("%s: %v", proto, err)
				}
			}
			if err := retry(func() error {
				out, err := exec(c, ns, "a", "ping", "-c", "2", "-W", "2", ip(tc.to))
				if err != nil {
					return fmt.Errorf("ping %s: %v: %s", ip(tc.to), err, out)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("hostNetwork-to-pod", func(t *testing.T) {
		url := fmt.Sprintf("http://127.0.0.1:8090/dial?request=hostname&protocol=http&host=%s&port=8080&tries=1", ip("a"))
		if err := retry(func() error { return dial(c, ns, "h", url, "a") }); err != nil {
			t.Error(err)
		}
	})

	t.Run("coredns", func(t *testing.T) { testCoreDNS(t, c, ns, "a") })

	t.Run("probes", func(t *testing.T) {
		// The kubelet's HTTP probes reach the pods (they went Ready), and
		// the liveness probe has not restarted any of them.
		time.Sleep(6 * time.Second)
		for _, name := range []string{"a", "b", "c"} {
			got, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !podReady(got) || got.Status.ContainerStatuses[0].RestartCount != 0 {
				t.Errorf("pod %s: ready %v, restarts %d", name, podReady(got), got.Status.ContainerStatuses[0].RestartCount)
			}
		}
	})

	t.Run("services", func(t *testing.T) { testServices(t, c, ns) })

	t.Run("apiserver-proxy", func(t *testing.T) {
		// The API server reaches pods (pods/proxy) through its egress
		// selector and the first node's namespace (egress.go), here a pod
		// on the other node.
		if err := retry(func() error {
			b, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", "c", "8080", "/hostname", nil).DoRaw(context.Background())
			if err != nil || string(b) != "c" {
				return fmt.Errorf("pods/c/proxy/hostname: %q, %v", b, err)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
}

// testServices: a ClusterIP Service over pods b (node-1) and c (node-2),
// load-balanced by the engines with no kube-proxy: from pod a (both
// backends answer, TCP and UDP), from the hostNetwork pod h (the node
// through podr0), from b itself (hairpin), and the API server's own
// `kubernetes` Service from a pod.
func testServices(t *testing.T, c *cluster.Cluster, ns string) {
	ctx := context.Background()
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"svc": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt(8080)},
			{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 81, TargetPort: intstr.FromInt(8081)},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	t.Logf("Service web: ClusterIP %s", vip)
	// hostnames asks pod from's netexec to dial the Service tries times
	// and returns the set of backends that answered.
	hostnames := func(from, proto, port string, tries int) (map[string]int, error) {
		lp := "8080"
		if from == "h" {
			lp = "8090"
		}
		url := fmt.Sprintf("http://127.0.0.1:%s/dial?request=hostname&protocol=%s&host=%s&port=%s&tries=%d", lp, proto, vip, port, tries)
		out, err := exec(c, ns, from, "curl", "-g", "-q", "-s", "--max-time", "30", url)
		if err != nil {
			return nil, err
		}
		var res struct{ Responses, Errors []string }
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); err != nil {
			return nil, fmt.Errorf("%s: %w: %s", url, err, out)
		}
		got := map[string]int{}
		for _, r := range res.Responses {
			got[r]++
		}
		if len(res.Errors) > 0 {
			return got, fmt.Errorf("%s: errors %v (answers %v)", url, res.Errors, got)
		}
		return got, nil
	}
	both := func(from, proto, port string) error {
		got, err := hostnames(from, proto, port, 20)
		if err != nil {
			return err
		}
		if got["b"] == 0 || got["c"] == 0 || len(got) != 2 {
			return fmt.Errorf("from %s over %s: answers %v, want both b and c", from, proto, got)
		}
		return nil
	}
	for _, tc := range []struct{ from, proto, port string }{
		{"a", "http", "80"}, {"a", "udp", "81"}, // from a pod
		{"h", "http", "80"}, {"h", "udp", "81"}, // from the node (hostNetwork pod)
		{"b", "http", "80"}, {"b", "udp", "81"}, // hairpin: b is a backend
	} {
		if err := retry(func() error { return both(tc.from, tc.proto, tc.port) }); err != nil {
			t.Error(err)
		}
	}
	// The API server through the default `kubernetes` Service (the
	// address and port the kubelet gives every pod; a TCP connect: the
	// pod's curl speaks no TLS).
	if err := retry(func() error {
		out, err := exec(c, ns, "a", "sh", "-c", `/agnhost connect --timeout=5s $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT && echo connected`)
		if err != nil || !strings.Contains(out, "connected") {
			return fmt.Errorf("kubernetes Service: %v: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// NodePort: from this machine (outside the cluster, on the nodes'
	// bridge) to either node's address, and from pod a to node-2's
	// address; each node's engine balances over both backends.
	np, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web-np"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"svc": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodePort := np.Spec.Ports[0].NodePort
	for _, n := range c.Nodes {
		url := fmt.Sprintf("http://%s:%d/hostname", n.Addr, nodePort)
		if err := retry(func() error {
			seen := map[string]bool{}
			for range 20 {
				out, err := osexec.Command("curl", "-s", "--max-time", "5", url).Output()
				if err != nil {
					return fmt.Errorf("NodePort %s from the host: %v", url, err)
				}
				seen[string(out)] = true
			}
			if !seen["b"] || !seen["c"] {
				return fmt.Errorf("NodePort %s from the host: answers %v, want b and c", url, seen)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
	if err := retry(func() error {
		url := fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=http&host=%s&port=%d&tries=10", c.Nodes[1].Addr, nodePort)
		out, err := exec(c, ns, "a", "curl", "-g", "-q", "-s", "--max-time", "30", url)
		var res struct{ Responses, Errors []string }
		if err == nil {
			err = json.Unmarshal([]byte(strings.TrimSpace(out)), &res)
		}
		if err != nil || len(res.Errors) > 0 || len(res.Responses) != 10 {
			return fmt.Errorf("NodePort from pod a: %v %s", err, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// A Service with no endpoints refuses at once (ICMP port unreachable).
	if _, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "empty"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"svc": "none"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	empty, err := c.Client.CoreV1().Services(ns).Get(ctx, "empty", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := retry(func() error {
		start := time.Now()
		out, _ := exec(c, ns, "a", "sh", "-c", "curl -s --max-time 5 -o /dev/null http://"+empty.Spec.ClusterIP+":80/; echo $?")
		if out = strings.TrimSpace(out); out != "7" || time.Since(start) > 4*time.Second {
			return fmt.Errorf("Service without endpoints: curl exit %q after %v, want 7 (connection refused) at once", out, time.Since(start))
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
