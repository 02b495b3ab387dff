package kube

// Tests against a real kube-apiserver (kubetest; skipped without the
// binaries unless PODROUTER_REQUIRE_KUBE=1). The controller runs with the
// token of deploy/'s ServiceAccount, bound by deploy/rbac.yaml: not as admin.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podrouter/podrouter/router/kube/kubetest"
	"github.com/podrouter/podrouter/router/underlay"
)

// startWithRBAC starts a cluster, applies deploy/'s Namespace,
// ServiceAccount and RBAC, and returns an admin client (high rate limits)
// and a client of the ServiceAccount once RBAC lets it list nodes.
func startWithRBAC(t *testing.T) (*kubetest.Cluster, kubernetes.Interface, kubernetes.Interface) {
	t.Helper()
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	deploy, err := filepath.Abs("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"namespace.yaml", "serviceaccount.yaml", "rbac.yaml"} {
		if out, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(deploy, f)); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	ac := rest.CopyConfig(c.Admin)
	ac.QPS, ac.Burst = 2000, 4000
	admin, err := kubernetes.NewForConfig(ac)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(c.ServiceAccountConfig(t, "kube-podrouter", "podrouter"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 1})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || ctx.Err() != nil {
			t.Fatalf("serviceaccount lists nodes: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, admin, sa
}

func createNode(ctx context.Context, cs kubernetes.Interface, name, podCIDR, ip string, annots map[string]string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annots}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	created, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil || ip == "" {
		return err
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// addExternalIP adds an ExternalIP to the node's status.addresses: an
// announced endpoint must be one of the node's addresses.
func addExternalIP(ctx context.Context, cs kubernetes.Interface, name, ip string) error {
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: ip})
	_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func TestAPIServerConverges(t *testing.T) {
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(createNode(ctx, admin, "self", "10.244.0.0/24", "192.0.2.1", nil))
	must(createNode(ctx, admin, "a", "10.244.1.0/24", "192.0.2.2", map[string]string{AnnotBackend: "vxlan", AnnotVNI: "1", AnnotVTEPMAC: "0a:00:00:00:00:02"}))
	must(createNode(ctx, admin, "b", "", "192.0.2.3", map[string]string{AnnotBackend: "vxlan", AnnotVNI: "1", AnnotVTEPMAC: "0a:00:00:00:00:03"}))
	must(createNode(ctx, admin, "flannel", "10.244.4.0/24", "192.0.2.4", map[string]string{
		FlannelBackendType: "vxlan", FlannelBackendData: `{"VNI":1,"VtepMAC":"0a:00:00:00:00:04"}`, FlannelPublicIP: "198.51.100.4"}))
	must(addExternalIP(ctx, admin, "flannel", "198.51.100.4"))
	must(createNode(ctx, admin, "bad", "10.244.5.0/24", "192.0.2.5", map[string]string{AnnotBackend: "vxlan", AnnotVNI: "1", AnnotVTEPMAC: "ff:ff:ff:ff:ff:ff"}))
	sink := newRecSink()
	c, _ := runController(t, Config{Client: sa, NodeName: "self", Local: localVXLAN, Sink: sink})
	snap, _ := sink.waitFor(t, 30*time.Second, "initial peers", func(ps []underlay.Peer) bool { return len(ps) == 2 })
	if snap[0].Name != "a" || snap[0].Addr != netip.MustParseAddrPort("192.0.2.2:8472") ||
		snap[1].Name != "flannel" || snap[1].Addr != netip.MustParseAddrPort("198.51.100.4:8472") {
		t.Fatalf("initial snapshot %+v", snap)
	}

	// b gets its podCIDR (kube-controller-manager's job, done here by hand).
	n, err := admin.CoreV1().Nodes().Get(ctx, "b", metav1.GetOptions{})
	must(err)
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.2.0/24", []string{"10.244.2.0/24"}
	_, err = admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	must(err)
	sink.waitFor(t, 10*time.Second, "b joins", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "b"); return ok })
	// a's endpoint changes (to an address it has).
	must(addExternalIP(ctx, admin, "a", "203.0.113.2"))
	n, err = admin.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	must(err)
	n.Annotations[AnnotEndpoint] = "203.0.113.2:8472"
	_, err = admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	must(err)
	sink.waitFor(t, 10*time.Second, "a moves", func(ps []underlay.Peer) bool {
		p, _ := peerNamed(ps, "a")
		return p.Addr == netip.MustParseAddrPort("203.0.113.2:8472")
	})
	// flannel's node is deleted.
	must(admin.CoreV1().Nodes().Delete(ctx, "flannel", metav1.DeleteOptions{}))
	snap, _ = sink.waitFor(t, 10*time.Second, "flannel leaves", func(ps []underlay.Peer) bool { _, ok := peerNamed(ps, "flannel"); return !ok })
	if len(snap) != 2 {
		t.Fatalf("final snapshot %+v: want a and b", snap)
	}

	// Our annotations and NetworkUnavailable=False, as the admin reads them.
	deadline := time.Now().Add(20 * time.Second)
	for {
		self, err := admin.CoreV1().Nodes().Get(ctx, "self", metav1.GetOptions{})
		must(err)
		avail := slices.ContainsFunc(self.Status.Conditions, func(c corev1.NodeCondition) bool {
			return c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == ConditionReason
		})
		a := self.Annotations
		if avail && a[AnnotEndpoint] == "192.0.2.1:8472" && a[AnnotVTEPMAC] == "0a:00:00:00:00:01" &&
			a[FlannelBackendData] == `{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}` && a[FlannelPublicIP] == "192.0.2.1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("own node: annotations %v, conditions %+v", a, self.Status.Conditions)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := c.Stats(); st.Bad != 1 || !st.Published || !st.Available {
		t.Fatalf("stats %+v: want the bad node counted", st)
	}
}

// TestAPIServerWireGuardKeys: two wireguard nodes, each with its own
// controller and the ServiceAccount's token, publish their public keys
// through nodes/status and read each other's into Peer.PublicKey; a
// flannel wireguard node's key is read from its backend-data, and a key
// change reaches the snapshot; a wireguard node without a valid key is
// skipped, not fatal.
func TestAPIServerWireGuardKeys(t *testing.T) {
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	keyA, keyB, keyF, keyF2 := underlay.Key{0xa}, underlay.Key{0xb}, underlay.Key{0xf}, underlay.Key{0xf, 2}
	must(createNode(ctx, admin, "a", "10.244.1.0/24", "192.0.2.1", nil))
	must(createNode(ctx, admin, "b", "10.244.2.0/24", "192.0.2.2", nil))
	must(createNode(ctx, admin, "flannel", "10.244.3.0/24", "192.0.2.3", map[string]string{
		FlannelBackendType: "wireguard", FlannelBackendData: `{"PublicKey":"` + keyF.String() + `"}`, FlannelPublicIP: "192.0.2.3"}))
	must(createNode(ctx, admin, "nokey", "10.244.4.0/24", "192.0.2.4", map[string]string{AnnotBackend: "wireguard"}))
	must(createNode(ctx, admin, "badkey", "10.244.5.0/24", "192.0.2.5", map[string]string{
		FlannelBackendType: "wireguard", FlannelBackendData: `{"PublicKey":"not base64"}`}))
	sinks := map[string]*recSink{"a": newRecSink(), "b": newRecSink()}
	ctrls := map[string]*Controller{}
	for name, l := range map[string]Local{
		"a": {Backend: BackendWireGuard, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PublicKey: keyA},
		"b": {Backend: BackendWireGuard, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), PublicKey: keyB},
	} {
		ctrls[name], _ = runController(t, Config{Client: sa, NodeName: name, Local: l, Sink: sinks[name]})
	}
	hasKey := func(name string, k underlay.Key) func([]underlay.Peer) bool {
		return func(ps []underlay.Peer) bool { p, ok := peerNamed(ps, name); return ok && p.PublicKey == k }
	}
	for self, other := range map[string]string{"a": "b", "b": "a"} {
		want := map[string]underlay.Key{"a": keyA, "b": keyB}[other]
		snap, _ := sinks[self].waitFor(t, 30*time.Second, self+" learns "+other+"'s key", func(ps []underlay.Peer) bool {
			return hasKey(other, want)(ps) && hasKey("flannel", keyF)(ps)
		})
		if len(snap) != 2 {
			t.Fatalf("%s: snapshot %+v: want %s and flannel only", self, snap, other)
		}
		p, _ := peerNamed(snap, other)
		if p.Addr != netip.MustParseAddrPort(map[string]string{"a": "192.0.2.1:51820", "b": "192.0.2.2:51820"}[other]) {
			t.Fatalf("%s: peer %+v", self, p)
		}
	}
	for name, k := range map[string]underlay.Key{"a": keyA, "b": keyB} {
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		must(err)
		if a := n.Annotations; a[AnnotPublicKey] != k.String() || a[FlannelBackendType] != "wireguard" ||
			a[FlannelBackendData] != `{"PublicKey":"`+k.String()+`"}` {
			t.Fatalf("%s: annotations %v", name, a)
		}
	}
	// flannel's node gets a new key (its agent restarted without its key file).
	n, err := admin.CoreV1().Nodes().Get(ctx, "flannel", metav1.GetOptions{})
	must(err)
	n.Annotations[FlannelBackendData] = `{"PublicKey":"` + keyF2.String() + `"}`
	_, err = admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	must(err)
	sinks["a"].waitFor(t, 10*time.Second, "flannel's new key", hasKey("flannel", keyF2))
	for name, c := range ctrls {
		if st := c.Stats(); st.Bad != 2 {
			t.Fatalf("%s: stats %+v: want nokey and badkey counted bad", name, st)
		}
	}
}

// TestAPIServerScale: 5000 Nodes; the time from one Node update to the
// sink's snapshot, and the controller's memory.
func TestAPIServerScale(t *testing.T) {
	const nodes = 5000
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	t0 := time.Now()
	work := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				a := map[string]string{AnnotBackend: "udp", AnnotEndpoint: fmt.Sprintf("10.%d.%d.%d:8285", 100+i>>16, i>>8&255, i&255),
					// realistic weight: what kubelet and others put on Nodes
					"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
				if err := createNode(ctx, admin, fmt.Sprintf("node-%05d", i), fmt.Sprintf("10.%d.%d.0/24", 64+i>>8, i&255), "", a); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	for i := 1; i <= nodes; i++ {
		select {
		case work <- i:
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
	if err := createNode(ctx, admin, "self", "10.63.255.0/24", "192.0.2.1", nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("created %d nodes in %v", nodes, time.Since(t0).Round(time.Millisecond))

	heap0 := heapInuse()
	sink := newRecSink()
	sink.only1 = true
	local := Local{Backend: BackendUDP, Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")}
	t1 := time.Now()
	// The nodes carry no addresses (one write each, not two): their
	// endpoints are trusted as announced.
	c, _ := runController(t, Config{Client: sa, NodeName: "self", Local: local, Sink: sink, Logger: zaptest.NewLogger(t), TrustAnnotatedEndpoints: true})
	sink.waitFor(t, 2*time.Minute, "all peers", func(ps []underlay.Peer) bool { return len(ps) == nodes })
	t.Logf("initial sync of %d nodes: %v, %d snapshot(s)", nodes, time.Since(t1).Round(time.Millisecond), sink.count())
	heap1 := heapInuse()

	var lat []time.Duration
	for k := range 10 {
		name := fmt.Sprintf("node-%05d", 1+k*(nodes/10))
		want := netip.AddrPortFrom(netip.MustParseAddr("198.51.100."+strconv.Itoa(k+1)), 8285)
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Annotations[AnnotEndpoint] = want.String()
		start := time.Now()
		if _, err := admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, at := sink.waitFor(t, 30*time.Second, name+" moves", func(ps []underlay.Peer) bool {
			p, _ := peerNamed(ps, name)
			return p.Addr == want
		})
		lat = append(lat, at.Sub(start))
	}
	slices.Sort(lat)
	st := c.Stats()
	t.Logf("update -> sink at %d nodes: min %v median %v max %v (%d updates)", nodes,
		lat[0].Round(time.Microsecond), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), len(lat))
	t.Logf("memory: heap in use %.1f MiB after sync (%.1f MiB before the controller started: the controller's share %.1f MiB); process VmRSS %s; stats %+v",
		mib(heap1), mib(heap0), mib(heap1)-mib(heap0), vmRSS(), st)
	if lat[len(lat)/2] > time.Second {
		t.Errorf("median convergence %v at %d nodes: want <= 1s", lat[len(lat)/2], nodes)
	}
	if st.Nodes != nodes+1 || st.Peers != nodes {
		t.Errorf("stats %+v", st)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func vmRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
