package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podrouter/podrouter/router/kube"
)

// TestKubeWaitingReadyz: while the daemon waits for its Node (not
// registered, then without a podCIDR), /healthz answers ok and /readyz
// answers 503 with why, on the metrics address; when the daemon stops, the
// address is free again. No privileges: the daemon never gets its podCIDR,
// so it creates nothing.
func TestKubeWaitingReadyz(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	cs := fake.NewClientset()
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := Config{
		StateDir:    filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "run", "api.sock"),
		MetricsAddr: addr,
		Logger:      zaptest.NewLogger(t),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunKube(ctx, cfg, KubeOptions{client: cs, NodeName: "self", NetConf: nc})
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, body := get("/readyz")
			if code == http.StatusServiceUnavailable && strings.Contains(body, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz: %d %q, want 503 naming %q", code, body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("node self is not registered yet")
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz while waiting: %d %q", code, body)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "self"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("node self has no podCIDR yet (kube-controller-manager --allocate-node-cidrs assigns it)")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunKube: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RunKube did not return after its context ended")
	}
	l2, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("the metrics address is still taken after RunKube returned: %v", err)
	}
	l2.Close()
}
