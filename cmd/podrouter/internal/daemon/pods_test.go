package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/metrics"
)

// TestReattachKeepsOldUntilNewWorks: a repeated attach of the same
// container that fails (here: it claims another pod's address) leaves the
// first attachment attached, listed and recorded; one that works replaces
// it in one step.
func TestReattachKeepsOldUntilNewWorks(t *testing.T) {
	log := zaptest.NewLogger(t)
	e, err := engine.New(engine.Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p := &pods{eng: e, store: st, log: log, byID: map[api.AttachmentID]*pod{}}
	req := func(cid string, addrs ...string) api.AttachRequest {
		r := api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: cid, IfName: "eth0"}, Netns: "/run/netns/" + cid, MTU: 1500,
			MAC: api.MAC{2, 0, 0, 0, 0, cid[0]}}
		for _, a := range addrs {
			r.Addrs = append(r.Addrs, netip.MustParseAddr(a))
		}
		return r
	}
	attach := func(r api.AttachRequest) (*pod, error) {
		_, dev := linktest.Pipe(16, 2048, 8)
		return p.attach(r, dev)
	}
	a, err := attach(req("aaa", "10.244.1.5"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attach(req("bbb", "10.244.1.6")); err != nil {
		t.Fatal(err)
	}
	routed := func(addr string) *engine.Port {
		nh, ok := e.Routes().Lookup(netip.MustParseAddr(addr))
		if !ok {
			return nil
		}
		return e.PortByIndex(nh.Port)
	}
	// The same container again, claiming bbb's address: refused, a stays.
	if _, err := attach(req("aaa", "10.244.1.5", "10.244.1.6")); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("conflicting re-attach: %v", err)
	}
	if p.byID[a.rec.AttachmentID] != a || a.port == nil || routed("10.244.1.5") != a.port {
		t.Fatal("a failed re-attach tore down the old attachment")
	}
	recs, bad, err := st.load()
	if err != nil || len(recs) != 2 || len(bad) != 0 {
		t.Fatalf("records %v, bad %v, %v", recs, bad, err)
	}
	for _, r := range recs {
		if r.AttachmentID == a.rec.AttachmentID && len(r.Addrs) != 1 {
			t.Fatalf("a's record now %v, want the old one", r.Addrs)
		}
	}
	// A working re-attach replaces it.
	a2, err := attach(req("aaa", "10.244.1.5"))
	if err != nil {
		t.Fatal(err)
	}
	if p.byID[a.rec.AttachmentID] != a2 || routed("10.244.1.5") != a2.port || a.port != nil {
		t.Fatal("re-attach did not replace the old attachment")
	}
	if n := len(e.Ports()); n != 2 {
		t.Fatalf("%d ports, want 2", n)
	}
}

// TestStoreLongContainerID: a container ID too long for a file name (the
// API takes up to 1024 bytes) is recorded, loaded and removed all the same.
func TestStoreLongContainerID(t *testing.T) {
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, n := range []int{64, 180, 1024} {
		cid := strings.Repeat("c", n)
		r := record{AttachRequest: api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: cid, IfName: "eth0"},
			Netns: "/run/netns/x", MTU: 1500, MAC: api.MAC{2, 0, 0, 0, 0, 1}, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}}
		if err := st.put(r); err != nil {
			t.Fatalf("%d-byte ID: put: %v", n, err)
		}
		recs, bad, err := st.load()
		if err != nil || len(bad) != 0 || len(recs) != 1 || recs[0].AttachmentID != r.AttachmentID {
			t.Fatalf("%d-byte ID: load %d records, bad %v, %v", n, len(recs), bad, err)
		}
		if err := st.remove(r.AttachmentID); err != nil {
			t.Fatalf("%d-byte ID: remove: %v", n, err)
		}
		if recs, _, _ := st.load(); len(recs) != 0 {
			t.Fatalf("%d-byte ID: record left after remove", n)
		}
	}
}

// TestPodPortsLabelledByPod: the pod the CNI plugin named (CNI_ARGS) labels
// its port's metrics, and is kept in the record, so a re-attach after a
// restart labels it the same.
func TestPodPortsLabelledByPod(t *testing.T) {
	log := zaptest.NewLogger(t)
	e, err := engine.New(engine.Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	dir := t.TempDir()
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := &pods{eng: e, store: st, log: log, byID: map[api.AttachmentID]*pod{}}
	req := api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: "4f3c9a1b2e", IfName: "eth0"}, Netns: "/run/netns/x", MTU: 1500,
		MAC: api.MAC{2, 0, 0, 0, 0, 9}, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Pod: api.PodRef{Namespace: "shop", Name: "cart-7d9f"}}
	_, dev := linktest.Pipe(16, 2048, 8)
	pd, err := p.attach(req, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := metrics.PodPort{Namespace: "shop", Pod: "cart-7d9f", Interface: "eth0"}
	if got := p.metricPorts()[pd.port]; got != want {
		t.Fatalf("metricPorts = %+v, want %+v", got, want)
	}
	_ = st.Close()
	st, err = openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	recs, bad, err := st.load()
	if err != nil || len(bad) != 0 || len(recs) != 1 || recs[0].Pod != req.Pod {
		t.Fatalf("records after a restart: %+v, bad %v, %v; want the pod %v kept", recs, bad, err, req.Pod)
	}
}
