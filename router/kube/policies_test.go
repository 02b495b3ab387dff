package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/podrouter/podrouter/router/leaktest"
	"github.com/podrouter/podrouter/router/policy"
)

// testPod is a Running pod on node with labels and status.podIPs ips;
// mod changes it.
func testPod(ns, name, node string, labels map[string]string, ips []string, mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "main", Image: "app"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func testNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// testPolicy isolates the pods labelled app=<app> in ns for ingress,
// allowing port (nil: any port).
func testPolicy(ns, name, app string, port *networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	}
	if port != nil {
		np.Spec.Ingress[0].Ports = []networkingv1.NetworkPolicyPort{*port}
	}
	return np
}

func sctpPort(n int32) *networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolSCTP
	return &networkingv1.NetworkPolicyPort{Protocol: &p, Port: ptrTo(intstr.FromInt32(n))}
}

func TestTrimPolicyObjects(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	full := testPod("ns", "web", "self", map[string]string{"app": "web"}, []string{"10.244.0.5", "fd00:244::5"}, func(p *corev1.Pod) {
		p.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
		p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
		p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-1"}}
		p.Spec.Containers = []corev1.Container{
			{Name: "main", Image: "app", Env: []corev1.EnvVar{{Name: "X", Value: "y"}}, Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP, HostPort: 80},
				{ContainerPort: 9999}, // unnamed: no policy can name it
			}},
			{Name: "plain", Image: "x"},
		}
		p.Spec.InitContainers = []corev1.Container{
			{Name: "init", Ports: []corev1.ContainerPort{{Name: "init-port", ContainerPort: 1}}},
			{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolUDP}}},
		}
		p.Spec.Volumes = []corev1.Volume{{Name: "v"}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", Ready: true}}
		p.Status.HostIP = "192.168.0.1"
	})
	got, _ := TrimPod(full)
	tp := got.(*corev1.Pod)
	if tp.Annotations != nil || tp.ManagedFields != nil || tp.OwnerReferences != nil || tp.Spec.Volumes != nil || tp.Status.Conditions != nil ||
		tp.Status.ContainerStatuses != nil || tp.Status.HostIP != "" {
		t.Errorf("trimmed pod keeps %+v", tp)
	}
	wantC := []corev1.Container{{Name: "main", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}
	wantI := []corev1.Container{{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolUDP}}}}
	if fmt.Sprint(tp.Spec.Containers) != fmt.Sprint(wantC) || len(tp.Spec.InitContainers) != 1 || fmt.Sprint(tp.Spec.InitContainers[0].Ports) != fmt.Sprint(wantI[0].Ports) {
		t.Errorf("trimmed containers %+v init %+v", tp.Spec.Containers, tp.Spec.InitContainers)
	}
	p1, _, ok1 := PolicyPod(full)
	p2, _, ok2 := PolicyPod(tp)
	if !ok1 || !ok2 || !samePod(p1, p2) || len(p1.Ports) != 2 {
		t.Errorf("trimming changes the conversion: %+v vs %+v", p1, p2)
	}
	// hostNetwork and finished pods keep no addresses or ports.
	for _, mod := range []func(*corev1.Pod){
		func(p *corev1.Pod) { p.Spec.HostNetwork = true },
		func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
	} {
		p := full.DeepCopy()
		mod(p)
		got, _ := TrimPod(p)
		tp := got.(*corev1.Pod)
		if tp.Status.PodIPs != nil || tp.Status.PodIP != "" || tp.Spec.Containers != nil || tp.Labels["app"] != "web" || tp.Spec.NodeName != "self" {
			t.Errorf("trimmed unlisted pod %+v", tp)
		}
		if _, _, ok := PolicyPod(tp); ok {
			t.Errorf("unlisted pod listed after trimming: %+v", tp)
		}
	}

	ns := testNamespace("ns", map[string]string{"team": "a"})
	ns.Annotations = map[string]string{"a": "b"}
	ns.Spec.Finalizers = []corev1.FinalizerName{"kubernetes"}
	ns.Status.Phase = corev1.NamespaceActive
	got, _ = TrimNamespace(ns)
	if tn := got.(*corev1.Namespace); tn.Name != "ns" || tn.Labels["team"] != "a" || tn.Annotations != nil || tn.Spec.Finalizers != nil || tn.Status.Phase != "" {
		t.Errorf("trimmed namespace %+v", tn)
	}

	np := testPolicy("ns", "allow", "web", sctpPort(9))
	np.Labels = map[string]string{"x": "y"}
	np.Annotations = map[string]string{"a": "b"}
	np.Generation = 3
	np.ResourceVersion = "17"
	np.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	got, _ = TrimNetworkPolicy(np)
	tnp := got.(*networkingv1.NetworkPolicy)
	if tnp.Labels != nil || tnp.Annotations != nil || tnp.ManagedFields != nil || tnp.Generation != 3 || tnp.UID != np.UID ||
		tnp.ResourceVersion != "17" || !samePolicy(tnp, np) {
		t.Errorf("trimmed policy %+v", tnp)
	}
	for _, f := range []func(any) (any, error){TrimPod, TrimNamespace, TrimNetworkPolicy} {
		if o, _ := f("other"); o != "other" {
			t.Errorf("non-object changed: %v", o)
		}
	}
}

func TestPolicyPod(t *testing.T) {
	always, never := corev1.ContainerRestartPolicyAlways, corev1.ContainerRestartPolicy("Never")
	ports := func(ps ...corev1.ContainerPort) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Spec.Containers[0].Ports = ps }
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		skip PodSkipReason // when want is nil
		want *policy.Pod   // Namespace, Name, Labels: the pod's
	}{
		{
			name: "dual stack",
			pod:  testPod("ns", "a", "self", map[string]string{"app": "a"}, []string{"10.244.0.5", "fd00:244::5"}, nil),
			want: &policy.Pod{Node: "self", IPs: addrs("10.244.0.5", "fd00:244::5")},
		},
		{
			name: "podIP when podIPs is empty; 4in6 unmapped",
			pod: testPod("ns", "a", "n2", nil, nil, func(p *corev1.Pod) {
				p.Status.PodIP = "::ffff:10.244.1.5"
			}),
			want: &policy.Pod{Node: "n2", IPs: addrs("10.244.1.5")},
		},
		{
			name: "unparseable and duplicate addresses left out",
			pod:  testPod("ns", "a", "self", nil, []string{"10.244.0.300", "10.244.0.6", "::ffff:10.244.0.6", "0.0.0.0"}, nil),
			want: &policy.Pod{Node: "self", IPs: addrs("10.244.0.6")},
		},
		{
			name: "pending, no address",
			pod: testPod("ns", "a", "", nil, nil, func(p *corev1.Pod) {
				p.Status.Phase = corev1.PodPending
			}),
			skip: PodNoAddress,
		},
		{
			name: "only unparseable addresses",
			pod:  testPod("ns", "a", "self", nil, []string{"bogus"}, nil),
			skip: PodNoAddress,
		},
		{
			name: "hostNetwork",
			pod: testPod("ns", "a", "self", nil, []string{"192.168.0.1"}, func(p *corev1.Pod) {
				p.Spec.HostNetwork = true
			}),
			skip: PodHostNetwork,
		},
		{
			name: "succeeded",
			pod: testPod("ns", "a", "self", nil, []string{"10.244.0.5"}, func(p *corev1.Pod) {
				p.Status.Phase = corev1.PodSucceeded
			}),
			skip: PodFinished,
		},
		{
			name: "failed",
			pod: testPod("ns", "a", "self", nil, []string{"10.244.0.5"}, func(p *corev1.Pod) {
				p.Status.Phase = corev1.PodFailed
			}),
			skip: PodFinished,
		},
		{
			name: "pending with an address is listed",
			pod: testPod("ns", "a", "self", nil, []string{"10.244.0.5"}, func(p *corev1.Pod) {
				p.Status.Phase = corev1.PodPending
			}),
			want: &policy.Pod{Node: "self", IPs: addrs("10.244.0.5")},
		},
		{
			name: "named ports: protocol numbers, default TCP; unnamed, bad and duplicate left out",
			pod: testPod("ns", "a", "self", nil, []string{"10.244.0.5"}, ports(
				corev1.ContainerPort{Name: "http", ContainerPort: 8080},
				corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				corev1.ContainerPort{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
				corev1.ContainerPort{Name: "sig", ContainerPort: 2905, Protocol: corev1.ProtocolSCTP},
				corev1.ContainerPort{Name: "weird", ContainerPort: 1, Protocol: "ICMP"},
				corev1.ContainerPort{Name: "zero", ContainerPort: 0},
				corev1.ContainerPort{Name: "big", ContainerPort: 70000},
				corev1.ContainerPort{ContainerPort: 9999},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			)),
			want: &policy.Pod{Node: "self", IPs: addrs("10.244.0.5"), Ports: []policy.NamedPort{
				{Name: "http", Proto: 6, Port: 8080}, {Name: "dns", Proto: 17, Port: 53}, {Name: "dns-tcp", Proto: 6, Port: 53}, {Name: "sig", Proto: 132, Port: 2905},
			}},
		},
		{
			name: "sidecar ports count, other init containers' do not",
			pod: testPod("ns", "a", "self", nil, []string{"10.244.0.5"}, func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "second", Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 9000}}})
				p.Spec.InitContainers = []corev1.Container{
					{Name: "init", Ports: []corev1.ContainerPort{{Name: "init", ContainerPort: 1}}},
					{Name: "init-never", RestartPolicy: &never, Ports: []corev1.ContainerPort{{Name: "never", ContainerPort: 2}}},
					{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
				}
			}),
			want: &policy.Pod{Node: "self", IPs: addrs("10.244.0.5"), Ports: []policy.NamedPort{{Name: "admin", Proto: 6, Port: 9000}, {Name: "proxy", Proto: 6, Port: 15001}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why, ok := PolicyPod(tc.pod)
			if tc.want == nil {
				if ok || got != nil || why != tc.skip {
					t.Fatalf("got %+v %v %v, want skipped: %v", got, why, ok, tc.skip)
				}
				return
			}
			tc.want.Namespace, tc.want.Name, tc.want.Labels = tc.pod.Namespace, tc.pod.Name, tc.pod.Labels
			if !ok || !samePod(got, tc.want) {
				t.Fatalf("got  %+v (%v %v)\nwant %+v", got, why, ok, tc.want)
			}
		})
	}
}

func TestNewPolicyWatcherValidates(t *testing.T) {
	cs := fake.NewClientset()
	sink := func(*policy.Set) {}
	for _, cfg := range []PolicyWatcherConfig{
		{NodeName: "n", Sink: sink},
		{Client: cs, Sink: sink},
		{Client: cs, NodeName: "n"},
	} {
		if _, err := NewPolicyWatcher(cfg); !errors.Is(err, ErrPolicyConfigInvalid) {
			t.Errorf("%+v: err %v", cfg, err)
		}
	}
}

// polCompiler is a fake Compile: it records the Inputs and reports a
// ProblemSCTP for every SCTP port of a policy (as the real one does).
type polCompiler struct {
	mu     sync.Mutex
	inputs []policy.Input
	delay  time.Duration
}

func (c *polCompiler) Compile(in policy.Input) (*policy.Set, []policy.Problem) {
	var problems []policy.Problem
	for _, np := range in.Policies {
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if p.Protocol != nil && *p.Protocol == corev1.ProtocolSCTP {
					problems = append(problems, policy.Problem{Namespace: np.Namespace, Name: np.Name, Reason: policy.ProblemSCTP,
						Detail: fmt.Sprintf("ingress port %s/SCTP", p.Port.String())})
				}
			}
		}
	}
	time.Sleep(c.delay)
	c.mu.Lock()
	c.inputs = append(c.inputs, in)
	c.mu.Unlock()
	return new(policy.Set), problems
}

// polSink records the sink's calls with the Input compiled last (the
// fake's sets are all alike).
type polSink struct {
	c        *polCompiler
	mu       sync.Mutex
	last     policy.Input
	at       time.Time
	total    int
	overlaps int
	busy     bool
	ch       chan struct{}
}

func newPolSink(c *polCompiler) *polSink { return &polSink{c: c, ch: make(chan struct{}, 1)} }

func (s *polSink) Sink(set *policy.Set) {
	s.mu.Lock()
	if s.busy {
		s.overlaps++
	}
	s.busy = true
	s.mu.Unlock()
	if set == nil {
		panic("nil set")
	}
	s.c.mu.Lock()
	in := s.c.inputs[len(s.c.inputs)-1]
	s.c.mu.Unlock()
	s.mu.Lock()
	s.busy = false
	s.last, s.at = in, time.Now()
	s.total++
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *polSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// waitFor waits until the Input of the last set satisfies ok.
func (s *polSink) waitFor(t testing.TB, timeout time.Duration, what string, ok func(policy.Input) bool) (policy.Input, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		in, at, n := s.last, s.at, s.total
		s.mu.Unlock()
		if n > 0 && ok(in) {
			return in, at
		}
		select {
		case <-s.ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not reached in %v; last input: %d pods, %d namespaces, %d policies", what, timeout, len(in.Pods), len(in.Namespaces), len(in.Policies))
		}
	}
}

func findPod(in policy.Input, ns, name string) *policy.Pod {
	for _, p := range in.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func findNamespace(in policy.Input, name string) *policy.Namespace {
	for _, n := range in.Namespaces {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func hasPolicy(in policy.Input, ns, name string) bool {
	return slices.ContainsFunc(in.Policies, func(np *networkingv1.NetworkPolicy) bool { return np.Namespace == ns && np.Name == name })
}

// polEvents is a record.EventRecorder that keeps what it is given.
type polEvents struct {
	mu     sync.Mutex
	events []string // "ns/name@rv type reason: message"
}

func (r *polEvents) Event(obj runtime.Object, eventtype, reason, message string) {
	m := obj.(metav1.Object)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s/%s@%s %s %s: %s", m.GetNamespace(), m.GetName(), m.GetResourceVersion(), eventtype, reason, message))
}

func (r *polEvents) Eventf(obj runtime.Object, eventtype, reason, format string, args ...any) {
	r.Event(obj, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r *polEvents) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventtype, reason, format string, args ...any) {
	r.Event(obj, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r *polEvents) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// newPolicyFake returns a fake clientset holding objs; watching is closed
// once the pod, namespace and networkpolicy informers all watch.
func newPolicyFake(objs ...runtime.Object) (*fake.Clientset, chan struct{}) {
	cs := fake.NewClientset(objs...)
	watching := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]bool{}
	cs.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := cs.Tracker().Watch(a.GetResource(), a.GetNamespace())
		mu.Lock()
		defer mu.Unlock()
		seen[a.GetResource().Resource] = true
		if seen["pods"] && seen["namespaces"] && seen["networkpolicies"] && !seen["done"] {
			seen["done"] = true
			close(watching)
		}
		return true, w, err
	})
	return cs, watching
}

func runPolicyWatcher(t *testing.T, cfg PolicyWatcherConfig) *PolicyWatcher {
	t.Helper()
	w, err := NewPolicyWatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
	})
	return w
}

// TestPolicyWatcher: Inputs through the fake clientset: the initial
// lists in one set; changes a policy can see reach the sink, status churn
// does not compile again; problems are counted, logged and recorded once
// per policy version.
func TestPolicyWatcher(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	web := map[string]string{"app": "web"}
	cs, watching := newPolicyFake(
		testNamespace("app", map[string]string{"team": "a"}),
		testNamespace("app-b", nil),
		testPod("app", "web-1", "self", web, []string{"10.244.0.5", "fd00:244::5"}, func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		}),
		testPod("app", "web-2", "other", web, []string{"10.244.1.5"}, nil),
		testPod("app", "pending", "self", web, nil, nil),
		testPod("app", "done", "self", web, []string{"10.244.0.9"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		testPod("kube-system", "proxy", "self", nil, []string{"192.168.0.1"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		// sorts after app's pods (as a string "app-b/a" would not)
		testPod("app-b", "a", "self", nil, []string{"10.244.0.7"}, nil),
		testPolicy("app", "allow-web", "web", nil),
		testPolicy("app", "sctp", "web", sctpPort(9)),
	)
	core, logs := observer.New(zap.DebugLevel)
	comp := &polCompiler{}
	sink := newPolSink(comp)
	events := &polEvents{}
	w := runPolicyWatcher(t, PolicyWatcherConfig{Client: cs, NodeName: "self", Compile: comp.Compile, Sink: sink.Sink,
		Batch: 20 * time.Millisecond, Logger: zap.New(core), Recorder: events})
	in, _ := sink.waitFor(t, 10*time.Second, "initial set", func(policy.Input) bool { return true })
	var names []string
	for _, p := range in.Pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	if in.Node != "self" || !slices.Equal(names, []string{"app/web-1", "app/web-2", "app-b/a"}) || len(in.Namespaces) != 2 ||
		in.Namespaces[0].Name != "app" || in.Namespaces[0].Labels["team"] != "a" || len(in.Policies) != 2 || in.Policies[0].Name != "allow-web" {
		t.Fatalf("initial input: node %q pods %v namespaces %+v policies %d", in.Node, names, in.Namespaces, len(in.Policies))
	}
	if p := in.Pods[0]; p.Node != "self" || !slices.Equal(p.IPs, addrs("10.244.0.5", "fd00:244::5")) ||
		!slices.Equal(p.Ports, []policy.NamedPort{{Name: "http", Proto: 6, Port: 8080}}) || p.Labels["app"] != "web" {
		t.Fatalf("web-1 %+v", p)
	}
	if sink.count() != 1 {
		t.Fatalf("%d sets for the initial lists, want 1", sink.count())
	}
	st := w.Stats()
	if st.Pods != 6 || st.Namespaces != 2 || st.Policies != 2 || st.InputPods != 3 || st.Snapshots != 1 || st.ProblemPolicies != 1 ||
		!maps.Equal(st.PodsSkipped, map[PodSkipReason]int{PodNoAddress: 1, PodFinished: 1, PodHostNetwork: 1}) ||
		!maps.Equal(st.Problems, map[policy.ProblemReason]int{policy.ProblemSCTP: 1}) || st.Last.IsZero() {
		t.Fatalf("stats %+v", st)
	}
	warns := func() int {
		return logs.FilterMessage("networkpolicy not enforceable as written: the parts named match no traffic").Len()
	}
	if ev := events.list(); warns() != 1 || len(ev) != 1 || !strings.HasPrefix(ev[0], "app/sctp@ Warning PolicyNotEnforceable: parts match no traffic: sctp: ingress port") {
		t.Fatalf("%d warnings, events %q", warns(), ev)
	}
	<-watching
	ctx := context.Background()
	pods := cs.CoreV1().Pods("app")
	rv := 100
	update := func(what string, obj interface{ SetResourceVersion(string) }, f func() error) {
		t.Helper()
		rv++
		obj.SetResourceVersion(fmt.Sprint(rv))
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Status churn that no policy sees: no compile.
	p, _ := pods.Get(ctx, "web-1", metav1.GetOptions{})
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
	update("web-1 not ready", p, func() error { _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); return err })
	time.Sleep(150 * time.Millisecond)
	if n := sink.count(); n != 1 {
		t.Fatalf("%d sets after a readiness change, want 1", n)
	}

	// The pending pod gets its address: listed.
	p, _ = pods.Get(ctx, "pending", metav1.GetOptions{})
	p.Status.PodIPs, p.Status.PodIP = []corev1.PodIP{{IP: "10.244.0.8"}}, "10.244.0.8"
	update("pending gets an IP", p, func() error { _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); return err })
	sink.waitFor(t, 5*time.Second, "pending listed", func(in policy.Input) bool { return findPod(in, "app", "pending") != nil })

	// A label change.
	p, _ = pods.Get(ctx, "web-2", metav1.GetOptions{})
	p.Labels = map[string]string{"app": "db"}
	update("web-2 relabelled", p, func() error { _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); return err })
	sink.waitFor(t, 5*time.Second, "web-2 relabelled", func(in policy.Input) bool {
		p := findPod(in, "app", "web-2")
		return p != nil && p.Labels["app"] == "db"
	})
	// A namespace label change.
	ns, _ := cs.CoreV1().Namespaces().Get(ctx, "app-b", metav1.GetOptions{})
	ns.Labels = map[string]string{"team": "b"}
	update("app-b labelled", ns, func() error { _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); return err })
	sink.waitFor(t, 5*time.Second, "app-b labelled", func(in policy.Input) bool {
		n := findNamespace(in, "app-b")
		return n != nil && n.Labels["team"] == "b"
	})
	if ev := events.list(); warns() != 1 || len(ev) != 1 {
		t.Fatalf("unrelated changes reported the problem again: %d warnings, events %q", warns(), ev)
	}

	// The bad policy changes and stays bad: reported again, once.
	pols := cs.NetworkingV1().NetworkPolicies("app")
	np, _ := pols.Get(ctx, "sctp", metav1.GetOptions{})
	np.Spec.Ingress[0].Ports = append(np.Spec.Ingress[0].Ports, *sctpPort(10))
	update("sctp gets a second port", np, func() error { _, err := pols.Update(ctx, np, metav1.UpdateOptions{}); return err })
	sink.waitFor(t, 5*time.Second, "sctp's second port", func(in policy.Input) bool {
		i := slices.IndexFunc(in.Policies, func(np *networkingv1.NetworkPolicy) bool { return np.Name == "sctp" })
		return i >= 0 && len(in.Policies[i].Spec.Ingress[0].Ports) == 2
	})
	if ev := events.list(); warns() != 2 || len(ev) != 2 || !strings.HasPrefix(ev[1], fmt.Sprintf("app/sctp@%d Warning PolicyNotEnforceable: ", rv)) ||
		strings.Count(ev[1], "sctp: ") != 2 {
		t.Fatalf("after the bad policy changed: %d warnings, events %q", warns(), ev)
	}
	if st := w.Stats(); !maps.Equal(st.Problems, map[policy.ProblemReason]int{policy.ProblemSCTP: 2}) {
		t.Fatalf("stats %+v", st)
	}
	// A policy change nothing compiles from (its labels, trimmed): no set.
	before := sink.count()
	np, _ = pols.Get(ctx, "allow-web", metav1.GetOptions{})
	np.Labels = map[string]string{"x": "y"}
	update("allow-web labelled", np, func() error { _, err := pols.Update(ctx, np, metav1.UpdateOptions{}); return err })
	time.Sleep(150 * time.Millisecond)
	if n := sink.count(); n != before {
		t.Fatalf("%d sets after a policy label change, want %d", n, before)
	}

	// The bad policy goes: its problems with it.
	if err := pols.Delete(ctx, "sctp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "sctp deleted", func(in policy.Input) bool { return !hasPolicy(in, "app", "sctp") && len(in.Policies) == 1 })
	if st := w.Stats(); len(st.Problems) != 0 || st.ProblemPolicies != 0 || st.Policies != 1 {
		t.Fatalf("stats after the delete %+v", st)
	}
	// A pod goes; a pod finishes.
	if err := pods.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, _ = pods.Get(ctx, "pending", metav1.GetOptions{})
	p.Status.Phase = corev1.PodFailed
	update("pending fails", p, func() error { _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); return err })
	sink.waitFor(t, 5*time.Second, "web-1 gone, pending failed", func(in policy.Input) bool {
		return findPod(in, "app", "web-1") == nil && findPod(in, "app", "pending") == nil && len(in.Pods) == 2
	})
	st = w.Stats()
	if st.Pods != 5 || st.InputPods != 2 || !maps.Equal(st.PodsSkipped, map[PodSkipReason]int{PodFinished: 2, PodHostNetwork: 1}) {
		t.Fatalf("stats %+v", st)
	}
	sink.mu.Lock()
	overlaps := sink.overlaps
	sink.mu.Unlock()
	if overlaps != 0 {
		t.Fatalf("%d overlapping sink calls", overlaps)
	}
}

// TestPolicyWatcherBatches: a burst of pod changes (a rollout) while
// compiles are slow is a few sets, the last with every pod; unchanged
// pods keep their converted values from set to set.
func TestPolicyWatcherBatches(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	cs, watching := newPolicyFake(testNamespace("app", nil), testPod("app", "steady", "self", nil, []string{"10.244.0.2"}, nil))
	comp := &polCompiler{delay: 30 * time.Millisecond}
	sink := newPolSink(comp)
	const batch = 50 * time.Millisecond
	runPolicyWatcher(t, PolicyWatcherConfig{Client: cs, NodeName: "self", Compile: comp.Compile, Sink: sink.Sink, Batch: batch})
	in0, _ := sink.waitFor(t, 10*time.Second, "initial set", func(policy.Input) bool { return true })
	<-watching
	ctx := context.Background()
	const n = 300
	start := time.Now()
	for i := range n {
		// Created without an address, then given one: two changes each.
		p := testPod("app", fmt.Sprintf("p-%03d", i), "self", map[string]string{"app": "x"}, nil, nil)
		p.ResourceVersion = "1"
		if _, err := cs.CoreV1().Pods("app").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.244.%d.%d", 1+i/250, 1+i%250)}}
		p.ResourceVersion = "2"
		if _, err := cs.CoreV1().Pods("app").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	in, _ := sink.waitFor(t, 20*time.Second, "all pods", func(in policy.Input) bool { return len(in.Pods) == n+1 })
	// The fake clientset takes milliseconds per change: the burst lasts
	// long enough for several batches, but never more than one per Batch.
	took := time.Since(start)
	sets := sink.count() - 1
	if limit := int(took/batch) + 1; sets > limit || sets > 2*n/10 {
		t.Errorf("%d sets for %d pod changes in %v, want at most %d", sets, 2*n, took, min(limit, 2*n/10))
	}
	t.Logf("%d sets for %d pod changes in %v (batch %v, compile %v)", sets, 2*n, took.Round(time.Millisecond), batch, comp.delay)
	if in.Pods[n] != in0.Pods[0] || in.Pods[n].Name != "steady" {
		t.Errorf("the unchanged pod was converted again: %p vs %p", in.Pods[n], in0.Pods[0])
	}
	if !slices.IsSortedFunc(in.Pods, func(a, b *policy.Pod) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("pods not sorted")
	}
	wantIP := netip.MustParseAddr("10.244.2.50") // p-299
	if p := findPod(in, "app", "p-299"); p == nil || !slices.Equal(p.IPs, []netip.Addr{wantIP}) {
		t.Errorf("p-299 %+v", p)
	}
}

// TestPolicyWatcherEvents: without a Recorder, the problem Event reaches
// the API (here the fake clientset) through the watcher's broadcaster,
// which Run shuts down.
func TestPolicyWatcherEvents(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	cs, _ := newPolicyFake(testNamespace("app", nil), testPolicy("app", "sctp", "web", sctpPort(9)))
	comp := &polCompiler{}
	sink := newPolSink(comp)
	runPolicyWatcher(t, PolicyWatcherConfig{Client: cs, NodeName: "node-a", Compile: comp.Compile, Sink: sink.Sink})
	sink.waitFor(t, 10*time.Second, "initial set", func(policy.Input) bool { return true })
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := cs.CoreV1().Events("app").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 {
			e := evs.Items[0]
			if len(evs.Items) != 1 || e.Type != corev1.EventTypeWarning || e.Reason != EventPolicyNotEnforceable ||
				e.InvolvedObject.Kind != "NetworkPolicy" || e.InvolvedObject.Name != "sctp" || e.InvolvedObject.UID != "uid-app-sctp" ||
				e.Source.Component != EventComponent || e.Source.Host != "node-a" || !strings.Contains(e.Message, "sctp: ingress port 9/SCTP") {
				t.Fatalf("events %+v", evs.Items)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no event recorded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPolicyWatcherStopsBeforeSync: Run returns nil when ctx ends while
// the caches cannot sync (the API refuses to list pods), without a set.
func TestPolicyWatcherStopsBeforeSync(t *testing.T) {
	leaktest.Check(t, 5*time.Second)
	cs := fake.NewClientset()
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("refused")
	})
	comp := &polCompiler{}
	sink := newPolSink(comp)
	w, err := NewPolicyWatcher(PolicyWatcherConfig{Client: cs, NodeName: "self", Compile: comp.Compile, Sink: sink.Sink})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := sink.count(); n != 0 {
		t.Fatalf("%d sets before the caches synced", n)
	}
}
