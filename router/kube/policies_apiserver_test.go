package kube

// PolicyWatcher against a real kube-apiserver (kubetest; skipped without
// the binaries unless PODROUTER_REQUIRE_KUBE=1), with the token of
// deploy/'s ServiceAccount bound by deploy/rbac.yaml. No kubelet runs:
// pods are created with spec.nodeName set and given their addresses by
// a status update, as a kubelet would.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/podrouter/podrouter/router/policy"
)

// createPodNamespace creates namespace ns with labels and its "default"
// ServiceAccount (no controller creates it, and admission refuses pods
// without one).
func createPodNamespace(ctx context.Context, t testing.TB, cs kubernetes.Interface, ns string, labels map[string]string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, testNamespace(ns, labels), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createRunningPod creates p (its status as given is dropped by the API
// server) and then sets its status as a kubelet would: phase Running and
// p's podIPs, when it has any.
func createRunningPod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) error {
	status := p.Status
	p = p.DeepCopy()
	p.Status = corev1.PodStatus{}
	p.Spec.AutomountServiceAccountToken = ptrTo(false)
	created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status = status
	_, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// policyEvents lists the PolicyNotEnforceable Events on NetworkPolicy
// ns/name.
func policyEvents(ctx context.Context, t testing.TB, cs kubernetes.Interface, ns, name string) []corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.kind": "NetworkPolicy", "involvedObject.name": name, "reason": EventPolicyNotEnforceable}.AsSelector().String()
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	return evs.Items
}

func TestAPIServerPolicies(t *testing.T) {
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	createPodNamespace(ctx, t, admin, "app", map[string]string{"team": "a"})
	createPodNamespace(ctx, t, admin, "infra", nil)
	web := map[string]string{"app": "web"}
	for _, p := range []*corev1.Pod{
		testPod("app", "web-1", "self", web, []string{"10.244.0.5", "fd00:244::5"}, func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}
		}),
		testPod("app", "web-2", "node-b", web, []string{"10.244.1.5"}, nil),
		testPod("app", "pending", "self", web, nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
		testPod("infra", "agent", "self", nil, []string{"192.168.0.10"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
	} {
		if err := createRunningPod(ctx, admin, p); err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
	}
	pols := admin.NetworkingV1().NetworkPolicies("app")
	for _, np := range []*networkingv1.NetworkPolicy{testPolicy("app", "allow-web", "web", nil), testPolicy("app", "sctp", "web", sctpPort(9))} {
		np.UID = ""
		if _, err := pols.Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	comp := &polCompiler{}
	sink := newPolSink(comp)
	// The ServiceAccount's client: RBAC must allow the lists, watches and
	// the Events.
	w := runPolicyWatcher(t, PolicyWatcherConfig{Client: sa, NodeName: "self", Compile: comp.Compile, Sink: sink.Sink, Logger: zaptest.NewLogger(t)})
	in, _ := sink.waitFor(t, 30*time.Second, "initial set", func(policy.Input) bool { return true })
	web1 := findPod(in, "app", "web-1")
	if len(in.Pods) != 2 || web1 == nil || findPod(in, "app", "web-2") == nil || len(in.Policies) != 2 || findNamespace(in, "app").Labels["team"] != "a" ||
		!slices.Equal(web1.IPs, addrs("10.244.0.5", "fd00:244::5")) ||
		!slices.Equal(web1.Ports, []policy.NamedPort{{Name: "http", Proto: 6, Port: 8080}, {Name: "dns", Proto: 17, Port: 53}}) {
		t.Fatalf("initial input: %d pods (web-1 %+v), %d namespaces, %d policies", len(in.Pods), web1, len(in.Namespaces), len(in.Policies))
	}
	// kube-system, kube-public, kube-node-lease, default, kube-podrouter,
	// app, infra: the API server's and the test's.
	if findNamespace(in, "infra") == nil || findNamespace(in, "default") == nil {
		t.Fatalf("namespaces %+v", in.Namespaces)
	}
	if st := w.Stats(); st.Pods != 4 || st.InputPods != 2 || !maps.Equal(st.PodsSkipped, map[PodSkipReason]int{PodNoAddress: 1, PodHostNetwork: 1}) ||
		!maps.Equal(st.Problems, map[policy.ProblemReason]int{policy.ProblemSCTP: 1}) {
		t.Fatalf("stats %+v", st)
	}
	waitEvents := func(n int) []corev1.Event {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			evs := policyEvents(ctx, t, admin, "app", "sctp")
			if len(evs) >= n || time.Now().After(deadline) {
				return evs
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	evs := waitEvents(1)
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || evs[0].Source.Host != "self" || evs[0].Count != 1 {
		t.Fatalf("events %+v", evs)
	}

	// The pending pod gets its address (a kubelet's status update).
	p, err := admin.CoreV1().Pods("app").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, "10.244.0.6", []corev1.PodIP{{IP: "10.244.0.6"}}
	if _, err := admin.CoreV1().Pods("app").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "pending gets its address", func(in policy.Input) bool { return findPod(in, "app", "pending") != nil })
	// A namespace label.
	ns, err := admin.CoreV1().Namespaces().Get(ctx, "infra", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["role"] = "infra"
	if _, err := admin.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "infra labelled", func(in policy.Input) bool { return findNamespace(in, "infra").Labels["role"] == "infra" })
	// The bad policy is fixed: no problem left, still one Event.
	np, err := pols.Get(ctx, "sctp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np.Spec.Ingress[0].Ports = nil
	if _, err := pols.Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "sctp fixed", func(in policy.Input) bool {
		i := slices.IndexFunc(in.Policies, func(np *networkingv1.NetworkPolicy) bool { return np.Name == "sctp" })
		return i >= 0 && len(in.Policies[i].Spec.Ingress[0].Ports) == 0
	})
	if st := w.Stats(); len(st.Problems) != 0 || st.ProblemPolicies != 0 {
		t.Fatalf("stats %+v", st)
	}
	// A policy goes.
	if err := pols.Delete(ctx, "allow-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "allow-web deleted", func(in policy.Input) bool { return len(in.Policies) == 1 && in.Policies[0].Name == "sctp" })
	if evs := policyEvents(ctx, t, admin, "app", "sctp"); len(evs) != 1 || evs[0].Count != 1 {
		t.Fatalf("events after the fix %+v", evs)
	}
}

// TestAPIServerPoliciesScale: 5,000 running pods in 50 namespaces and
// 1,000 NetworkPolicies; the time from a NetworkPolicy's create to the
// sink's set holding it, and from a pod's label change to the sink. The
// compile is a fake that only walks the Input: this measures the
// watcher, not policy.Compile.
func TestAPIServerPoliciesScale(t *testing.T) {
	if testing.Short() || os.Getenv("PODROUTER_SCALE") != "1" {
		t.Skip("skipped unless PODROUTER_SCALE=1 (and not -short): creates 16,000 objects (pods with their status), about 15 s on 2 cores; " +
			"PODROUTER_SCALE=1 go test -run TestAPIServerPoliciesScale -v ./router/kube")
	}
	const (
		namespaces = 50
		pods       = 5000
		policies   = 1000
	)
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	for i := range namespaces {
		createPodNamespace(ctx, t, admin, fmt.Sprintf("ns-%02d", i), map[string]string{"team": fmt.Sprint("t", i%5)})
	}
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				var err error
				if j < pods {
					ns := fmt.Sprintf("ns-%02d", j%namespaces)
					p := testPod(ns, fmt.Sprintf("pod-%04d", j), fmt.Sprintf("node-%d", j%100), map[string]string{"app": fmt.Sprint("app-", j%200), "tier": "x"},
						[]string{fmt.Sprintf("10.%d.%d.%d", 64+j>>16, j>>8&255, j&255)}, func(p *corev1.Pod) {
							p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
						})
					err = createRunningPod(ctx, admin, p)
				} else {
					k := j - pods
					np := testPolicy(fmt.Sprintf("ns-%02d", k%namespaces), fmt.Sprintf("pol-%04d", k), fmt.Sprint("app-", k%200), nil)
					np.UID = ""
					_, err = admin.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	for j := range pods + policies {
		select {
		case work <- j:
		case err := <-errs:
			t.Fatal(err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	t.Logf("created %d namespaces, %d running pods (create + status) and %d policies in %v", namespaces, pods, policies, time.Since(t0).Round(time.Millisecond))

	heap0 := heapInuse()
	comp := &polCompiler{}
	sink := newPolSink(comp)
	t1 := time.Now()
	w := runPolicyWatcher(t, PolicyWatcherConfig{Client: sa, NodeName: "node-0", Compile: comp.Compile, Sink: sink.Sink, Logger: zaptest.NewLogger(t)})
	sink.waitFor(t, 3*time.Minute, "everything", func(in policy.Input) bool { return len(in.Pods) == pods && len(in.Policies) == policies })
	t.Logf("initial sync: %v, %d set(s)", time.Since(t1).Round(time.Millisecond), sink.count())
	heap1 := heapInuse()

	var polLat, podLat []time.Duration
	for k := range 10 {
		ns := fmt.Sprintf("ns-%02d", k)
		name := fmt.Sprintf("new-%d", k)
		np := testPolicy(ns, name, "app-1", nil)
		np.UID = ""
		start := time.Now()
		if _, err := admin.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, at := sink.waitFor(t, 30*time.Second, name+" arrives", func(in policy.Input) bool { return hasPolicy(in, ns, name) })
		polLat = append(polLat, at.Sub(start))

		j := k * 487 % pods
		pns, pname := fmt.Sprintf("ns-%02d", j%namespaces), fmt.Sprintf("pod-%04d", j)
		p, err := admin.CoreV1().Pods(pns).Get(ctx, pname, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Labels["moved"] = fmt.Sprint(k)
		start = time.Now()
		if _, err := admin.CoreV1().Pods(pns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, at = sink.waitFor(t, 30*time.Second, pname+" relabelled", func(in policy.Input) bool {
			q := findPod(in, pns, pname)
			return q != nil && q.Labels["moved"] == fmt.Sprint(k)
		})
		podLat = append(podLat, at.Sub(start))
	}
	slices.Sort(polLat)
	slices.Sort(podLat)
	st := w.Stats()
	t.Logf("networkpolicy create -> sink at %d pods, %d policies: min %v median %v max %v (batch %v, last compile %v)", pods, policies,
		polLat[0].Round(time.Microsecond), polLat[len(polLat)/2].Round(time.Microsecond), polLat[len(polLat)-1].Round(time.Microsecond), w.cfg.Batch, st.CompileTime)
	t.Logf("pod label change -> sink: min %v median %v max %v", podLat[0].Round(time.Microsecond), podLat[len(podLat)/2].Round(time.Microsecond), podLat[len(podLat)-1].Round(time.Microsecond))
	t.Logf("memory: heap in use %.1f MiB after sync (%.1f MiB before the watcher started: the watcher's share %.1f MiB); process VmRSS %s; stats %+v",
		mib(heap1), mib(heap0), mib(heap1)-mib(heap0), vmRSS(), st)
	if polLat[len(polLat)-1] > time.Second {
		t.Errorf("slowest policy create -> sink %v at %d pods: want <= 1s (without the compile)", polLat[len(polLat)-1], pods)
	}
	if st.Pods != pods || st.InputPods != pods || st.Policies != policies+10 {
		t.Errorf("stats %+v", st)
	}
}
