package kube

// Policy watcher: Pods, Namespaces and NetworkPolicies in, compiled
// *policy.Set snapshots out.
//
//	informers (trimmed by TrimPod, TrimNamespace, TrimNetworkPolicy)
//	   ─► events: the object's key into the queue
//	   ─► worker: convert that one object again (policy.Pod,
//	      policy.Namespace; a NetworkPolicy is kept as trimmed) unless its
//	      resourceVersion is the one already converted; a change only when
//	      the converted value differs
//	   ─► Batch after a change: policy.Input from the converted values,
//	      sorted by key ─► Compile ─► Sink; problems counted per reason,
//	      logged and recorded as a Warning Event once per policy version
//
// Design notes: the compile is the expensive step (hundreds of
// milliseconds at 5,000 pods and 1,000 policies) and needs every pod,
// namespace and policy; the watcher's part is to make the Input cheap and
// to compile only when it changed. Each object is converted once per
// resourceVersion and the converted values are shared by the Inputs (they
// are immutable once built); building an Input is then a walk over
// sorted keys. Pods change status often (conditions, container
// statuses) without any change a policy can see: those updates convert
// to an equal value and cause no compile at all; those that do (an IP
// assigned, a label) wait Batch for others, so a rollout is one compile,
// not one per pod. Problems of a policy depend on its spec alone, so
// they are reported once per policy resourceVersion. Every node's watcher
// records its own Event (source host NodeName): a cluster of N nodes gets
// N Events per bad policy version.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/policy"
)

// Event the watcher records on a NetworkPolicy with problems.
const (
	// EventPolicyNotEnforceable is the reason of the Warning Event
	// recorded once per NetworkPolicy resourceVersion that has parts
	// policy.Compile could not represent (they match no traffic).
	EventPolicyNotEnforceable = "PolicyNotEnforceable"
	// EventComponent is the Events' source component.
	EventComponent = "podrouter"
)

// maxEventMessage bounds an Event's message (the problems of one policy
// joined): enough for a dozen problems, far below the API's limits.
const maxEventMessage = 1024

// ErrPolicyConfigInvalid is wrapped by NewPolicyWatcher's errors.
var ErrPolicyConfigInvalid = errors.New("kube: invalid policy watcher config")

// PolicyWatcherConfig configures a PolicyWatcher.
type PolicyWatcherConfig struct {
	// Client talks to the API server (required). It needs list and watch
	// on pods, namespaces and networking.k8s.io networkpolicies, and
	// create and patch on events unless Recorder is set.
	Client kubernetes.Interface
	// NodeName is this node (required): policy.Input.Node, and the
	// Events' source host.
	NodeName string
	// Compile compiles an Input (default policy.Compile). It is called
	// from the watcher's one worker goroutine, never concurrently.
	Compile func(policy.Input) (*policy.Set, []policy.Problem)
	// Sink receives what Compile returned (required). Calls come from one
	// goroutine and never overlap; the first comes once the pod,
	// namespace and policy caches have all synced, and holds everything
	// they listed. Later calls come Batch after a change that Compile can
	// see, not for changes it cannot (a pod's conditions).
	Sink func(*policy.Set)
	// Batch is how long a change waits for others before the next
	// compile (default 100ms).
	Batch time.Duration
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
	// Recorder records the problem Events (optional). Nil: Run records
	// them through an EventBroadcaster to the Client's core/v1 Events
	// (component EventComponent, host NodeName), shut down when Run
	// returns.
	Recorder record.EventRecorder
}

// PodSkipReason says why a pod in the cache is not in the Inputs. None is
// an error: such pods have no address of their own a policy could match.
type PodSkipReason uint8

// Reasons.
const (
	PodHostNetwork PodSkipReason = iota // spec.hostNetwork: the node's addresses
	PodFinished                         // status.phase Succeeded or Failed
	PodNoAddress                        // no status.podIPs (or podIP) that parses: not started yet
	numPodSkipReasons
)

var podSkipNames = [numPodSkipReasons]string{"host-network", "finished", "no-address"}

func (r PodSkipReason) String() string {
	if r < numPodSkipReasons {
		return podSkipNames[r]
	}
	return fmt.Sprintf("PodSkipReason(%d)", uint8(r))
}

// PolicyStats are the watcher's counters.
type PolicyStats struct {
	Pods, Namespaces, Policies int // objects in the caches (as the worker has seen them)
	InputPods                  int // pods in the last Input
	// PodsSkipped counts the cached pods not listed in the Inputs, per
	// reason.
	PodsSkipped map[PodSkipReason]int
	// Problems counts the problems of the last compile, per reason (a
	// gauge: they go when their policy is fixed or deleted).
	Problems map[policy.ProblemReason]int
	// ProblemPolicies is the number of policies with problems in the
	// last compile.
	ProblemPolicies int
	Snapshots       uint64        // sets handed to the sink
	Last            time.Time     // when the last one was
	CompileTime     time.Duration // how long the last Compile took
}

// PolicyWatcher watches Pods, Namespaces and NetworkPolicies and feeds a
// Sink with compiled sets. Build it with NewPolicyWatcher, run it with
// Run, once.
type PolicyWatcher struct {
	cfg     PolicyWatcherConfig
	log     *zap.Logger
	factory informers.SharedInformerFactory
	podInf  cache.SharedIndexInformer
	nsInf   cache.SharedIndexInformer
	polInf  cache.SharedIndexInformer
	queue   workqueue.TypedDelayingInterface[objKey]
	rec     record.EventRecorder // cfg.Recorder, or Run's broadcaster's

	// worker state (one worker goroutine; mu guards it for Stats)
	mu         sync.Mutex
	pods       table[policy.Pod]
	podSkip    map[string]PodSkipReason // key -> why, for cached pods not listed
	skipped    [numPodSkipReasons]int   // counts of podSkip
	namespaces table[policy.Namespace]
	policies   table[networkingv1.NetworkPolicy]
	reported   map[string]string // policy key -> resourceVersion whose problems were reported
	problems   [policy.NumProblemReasons]int
	badPols    int
	synced     bool
	dirty      bool
	flushing   bool // a flush is queued
	stats      PolicyStats
}

// objKind is the kind of object a queue item names.
type objKind uint8

const (
	kindFlush objKind = iota // not an object: take a snapshot
	kindPod
	kindNamespace
	kindPolicy
)

// objKey is a queue item: an object's kind and its cache key
// ("namespace/name", or "name" for a Namespace).
type objKey struct {
	kind objKind
	key  string
}

// NewPolicyWatcher validates cfg and builds a watcher; nothing runs until
// Run.
func NewPolicyWatcher(cfg PolicyWatcherConfig) (*PolicyWatcher, error) {
	switch {
	case cfg.Client == nil:
		return nil, fmt.Errorf("%w: no client", ErrPolicyConfigInvalid)
	case cfg.NodeName == "":
		return nil, fmt.Errorf("%w: no node name", ErrPolicyConfigInvalid)
	case cfg.Sink == nil:
		return nil, fmt.Errorf("%w: no sink", ErrPolicyConfigInvalid)
	}
	if cfg.Compile == nil {
		cfg.Compile = policy.Compile
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100 * time.Millisecond
	}
	w := &PolicyWatcher{
		cfg:        cfg,
		log:        cfg.Logger.Named("policies"),
		pods:       newTable[policy.Pod](),
		podSkip:    map[string]PodSkipReason{},
		namespaces: newTable[policy.Namespace](),
		policies:   newTable[networkingv1.NetworkPolicy](),
		reported:   map[string]string{},
		queue: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[objKey]{
			Name: "podrouter-policies",
		}),
	}
	w.factory = informers.NewSharedInformerFactory(cfg.Client, 0)
	w.podInf = w.factory.Core().V1().Pods().Informer()
	w.nsInf = w.factory.Core().V1().Namespaces().Informer()
	w.polInf = w.factory.Networking().V1().NetworkPolicies().Informer()
	for _, s := range []struct {
		what  string
		inf   cache.SharedIndexInformer
		trans cache.TransformFunc
	}{{"pod", w.podInf, TrimPod}, {"namespace", w.nsInf, TrimNamespace}, {"networkpolicy", w.polInf, TrimNetworkPolicy}} {
		if err := s.inf.SetTransform(s.trans); err != nil {
			return nil, fmt.Errorf("kube: %s informer: %w", s.what, err)
		}
	}
	return w, nil
}

// TrimPod is the Pod informer's transform: it keeps what a policy reads
// of a pod: namespace, name, resourceVersion, labels, spec.nodeName,
// spec.hostNetwork, status.phase, status.podIP and podIPs, and the named
// ports (name, protocol, containerPort) of the containers and of the
// sidecars (init containers with restartPolicy Always). A hostNetwork or
// finished pod keeps no addresses or ports (it is never listed). Other
// objects pass unchanged.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{}
	t.Namespace, t.Name, t.ResourceVersion = p.Namespace, p.Name, p.ResourceVersion
	t.Labels = p.Labels
	t.Spec.NodeName, t.Spec.HostNetwork = p.Spec.NodeName, p.Spec.HostNetwork
	t.Status.Phase = p.Status.Phase
	if p.Spec.HostNetwork || podFinished(p) {
		return t, nil
	}
	t.Status.PodIP, t.Status.PodIPs = p.Status.PodIP, p.Status.PodIPs
	t.Spec.Containers = trimContainers(p.Spec.Containers, false)
	t.Spec.InitContainers = trimContainers(p.Spec.InitContainers, true)
	return t, nil
}

// trimContainers keeps the containers with named ports (sidecarsOnly:
// and restartPolicy Always), with their name, restartPolicy and named
// ports only; nil when none is left.
func trimContainers(cs []corev1.Container, sidecarsOnly bool) []corev1.Container {
	var out []corev1.Container
	for i := range cs {
		c := &cs[i]
		if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			continue
		}
		var ports []corev1.ContainerPort
		for _, p := range c.Ports {
			if p.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: p.Name, Protocol: p.Protocol, ContainerPort: p.ContainerPort})
			}
		}
		if ports != nil {
			out = append(out, corev1.Container{Name: c.Name, RestartPolicy: c.RestartPolicy, Ports: ports})
		}
	}
	return out
}

// TrimNamespace is the Namespace informer's transform: name,
// resourceVersion and labels. Other objects pass unchanged.
func TrimNamespace(obj any) (any, error) {
	n, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	t := &corev1.Namespace{}
	t.Name, t.ResourceVersion, t.Labels = n.Name, n.ResourceVersion, n.Labels
	return t, nil
}

// TrimNetworkPolicy is the NetworkPolicy informer's transform: namespace,
// name, resourceVersion, uid and generation (an Event's reference) and
// the spec; no labels, annotations, managedFields or status. Other
// objects pass unchanged.
func TrimNetworkPolicy(obj any) (any, error) {
	p, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return obj, nil
	}
	t := &networkingv1.NetworkPolicy{}
	t.Namespace, t.Name, t.ResourceVersion = p.Namespace, p.Name, p.ResourceVersion
	t.UID, t.Generation = p.UID, p.Generation
	t.Spec = p.Spec
	return t, nil
}

func podFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// PolicyPod converts a (trimmed or full) Pod to what policy.Compile reads,
// or returns why the pod is not listed. Addresses are status.podIPs (or
// status.podIP when podIPs is empty), 4in6 unmapped, in order, the
// unparseable and duplicates left out. Named ports are those of the
// containers, then the sidecars, with protocol numbers (no protocol:
// TCP); a port of another protocol or outside 1..65535 is left out (the
// API server refuses both). The result shares p's labels map: neither may
// be modified.
func PolicyPod(p *corev1.Pod) (*policy.Pod, PodSkipReason, bool) {
	switch {
	case p.Spec.HostNetwork:
		return nil, PodHostNetwork, false
	case podFinished(p):
		return nil, PodFinished, false
	}
	var ips []netip.Addr
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap()
		if a.IsUnspecified() || slices.Contains(ips, a) {
			return
		}
		ips = append(ips, a)
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		add(p.Status.PodIP)
	}
	if len(ips) == 0 {
		return nil, PodNoAddress, false
	}
	pp := &policy.Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Labels: p.Labels, IPs: ips}
	addPorts := func(c *corev1.Container) {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			var proto uint8
			switch cp.Protocol {
			case corev1.ProtocolTCP, "":
				proto = packet.ProtoTCP
			case corev1.ProtocolUDP:
				proto = packet.ProtoUDP
			case corev1.ProtocolSCTP:
				proto = protoSCTP
			default:
				continue
			}
			np := policy.NamedPort{Name: cp.Name, Proto: proto, Port: uint16(cp.ContainerPort)}
			if !slices.Contains(pp.Ports, np) {
				pp.Ports = append(pp.Ports, np)
			}
		}
	}
	for i := range p.Spec.Containers {
		addPorts(&p.Spec.Containers[i])
	}
	for i := range p.Spec.InitContainers {
		if c := &p.Spec.InitContainers[i]; c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			addPorts(c)
		}
	}
	return pp, 0, true
}

// protoSCTP is SCTP's IP protocol number (named ports keep it: a policy
// may name an SCTP port, which then matches nothing).
const protoSCTP = 132

// PolicyNamespace converts a Namespace; the result shares n's labels map.
func PolicyNamespace(n *corev1.Namespace) *policy.Namespace {
	return &policy.Namespace{Name: n.Name, Labels: n.Labels}
}

func samePod(a, b *policy.Pod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Node == b.Node && maps.Equal(a.Labels, b.Labels) &&
		slices.Equal(a.IPs, b.IPs) && slices.Equal(a.Ports, b.Ports)
}

func sameNamespace(a, b *policy.Namespace) bool {
	return a.Name == b.Name && maps.Equal(a.Labels, b.Labels)
}

func samePolicy(a, b *networkingv1.NetworkPolicy) bool {
	// The UID is the Events' reference: a policy deleted and created
	// again with the same spec is another object.
	return a.UID == b.UID && apiequality.Semantic.DeepEqual(a.Spec, b.Spec)
}

// table holds the converted values of one kind by cache key, and their
// keys in Input order.
type table[T any] struct {
	m       map[string]tableEntry[T]
	order   []string // keys with a value, sorted by compareKeys
	reorder bool     // order is stale: a key gained or lost its value
}

type tableEntry[T any] struct {
	rv string // resourceVersion converted
	v  *T     // nil: not listed
}

func newTable[T any]() table[T] { return table[T]{m: map[string]tableEntry[T]{}} }

// seen reports whether rv of key is the version already converted.
func (t *table[T]) seen(key, rv string) bool {
	e, ok := t.m[key]
	return ok && e.rv == rv
}

// set records key's conversion v (nil: not listed) of version rv and
// reports whether the listed values changed; an equal value keeps the old
// pointer.
func (t *table[T]) set(key, rv string, v *T, same func(a, b *T) bool) bool {
	old, ok := t.m[key]
	changed := true
	switch {
	case !ok || old.v == nil:
		changed = v != nil
	case v == nil:
	case same(old.v, v):
		v, changed = old.v, false
	}
	if (old.v == nil) != (v == nil) {
		t.reorder = true
	}
	t.m[key] = tableEntry[T]{rv: rv, v: v}
	return changed
}

// remove forgets key and reports whether the listed values changed.
func (t *table[T]) remove(key string) bool {
	old, ok := t.m[key]
	if !ok {
		return false
	}
	delete(t.m, key)
	if old.v != nil {
		t.reorder = true
	}
	return old.v != nil
}

// list returns the listed values in key order (a new slice).
func (t *table[T]) list() []*T {
	if t.reorder {
		t.order = t.order[:0]
		for k, e := range t.m {
			if e.v != nil {
				t.order = append(t.order, k)
			}
		}
		slices.SortFunc(t.order, compareKeys)
		t.reorder = false
	}
	out := make([]*T, len(t.order))
	for i, k := range t.order {
		out[i] = t.m[k].v
	}
	return out
}

// Run starts the informers, waits for the three caches to sync (no
// snapshot before that), then turns events into compiled sets until ctx
// is done. It returns nil when ctx is done, an error when the caches
// cannot sync. The Event broadcaster it starts (when no Recorder was
// configured) is shut down before it returns; Events still queued then
// are dropped.
func (w *PolicyWatcher) Run(ctx context.Context) error {
	defer w.queue.ShutDown()
	w.rec = w.cfg.Recorder
	if w.rec == nil {
		// Shut down after the worker stopped (defers run last first): no
		// Event is recorded into a stopped broadcaster.
		b := record.NewBroadcaster()
		defer b.Shutdown()
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: w.cfg.Client.CoreV1().Events("")})
		w.rec = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: EventComponent, Host: w.cfg.NodeName})
	}
	var regs []cache.ResourceEventHandlerRegistration
	for _, s := range []struct {
		what string
		inf  cache.SharedIndexInformer
		kind objKind
	}{{"pod", w.podInf, kindPod}, {"namespace", w.nsInf, kindNamespace}, {"networkpolicy", w.polInf, kindPolicy}} {
		kind := s.kind
		reg, err := s.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { w.enqueue(kind, obj) },
			UpdateFunc: func(oldObj, newObj any) {
				o, ok1 := oldObj.(interface{ GetResourceVersion() string })
				n, ok2 := newObj.(interface{ GetResourceVersion() string })
				if ok1 && ok2 && o.GetResourceVersion() != n.GetResourceVersion() {
					w.enqueue(kind, newObj)
				}
			},
			DeleteFunc: func(obj any) { w.enqueue(kind, obj) },
		})
		if err != nil {
			return fmt.Errorf("kube: %s informer: %w", s.what, err)
		}
		regs = append(regs, reg)
	}
	w.factory.Start(ctx.Done())
	defer w.factory.Shutdown()
	w.log.Info("waiting for the pod, namespace and networkpolicy caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), regs[0].HasSynced, regs[1].HasSynced, regs[2].HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube: policy caches did not sync")
	}
	w.mu.Lock()
	w.synced = true
	w.dirty = true // no policy at all is a set too
	w.flushing = true
	w.mu.Unlock()
	w.log.Info("policy caches synced", zap.Int("pods", len(w.podInf.GetStore().ListKeys())),
		zap.Int("namespaces", len(w.nsInf.GetStore().ListKeys())), zap.Int("networkpolicies", len(w.polInf.GetStore().ListKeys())))
	// After every object queued by the initial lists: one compile.
	w.queue.Add(objKey{kind: kindFlush})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.work() {
		}
	}()
	<-ctx.Done()
	w.queue.ShutDown()
	<-done
	return nil
}

func (w *PolicyWatcher) enqueue(kind objKind, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		w.queue.Add(objKey{kind, d.Key})
		return
	}
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		w.queue.Add(objKey{kind, key})
	}
}

// work handles one queue item: an object (then, when the Input changed,
// a flush is scheduled Batch later) or the flush. It returns false once
// the queue is shut down.
func (w *PolicyWatcher) work() bool {
	item, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(item)
	if item.kind == kindFlush {
		w.flush()
		return true
	}
	w.process(item)
	w.mu.Lock()
	schedule := w.dirty && !w.flushing
	if schedule {
		w.flushing = true
	}
	w.mu.Unlock()
	if schedule {
		w.queue.AddAfter(objKey{kind: kindFlush}, w.cfg.Batch)
	}
	return true
}

// process converts one object again from its cache, unless the cached
// version is the one converted.
func (w *PolicyWatcher) process(item objKey) {
	var inf cache.SharedIndexInformer
	switch item.kind {
	case kindPod:
		inf = w.podInf
	case kindNamespace:
		inf = w.nsInf
	default:
		inf = w.polInf
	}
	obj, exists, err := inf.GetIndexer().GetByKey(item.key)
	if err != nil || !exists {
		obj = nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := false
	switch o := obj.(type) {
	case *corev1.Pod:
		if w.pods.seen(item.key, o.ResourceVersion) {
			return
		}
		pp, why, ok := PolicyPod(o)
		w.setPodSkip(item.key, why, !ok)
		changed = w.pods.set(item.key, o.ResourceVersion, pp, samePod)
	case *corev1.Namespace:
		if w.namespaces.seen(item.key, o.ResourceVersion) {
			return
		}
		changed = w.namespaces.set(item.key, o.ResourceVersion, PolicyNamespace(o), sameNamespace)
	case *networkingv1.NetworkPolicy:
		if w.policies.seen(item.key, o.ResourceVersion) {
			return
		}
		changed = w.policies.set(item.key, o.ResourceVersion, o, samePolicy)
	default: // gone
		switch item.kind {
		case kindPod:
			w.setPodSkip(item.key, 0, false)
			changed = w.pods.remove(item.key)
		case kindNamespace:
			changed = w.namespaces.remove(item.key)
		default:
			changed = w.policies.remove(item.key)
		}
	}
	w.dirty = w.dirty || changed
}

// setPodSkip records why the pod key is not listed (skip false: it is,
// or it is gone).
func (w *PolicyWatcher) setPodSkip(key string, why PodSkipReason, skip bool) {
	if old, ok := w.podSkip[key]; ok {
		w.skipped[old]--
		delete(w.podSkip, key)
	}
	if skip {
		w.podSkip[key] = why
		w.skipped[why]++
	}
}

// flush compiles an Input and hands the set to the sink when something
// changed since the last.
func (w *PolicyWatcher) flush() {
	w.mu.Lock()
	w.flushing = false
	if !w.synced || !w.dirty {
		w.mu.Unlock()
		return
	}
	in := policy.Input{
		Node:       w.cfg.NodeName,
		Pods:       w.pods.list(),
		Namespaces: w.namespaces.list(),
		Policies:   w.policies.list(),
	}
	w.dirty = false
	w.mu.Unlock()

	start := time.Now()
	set, problems := w.cfg.Compile(in)
	took := time.Since(start)
	w.reportProblems(in.Policies, problems)

	// Counted before the call: Stats never lags a set the sink has.
	w.mu.Lock()
	w.stats.Snapshots++
	w.stats.Last = time.Now()
	w.stats.CompileTime = took
	w.stats.InputPods = len(in.Pods)
	first := w.stats.Snapshots == 1
	w.mu.Unlock()
	w.cfg.Sink(set)
	fields := []zap.Field{zap.Int("pods", len(in.Pods)), zap.Int("namespaces", len(in.Namespaces)),
		zap.Int("networkpolicies", len(in.Policies)), zap.Int("problems", len(problems)), zap.Duration("compile", took)}
	if first {
		w.log.Info("first policy set", fields...)
	} else {
		w.log.Debug("policy set", fields...)
	}
}

// reportProblems counts the problems of one compile, and logs and records
// an Event for each policy whose problems were not reported for its
// current resourceVersion. Policies without problems are forgotten.
func (w *PolicyWatcher) reportProblems(pols []*networkingv1.NetworkPolicy, problems []policy.Problem) {
	var counts [policy.NumProblemReasons]int
	byPolicy := map[string][]string{}
	for _, p := range problems {
		if p.Reason < policy.NumProblemReasons {
			counts[p.Reason]++
		}
		k := p.Namespace + "/" + p.Name
		byPolicy[k] = append(byPolicy[k], p.Reason.String()+": "+p.Detail)
	}
	var objs map[string]*networkingv1.NetworkPolicy
	if len(byPolicy) > 0 {
		objs = make(map[string]*networkingv1.NetworkPolicy, len(pols))
		for _, np := range pols {
			objs[np.Namespace+"/"+np.Name] = np
		}
	}
	type report struct {
		np   *networkingv1.NetworkPolicy
		msgs []string
	}
	var reports []report
	w.mu.Lock()
	w.problems = counts
	w.badPols = len(byPolicy)
	for k := range w.reported {
		if _, bad := byPolicy[k]; !bad {
			delete(w.reported, k)
		}
	}
	for k, msgs := range byPolicy {
		np := objs[k]
		if np == nil {
			continue // a problem of no policy in the Input: counted only
		}
		if rv, ok := w.reported[k]; ok && rv == np.ResourceVersion {
			continue
		}
		w.reported[k] = np.ResourceVersion
		reports = append(reports, report{np, msgs})
	}
	w.mu.Unlock()
	for _, r := range reports {
		w.log.Warn("networkpolicy not enforceable as written: the parts named match no traffic",
			zap.String("networkpolicy", r.np.Namespace+"/"+r.np.Name), zap.String("resourceVersion", r.np.ResourceVersion),
			zap.Strings("problems", r.msgs))
		msg := "parts match no traffic: " + strings.Join(r.msgs, "; ")
		if len(msg) > maxEventMessage {
			msg = strings.ToValidUTF8(msg[:maxEventMessage-3], "") + "..."
		}
		w.rec.Event(r.np, corev1.EventTypeWarning, EventPolicyNotEnforceable, msg)
	}
}

// Stats returns the watcher's counters.
func (w *PolicyWatcher) Stats() PolicyStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	s.Pods, s.Namespaces, s.Policies = len(w.pods.m), len(w.namespaces.m), len(w.policies.m)
	s.PodsSkipped = map[PodSkipReason]int{}
	for i, n := range w.skipped {
		if n != 0 {
			s.PodsSkipped[PodSkipReason(i)] = n
		}
	}
	s.Problems = map[policy.ProblemReason]int{}
	for i, n := range w.problems {
		if n != 0 {
			s.Problems[policy.ProblemReason(i)] = n
		}
	}
	s.ProblemPolicies = w.badPols
	return s
}
