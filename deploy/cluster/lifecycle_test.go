package cluster_test

// The cluster e2e suite, part two: what happens to pods over the life of
// the cluster and of the daemon (issue 11). One cluster serves every
// subtest, in an order that keeps the disruptive ones last:
//
//	dns ─► egress-outside ─► stream: rolling-update, daemon-killed
//	    ─► churn-100-pods ─► faults: missing-conflist, daemon-down, wrong-socket
//	    ─► node-readd

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podrouter/podrouter/deploy/cluster"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/tempns"
)

// Where the daemon keeps its files on a node (deploy/daemonset.yaml's
// hostPaths, the daemon's defaults).
const (
	daemonNS     = "kube-podrouter"
	daemonLabel  = "app.kubernetes.io/name=podrouter"
	conflistPath = "/etc/cni/net.d/10-podrouter.conflist"
	ipamDir      = "/var/lib/cni/networks/podrouter"
	recordsDir   = "/var/lib/podrouter/attachments"
	daemonSocket = "/run/podrouter/podrouter.sock"
)

func TestLifecycle(t *testing.T) {
	cli := filepath.Join(repoRoot(t), "bin", "podrouter")
	if _, err := os.Stat(cli); err != nil && !testing.Short() {
		skipOrFail(t, "%s missing (make build): %v", cli, err)
	}
	c := upCluster(t)
	ns := namespace(t, c, "podrouter-life")
	pods := runPods(t, c, ns,
		agnhostPod("a", "node-1", false, 8080),
		agnhostPod("c", "node-2", false, 8080),
	)
	ip := func(name string) string { return pods[name].Status.PodIP }

	t.Run("dns", func(t *testing.T) {
		// The kubelet writes a ClusterFirst pod's resolv.conf from its
		// clusterDNS and clusterDomain.
		out, err := exec(c, ns, "a", "cat", "/etc/resolv.conf")
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			"nameserver " + cluster.ClusterDNS,
			"search " + ns + ".svc.cluster.local svc.cluster.local cluster.local",
			"options ndots:5",
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("resolv.conf lacks %q:\n%s", w, out)
			}
		}
	})

	t.Run("egress-outside", func(t *testing.T) {
		addr, seen := outsideServer(t, c)
		url := fmt.Sprintf("http://%s/", addr)
		var body string
		if err := retry(func() error {
			out, err := exec(c, ns, "a", "curl", "-s", "--max-time", "5", url)
			body = out
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(body, "outside") {
			t.Errorf("GET %s: %q", url, body)
		}
		src := seen()
		// The default egress (netstack) re-originates the flow from a
		// socket of the daemon in the node's netns: the outside sees
		// node-1's underlay address, never the pod's.
		if len(src) == 0 {
			t.Fatal("the outside server saw no request")
		}
		for _, s := range src {
			if s != c.Nodes[0].Addr.String() {
				t.Errorf("outside server saw source %s, want node-1's %s (pod a is %s)", s, c.Nodes[0].Addr, ip("a"))
			}
		}
	})

	t.Run("stream", func(t *testing.T) {
		// busybox nc -l half-closes when its stdin ends, and the sender's
		// nc then exits: its stdin never ends.
		sink := shPod("sink", "node-2", "sleep 3600 | busybox nc -l -p 9000 > /tmp/recv; echo $? > /tmp/done; sleep 3600")
		runPods(t, c, ns, sink)
		sinkIP := podIP(t, c, ns, "sink")
		// One TCP connection from node-1 to node-2, about 100 KB/s.
		source := shPod("source", "node-1", fmt.Sprintf(
			`i=0; while :; do printf '%%d %%01000d\n' $i 0; i=$((i+1)); sleep 0.01; done | nc %s 9000; echo $? > /tmp/done; sleep 3600`, sinkIP))
		runPods(t, c, ns, source)
		mon := watchStream(c, ns)
		defer mon.stop()
		if err := mon.waitGrowth(10 * time.Second); err != nil {
			t.Fatalf("stream does not flow: %v", err)
		}

		t.Run("rolling-update", func(t *testing.T) {
			before := daemonPods(t, c)
			// podrouter:v2: the same image under a new tag, in every node's
			// containerd.
			for _, n := range c.Nodes {
				ref, err := imageRef(c, n, podrouterImg)
				if err != nil {
					t.Fatal(err)
				}
				v2 := strings.TrimSuffix(ref, ":dev") + ":v2"
				if out, err := ctr(c, n, "images", "tag", "--force", ref, v2); err != nil {
					t.Fatalf("%s: tag %s: %v: %s", n.Name, v2, err, out)
				}
			}
			mark := mon.mark()
			began := time.Now()
			ctx := context.Background()
			if _, err := c.Kubectl(ctx, "-n", daemonNS, "set", "image", "ds/podrouter", "podrouter=podrouter:v2", "install-cni=podrouter:v2"); err != nil {
				t.Fatal(err)
			}
			if out, err := c.Kubectl(ctx, "-n", daemonNS, "rollout", "status", "ds/podrouter", "--timeout=180s"); err != nil {
				t.Fatalf("rollout: %v: %s", err, out)
			}
			rolled := time.Since(began)
			after := daemonPods(t, c)
			for node, p := range after {
				if p.UID == before[node].UID {
					t.Errorf("%s: daemon pod %s was not replaced", node, p.Name)
				}
				if img := p.Spec.Containers[0].Image; img != "podrouter:v2" {
					t.Errorf("%s: daemon pod %s runs %s", node, p.Name, img)
				}
			}
			if err := mon.waitGrowth(15 * time.Second); err != nil {
				t.Fatalf("stream stopped after the rollout: %v", err)
			}
			stall := mon.stallSince(mark)
			t.Logf("rollout of both nodes took %v; the stream's longest stall meanwhile: %v; %d bytes through so far",
				rolled.Round(time.Millisecond), stall.Round(time.Millisecond), mon.last())
			checkStreamAlive(t, c, ns)
		})

		t.Run("daemon-killed", func(t *testing.T) {
			// node-1's daemon pod, where the stream's sender runs, is
			// force-deleted; the DaemonSet recreates it and it re-attaches
			// the persistent TAPs.
			ctx := context.Background()
			old := daemonPods(t, c)["node-1"]
			mark := mon.mark()
			began := time.Now()
			if _, err := c.Kubectl(ctx, "-n", daemonNS, "delete", "pod", old.Name, "--grace-period=0", "--force"); err != nil {
				t.Fatal(err)
			}
			var back time.Duration
			deadline := time.Now().Add(2 * time.Minute)
			for {
				if p, ok := daemonPods(t, c)["node-1"]; ok && p.UID != old.UID && podReady(p) {
					back = time.Since(began)
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("node-1's daemon pod not back and Ready after 2m")
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err := mon.waitGrowth(15 * time.Second); err != nil {
				t.Fatalf("stream stopped after the daemon was killed: %v", err)
			}
			stall := mon.stallSince(mark)
			// A new connection across nodes, from the pod on node-1.
			url := fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=http&host=%s&port=8080&tries=1", ip("c"))
			if err := retry(func() error { return dial(c, ns, "a", url, "c") }); err != nil {
				t.Errorf("new connection a -> c after the kill: %v", err)
			}
			t.Logf("daemon pod Ready again %v after the kill; the stream's longest stall: %v", back.Round(time.Millisecond), stall.Round(time.Millisecond))
			checkStreamAlive(t, c, ns)
		})
		mon.stop()
		for _, p := range []string{"source", "sink"} {
			_ = c.Client.CoreV1().Pods(ns).Delete(context.Background(), p, metav1.DeleteOptions{})
		}
		// Gone before the next subtest takes its baseline.
		waitPods(t, c, ns, "app=podrouter-e2e", 2*time.Minute, func(ps []corev1.Pod) bool { return len(ps) == 2 })
	})

	t.Run("churn-100-pods", func(t *testing.T) {
		ctx := context.Background()
		before := map[string]nodeLeftovers{}
		for _, n := range c.Nodes {
			l, err := leftovers(c, n, cli)
			if err != nil {
				t.Fatal(err)
			}
			before[n.Name] = l
		}
		dep := pauseDeployment("churn", 100)
		began := time.Now()
		if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		perNode := map[string]int{}
		waitPods(t, c, ns, "app=churn", 3*time.Minute, func(ps []corev1.Pod) bool {
			clear(perNode)
			running := 0
			for _, p := range ps {
				if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					running++
					perNode[p.Spec.NodeName]++
				}
			}
			return running == 100
		})
		t.Logf("100 pods Running with addresses in %v (%v)", time.Since(began).Round(time.Millisecond), perNode)
		if len(perNode) != 2 {
			t.Errorf("pods on %v: want both nodes", perNode)
		}
		deleted := time.Now()
		fg := metav1.DeletePropagationForeground
		if err := c.Client.AppsV1().Deployments(ns).Delete(ctx, "churn", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil {
			t.Fatal(err)
		}
		waitPods(t, c, ns, "app=churn", 3*time.Minute, func(ps []corev1.Pod) bool { return len(ps) == 0 })
		t.Logf("100 pods gone %v after the delete", time.Since(deleted).Round(time.Millisecond))
		// The kubelet tears the sandboxes down (CNI DEL) after the pod
		// objects go, and slowly on a loaded machine.
		for _, n := range c.Nodes {
			var got nodeLeftovers
			var err error
			deadline := time.Now().Add(3 * time.Minute)
			for {
				got, err = leftovers(c, n, cli)
				if (err == nil && got.within(before[n.Name])) || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Second)
			}
			if err != nil {
				t.Errorf("%s: still unreadable after 3 minutes: %v", n.Name, err)
			} else if !got.within(before[n.Name]) {
				t.Errorf("%s: left behind after 100 pods:\n before %+v\n after  %+v", n.Name, before[n.Name], got)
			} else {
				t.Logf("%s: nothing left (TAPs %v, %d netns, %d reservations, %d records, %d pod ports: what was there before) %v after the delete",
					n.Name, got.Taps, len(got.Netns), len(got.Reservations), len(got.Records), got.PodPorts, time.Since(deleted).Round(time.Millisecond))
			}
		}
	})

	t.Run("faults", func(t *testing.T) {
		ctx := context.Background()
		t.Run("missing-conflist", func(t *testing.T) {
			n := c.Nodes[1]
			conf, err := n.Exec(ctx, "cat", conflistPath)
			if err != nil {
				t.Fatalf("%s: %v: %s", conflistPath, err, conf)
			}
			// The daemon puts a removed conflist back within 5 s (it keeps
			// its node files), often before the kubelet tries the pod. So
			// the fault is held: a directory takes the conflist's name
			// (the runtime's config loader skips directories, and the
			// daemon cannot write over it); removing it is the fix, and
			// the daemon must then put the conflist back by itself.
			if out, err := n.Exec(ctx, "sh", "-c", `rm "$1" && mkdir "$1"`, "sh", conflistPath); err != nil {
				t.Fatalf("rm, mkdir: %v: %s", err, out)
			}
			restored := false
			defer func() {
				if !restored {
					n.Exec(ctx, "rmdir", conflistPath)
					writeConflist(t, n, conf)
				}
			}()
			p := shPod("noconf", "node-2", "sleep 3600")
			if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			msg := waitEvent(t, c, ns, "noconf", "cni plugin not initialized", "NetworkPluginNotReady", "no network config found")
			t.Logf("event: %s", msg)
			if got := podPhase(t, c, ns, "noconf"); got != corev1.PodPending {
				t.Errorf("pod noconf is %s without a conflist", got)
			}
			fixed := time.Now()
			if out, err := n.Exec(ctx, "rmdir", conflistPath); err != nil {
				t.Fatalf("rmdir: %v: %s", err, out)
			}
			restored = true
			waitReady(t, c, ns, "noconf", 2*time.Minute)
			if got, err := n.Exec(ctx, "cat", conflistPath); err != nil || got != conf {
				t.Errorf("the conflist the daemon put back differs: %v\n%s\nwant\n%s", err, got, conf)
			}
			t.Logf("pod noconf Ready %v after the fault was removed (the daemon rewrote the conflist)", time.Since(fixed).Round(time.Millisecond))
		})

		t.Run("daemon-down", func(t *testing.T) {
			// No node matches the DaemonSet: the controller removes both
			// daemon pods; the conflist and the plugin stay.
			patch := func(v string) {
				t.Helper()
				body := fmt.Sprintf(`{"spec":{"template":{"spec":{"nodeSelector":{"podrouter-e2e/none":%s}}}}}`, v)
				if _, err := c.Kubectl(ctx, "-n", daemonNS, "patch", "ds", "podrouter", "--type=merge", "-p", body); err != nil {
					t.Fatal(err)
				}
			}
			patch(`"true"`)
			up := false
			defer func() {
				if !up {
					patch("null")
				}
			}()
			waitPods(t, c, daemonNS, daemonLabel, 2*time.Minute, func(ps []corev1.Pod) bool { return len(ps) == 0 })
			p := shPod("nodaemon", "node-1", "sleep 3600")
			if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			msg := waitEvent(t, c, ns, "nodaemon", "podrouter daemon not ready")
			t.Logf("event: %s", msg)
			if got := podPhase(t, c, ns, "nodaemon"); got != corev1.PodPending {
				t.Errorf("pod nodaemon is %s without the daemon", got)
			}
			fixed := time.Now()
			patch("null")
			up = true
			waitReady(t, c, ns, "nodaemon", 3*time.Minute)
			t.Logf("pod nodaemon Ready %v after the DaemonSet came back", time.Since(fixed).Round(time.Millisecond))
			if out, err := c.Kubectl(ctx, "-n", daemonNS, "rollout", "status", "ds/podrouter", "--timeout=120s"); err != nil {
				t.Fatalf("daemons back: %v: %s", err, out)
			}
		})

		t.Run("wrong-socket", func(t *testing.T) {
			// The conflist names a socket that is not there. A conflist
			// naming another path would be rewritten by the daemon within
			// 5 s (it keeps its node files), so the path is made wrong
			// from the other side: the daemon's socket is moved away while
			// the daemon runs, and put back.
			n := c.Nodes[0]
			moved := daemonSocket + ".moved"
			if out, err := n.Exec(ctx, "mv", daemonSocket, moved); err != nil {
				t.Fatalf("mv: %v: %s", err, out)
			}
			restored := false
			defer func() {
				if !restored {
					n.Exec(ctx, "mv", moved, daemonSocket)
				}
			}()
			p := shPod("wrongsock", "node-1", "sleep 3600")
			if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			msg := waitEvent(t, c, ns, "wrongsock", daemonSocket)
			t.Logf("event: %s", msg)
			if !strings.Contains(msg, "podrouter daemon not ready") {
				t.Errorf("the event does not say the plugin found no daemon: %s", msg)
			}
			if got := podPhase(t, c, ns, "wrongsock"); got != corev1.PodPending {
				t.Errorf("pod wrongsock is %s without the daemon's socket", got)
			}
			fixed := time.Now()
			if out, err := n.Exec(ctx, "mv", moved, daemonSocket); err != nil {
				t.Fatalf("mv back: %v: %s", err, out)
			}
			restored = true
			waitReady(t, c, ns, "wrongsock", 3*time.Minute)
			t.Logf("pod wrongsock Ready %v after the socket came back", time.Since(fixed).Round(time.Millisecond))
		})
	})

	t.Run("node-readd", func(t *testing.T) {
		ctx := context.Background()
		n := c.Nodes[1]
		old, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if err := n.RestartKubelet(); err != nil {
			t.Fatal(err)
		}
		var cidr netip.Prefix
		deadline := time.Now().Add(2 * time.Minute)
		for {
			got, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err == nil && got.UID != old.UID && cluster.NodeReady(got) && got.Spec.PodCIDR != "" {
				t.Logf("%s re-registered and Ready %v after the delete; podCIDR %s (was %s)",
					n.Name, time.Since(began).Round(time.Millisecond), got.Spec.PodCIDR, old.Spec.PodCIDR)
				if cidr, err = netip.ParsePrefix(got.Spec.PodCIDR); err != nil {
					t.Fatal(err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not back and Ready after 2m (%v)", n.Name, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		// The node's daemon runs with the Node's podCIDR: when the new Node
		// got another one, the daemon restarts to take it.
		deadline = time.Now().Add(2 * time.Minute)
		for {
			st, err := daemonStatus(ctx, n, cli)
			if err == nil && st.Ready && slices.Contains(st.PodCIDRs, cidr) {
				t.Logf("%s's daemon ready with podCIDRs %v %v after the delete", n.Name, st.PodCIDRs, time.Since(began).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's daemon not ready on podCIDR %s after 2m: %+v, %v", n.Name, cidr, st, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		d := runPods(t, c, ns, agnhostPod("d", "node-2", false, 8080))["d"]
		if a, err := netip.ParseAddr(d.Status.PodIP); err != nil || !cidr.Contains(a) {
			t.Errorf("pod d on %s has address %s, outside the Node's podCIDR %s", n.Name, d.Status.PodIP, cidr)
		}
		url := fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=http&host=%s&port=8080&tries=1", d.Status.PodIP)
		if err := retry(func() error { return dial(c, ns, "a", url, "d") }); err != nil {
			t.Errorf("a (node-1) -> d (node-2, %s) after the node came back: %v", d.Status.PodIP, err)
		}
		url = fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=udp&host=%s&port=8081&tries=1", ip("a"))
		if err := retry(func() error { return dial(c, ns, "d", url, "a") }); err != nil {
			t.Errorf("d -> a over UDP after the node came back: %v", err)
		}
	})
}

// shPod is a pod of the agnhost image running script under sh on node.
func shPod(name, node, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "podrouter-e2e"}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name:    "sh",
				Image:   agnhostImage,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

// pauseDeployment is n pause pods labelled app=name, spread evenly over
// the nodes.
func pauseDeployment(name string, n int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers:                    []corev1.Container{{Name: "pause", Image: pauseImage}},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
				},
			},
		},
	}
}

// waitPods polls the pods of namespace ns matching selector until done
// says so, or fails the test after timeout.
func waitPods(t *testing.T, c *cluster.Cluster, ns, selector string, timeout time.Duration, done func([]corev1.Pod) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err == nil && done(l.Items) {
			return
		}
		if time.Now().After(deadline) {
			n := -1
			if l != nil {
				n = len(l.Items)
			}
			t.Fatalf("pods %s in %s: not there after %v (%d pods, %v)", selector, ns, timeout, n, err)
		}
		time.Sleep(time.Second)
	}
}

// waitReady waits for pod name to be Ready.
func waitReady(t *testing.T, c *cluster.Cluster, ns, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && podReady(p) {
			return
		}
		if time.Now().After(deadline) {
			desc, _ := c.Kubectl(context.Background(), "-n", ns, "describe", "pod", name)
			t.Fatalf("pod %s not Ready after %v (%v):\n%s", name, timeout, err, desc)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// podIP returns pod name's address.
func podIP(t *testing.T, c *cluster.Cluster, ns, name string) string {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

// podPhase returns pod name's phase.
func podPhase(t *testing.T, c *cluster.Cluster, ns, name string) corev1.PodPhase {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.Phase
}

// waitEvent waits up to 90 s for an event about pod name whose message
// contains one of want, and returns its reason and message.
func waitEvent(t *testing.T, c *cluster.Cluster, ns, name string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		l, err := c.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err == nil {
			for _, e := range l.Items {
				for _, w := range want {
					if strings.Contains(e.Message, w) {
						return e.Reason + ": " + e.Message
					}
				}
			}
		}
		if time.Now().After(deadline) {
			desc, _ := c.Kubectl(context.Background(), "-n", ns, "describe", "pod", name)
			t.Fatalf("pod %s: no event naming any of %q after 90s:\n%s", name, want, desc)
		}
		time.Sleep(time.Second)
	}
}

// writeConflist puts conf back at the node's conflist path (atomically,
// as the daemon writes it).
func writeConflist(t *testing.T, n *cluster.Node, conf string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := n.Exec(ctx, "sh", "-c", `printf '%s' "$1" > "$2.tmp" && mv "$2.tmp" "$2"`, "sh", conf, conflistPath); err != nil {
		t.Fatalf("%s: write %s: %v: %s", n.Name, conflistPath, err, out)
	}
}

// daemonPods returns the podrouter pods by node.
func daemonPods(t *testing.T, c *cluster.Cluster) map[string]*corev1.Pod {
	t.Helper()
	l, err := c.Client.CoreV1().Pods(daemonNS).List(context.Background(), metav1.ListOptions{LabelSelector: daemonLabel})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*corev1.Pod{}
	for i := range l.Items {
		p := &l.Items[i]
		if p.DeletionTimestamp == nil {
			out[p.Spec.NodeName] = p
		}
	}
	return out
}

// ctr runs ctr against node n's containerd in its k8s.io namespace.
func ctr(c *cluster.Cluster, n *cluster.Node, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Exec(ctx, c.Bin("ctr"), append([]string{"--address=/run/containerd/containerd.sock", "-n", "k8s.io"}, args...)...)
}

// imageRef returns the full reference under which node n's containerd
// holds image (ctr normalises "podrouter:dev" to docker.io/library/...).
func imageRef(c *cluster.Cluster, n *cluster.Node, image string) (string, error) {
	out, err := ctr(c, n, "images", "ls", "-q")
	if err != nil {
		return "", fmt.Errorf("%s: ctr images ls: %w: %s", n.Name, err, out)
	}
	for _, ref := range strings.Fields(out) {
		if ref == image || strings.HasSuffix(ref, "/"+image) {
			return ref, nil
		}
	}
	return "", fmt.Errorf("%s: no image %s in %q", n.Name, image, out)
}

// stream watches the sink pod's received byte count.
type stream struct {
	c    *cluster.Cluster
	ns   string
	mu   sync.Mutex
	at   []time.Time
	n    []int64
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// watchStream samples the sink's byte count every 200 ms until stop.
func watchStream(c *cluster.Cluster, ns string) *stream {
	s := &stream{c: c, ns: ns, done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			out, err := exec(c, ns, "sink", "sh", "-c", "wc -c < /tmp/recv")
			if err != nil {
				continue
			}
			v, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.at, s.n = append(s.at, time.Now()), append(s.n, v)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *stream) stop() {
	s.once.Do(func() { close(s.done) })
	s.wg.Wait()
}

// mark returns the index of the next sample.
func (s *stream) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.n)
}

// last is the latest byte count.
func (s *stream) last() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.n) == 0 {
		return 0
	}
	return s.n[len(s.n)-1]
}

// waitGrowth waits until the byte count grows past the current one.
func (s *stream) waitGrowth(timeout time.Duration) error {
	from := s.last()
	deadline := time.Now().Add(timeout)
	for s.last() <= from+10000 {
		if time.Now().After(deadline) {
			return fmt.Errorf("stuck at %d bytes for %v", s.last(), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}

// stallSince is the longest time between samples from mark on (and the
// one before it) during which the byte count did not grow.
func (s *stream) stallSince(mark int) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var worst time.Duration
	i := max(mark-1, 0)
	for j := i + 1; j < len(s.n); j++ {
		if s.n[j] > s.n[i] {
			worst = max(worst, s.at[j].Sub(s.at[i]))
			i = j
		}
	}
	return worst
}

// checkStreamAlive asserts that neither end of the stream saw its
// connection end (no /tmp/done) and neither container restarted.
func checkStreamAlive(t *testing.T, c *cluster.Cluster, ns string) {
	t.Helper()
	for _, name := range []string{"source", "sink"} {
		if out, err := exec(c, ns, name, "cat", "/tmp/done"); err == nil {
			t.Errorf("%s: the connection ended (nc exit status %s)", name, strings.TrimSpace(out))
		}
		p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n := p.Status.ContainerStatuses[0].RestartCount; n != 0 {
			t.Errorf("%s restarted %d times", name, n)
		}
	}
}

// nodeLeftovers is what pods leave on a node: TAP/TUN devices in its
// netns, network namespaces the runtime made, host-local reservations,
// the daemon's attachment records and its engine's pod ports.
type nodeLeftovers struct {
	Taps, Netns, Reservations, Records []string
	PodPorts, Attachments              int
}

// within reports whether a holds nothing that before did not: pods that
// existed before may have gone meanwhile, none may have been added.
func (a nodeLeftovers) within(before nodeLeftovers) bool {
	sub := func(x, y []string) bool {
		for _, e := range x {
			if !slices.Contains(y, e) {
				return false
			}
		}
		return true
	}
	return sub(a.Taps, before.Taps) && sub(a.Netns, before.Netns) &&
		sub(a.Reservations, before.Reservations) && sub(a.Records, before.Records) &&
		a.PodPorts <= before.PodPorts && a.Attachments <= before.Attachments
}

// leftovers reads node n's nodeLeftovers; cli is the podrouter CLI. The
// daemon may be slow to answer while it tears 50 pods down on a loaded
// machine: an error here is worth a retry.
func leftovers(c *cluster.Cluster, n *cluster.Node, cli string) (nodeLeftovers, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var l nodeLeftovers
	out, err := osexec.CommandContext(ctx, "ip", "-n", n.Netns, "-d", "-o", "link", "show").CombinedOutput()
	if err != nil {
		return l, fmt.Errorf("%s: ip link: %v: %s", n.Name, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.Contains(line, " tun ") {
			l.Taps = append(l.Taps, strings.TrimSuffix(f[1], ":"))
		}
	}
	ls := func(dir string) ([]string, error) {
		out, err := n.Exec(ctx, "ls", "-A", dir)
		if err != nil {
			return nil, fmt.Errorf("%s: ls %s: %v: %s", n.Name, dir, err, out)
		}
		f := strings.Fields(out)
		slices.Sort(f)
		return f, nil
	}
	if l.Netns, err = ls("/run/netns"); err != nil {
		return l, err
	}
	ipam, err := ls(ipamDir)
	if err != nil {
		return l, err
	}
	for _, f := range ipam {
		if f != "lock" && !strings.HasPrefix(f, "last_reserved_ip") {
			l.Reservations = append(l.Reservations, f)
		}
	}
	if l.Records, err = ls(recordsDir); err != nil {
		return l, err
	}
	out2, err := n.Exec(ctx, cli, "ports", "--json", "--socket", daemonSocket)
	if err != nil {
		return l, fmt.Errorf("%s: podrouter ports: %v: %s", n.Name, err, out2)
	}
	var ports []api.Port
	if err := json.Unmarshal([]byte(out2), &ports); err != nil {
		return l, fmt.Errorf("%s: podrouter ports --json: %v: %s", n.Name, err, out2)
	}
	for _, p := range ports {
		if p.Kind == "pod" {
			l.PodPorts++
		}
	}
	st, err := daemonStatus(ctx, n, cli)
	if err != nil {
		return l, err
	}
	l.Attachments = st.Attachments
	return l, nil
}

// daemonStatus is `podrouter status --json` of node n's daemon.
func daemonStatus(ctx context.Context, n *cluster.Node, cli string) (*api.Status, error) {
	out, err := n.Exec(ctx, cli, "status", "--json", "--socket", daemonSocket)
	if err != nil && !strings.HasPrefix(strings.TrimSpace(out), "{") {
		return nil, fmt.Errorf("%s: podrouter status: %w: %s", n.Name, err, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("%s: podrouter status --json: %w: %s", n.Name, err, out)
	}
	return &st, nil
}

// outsideServer makes an "outside" network namespace on the cluster's
// underlay bridge (.200 of its /24, nothing else routed) with an HTTP
// server in it, and returns its address and a function that lists the
// sources (addresses) it served.
func outsideServer(t *testing.T, c *cluster.Cluster) (string, func() []string) {
	t.Helper()
	a := c.Prefix.Addr().As4()
	a[3] = 200
	addr := net.IP(a[:]).String()
	hostSide, peer := "pr"+c.ID+"o", "pr"+c.ID+"q"
	outside, err := tempns.New("outside", func(o *tempns.NS) error {
		for _, args := range [][]string{
			{"link", "add", hostSide, "type", "veth", "peer", "name", peer},
			{"link", "set", hostSide, "master", "podrbr-" + c.ID},
			{"link", "set", hostSide, "up"},
			{"link", "set", peer, "netns", o.Name()},
			{"-n", o.Name(), "link", "set", peer, "name", "eth0"},
			{"-n", o.Name(), "addr", "add", addr + "/24", "dev", "eth0"},
			{"-n", o.Name(), "link", "set", "eth0", "up"},
		} {
			if out, err := osexec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
			}
		}
		return nil
	})
	if err != nil {
		_ = osexec.Command("ip", "link", "del", hostSide).Run()
		t.Fatal(err)
	}
	var ln net.Listener
	if err := outside.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr+":8000")
		return err
	}); err != nil {
		_ = outside.Delete()
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		mu.Lock()
		seen = append(seen, host)
		mu.Unlock()
		fmt.Fprintln(w, "outside")
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := outside.Delete(); err != nil {
			t.Errorf("outside netns: %v", err)
		}
		_ = osexec.Command("ip", "link", "del", hostSide).Run()
	})
	return addr + ":8000", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}
