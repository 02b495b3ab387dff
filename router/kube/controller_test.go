package kube

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/podrouter/podrouter/router/underlay"
)

// recSink records every snapshot it is given.
type recSink struct {
	mu    sync.Mutex
	snaps [][]underlay.Peer
	at    []time.Time
	fail  int  // refuse this many snapshots first
	only1 bool // keep only the last snapshot (memory measurements)
	total int
	ch    chan struct{}
}

func newRecSink() *recSink { return &recSink{ch: make(chan struct{}, 1)} }

func (s *recSink) SetPeers(peers []underlay.Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return errors.New("refused")
	}
	if s.only1 {
		s.snaps, s.at = s.snaps[:0], s.at[:0]
	}
	s.total++
	s.snaps = append(s.snaps, peers)
	s.at = append(s.at, time.Now())
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return nil
}

func (s *recSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

func (s *recSink) last() ([]underlay.Peer, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.snaps) == 0 {
		return nil, time.Time{}
	}
	return s.snaps[len(s.snaps)-1], s.at[len(s.at)-1]
}

// waitFor waits until the last snapshot satisfies ok.
func (s *recSink) waitFor(t testing.TB, timeout time.Duration, what string, ok func([]underlay.Peer) bool) ([]underlay.Peer, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if snap, at := s.last(); snap != nil && ok(snap) {
			return snap, at
		}
		select {
		case <-s.ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			snap, _ := s.last()
			t.Fatalf("%s: not reached in %v; last snapshot (%d peers) %v", what, timeout, len(snap), trunc(snap))
		}
	}
}

func trunc(ps []underlay.Peer) []underlay.Peer {
	if len(ps) > 5 {
		return ps[:5]
	}
	return ps
}

func peerNamed(ps []underlay.Peer, name string) (underlay.Peer, bool) {
	for _, p := range ps {
		if p.Name == name {
			return p, true
		}
	}
	return underlay.Peer{}, false
}

func testNode(name, podCIDR, ip string, annots map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annots, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	return n
}

func udpAnnots(ep string) map[string]string {
	return map[string]string{AnnotBackend: "udp", AnnotEndpoint: ep, "other.example/annotation": "kept out of the cache"}
}

// newFake returns a fake clientset holding objs whose node watch is
// reported on watching (so tests change nodes only once the informer
// watches: the fake has no resourceVersions to resume from).
func newFake(objs ...runtime.Object) (*fake.Clientset, chan struct{}) {
	cs := fake.NewClientset(objs...)
	watching := make(chan struct{})
	var once sync.Once
	cs.PrependWatchReactor("nodes", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := cs.Tracker().Watch(a.GetResource(), a.GetNamespace())
		once.Do(func() { close(watching) })
		return true, w, err
	})
	return cs, watching
}

func runController(t *testing.T, cfg Config) (*Controller, context.CancelFunc) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
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
	return c, cancel
}

func TestControllerSnapshots(t *testing.T) {
	cs, watching := newFake(
		testNode("self", "10.244.0.0/24", "192.0.2.1", nil),
		testNode("a", "10.244.1.0/24", "192.0.2.2", udpAnnots("192.0.2.2:8285")),
		testNode("b", "10.244.2.0/24", "192.0.2.3", map[string]string{AnnotBackend: "udp"}),   // InternalIP
		testNode("c", "", "192.0.2.4", udpAnnots("192.0.2.4:8285")),                           // no podCIDR yet
		testNode("d", "10.244.4.0/24", "192.0.2.5", nil),                                      // agent not up
		testNode("e", "10.244.5.0/24", "192.0.2.6", udpAnnots("not-an-endpoint")),             // bad
		testNode("f", "10.244.6.0/24", "192.0.2.7", map[string]string{AnnotBackend: "vxlan"}), // incompatible
	)
	sink := newRecSink()
	local := Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")}
	c, _ := runController(t, Config{Client: cs, NodeName: "self", Local: local, Sink: sink})
	snap, _ := sink.waitFor(t, 10*time.Second, "initial snapshot", func([]underlay.Peer) bool { return true })
	if len(snap) != 2 || snap[0].Name != "a" || snap[1].Name != "b" ||
		snap[0].Addr != netip.MustParseAddrPort("192.0.2.2:8285") || snap[1].Addr != netip.MustParseAddrPort("192.0.2.3:8285") ||
		snap[1].PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") {
		t.Fatalf("initial snapshot %+v", snap)
	}
	if sink.count() != 1 {
		t.Fatalf("%d snapshots for the initial list, want 1", sink.count())
	}
	<-watching
	nodes := cs.CoreV1().Nodes()
	ctx := context.Background()

	// Our annotations are published, then NetworkUnavailable=False.
	waitNode(t, cs, "self", func(n *corev1.Node) bool {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeNetworkUnavailable && cond.Status == corev1.ConditionFalse && cond.Reason == ConditionReason {
				return n.Annotations[AnnotBackend] == "udp" && n.Annotations[AnnotEndpoint] == "192.0.2.1:8285"
			}
		}
		return false
	})

	// c gets a podCIDR: it joins. a's endpoint changes. b is deleted.
	n, _ := nodes.Get(ctx, "c", metav1.GetOptions{})
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.3.0/24", []string{"10.244.3.0/24"}
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "c joins", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "c"); return ok })
	n, _ = nodes.Get(ctx, "a", metav1.GetOptions{})
	n.Annotations[AnnotEndpoint] = "192.0.2.20:8285" // one of its addresses: accepted
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.20"})
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "a moves", func(ps []underlay.Peer) bool {
		p, _ := peerNamed(ps, "a")
		return p.Addr == netip.MustParseAddrPort("192.0.2.20:8285")
	})
	if err := nodes.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	snap, _ = sink.waitFor(t, 5*time.Second, "b leaves", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "b"); return !ok })
	if len(snap) != 2 {
		t.Fatalf("snapshot %+v: want a and c", snap)
	}
	// A change of nothing we read (a label, a heartbeat) makes no snapshot.
	before := sink.count()
	n, _ = nodes.Get(ctx, "a", metav1.GetOptions{})
	n.Labels["x"] = "y"
	n.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A node turning bad leaves the table.
	n, _ = nodes.Get(ctx, "c", metav1.GetOptions{})
	n.Annotations[AnnotEndpoint] = "[fd00::1]:8285"
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "c turns bad", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "c"); return !ok })
	if got := sink.count(); got != before+1 {
		t.Fatalf("%d snapshots after a label change and c's, want %d", got, before+1)
	}
	st := c.Stats()
	if st.Nodes != 6 || st.Peers != 1 || st.Bad != 3 || st.Skipped != 4 || !st.Published || !st.Available {
		t.Fatalf("stats %+v", st)
	}
	// Our annotations are patched once, the condition once, both through
	// nodes/status (the ClusterRole grants no patch on nodes).
	var patches, statusPatches int
	for _, a := range cs.Actions() {
		if a.GetVerb() == "patch" && a.GetResource().Resource == "nodes" {
			if a.GetSubresource() == "status" {
				statusPatches++
			} else {
				patches++
			}
		}
	}
	if patches != 0 || statusPatches != 2 {
		t.Fatalf("%d node patches and %d status patches, want 0 and 2", patches, statusPatches)
	}
}

func waitNode(t *testing.T, cs *fake.Clientset, name string, ok func(*corev1.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && ok(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: not as wanted: %+v %v", name, n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControllerFlannelInterop: a vxlan node reads a flannel node's
// annotations as a peer, and publishes flannel's annotations for itself.
func TestControllerFlannelInterop(t *testing.T) {
	cs, _ := newFake(
		testNode("self", "10.244.0.0/24", "192.0.2.1", nil),
		testNode("flannel", "10.244.1.0/24", "192.0.2.2", map[string]string{
			FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":1,"VtepMAC":"72:2b:a5:4e:11:0f"}`,
			FlannelPublicIP: "192.0.2.2", FlannelKubeSubnetManager: "true",
		}),
	)
	sink := newRecSink()
	runController(t, Config{Client: cs, NodeName: "self", Local: localVXLAN, Sink: sink})
	snap, _ := sink.waitFor(t, 10*time.Second, "flannel peer", func(ps []underlay.Peer) bool { return len(ps) == 1 })
	if p := snap[0]; p.Addr != netip.MustParseAddrPort("192.0.2.2:8472") || p.VTEPMAC.String() != "72:2b:a5:4e:11:0f" {
		t.Fatalf("flannel peer %+v", p)
	}
	waitNode(t, cs, "self", func(n *corev1.Node) bool {
		a := n.Annotations
		return a[FlannelBackendType] == "vxlan" && a[FlannelPublicIP] == "192.0.2.1" &&
			a[FlannelBackendData] == `{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}` && a[FlannelKubeSubnetManager] == "true"
	})
}

// TestControllerCoalesces: a burst of node changes is a handful of
// snapshots, not one per node; a refused snapshot is retried.
func TestControllerCoalesces(t *testing.T) {
	const n = 500
	objs := []runtime.Object{testNode("self", "10.244.0.0/24", "192.0.2.1", nil)}
	for i := 1; i <= n; i++ {
		objs = append(objs, testNode(fmt.Sprintf("n%d", i), fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256), fmt.Sprintf("192.0.%d.%d", 100+i/256, i%256),
			udpAnnots(fmt.Sprintf("192.0.%d.%d:8285", 100+i/256, i%256))))
	}
	cs, watching := newFake(objs...)
	sink := newRecSink()
	sink.fail = 2
	local := Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")}
	runController(t, Config{Client: cs, NodeName: "self", Local: local, Sink: sink})
	sink.waitFor(t, 10*time.Second, "all peers", func(ps []underlay.Peer) bool { return len(ps) == n })
	if sink.count() != 1 {
		t.Fatalf("%d snapshots for %d nodes, want 1", sink.count(), n)
	}
	<-watching
	ctx := context.Background()
	for i := 1; i <= n; i++ {
		if err := cs.CoreV1().Nodes().Delete(ctx, fmt.Sprintf("n%d", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond) // the fake's watch channel holds 100 events
		}
	}
	sink.waitFor(t, 10*time.Second, "all gone", func(ps []underlay.Peer) bool { return len(ps) == 0 })
	if got := sink.count(); got > 1+n/10 {
		t.Fatalf("%d snapshots for %d deletions: not coalesced", got-1, n)
	}
	t.Logf("%d snapshots for %d deletions", sink.count()-1, n)
}

func TestNewValidates(t *testing.T) {
	cs := fake.NewClientset()
	sink := newRecSink()
	for name, cfg := range map[string]Config{
		"no client":   {NodeName: "a", Sink: sink, Local: localUDP},
		"no name":     {Client: cs, Sink: sink, Local: localUDP},
		"no sink":     {Client: cs, NodeName: "a", Local: localUDP},
		"no backend":  {Client: cs, NodeName: "a", Sink: sink, Local: Local{Endpoint: localUDP.Endpoint}},
		"no endpoint": {Client: cs, NodeName: "a", Sink: sink, Local: Local{Backend: BackendUDP}},
		"no mac":      {Client: cs, NodeName: "a", Sink: sink, Local: Local{Backend: BackendVXLAN, Endpoint: localUDP.Endpoint, VNI: 1}},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfigInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestWaitForPodCIDRs(t *testing.T) {
	cs := fake.NewClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		time.Sleep(30 * time.Millisecond)
		n := testNode("self", "", "192.0.2.1", nil)
		_, _ = cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		time.Sleep(30 * time.Millisecond)
		n.Spec.PodCIDRs = []string{"fd00:1::/64", "10.244.7.0/24"}
		_, _ = cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	}()
	s, err := WaitForPodCIDRs(ctx, cs, "self", 10*time.Millisecond, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.PodCIDRs) != 2 || s.PodCIDRs[0] != netip.MustParsePrefix("10.244.7.0/24") || s.InternalIPs[0] != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("%+v", s)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := WaitForPodCIDRs(short, cs, "absent", 10*time.Millisecond, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("absent node: %v", err)
	}
}

// TestControllerPodCIDRChanged: Run goes on while our Node keeps its
// podCIDRs (in any order), is deleted, or is registered again without
// podCIDRs yet; once it shows new ones, Run returns ErrPodCIDRChanged.
func TestControllerPodCIDRChanged(t *testing.T) {
	self := testNode("self", "10.244.0.0/24", "192.0.2.1", nil)
	self.Spec.PodCIDRs = []string{"fd00:1::/64", "10.244.0.0/24"}
	cs, watching := newFake(self, testNode("a", "10.244.1.0/24", "192.0.2.2", udpAnnots("192.0.2.2:8285")))
	sink := newRecSink()
	c, err := New(Config{
		Client: cs, NodeName: "self", Sink: sink, Logger: zaptest.NewLogger(t),
		Local:    Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:1::/64")},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	sink.waitFor(t, 10*time.Second, "initial snapshot", func([]underlay.Peer) bool { return true })
	<-watching
	running := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: Run returned %v", what, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
	running("same podCIDRs, other order")
	nodes := cs.CoreV1().Nodes()
	if err := nodes.Delete(ctx, "self", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	running("node deleted")
	again := testNode("self", "", "192.0.2.1", nil)
	if _, err := nodes.Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running("node registered again, no podCIDR yet")
	again.Spec.PodCIDR, again.Spec.PodCIDRs = "10.244.9.0/24", []string{"10.244.9.0/24"}
	if _, err := nodes.Update(ctx, again, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrPodCIDRChanged) {
			t.Fatalf("Run: %v, want ErrPodCIDRChanged", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the podCIDR changed")
	}
}

// TestControllerTrust: a node announcing an endpoint that is none of its
// addresses is skipped (unless the operator trusts annotations), and two
// nodes with overlapping podCIDRs are both dropped, each logged once, until
// the conflict is gone. Peers carry their InternalIPs as NodeAddrs.
func TestControllerTrust(t *testing.T) {
	objs := func() []runtime.Object {
		multi := testNode("m", "10.244.6.0/24", "192.0.2.6", udpAnnots("192.0.2.6:8285"))
		multi.Status.Addresses = append(multi.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.66"})
		return []runtime.Object{
			testNode("self", "10.244.0.0/24", "192.0.2.1", nil),
			testNode("a", "10.244.1.0/24", "192.0.2.2", udpAnnots("192.0.2.2:8285")),
			testNode("foreign", "10.244.2.0/24", "192.0.2.3", udpAnnots("192.0.2.99:8285")), // someone else's address
			testNode("x", "10.244.4.0/24", "192.0.2.4", udpAnnots("192.0.2.4:8285")),
			testNode("y", "10.244.4.0/23", "192.0.2.5", udpAnnots("192.0.2.5:8285")),   // overlaps x
			testNode("z", "10.244.0.128/25", "192.0.2.7", udpAnnots("192.0.2.7:8285")), // overlaps self
			multi,
		}
	}
	local := Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")}
	names := func(ps []underlay.Peer) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}

	t.Run("validated", func(t *testing.T) {
		cs, watching := newFake(objs()...)
		sink := newRecSink()
		core, logs := observer.New(zap.WarnLevel)
		c, _ := runController(t, Config{Client: cs, NodeName: "self", Local: local, Sink: sink, Logger: zap.New(core)})
		snap, _ := sink.waitFor(t, 10*time.Second, "initial snapshot", func([]underlay.Peer) bool { return true })
		if got := names(snap); !slices.Equal(got, []string{"a", "m"}) {
			t.Fatalf("snapshot %v, want [a m] (foreign endpoint, overlaps x-y and z-self dropped)", got)
		}
		if m, _ := peerNamed(snap, "m"); !slices.Equal(m.NodeAddrs, []netip.Addr{netip.MustParseAddr("192.0.2.66")}) {
			t.Fatalf("m's NodeAddrs %v, want its other InternalIP", m.NodeAddrs)
		}
		if st := c.Stats(); st.Peers != 2 || st.Bad != 4 || st.Skipped != 4 {
			t.Fatalf("stats %+v", st)
		}
		<-watching
		// Another snapshot (a gains an address) logs nothing new.
		ctx := context.Background()
		n, _ := cs.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.22"})
		if _, err := cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		sink.waitFor(t, 5*time.Second, "a's new address", func(ps []underlay.Peer) bool {
			a, _ := peerNamed(ps, "a")
			return len(a.NodeAddrs) == 1
		})
		for _, who := range []string{"foreign", "x", "y", "z"} {
			if got := logs.FilterField(zap.String("peer", who)).Len(); got != 1 {
				t.Errorf("%s logged %d times, want once: %v", who, got, logs.All())
			}
		}
		if e := logs.FilterField(zap.String("peer", "foreign")).All(); len(e) == 1 && !strings.Contains(fmt.Sprint(e[0].ContextMap()["error"]), "192.0.2.99") {
			t.Errorf("foreign's log does not name the endpoint: %v", e[0].ContextMap())
		}
		// x leaves: y is alone and joins; no winner was chosen before.
		if err := cs.CoreV1().Nodes().Delete(ctx, "x", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		sink.waitFor(t, 5*time.Second, "y joins once x is gone", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "y"); return ok })
		if st := c.Stats(); st.Bad != 2 {
			t.Fatalf("stats after x left %+v, want foreign and z bad", st)
		}
	})

	t.Run("trusted", func(t *testing.T) {
		cs, _ := newFake(objs()...)
		sink := newRecSink()
		runController(t, Config{Client: cs, NodeName: "self", Local: local, Sink: sink, TrustAnnotatedEndpoints: true})
		snap, _ := sink.waitFor(t, 10*time.Second, "initial snapshot", func([]underlay.Peer) bool { return true })
		if got := names(snap); !slices.Equal(got, []string{"a", "foreign", "m"}) {
			t.Fatalf("snapshot %v, want [a foreign m]", got)
		}
	})
}

// TestDropOverlaps checks dropOverlaps against the quadratic reference on
// random podCIDR sets.
func TestDropOverlaps(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for iter := range 300 {
		var peers []underlay.Peer
		for i := range 1 + rnd.IntN(40) {
			p := underlay.Peer{Name: fmt.Sprintf("p%02d", i)}
			bits := 20 + rnd.IntN(9)
			a := netip.AddrFrom4([4]byte{10, 244, byte(rnd.IntN(16)), byte(rnd.IntN(256))})
			p.PodCIDRs = append(p.PodCIDRs, netip.PrefixFrom(a, bits).Masked())
			if rnd.IntN(2) == 0 {
				a6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, byte(rnd.IntN(8)), byte(rnd.IntN(8))})
				p.PodCIDRs = append(p.PodCIDRs, netip.PrefixFrom(a6, 60+rnd.IntN(5)).Masked())
			}
			peers = append(peers, p)
		}
		self := []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(rnd.IntN(16)), 0}), 24)}
		kept, conflicts := dropOverlaps(slices.Clone(peers), "self", self)
		want := map[string]bool{}
		for i, p := range peers {
			for _, c := range p.PodCIDRs {
				for _, s := range self {
					if c.Overlaps(s) {
						want[p.Name] = true
					}
				}
				for j, q := range peers {
					for _, d := range q.PodCIDRs {
						if i != j && c.Overlaps(d) {
							want[p.Name] = true
						}
					}
				}
			}
		}
		if len(conflicts) != len(want) {
			t.Fatalf("iter %d: conflicts %v, want %v", iter, conflicts, want)
		}
		for name := range want {
			if _, ok := conflicts[name]; !ok {
				t.Fatalf("iter %d: %s not dropped: %v", iter, name, conflicts)
			}
		}
		if len(kept)+len(conflicts) != len(peers) {
			t.Fatalf("iter %d: kept %d + dropped %d != %d", iter, len(kept), len(conflicts), len(peers))
		}
	}
}
