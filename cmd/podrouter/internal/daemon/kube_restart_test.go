package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/kube"
	"github.com/podrouter/podrouter/router/kube/kubetest"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/underlay"
)

func TestKubeStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadKubeState(dir, "n"); !errors.Is(err, ErrNoKubeState) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no file: %v", err)
	}
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := kubeState{Node: "n", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, NetConf: nc,
		InternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}, Saved: time.Now().Round(0)}
	st.Peers = append(st.Peers, kubePeer("p", "10.244.4.0/24", "192.0.2.6:8472"))
	st.Peers[0].VTEPMAC = [6]byte{0x0a, 0, 0, 0, 0, 6}
	st.Peers[0].NodeAddrs = []netip.Addr{netip.MustParseAddr("fd00::6")}
	if err := saveKubeState(dir, st); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, kubeStateFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	got, err := loadKubeState(dir, "n")
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	st.V = kubeStateVersion
	wb, _ := json.Marshal(st)
	if string(gb) != string(wb) || got.NetConf != nc {
		t.Fatalf("round trip\n got %s\nwant %s", gb, wb)
	}
	if _, err := loadKubeState(dir, "other"); !errors.Is(err, ErrNoKubeState) {
		t.Fatalf("another node's state: %v", err)
	}
	for name, body := range map[string]string{
		"torn":       `{"v":1,"node":"n","podCI`,
		"version":    `{"v":2,"node":"n","podCIDRs":["10.244.3.0/24"]}`,
		"no podCIDR": `{"v":1,"node":"n","podCIDRs":[]}`,
		"v6 only":    `{"v":1,"node":"n","podCIDRs":["fd00::/64"]}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, kubeStateFile), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadKubeState(dir, "n"); !errors.Is(err, ErrNoKubeState) {
			t.Errorf("%s: %v, want ErrNoKubeState", name, err)
		}
	}
}

func kubePeer(name, cidr, ep string) underlay.Peer {
	return underlay.Peer{Name: name, Addr: netip.MustParseAddrPort(ep), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}}
}

// hostDialer dials from the namespace the test started in, whatever
// thread (and netns) the caller runs on: the daemon runs inside a test
// netns, the API server in the host's.
func hostDialer(t *testing.T) func(ctx context.Context, network, addr string) (net.Conn, error) {
	host, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- res{nil, err}
				return
			}
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// TestKubeSurvivesAPIServer: a daemon in Kubernetes mode applies its peers
// and persists them; restarted while the API server is down, it is ready
// with its node's and its peer's routes within 1 s of its start, stale in
// /readyz and its status; once the API server is back, the controller's
// fresh snapshot clears the stale state.
func TestKubeSurvivesAPIServer(t *testing.T) {
	nstest.RequireRoot(t)
	c := kubetest.Start(t)
	ns := nstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	x := 1 + rand.IntN(250)
	selfIP, peerIP := fmt.Sprintf("10.252.%d.1", x), fmt.Sprintf("10.252.%d.2", x)
	ns.Run(t, "ip", "addr", "add", selfIP+"/32", "dev", "lo")
	admin := c.Client()
	mkNode := func(name, cidr, ip string, annots map[string]string) {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annots},
			Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
		created, err := admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mkNode("self", "10.244.1.0/24", selfIP, nil)
	mkNode("peer", "10.244.2.0/24", peerIP, map[string]string{kube.AnnotBackend: "udp", kube.AnnotEndpoint: peerIP + ":8285"})

	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	uid := uint32(0)
	cfg := Config{
		StateDir:    filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "run", "api.sock"),
		Uplink:      fmt.Sprintf("prk%05x", rand.IntN(1<<20)),
		APIAllowUID: &uid,
		MetricsAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Logger:      zaptest.NewLogger(t),
	}
	rc := rest.CopyConfig(c.Admin)
	rc.Dial = hostDialer(t)
	type run struct {
		d     *Daemon
		t0    time.Time
		ready time.Duration // start to ready with the peer's route
		stop  context.CancelFunc
		done  chan error
	}
	start := func() *run {
		r := &run{done: make(chan error, 1)}
		started := make(chan *Daemon, 1)
		rctx, stop := context.WithCancel(ctx)
		r.stop = stop
		ko := KubeOptions{Rest: rc, NodeName: "self", NetConf: nc, started: func(d *Daemon) { started <- d }}
		r.t0 = time.Now()
		go func() { r.done <- ns.Do(func() error { return RunKube(rctx, cfg, ko) }) }()
		select {
		case r.d = <-started:
		case err := <-r.done:
			t.Fatalf("RunKube returned before the daemon started: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("the daemon did not start in 30 s")
		}
		for {
			if r.d.Ready() == nil && hasPeerRoute(r.d, "10.244.2.0/24") {
				r.ready = time.Since(r.t0)
				return r
			}
			if time.Since(r.t0) > 30*time.Second {
				t.Fatalf("not ready with the peer's route after 30 s: %v", r.d.Ready())
			}
			time.Sleep(time.Millisecond)
		}
	}
	end := func(r *run) {
		r.stop()
		select {
		case err := <-r.done:
			if err != nil {
				t.Fatalf("RunKube: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("RunKube did not return")
		}
	}
	status := func(d *Daemon) api.Status {
		st, err := handler{d}.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitFresh := func(d *Daemon, within time.Duration) time.Duration {
		t0 := time.Now()
		for status(d).Stale != "" {
			if time.Since(t0) > within {
				t.Fatalf("still stale after %v: %q", within, status(d).Stale)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(t0)
	}
	hc := ns.HTTPClient()

	// 1. API server up: the peer comes from the controller and is persisted.
	r := start()
	t.Logf("with the API server: ready with the peer's route %v after the start", r.ready)
	if s := status(r.d).Stale; s != "" {
		t.Errorf("stale %q with the API server up", s)
	}
	st, err := loadKubeState(cfg.StateDir, "self")
	for t0 := time.Now(); err != nil && time.Since(t0) < 10*time.Second; st, err = loadKubeState(cfg.StateDir, "self") {
		time.Sleep(10 * time.Millisecond) // written right after the snapshot is applied
	}
	if err != nil || len(st.Peers) != 1 || st.Peers[0].Name != "peer" || st.NetConf != nc ||
		len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("persisted state %+v, %v", st, err)
	}
	end(r)

	// 2. API server down: the restarted daemon starts from the persisted state.
	c.StopAPIServer(t)
	r = start()
	t.Logf("API server down: ready with the peer's route %v after the start", r.ready)
	if r.ready > time.Second {
		t.Errorf("ready %v after the start with the API server down, want within 1 s", r.ready)
	}
	s := status(r.d)
	if !s.Ready || !strings.Contains(s.Stale, "API server unreachable") || s.NotReady != "" {
		t.Errorf("status while stale: ready %v, stale %q, notReady %q", s.Ready, s.Stale, s.NotReady)
	}
	if len(s.PodCIDRs) == 0 || s.PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("pod CIDRs %v, want the persisted 10.244.1.0/24", s.PodCIDRs)
	}
	base := "http://" + r.d.MetricsAddr().String()
	if code, body := nstest.HTTPGet(t, hc, base+"/readyz"); code != 200 || !strings.HasPrefix(body, "ok: stale: API server unreachable") {
		t.Errorf("/readyz while stale: %d %q", code, body)
	}
	if v := gauge(scrapeURL(t, hc, base+"/metrics"), "podrouter_kube_stale"); v != 1 {
		t.Errorf("podrouter_kube_stale = %v while stale", v)
	}

	// 3. The API server returns: a fresh snapshot clears the stale state.
	t1 := time.Now()
	c.StartAPIServer(t)
	up := time.Since(t1)
	took := waitFresh(r.d, 90*time.Second)
	t.Logf("API server back (restart took %v): fresh again %v later", up.Round(time.Millisecond), took.Round(time.Millisecond))
	if code, body := nstest.HTTPGet(t, hc, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz once fresh: %d %q", code, body)
	}
	if !hasPeerRoute(r.d, "10.244.2.0/24") {
		t.Error("the peer's route is gone after the reconciliation")
	}
	// The reconciliation is real: a peer added meanwhile arrives.
	mkNode("peer2", "10.244.3.0/24", fmt.Sprintf("10.252.%d.3", x), map[string]string{kube.AnnotBackend: "udp"})
	for !hasPeerRoute(r.d, "10.244.3.0/24") {
		if ctx.Err() != nil {
			t.Fatal("peer2 never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	end(r)
}

// hasPeerRoute reports whether d's engine routes prefix to a peer.
func hasPeerRoute(d *Daemon, prefix string) bool {
	routes, err := handler{d}.Routes(context.Background())
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Prefix.String() == prefix && r.Kind == "peer" {
			return true
		}
	}
	return false
}

// TestCheckPodCIDRs: a daemon started from its persisted state stops when
// its Node's podCIDRs turn out to have changed meanwhile.
func TestCheckPodCIDRs(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.9.0/24", PodCIDRs: []string{"10.244.9.0/24", "fd00:9::/64"}}}
	cs := fake.NewClientset(node)
	log := zaptest.NewLogger(t)
	same := []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24"), netip.MustParsePrefix("fd00:9::/64")}
	if err := checkPodCIDRs(context.Background(), cs, "n", same, log); err != nil {
		t.Fatalf("same podCIDRs: %v", err)
	}
	if err := checkPodCIDRs(context.Background(), cs, "n", same[:1], log); !errors.Is(err, ErrPodCIDRChanged) {
		t.Fatalf("lost the IPv6 podCIDR: %v", err)
	}
	if err := checkPodCIDRs(context.Background(), cs, "n", []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, log); !errors.Is(err, ErrPodCIDRChanged) {
		t.Fatalf("another podCIDR: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := checkPodCIDRs(ctx, fake.NewClientset(), "absent", same, log); err != nil {
		t.Fatalf("ctx done: %v", err)
	}
}
