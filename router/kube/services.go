package kube

// Service watcher: Services and EndpointSlices in, resolved
// []service.Service snapshots out.
//
//	informers (trimmed by TrimService, TrimEndpointSlice; slices indexed
//	by their kubernetes.io/service-name label)
//	   ─► events: the Service's key ("namespace/name") into the queue
//	   ─► worker: resolve that one Service with its slices (Resolve);
//	      keep the result, count and log what was left out
//	   ─► Batch after a change: the snapshot of every usable Service,
//	      sorted by namespace/name ─► Sink
//
// Design notes: at 10,000 Services a full re-resolution per change would
// cost tens of milliseconds and allocate every Service again; instead
// only the Services whose Service object or slices changed are resolved
// again, and the snapshot reuses the other Services' resolved values
// (immutable once built, so snapshots share them safely). Resolution
// follows kube-proxy: Services of another proxy (label
// service.kubernetes.io/service-proxy-name), ExternalName and headless
// Services are not ours; slices are matched to ports by name and protocol,
// per address family. Bad input (a malformed port, an endpoint address
// that no packet should be sent to) costs only that part: it is counted
// per reason, logged once per object version, and the rest is used.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

// Labels the watcher reads.
const (
	// LabelServiceProxyName marks a Service handled by another proxy
	// (kube-proxy skips it too).
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless is set by the EndpointSlice controller on the slices
	// of headless Services: those are not listed at all.
	LabelHeadless = "service.kubernetes.io/headless"
)

// DefaultAffinityTimeout is sessionAffinityConfig.clientIP.timeoutSeconds'
// default (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// ErrServiceConfigInvalid is wrapped by NewServiceWatcher's errors.
var ErrServiceConfigInvalid = errors.New("kube: invalid service watcher config")

// ServiceWatcherConfig configures a ServiceWatcher.
type ServiceWatcherConfig struct {
	// Client talks to the API server (required). It needs list and watch
	// on services and on discovery.k8s.io endpointslices.
	Client kubernetes.Interface
	// NodeName is this node (required): endpoints whose nodeName is this
	// node are Backend.Local.
	NodeName string
	// ServiceCIDRs are the cluster's Service ranges (optional): endpoint
	// addresses inside them are refused (a backend must not be another
	// Service's virtual address).
	ServiceCIDRs []netip.Prefix
	// Sink receives the snapshots (required): every usable Service, sorted
	// by namespace/name. The slice and everything it points to are
	// immutable and the callee's to keep; calls come from one goroutine
	// and never overlap.
	Sink func([]service.Service)
	// Batch is how long a change waits for others before the snapshot is
	// taken (default 100ms).
	Batch time.Duration
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// SkipReason says why a part of a Service was left out of the snapshots.
type SkipReason uint8

// Reasons. The first three are not errors: those Services are not ours.
const (
	SkipOtherProxy        SkipReason = iota // Service labelled service.kubernetes.io/service-proxy-name
	SkipExternalName                        // Service of type ExternalName
	SkipHeadless                            // Service with clusterIP None
	SkipBadClusterIP                        // a clusterIP that is not an IP address (the Service is skipped when none is left)
	SkipBadExternalIP                       // an externalIP that is not a unicast address
	SkipSCTP                                // a Service port of protocol SCTP (not supported)
	SkipBadPort                             // a Service port with number 0, an unknown protocol, or a port+protocol seen before
	SkipBadEndpointPort                     // an EndpointSlice port with number 0 or an unknown protocol
	SkipBadEndpointAddr                     // an endpoint address that is not unicast (loopback, link-local, multicast, unspecified) or of the other family
	SkipEndpointInService                   // an endpoint address inside ServiceCIDRs
	numSkipReasons
)

var skipNames = [numSkipReasons]string{
	"other-proxy", "external-name", "headless", "bad-cluster-ip", "bad-external-ip",
	"sctp", "bad-port", "bad-endpoint-port", "bad-endpoint-address", "endpoint-in-service-cidr",
}

func (r SkipReason) String() string {
	if r < numSkipReasons {
		return skipNames[r]
	}
	return fmt.Sprintf("SkipReason(%d)", uint8(r))
}

// ServiceStats are the watcher's counters.
type ServiceStats struct {
	Services int // Service objects in the cache
	Slices   int // EndpointSlice objects in the cache
	Usable   int // Services in the last snapshot
	Backends int // backends (of all ports) in the last snapshot
	// Skipped counts the parts left out of the current Services, per
	// reason: Services, ports, endpoint addresses (each counted once,
	// whatever the number of ports it serves).
	Skipped   map[SkipReason]int
	Snapshots uint64    // snapshots handed to the sink
	Last      time.Time // when the last one was
}

// ServiceWatcher watches Services and EndpointSlices and feeds a Sink.
// Build it with NewServiceWatcher, run it with Run.
type ServiceWatcher struct {
	cfg     ServiceWatcherConfig
	log     *zap.Logger
	factory informers.SharedInformerFactory
	svcInf  cache.SharedIndexInformer
	epsInf  cache.SharedIndexInformer
	queue   workqueue.TypedDelayingInterface[string]

	// worker state (one worker goroutine; mu guards it for Stats)
	mu       sync.Mutex
	resolved map[string]*resolvedService // by namespace/name, usable or not
	skipped  [numSkipReasons]int         // sum of resolved[*].skipped
	logged   map[string]string           // object ("Service ns/name", "EndpointSlice ns/name") -> resourceVersion whose problems were logged
	synced   bool
	dirty    bool
	flushing bool     // a flush is queued
	order    []string // keys of the usable Services, sorted by namespace, name
	reorder  bool     // order is stale: a Service became usable or stopped being
	stats    ServiceStats
}

// resolvedService is the worker's record of one Service key.
type resolvedService struct {
	svc          *service.Service // nil: not usable (deleted, skipped, no ports)
	skipped      [numSkipReasons]int
	loggedSlices []string // slice keys with an entry in logged
}

// serviceIndex is the slice informer's index of slices by their Service's
// key.
const serviceIndex = "service"

// NewServiceWatcher validates cfg and builds a watcher; nothing runs until
// Run.
func NewServiceWatcher(cfg ServiceWatcherConfig) (*ServiceWatcher, error) {
	switch {
	case cfg.Client == nil:
		return nil, fmt.Errorf("%w: no client", ErrServiceConfigInvalid)
	case cfg.NodeName == "":
		return nil, fmt.Errorf("%w: no node name", ErrServiceConfigInvalid)
	case cfg.Sink == nil:
		return nil, fmt.Errorf("%w: no sink", ErrServiceConfigInvalid)
	}
	for _, p := range cfg.ServiceCIDRs {
		if !p.IsValid() || p != p.Masked() {
			return nil, fmt.Errorf("%w: service CIDR %v", ErrServiceConfigInvalid, p)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100 * time.Millisecond
	}
	w := &ServiceWatcher{
		cfg:      cfg,
		log:      cfg.Logger.Named("services"),
		resolved: map[string]*resolvedService{},
		logged:   map[string]string{},
		queue: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{
			Name: "podrouter-services",
		}),
	}
	w.factory = informers.NewSharedInformerFactory(cfg.Client, 0)
	w.svcInf = w.factory.Core().V1().Services().Informer()
	// Slices of headless Services (labelled so by the EndpointSlice
	// controller) are never listed: StatefulSets can have many.
	w.epsInf = w.factory.InformerFor(&discoveryv1.EndpointSlice{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return discoveryinformers.NewFilteredEndpointSliceInformer(c, metav1.NamespaceAll, resync,
			cache.Indexers{serviceIndex: sliceServiceKey},
			func(o *metav1.ListOptions) { o.LabelSelector = "!" + LabelHeadless })
	})
	if err := w.svcInf.SetTransform(TrimService); err != nil {
		return nil, fmt.Errorf("kube: service informer: %w", err)
	}
	if err := w.epsInf.SetTransform(TrimEndpointSlice); err != nil {
		return nil, fmt.Errorf("kube: endpointslice informer: %w", err)
	}
	return w, nil
}

// sliceServiceKey indexes a slice by namespace/<its service-name label>.
func sliceServiceKey(obj any) ([]string, error) {
	if k := sliceOwner(obj); k != "" {
		return []string{k}, nil
	}
	return nil, nil
}

// sliceOwner returns the key of the Service a slice belongs to, "" when it
// has no service-name label (or is not a slice).
func sliceOwner(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return ""
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return ""
	}
	return s.Namespace + "/" + name
}

// TrimService is the Service informer's transform: it keeps only what
// resolution reads (namespace, name, resourceVersion, the
// service-proxy-name label, and of the spec type, clusterIPs,
// externalIPs, session affinity, traffic policies and ports without
// targetPort), so that no annotation (last-applied-configuration),
// selector, managedFields or status is cached. Other objects pass
// unchanged.
func TrimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	t := &corev1.Service{}
	t.Namespace, t.Name, t.ResourceVersion = s.Namespace, s.Name, s.ResourceVersion
	if v, ok := s.Labels[LabelServiceProxyName]; ok {
		t.Labels = map[string]string{LabelServiceProxyName: v}
	}
	t.Spec.Type = s.Spec.Type
	t.Spec.ClusterIP = s.Spec.ClusterIP
	t.Spec.ClusterIPs = s.Spec.ClusterIPs
	t.Spec.ExternalIPs = s.Spec.ExternalIPs
	t.Spec.SessionAffinity = s.Spec.SessionAffinity
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil {
		t.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: c.ClientIP.TimeoutSeconds}}
	}
	t.Spec.InternalTrafficPolicy = s.Spec.InternalTrafficPolicy
	t.Spec.ExternalTrafficPolicy = s.Spec.ExternalTrafficPolicy
	if len(s.Spec.Ports) > 0 {
		t.Spec.Ports = make([]corev1.ServicePort, len(s.Spec.Ports))
		for i, p := range s.Spec.Ports {
			t.Spec.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, NodePort: p.NodePort}
		}
	}
	return t, nil
}

// TrimEndpointSlice is the EndpointSlice informer's transform: it keeps
// namespace, name, resourceVersion, the service-name label, the address
// type, the ports and of each endpoint its addresses, conditions and
// nodeName (no targetRef, hostname, zone or hints). Other objects pass
// unchanged.
func TrimEndpointSlice(obj any) (any, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	t := &discoveryv1.EndpointSlice{}
	t.Namespace, t.Name, t.ResourceVersion = s.Namespace, s.Name, s.ResourceVersion
	if v, ok := s.Labels[discoveryv1.LabelServiceName]; ok {
		t.Labels = map[string]string{discoveryv1.LabelServiceName: v}
	}
	t.AddressType = s.AddressType
	t.Ports = s.Ports
	if len(s.Endpoints) > 0 {
		t.Endpoints = make([]discoveryv1.Endpoint, len(s.Endpoints))
		for i, e := range s.Endpoints {
			t.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName}
		}
	}
	return t, nil
}

// Run starts the informers, waits for their caches to sync (no snapshot
// before that: the first one holds every listed Service), then turns
// events into snapshots until ctx is done. It returns nil when ctx is
// done, an error when the caches cannot sync.
func (w *ServiceWatcher) Run(ctx context.Context) error {
	defer w.queue.ShutDown()
	svcReg, err := w.svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.enqueueService(obj) },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Service)
			n, ok2 := newObj.(*corev1.Service)
			if ok1 && ok2 && o.ResourceVersion != n.ResourceVersion {
				w.enqueueService(n)
			}
		},
		DeleteFunc: func(obj any) { w.enqueueService(obj) },
	})
	if err != nil {
		return fmt.Errorf("kube: service informer: %w", err)
	}
	epsReg, err := w.epsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.enqueueSlice(obj) },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*discoveryv1.EndpointSlice)
			n, ok2 := newObj.(*discoveryv1.EndpointSlice)
			if ok1 && ok2 && o.ResourceVersion != n.ResourceVersion {
				w.enqueueSlice(o) // its label may have changed: both owners
				w.enqueueSlice(n)
			}
		},
		DeleteFunc: func(obj any) { w.enqueueSlice(obj) },
	})
	if err != nil {
		return fmt.Errorf("kube: endpointslice informer: %w", err)
	}
	w.factory.Start(ctx.Done())
	defer w.factory.Shutdown()
	w.log.Info("waiting for the service and endpointslice caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), svcReg.HasSynced, epsReg.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube: service caches did not sync")
	}
	w.mu.Lock()
	w.synced = true
	w.dirty = true // no Service at all is a snapshot too
	w.flushing = true
	w.mu.Unlock()
	w.log.Info("service caches synced",
		zap.Int("services", len(w.svcInf.GetStore().ListKeys())), zap.Int("endpointslices", len(w.epsInf.GetStore().ListKeys())))
	// After every Service queued by the initial list: one snapshot.
	w.queue.Add(flushKey)
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

func (w *ServiceWatcher) enqueueService(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		w.queue.Add(d.Key)
		return
	}
	if s, ok := obj.(*corev1.Service); ok {
		w.queue.Add(s.Namespace + "/" + s.Name)
	}
}

func (w *ServiceWatcher) enqueueSlice(obj any) {
	if k := sliceOwner(obj); k != "" {
		w.queue.Add(k)
	}
}

// work handles one queue item: a Service (then, when the snapshot
// changed, a flush is scheduled Batch later) or the flush. It returns
// false once the queue is shut down.
func (w *ServiceWatcher) work() bool {
	key, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(key)
	if key == flushKey {
		w.flush()
		return true
	}
	w.process(key)
	w.mu.Lock()
	schedule := w.dirty && !w.flushing
	if schedule {
		w.flushing = true
	}
	w.mu.Unlock()
	if schedule {
		w.queue.AddAfter(flushKey, w.cfg.Batch)
	}
	return true
}

// process resolves one Service again from the caches.
func (w *ServiceWatcher) process(key string) {
	var svc *corev1.Service
	if obj, exists, err := w.svcInf.GetIndexer().GetByKey(key); err == nil && exists {
		svc, _ = obj.(*corev1.Service)
	}
	var eps []*discoveryv1.EndpointSlice
	if svc != nil {
		objs, _ := w.epsInf.GetIndexer().ByIndex(serviceIndex, key)
		for _, o := range objs {
			if s, ok := o.(*discoveryv1.EndpointSlice); ok {
				eps = append(eps, s)
			}
		}
	}
	r := &resolvedService{}
	var res Resolution
	if svc != nil {
		res = Resolve(svc, eps, w.cfg.NodeName, w.cfg.ServiceCIDRs)
		if res.OK {
			r.svc = &res.Service
		}
		for _, p := range res.Problems {
			r.skipped[p.Reason]++
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.resolved[key]
	if old == nil {
		old = &resolvedService{}
	}
	for i := range numSkipReasons {
		w.skipped[i] += r.skipped[i] - old.skipped[i]
	}
	w.logProblems(key, svc, res.Problems, old, r)
	if (old.svc == nil) != (r.svc == nil) {
		w.dirty, w.reorder = true, true
	} else if r.svc != nil && !reflect.DeepEqual(old.svc, r.svc) {
		w.dirty = true
	}
	if svc == nil {
		delete(w.resolved, key)
		return
	}
	w.resolved[key] = r
}

// logProblems logs the problems of each object (the Service, its slices)
// once per resourceVersion, and forgets the objects that have none left.
// Not-ours reasons (another proxy, ExternalName, headless) are not
// problems: they are logged at debug level only.
func (w *ServiceWatcher) logProblems(key string, svc *corev1.Service, problems []Problem, old, r *resolvedService) {
	byObj := map[string][]string{}
	rv := map[string]string{}
	for _, p := range problems {
		if p.Reason <= SkipHeadless {
			w.log.Debug("service not proxied", zap.String("service", key), zap.Stringer("reason", p.Reason))
			continue
		}
		obj := "Service " + key
		rv[obj] = svc.ResourceVersion
		if p.Slice != nil {
			obj = "EndpointSlice " + p.Slice.Namespace + "/" + p.Slice.Name
			rv[obj] = p.Slice.ResourceVersion
			if !slices.Contains(r.loggedSlices, obj) {
				r.loggedSlices = append(r.loggedSlices, obj)
			}
		}
		byObj[obj] = append(byObj[obj], p.Reason.String()+": "+p.Detail)
	}
	for obj, msgs := range byObj {
		if last, ok := w.logged[obj]; ok && last == rv[obj] {
			continue
		}
		w.logged[obj] = rv[obj]
		w.log.Warn("parts of a service left out", zap.String("service", key), zap.String("object", obj),
			zap.String("resourceVersion", rv[obj]), zap.Strings("problems", msgs))
	}
	if _, bad := byObj["Service "+key]; !bad {
		delete(w.logged, "Service "+key)
	}
	for _, obj := range old.loggedSlices {
		if _, bad := byObj[obj]; !bad {
			delete(w.logged, obj)
		}
	}
}

// flush hands the sink a snapshot when something changed since the last.
func (w *ServiceWatcher) flush() {
	w.mu.Lock()
	w.flushing = false
	if !w.synced || !w.dirty {
		w.mu.Unlock()
		return
	}
	if w.reorder {
		w.order = w.order[:0]
		for k, r := range w.resolved {
			if r.svc != nil {
				w.order = append(w.order, k)
			}
		}
		slices.SortFunc(w.order, compareKeys)
		w.reorder = false
	}
	snap := make([]service.Service, len(w.order))
	for i, k := range w.order {
		snap[i] = *w.resolved[k].svc
	}
	w.dirty = false
	w.mu.Unlock()
	backends := 0
	for i := range snap {
		for _, p := range snap[i].Ports {
			backends += len(p.Backends)
		}
	}
	// Counted before the call: Stats never lags a snapshot the sink has.
	w.mu.Lock()
	w.stats.Snapshots++
	w.stats.Last = time.Now()
	w.stats.Usable = len(snap)
	w.stats.Backends = backends
	first := w.stats.Snapshots == 1
	w.mu.Unlock()
	w.cfg.Sink(snap)
	if first {
		w.log.Info("first service snapshot", zap.Int("services", len(snap)), zap.Int("backends", backends))
	} else {
		w.log.Debug("service snapshot", zap.Int("services", len(snap)), zap.Int("backends", backends))
	}
}

// compareKeys orders "namespace/name" keys by namespace, then name (not
// as strings: "a-b/x" sorts after "a/y").
func compareKeys(a, b string) int {
	an, aname, _ := strings.Cut(a, "/")
	bn, bname, _ := strings.Cut(b, "/")
	return cmp.Or(strings.Compare(an, bn), strings.Compare(aname, bname))
}

// Stats returns the watcher's counters.
func (w *ServiceWatcher) Stats() ServiceStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	s.Services = len(w.svcInf.GetStore().ListKeys())
	s.Slices = len(w.epsInf.GetStore().ListKeys())
	s.Skipped = map[SkipReason]int{}
	for i, n := range w.skipped {
		if n != 0 {
			s.Skipped[SkipReason(i)] = n
		}
	}
	return s
}

// Problem is one part of a Service left out by Resolve.
type Problem struct {
	Reason SkipReason
	// Slice is the EndpointSlice the part belongs to; nil: the Service.
	Slice  *discoveryv1.EndpointSlice
	Detail string
}

// Resolution is what Resolve made of a Service.
type Resolution struct {
	// OK: Service is usable (it has a cluster IP and a port).
	OK       bool
	Service  service.Service
	Problems []Problem
}

// Resolve turns a Service and its EndpointSlices into the engine's
// service.Service, as kube-proxy would: backends of a port are, in every
// slice of a family the Service has a cluster IP of, the endpoint
// addresses times the slice port of the same name and protocol.
// Identical backends (address and port) from several slices are one: a
// ready copy wins. Backends are sorted by address and port. node is this
// node's name (Backend.Local); endpoint addresses inside serviceCIDRs
// are refused. The result shares no memory with svc or eps.
func Resolve(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node string, serviceCIDRs []netip.Prefix) Resolution {
	var res Resolution
	bad := func(reason SkipReason, slice *discoveryv1.EndpointSlice, format string, args ...any) {
		res.Problems = append(res.Problems, Problem{Reason: reason, Slice: slice, Detail: fmt.Sprintf(format, args...)})
	}
	switch {
	case svc.Labels[LabelServiceProxyName] != "":
		bad(SkipOtherProxy, nil, "proxied by %q", svc.Labels[LabelServiceProxyName])
		return res
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		bad(SkipExternalName, nil, "type ExternalName")
		return res
	case svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Spec.ClusterIP == "":
		bad(SkipHeadless, nil, "no cluster IP")
		return res
	}
	s := service.Service{Namespace: svc.Namespace, Name: svc.Name}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	var has4, has6 bool
	for _, str := range ips {
		a, err := netip.ParseAddr(str)
		if err != nil || !validUnicast(a) || slices.Contains(s.ClusterIPs, a) {
			bad(SkipBadClusterIP, nil, "clusterIP %.64q", str)
			continue
		}
		s.ClusterIPs = append(s.ClusterIPs, a)
		has4, has6 = has4 || a.Is4(), has6 || a.Is6()
	}
	if len(s.ClusterIPs) == 0 {
		return res
	}
	for _, str := range svc.Spec.ExternalIPs {
		a, err := netip.ParseAddr(str)
		if err != nil || !validUnicast(a) || a.IsLoopback() || a.IsLinkLocalUnicast() {
			bad(SkipBadExternalIP, nil, "externalIP %.64q", str)
			continue
		}
		if !slices.Contains(s.ExternalIPs, a) {
			s.ExternalIPs = append(s.ExternalIPs, a)
		}
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.Affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			s.Affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	s.InternalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	s.ExternalLocal = svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal

	// The slices' usable endpoints, checked once each (not per port).
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	type endpoint struct {
		addr                        netip.Addr
		local                       bool
		ready, serving, terminating bool
	}
	usable := make([][]endpoint, len(eps))
	for i, sl := range eps {
		v6 := false
		switch sl.AddressType {
		case discoveryv1.AddressTypeIPv4:
		case discoveryv1.AddressTypeIPv6:
			v6 = true
		default:
			continue // FQDN: not for proxies
		}
		if (v6 && !has6) || (!v6 && !has4) {
			continue
		}
		for _, e := range sl.Endpoints {
			ep := endpoint{
				ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
				terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
				local:       e.NodeName != nil && *e.NodeName == node,
			}
			ep.serving = ep.ready
			if e.Conditions.Serving != nil {
				ep.serving = *e.Conditions.Serving
			}
			for _, str := range e.Addresses {
				a, err := netip.ParseAddr(str)
				switch {
				case err != nil || !validUnicast(a) || a.IsLoopback() || a.IsLinkLocalUnicast() || a.Is6() != v6:
					bad(SkipBadEndpointAddr, sl, "address %.64q", str)
					continue
				case inAny(serviceCIDRs, a):
					bad(SkipEndpointInService, sl, "address %s is inside the Service range", a)
					continue
				}
				ep.addr = a
				usable[i] = append(usable[i], ep)
			}
		}
	}
	// Slice ports, checked once each.
	type slicePort struct {
		name  string
		proto uint8
		port  uint16
	}
	sports := make([][]slicePort, len(eps))
	for i, sl := range eps {
		if usable[i] == nil {
			continue
		}
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue // "all ports": not for proxies
			}
			sp := slicePort{}
			if p.Name != nil {
				sp.name = *p.Name
			}
			var ok bool
			sp.proto, ok = protoNumber(p.Protocol)
			if !ok || *p.Port <= 0 || *p.Port > 65535 {
				bad(SkipBadEndpointPort, sl, "port %q %d/%s", sp.name, *p.Port, protoString(p.Protocol))
				continue
			}
			sp.port = uint16(*p.Port)
			sports[i] = append(sports[i], sp)
		}
	}

	type seenPort struct {
		proto uint8
		port  uint16
	}
	var seen []seenPort
	for _, sp := range svc.Spec.Ports {
		var proto *corev1.Protocol
		if sp.Protocol != "" {
			proto = &sp.Protocol
		}
		if sp.Protocol == corev1.ProtocolSCTP {
			bad(SkipSCTP, nil, "port %q %d/SCTP", sp.Name, sp.Port)
			continue
		}
		pn, ok := protoNumber(proto)
		if !ok || sp.Port <= 0 || sp.Port > 65535 || sp.NodePort < 0 || sp.NodePort > 65535 ||
			slices.Contains(seen, seenPort{pn, uint16(sp.Port)}) {
			bad(SkipBadPort, nil, "port %q %d/%s (nodePort %d)", sp.Name, sp.Port, protoString(proto), sp.NodePort)
			continue
		}
		seen = append(seen, seenPort{pn, uint16(sp.Port)})
		p := service.Port{Name: sp.Name, Proto: pn, Port: uint16(sp.Port), NodePort: uint16(sp.NodePort)}
		for i := range eps {
			for _, slp := range sports[i] {
				if slp.name != p.Name || slp.proto != p.Proto {
					continue
				}
				for _, ep := range usable[i] {
					p.Backends = append(p.Backends, service.Backend{
						Addr: ep.addr, Port: slp.port, Local: ep.local,
						Ready: ep.ready, Serving: ep.serving, Terminating: ep.terminating,
					})
				}
			}
		}
		p.Backends = dedupBackends(p.Backends)
		s.Ports = append(s.Ports, p)
	}
	res.Service = s
	res.OK = len(s.Ports) > 0
	return res
}

// dedupBackends sorts bs by address and port and keeps one backend per
// address and port: the first ready one, else the first.
func dedupBackends(bs []service.Backend) []service.Backend {
	if len(bs) < 2 {
		return bs
	}
	slices.SortStableFunc(bs, func(a, b service.Backend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	out := bs[:1]
	for _, b := range bs[1:] {
		last := &out[len(out)-1]
		if b.Addr != last.Addr || b.Port != last.Port {
			out = append(out, b)
			continue
		}
		if b.Ready && !last.Ready {
			*last = b
		}
	}
	return slices.Clip(out)
}

// protoNumber maps a Kubernetes protocol (nil: TCP, the API's default) to
// packet.ProtoTCP or ProtoUDP; false for any other.
func protoNumber(p *corev1.Protocol) (uint8, bool) {
	if p == nil {
		return packet.ProtoTCP, true
	}
	switch *p {
	case corev1.ProtocolTCP, "":
		return packet.ProtoTCP, true
	case corev1.ProtocolUDP:
		return packet.ProtoUDP, true
	}
	return 0, false
}

func protoString(p *corev1.Protocol) string {
	if p == nil {
		return string(corev1.ProtocolTCP)
	}
	return fmt.Sprintf("%.16s", string(*p))
}

// inAny reports whether a lies in one of ps.
func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
