package kube

import (
	"context"
	"encoding/json"
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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/podrouter/podrouter/router/underlay"
)

// PeerSink receives peer-table snapshots.
type PeerSink interface {
	// SetPeers replaces the whole peer set with peers (sorted by name,
	// self excluded). The slice and its peers are immutable and owned by
	// the callee from then on: the controller never modifies them. An error
	// makes the controller retry later with the then current set (rate
	// limited). Calls never overlap.
	SetPeers(peers []underlay.Peer) error
}

// ErrConfigInvalid is wrapped by New's errors.
var ErrConfigInvalid = errors.New("kube: invalid controller config")

// ErrPodCIDRChanged is returned by Run when our own Node shows podCIDRs
// other than Config.PodCIDRs: the Node was deleted and registered again
// and kube-controller-manager gave it a new range. The engine, the
// conflist and the pods' addresses are built on the old one, so the
// caller must start over with the new podCIDRs (the daemon exits and the
// kubelet restarts it).
var ErrPodCIDRChanged = errors.New("kube: node's podCIDRs changed")

// Reason and message of the NodeNetworkUnavailable=False condition the
// controller sets on its own node.
const (
	ConditionReason  = "PodrouterIsUp"
	ConditionMessage = "podrouter is running on this node"
)

// Config configures a Controller.
type Config struct {
	// Client talks to the API server (required). It needs get, list and
	// watch on nodes and patch on nodes/status (annotations and the
	// condition are both published through the status subresource, as
	// flannel's subnet manager does: no patch on nodes).
	Client kubernetes.Interface
	// NodeName is this node (required): excluded from the peers; its
	// annotations are published and its NetworkUnavailable condition set.
	NodeName string
	// Local is this node's underlay identity (required): what is published,
	// and what peers must be compatible with.
	Local Local
	// Sink receives the snapshots (required).
	Sink PeerSink
	// Batch is how long a change waits for others before the snapshot is
	// taken (default 50ms): a burst of node changes is one snapshot, and a
	// change reaches the sink within about Batch.
	Batch time.Duration
	// Resync re-delivers every cached node this often (0: never).
	Resync time.Duration
	// TrustAnnotatedEndpoints accepts a peer's announced underlay endpoint
	// whatever its address. By default the endpoint's address must be one
	// of that Node's status.addresses (InternalIP or ExternalIP), so that
	// whoever may annotate a Node cannot point its peers' traffic (and the
	// trust of its datagrams) at another host.
	TrustAnnotatedEndpoints bool
	// PodCIDRs are the podCIDRs this node runs with (optional). When our
	// Node shows other, non-empty ones, Run returns an error wrapping
	// ErrPodCIDRChanged. A Node without podCIDRs (deleted, or registered
	// again and not assigned yet) is waited for.
	PodCIDRs []netip.Prefix
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Stats are the controller's counters.
type Stats struct {
	Nodes     int       // nodes in the cache
	Peers     int       // peers in the last snapshot
	Skipped   int       // nodes (other than self) not in it, any reason
	Bad       int       // of those: malformed or incompatible annotations, foreign endpoints, overlapping podCIDRs
	Snapshots uint64    // snapshots the sink accepted
	Last      time.Time // when the last one was accepted
	Published bool      // own annotations are up to date
	Available bool      // own NetworkUnavailable=False is set
}

// Controller watches Nodes and feeds a PeerSink. Build it with New, run it
// with Run.
type Controller struct {
	cfg      Config
	log      *zap.Logger
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string]

	// worker state (one worker goroutine; mu guards it for Stats)
	mu        sync.Mutex
	peers     map[string]underlay.Peer
	bad       map[string]badNode // nodes left out, with why
	conflicts map[string]string  // peers left out of the last snapshot for overlapping podCIDRs, with why
	selfCIDRs []netip.Prefix     // our own node's podCIDRs (a peer may not overlap them)
	dirty     bool
	stats     Stats
	annots    map[string]string
	synced    bool
	publishOK bool
	availOK   bool
	// resourceVersions of our Node when we last patched it: until the
	// cache shows a newer one, the patch is in flight, not missing.
	annotsFromRV, condFromRV string
	annotsSent, condSent     bool
	// changed receives the first ErrPodCIDRChanged (buffered, one).
	changed chan error
}

// badNode is a node left out of the snapshots: the error logged for it
// (logged again only when it changes), and whether it is merely not ready
// yet (no podCIDR or no annotations) rather than malformed or incompatible.
type badNode struct {
	msg     string
	pending bool
}

// flushKey is the queue item that asks for a snapshot retry.
const flushKey = ""

// New validates cfg and builds a controller; nothing runs until Run.
func New(cfg Config) (*Controller, error) {
	switch {
	case cfg.Client == nil:
		return nil, fmt.Errorf("%w: no client", ErrConfigInvalid)
	case cfg.NodeName == "":
		return nil, fmt.Errorf("%w: no node name", ErrConfigInvalid)
	case cfg.Sink == nil:
		return nil, fmt.Errorf("%w: no sink", ErrConfigInvalid)
	case !cfg.Local.Backend.valid():
		return nil, fmt.Errorf("%w: backend %v", ErrConfigInvalid, cfg.Local.Backend)
	case !cfg.Local.Endpoint.IsValid() || (cfg.Local.Endpoint.Port() == 0 && cfg.Local.Backend != BackendHostGW) || !validUnicast(cfg.Local.Endpoint.Addr()):
		return nil, fmt.Errorf("%w: endpoint %v: want a unicast IP:port", ErrConfigInvalid, cfg.Local.Endpoint)
	case cfg.Local.Backend == BackendVXLAN && (cfg.Local.VNI == 0 || cfg.Local.VNI > 1<<24-1):
		return nil, fmt.Errorf("%w: VNI %d", ErrConfigInvalid, cfg.Local.VNI)
	case cfg.Local.Backend == BackendVXLAN && (cfg.Local.VTEPMAC.IsMulticast() || cfg.Local.VTEPMAC == [6]byte{}):
		return nil, fmt.Errorf("%w: VTEP MAC %v", ErrConfigInvalid, cfg.Local.VTEPMAC)
	case cfg.Local.Backend == BackendWireGuard && cfg.Local.PublicKey.IsZero():
		return nil, fmt.Errorf("%w: wireguard: no public key", ErrConfigInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 50 * time.Millisecond
	}
	c := &Controller{
		cfg:       cfg,
		log:       cfg.Logger.Named("kube"),
		changed:   make(chan error, 1),
		peers:     map[string]underlay.Peer{},
		bad:       map[string]badNode{},
		conflicts: map[string]string{},
		annots:    cfg.Local.Annotations(),
	}
	c.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithTransform(TrimNode))
	c.informer = c.factory.Core().V1().Nodes().Informer()
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 30*time.Second),
		),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "podrouter-nodes"})
	return c, nil
}

// TrimNode is the informer's transform: it keeps only what the controller
// reads (name, resourceVersion, the annotations of readAnnotations,
// podCIDR(s), InternalIP and ExternalIP addresses and the NetworkUnavailable
// condition),
// so that 5000 cached Nodes cost a few MB. Other objects (tombstones) pass
// unchanged.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	t := &corev1.Node{}
	t.Name = n.Name
	t.ResourceVersion = n.ResourceVersion
	for _, k := range readAnnotations {
		if v, ok := n.Annotations[k]; ok {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	t.Spec.PodCIDR = n.Spec.PodCIDR
	t.Spec.PodCIDRs = n.Spec.PodCIDRs
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			t.Status.Addresses = append(t.Status.Addresses, a)
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			t.Status.Conditions = append(t.Status.Conditions, corev1.NodeCondition{Type: c.Type, Status: c.Status, Reason: c.Reason})
		}
	}
	return t, nil
}

// sameTrimmed reports whether two trimmed nodes differ in nothing the
// controller reads (the resourceVersion aside).
func sameTrimmed(a, b *corev1.Node) bool {
	return a.Spec.PodCIDR == b.Spec.PodCIDR && slices.Equal(a.Spec.PodCIDRs, b.Spec.PodCIDRs) &&
		slices.Equal(a.Status.Addresses, b.Status.Addresses) && slices.Equal(a.Status.Conditions, b.Status.Conditions) &&
		maps.Equal(a.Annotations, b.Annotations)
}

// Info converts a (trimmed) Node to NodeInfo.
func Info(n *corev1.Node) NodeInfo {
	ni := NodeInfo{Name: n.Name, PodCIDRs: n.Spec.PodCIDRs, Annotations: n.Annotations}
	if len(ni.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		ni.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	for _, a := range n.Status.Addresses {
		switch a.Type {
		case corev1.NodeInternalIP:
			ni.InternalIPs = append(ni.InternalIPs, a.Address)
		case corev1.NodeExternalIP:
			ni.ExternalIPs = append(ni.ExternalIPs, a.Address)
		}
	}
	return ni
}

// Run starts the informer, waits for its cache to sync (no snapshot before
// that), then turns node events into snapshots until ctx is done. It
// returns nil when ctx is done, an error when the cache cannot sync, or
// one wrapping ErrPodCIDRChanged when our Node's podCIDRs are no longer
// Config.PodCIDRs.
// Bursts coalesce: a change schedules the snapshot Batch later, and the
// initial list is one snapshot taken after every listed node is handled.
func (c *Controller) Run(ctx context.Context) error {
	// The informer stops with ctx: cancelled on ErrPodCIDRChanged too,
	// before factory.Shutdown waits for it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.queue.ShutDown()
	reg, err := c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				c.queue.Add(n.Name)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if ok1 && ok2 && !sameTrimmed(o, n) {
				c.queue.Add(n.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				c.queue.Add(n.Name)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: node informer: %w", err)
	}
	c.factory.Start(ctx.Done())
	defer c.factory.Shutdown()
	c.log.Info("waiting for the node cache to sync", zap.String("node", c.cfg.NodeName))
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube: node cache did not sync")
	}
	c.mu.Lock()
	c.synced = true
	c.dirty = true // an empty cluster still gets its (empty) snapshot
	c.mu.Unlock()
	c.log.Info("node cache synced", zap.Int("nodes", len(c.informer.GetStore().ListKeys())))
	c.queue.Add(flushKey)
	c.queue.Add(c.cfg.NodeName)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c.work(ctx) {
		}
	}()
	var changed error
	select {
	case <-ctx.Done():
	case changed = <-c.changed:
		cancel()
	}
	c.queue.ShutDown()
	<-done
	return changed
}

// work handles one queue item: a node (then, when the peer set changed, a
// snapshot is scheduled Batch later) or the snapshot itself. It returns
// false once the queue is shut down.
func (c *Controller) work(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	retry := false
	if key == flushKey {
		retry = !c.flush()
	} else {
		retry = !c.process(ctx, key)
	}
	if retry {
		c.queue.AddRateLimited(key)
	} else {
		c.queue.Forget(key)
	}
	c.queue.Done(key)
	c.mu.Lock()
	dirty := c.dirty
	c.mu.Unlock()
	if dirty && key != flushKey {
		c.queue.AddAfter(flushKey, c.cfg.Batch)
	}
	return true
}

// process brings the peer map up to date with one node; for our own node
// it publishes annotations and the condition. It returns false when that
// must be retried.
func (c *Controller) process(ctx context.Context, name string) bool {
	obj, exists, err := c.informer.GetIndexer().GetByKey(name)
	if err != nil {
		return false
	}
	var n *corev1.Node
	if exists {
		n, _ = obj.(*corev1.Node)
	}
	if name == c.cfg.NodeName {
		c.setSelf(n)
		if n == nil {
			return true // deleted or not registered yet: nothing to publish on
		}
		return c.publish(ctx, n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.peers[name]
	if n == nil {
		delete(c.peers, name)
		delete(c.bad, name)
		c.dirty = c.dirty || had
		return true
	}
	ni := Info(n)
	p, err := ParsePeer(ni, c.cfg.Local)
	if err == nil && !c.cfg.TrustAnnotatedEndpoints {
		err = CheckEndpoint(ni, p)
	}
	if err != nil {
		delete(c.peers, name)
		c.dirty = c.dirty || had
		pending := errors.Is(err, ErrNoAnnotations) || errors.Is(err, ErrNoPodCIDR)
		if msg := err.Error(); c.bad[name].msg != msg {
			c.bad[name] = badNode{msg: msg, pending: pending}
			if pending {
				c.log.Debug("node not a peer yet", zap.String("peer", name), zap.Error(err))
			} else {
				c.log.Warn("node skipped", zap.String("peer", name), zap.Error(err))
			}
		}
		return true
	}
	if _, wasBad := c.bad[name]; wasBad {
		delete(c.bad, name)
	}
	if !had || !samePeer(old, p) {
		c.peers[name] = p
		c.dirty = true
	}
	return true
}

func samePeer(a, b underlay.Peer) bool {
	return a.Name == b.Name && a.Addr == b.Addr && a.AnySourcePort == b.AnySourcePort && a.VTEPMAC == b.VTEPMAC &&
		a.PublicKey == b.PublicKey &&
		slices.Equal(a.PodCIDRs, b.PodCIDRs) && slices.Equal(a.NodeAddrs, b.NodeAddrs)
}

// flush hands the sink a snapshot when the peer set changed since the last
// accepted one; it returns false when the sink refused it.
func (c *Controller) flush() bool {
	c.mu.Lock()
	if !c.synced || !c.dirty {
		c.mu.Unlock()
		return true
	}
	snap := make([]underlay.Peer, 0, len(c.peers))
	for _, p := range c.peers {
		snap = append(snap, p)
	}
	selfCIDRs := c.selfCIDRs
	c.mu.Unlock()
	slices.SortFunc(snap, func(a, b underlay.Peer) int { return strings.Compare(a.Name, b.Name) })
	snap, conflicts := dropOverlaps(snap, c.cfg.NodeName, selfCIDRs)
	c.mu.Lock()
	for name, msg := range conflicts {
		if c.conflicts[name] != msg {
			c.log.Warn("node skipped: its podCIDRs overlap another node's; both are left out", zap.String("peer", name), zap.String("conflict", msg))
		}
	}
	for name := range c.conflicts {
		if _, still := conflicts[name]; !still {
			c.log.Info("podCIDR conflict resolved", zap.String("peer", name))
		}
	}
	c.conflicts = conflicts
	c.mu.Unlock()
	if err := c.cfg.Sink.SetPeers(snap); err != nil {
		c.log.Warn("peer snapshot refused; retrying", zap.Int("peers", len(snap)), zap.Error(err))
		return false
	}
	c.mu.Lock()
	c.dirty = false
	c.stats.Snapshots++
	c.stats.Last = time.Now()
	c.stats.Peers = len(snap)
	first := c.stats.Snapshots == 1
	c.mu.Unlock()
	if first {
		c.log.Info("first peer snapshot applied", zap.Int("peers", len(snap)))
		c.queue.Add(c.cfg.NodeName) // now the condition may be set
	} else {
		c.log.Debug("peer snapshot applied", zap.Int("peers", len(snap)))
	}
	return true
}

// publish patches our node's annotations when they differ from ours and,
// once a snapshot was applied, its NetworkUnavailable condition to False.
func (c *Controller) publish(ctx context.Context, n *corev1.Node) bool {
	ok := true
	diff := map[string]string{}
	for k, v := range c.annots {
		if n.Annotations[k] != v {
			diff[k] = v
		}
	}
	if len(diff) > 0 && !(c.annotsSent && n.ResourceVersion == c.annotsFromRV) {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": diff}})
		// Through nodes/status: the ClusterRole grants no patch on nodes.
		if _, err := c.cfg.Client.CoreV1().Nodes().Patch(ctx, c.cfg.NodeName, types.MergePatchType, b, metav1.PatchOptions{}, "status"); err != nil {
			c.log.Warn("publishing the node's annotations failed; retrying", zap.Error(err))
			ok = false
		} else {
			c.log.Info("node annotations published", zap.Any("annotations", diff))
			c.annotsFromRV, c.annotsSent = n.ResourceVersion, true
		}
	}
	c.mu.Lock()
	c.publishOK = ok
	applied := c.stats.Snapshots > 0
	c.mu.Unlock()
	if !applied {
		return ok
	}
	avail := false
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeNetworkUnavailable && cond.Status == corev1.ConditionFalse && cond.Reason == ConditionReason {
			avail = true
		}
	}
	if !avail && !(c.condSent && n.ResourceVersion == c.condFromRV) {
		now := metav1.Now()
		cond := []corev1.NodeCondition{{
			Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
			Reason: ConditionReason, Message: ConditionMessage,
			LastTransitionTime: now, LastHeartbeatTime: now,
		}}
		b, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": cond}})
		if _, err := c.cfg.Client.CoreV1().Nodes().PatchStatus(ctx, c.cfg.NodeName, b); err != nil {
			c.log.Warn("setting NetworkUnavailable=False failed; retrying", zap.Error(err))
			return false
		}
		c.log.Info("node condition NetworkUnavailable=False set", zap.String("reason", ConditionReason))
		c.condFromRV, c.condSent = n.ResourceVersion, true
	}
	c.mu.Lock()
	c.availOK = true
	c.mu.Unlock()
	return ok
}

// setSelf records our own node's podCIDRs (n nil: none known); a change
// makes a new snapshot, since peers may not overlap them.
func (c *Controller) setSelf(n *corev1.Node) {
	var cidrs []netip.Prefix
	if n != nil {
		for _, s := range Info(n).PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil && p == p.Masked() {
				cidrs = append(cidrs, p)
			}
		}
	}
	if len(cidrs) > 0 && len(c.cfg.PodCIDRs) > 0 && !sameCIDRs(cidrs, c.cfg.PodCIDRs) {
		err := fmt.Errorf("%w: node %s has %v, this node runs with %v", ErrPodCIDRChanged, c.cfg.NodeName, cidrs, c.cfg.PodCIDRs)
		select {
		case c.changed <- err:
			c.log.Error("our node's podCIDRs changed (the Node was deleted and registered again?): stopping", zap.Error(err))
		default:
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Equal(cidrs, c.selfCIDRs) {
		c.selfCIDRs = cidrs
		c.dirty = true
	}
}

// sameCIDRs reports whether a and b hold the same prefixes, in any order.
func sameCIDRs(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// dropOverlaps returns snap (sorted by name) less every peer whose podCIDRs
// overlap another peer's or our own node's (self's), and for each peer
// dropped a message naming what it overlaps. No node wins by its name or
// its age: both sides of a conflict are dropped (self excepted, which is
// never in snap), and come back when the conflict is gone.
//
// Prefixes are either nested or disjoint, so after sorting them by
// address (shorter first on a tie), each prefix overlaps exactly the
// prefixes still open on a stack of enclosing ones: O(n log n), for 5000
// nodes too.
func dropOverlaps(snap []underlay.Peer, self string, selfCIDRs []netip.Prefix) ([]underlay.Peer, map[string]string) {
	type owned struct {
		p    netip.Prefix
		name string
	}
	all := make([]owned, 0, len(snap)+len(selfCIDRs))
	for _, p := range selfCIDRs {
		all = append(all, owned{p, self})
	}
	for _, peer := range snap {
		for _, p := range peer.PodCIDRs {
			all = append(all, owned{p, peer.Name})
		}
	}
	slices.SortFunc(all, func(a, b owned) int {
		if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
			return c
		}
		return a.p.Bits() - b.p.Bits()
	})
	with := map[string][]string{}
	var stack []owned
	for _, o := range all {
		for len(stack) > 0 && !stack[len(stack)-1].p.Overlaps(o.p) { // false across families
			stack = stack[:len(stack)-1]
		}
		for _, enc := range stack {
			if enc.name == o.name {
				continue
			}
			with[o.name] = append(with[o.name], enc.name+" "+enc.p.String())
			with[enc.name] = append(with[enc.name], o.name+" "+o.p.String())
		}
		stack = append(stack, o)
	}
	delete(with, self)
	if len(with) == 0 {
		return snap, nil
	}
	conflicts := make(map[string]string, len(with))
	for name, ws := range with {
		slices.Sort(ws)
		conflicts[name] = "overlaps " + strings.Join(slices.Compact(ws), ", ")
	}
	kept := make([]underlay.Peer, 0, len(snap)-len(conflicts))
	for _, p := range snap {
		if _, bad := conflicts[p.Name]; !bad {
			kept = append(kept, p)
		}
	}
	return kept, conflicts
}

// Stats returns the controller's counters.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Nodes = len(c.informer.GetStore().ListKeys())
	s.Bad = 0
	for _, b := range c.bad {
		if !b.pending {
			s.Bad++
		}
	}
	s.Skipped = len(c.bad) + len(c.conflicts)
	s.Bad += len(c.conflicts)
	s.Published, s.Available = c.publishOK, c.availOK
	return s
}

// Self is this node as WaitForPodCIDRs found it.
type Self struct {
	PodCIDRs    []netip.Prefix // at most one per family, IPv4 first
	InternalIPs []netip.Addr
}

// ErrNodeNotFound: the named Node does not exist (yet).
var ErrNodeNotFound = errors.New("kube: node not found")

// WaitForPodCIDRs polls the named Node (every interval, default 1s) until
// kube-controller-manager has assigned its podCIDR(s), and returns them
// with its InternalIPs. It gives up when ctx is done.
func WaitForPodCIDRs(ctx context.Context, client kubernetes.Interface, name string, interval time.Duration, log *zap.Logger) (Self, error) {
	return WaitForPodCIDRsReporting(ctx, client, name, interval, log, nil)
}

// WaitForPodCIDRsReporting is WaitForPodCIDRs, calling report (when not
// nil) with why it is still waiting each time it polls without success:
// the daemon shows it in /readyz.
func WaitForPodCIDRsReporting(ctx context.Context, client kubernetes.Interface, name string, interval time.Duration, log *zap.Logger, report func(why string)) (Self, error) {
	if report == nil {
		report = func(string) {}
	}
	if interval <= 0 {
		interval = time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	said := false
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			ni := Info(n)
			if len(ni.PodCIDRs) > 0 {
				var s Self
				for _, c := range ni.PodCIDRs {
					p, err := netip.ParsePrefix(c)
					if err != nil || p != p.Masked() {
						return Self{}, fmt.Errorf("%w: node %s podCIDR %q", ErrNoPodCIDR, name, c)
					}
					s.PodCIDRs = append(s.PodCIDRs, p)
				}
				slices.SortStableFunc(s.PodCIDRs, func(a, b netip.Prefix) int { return a.Addr().BitLen() - b.Addr().BitLen() })
				for _, a := range ni.InternalIPs {
					if ip, err := netip.ParseAddr(a); err == nil {
						s.InternalIPs = append(s.InternalIPs, ip)
					}
				}
				return s, nil
			}
			report(fmt.Sprintf("node %s has no podCIDR yet (kube-controller-manager --allocate-node-cidrs assigns it)", name))
			if !said {
				log.Info("waiting for the node's podCIDR", zap.String("node", name))
				said = true
			}
		case apierrors.IsNotFound(err):
			report(fmt.Sprintf("node %s is not registered yet", name))
			if !said {
				log.Info("waiting for the node to register", zap.String("node", name))
				said = true
			}
		default:
			report(fmt.Sprintf("reading node %s from the API server failed: %v", name, err))
			log.Warn("reading the node failed; retrying", zap.String("node", name), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return Self{}, fmt.Errorf("kube: waiting for node %s's podCIDR: %w", name, ctx.Err())
		case <-time.After(interval):
		}
	}
}
