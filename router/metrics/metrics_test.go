package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	podCIDR = netip.MustParsePrefix("10.244.1.0/24")
	addrA   = netip.MustParseAddr("10.244.1.2")
	addrB   = netip.MustParseAddr("10.244.1.3")
)

// udp4 builds an IPv4/UDP packet with n payload bytes.
func udp4(src, dst netip.Addr, ttl uint8, n int) []byte {
	b := make([]byte, packet.IPv4MinLen+packet.UDPLen+n)
	packet.IPv4(b).Encode(packet.IPv4Fields{TotalLen: uint16(len(b)), TTL: ttl, Protocol: packet.ProtoUDP, Src: src, Dst: dst})
	u := b[packet.IPv4MinLen:]
	u[0], u[1], u[2], u[3] = 0x03, 0xe8, 0x07, 0xd0
	u[4], u[5] = byte((packet.UDPLen+n)>>8), byte(packet.UDPLen+n)
	return b
}

func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	return fams
}

// value returns the value of the series of family name whose labels
// include every pair in want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

// newServer serves e's metrics; it is ready (its readiness check passes)
// once ready is set, and "routes not synced" until then.
// newServer serves e's metrics; /readyz follows ready, and reports stale
// as Degraded (200 with a reason).
func newServer(t *testing.T, e *engine.Engine) (srv *Server, ready, stale *atomic.Bool) {
	t.Helper()
	reg, err := NewRegistry(e, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ready, stale = new(atomic.Bool), new(atomic.Bool)
	srv = NewServer(reg, func() error {
		if !ready.Load() {
			return errors.New("routes not synced")
		}
		if stale.Load() {
			return fmt.Errorf("wrapped: %w", Degraded{Reason: "stale: API server unreachable"})
		}
		return nil
	}, zaptest.NewLogger(t))
	return srv, ready, stale
}

func TestMetricsFollowTraffic(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ha, da := linktest.Pipe(256, 2000, 64)
	hb, db := linktest.Pipe(256, 2000, 64)
	if _, err := e.AddPort(da, engine.PortConfig{Name: "pod-a", Kind: engine.KindPod, MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(db, engine.PortConfig{Name: "pod-b", Kind: engine.KindPod, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	srv, _, _ := newServer(t, e)
	h := srv.Handler()

	before := scrape(t, h)
	base := value(t, before, "podrouter_port_packets_total", map[string]string{"port": "pod-a", "direction": "rx"})

	// 10 packets a -> b (delivered), 3 spoofed, 2 to an empty podCIDR
	// address (dropped, ICMP host unreachable back to a).
	const sent, spoofed, unrouted = 10, 3, 2
	for range sent {
		_, _ = ha.Write([][]byte{udp4(addrA, addrB, 64, 100)}, 0)
	}
	for range spoofed {
		_, _ = ha.Write([][]byte{udp4(addrB, addrA, 64, 100)}, 0)
	}
	for range unrouted {
		_, _ = ha.Write([][]byte{udp4(addrA, netip.MustParseAddr("10.244.1.99"), 64, 100)}, 0)
	}
	bufs, sizes := [][]byte{make([]byte, 2000)}, []int{0}
	for range sent {
		if _, err := hb.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	for range unrouted {
		if _, err := ha.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	// The engine counts a batch after forwarding it (a port's tx after
	// its Write returned, so after the reader here had the packets): wait
	// for the last of each.
	deadline := time.Now().Add(5 * time.Second)
	var fams map[string]*dto.MetricFamily
	for {
		fams = scrape(t, h)
		if (value(t, fams, "podrouter_port_packets_total", map[string]string{"port": "pod-a", "direction": "rx"})-base == sent+spoofed+unrouted &&
			value(t, fams, "podrouter_port_packets_total", map[string]string{"port": "pod-a", "direction": "tx"}) == unrouted &&
			value(t, fams, "podrouter_port_packets_total", map[string]string{"port": "pod-b", "direction": "tx"}) == sent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"podrouter_port_packets_total", map[string]string{"port": "pod-a", "direction": "rx", "kind": "pod"}, sent + spoofed + unrouted},
		{"podrouter_port_packets_total", map[string]string{"port": "pod-b", "direction": "tx"}, sent},
		{"podrouter_port_bytes_total", map[string]string{"port": "pod-b", "direction": "tx"}, sent * 128},
		{"podrouter_port_packets_total", map[string]string{"port": "pod-a", "direction": "tx"}, unrouted},
		{"podrouter_port_drops_total", map[string]string{"port": "pod-a", "reason": "spoofed-source"}, spoofed},
		{"podrouter_port_drops_total", map[string]string{"port": "pod-a", "reason": "no-route"}, unrouted},
		{"podrouter_port_drops_total", map[string]string{"port": "pod-b", "reason": "no-route"}, 0},
		{"podrouter_icmp_errors_total", map[string]string{"result": "sent"}, unrouted},
		{"podrouter_ports", map[string]string{"kind": "pod"}, 2},
		{"podrouter_routes", nil, 3}, // two pod host routes + the podCIDR
	}
	for _, c := range checks {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("runtime metrics missing")
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv, ready, stale := newServer(t, e)
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "routes not synced") {
		t.Fatalf("/readyz before sync: %d %q", code, body)
	}
	ready.Store(true)
	if code, body := get("/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("/readyz after sync: %d %q", code, body)
	}
	// Degraded: ready (200), and the body says why it is degraded.
	stale.Store(true)
	if code, body := get("/readyz"); code != 200 || body != "ok: stale: API server unreachable\n" {
		t.Fatalf("/readyz degraded: %d %q", code, body)
	}
}

// series counts the series of family name.
func series(fams map[string]*dto.MetricFamily, name string) int {
	if f, ok := fams[name]; ok {
		return len(f.GetMetric())
	}
	return 0
}

// TestSeriesBoundedByNode: a node's series do not grow with the cluster:
// peers are one summed set (monotonic when a peer goes) unless PerPeer;
// pod ports are labelled with their namespace and pod, not container IDs.
func TestSeriesBoundedByNode(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, da := linktest.Pipe(16, 2000, 16)
	podPort, err := e.AddPort(da, engine.PortConfig{Name: "4f3c9a1b2e/eth0", Kind: engine.KindPod, MTU: 1500, Addrs: []netip.Addr{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	_, db := linktest.Pipe(16, 2000, 16)
	if _, err := e.AddPort(db, engine.PortConfig{Name: "77aa/eth0", Kind: engine.KindPod, MTU: 1500, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	const peers = 40
	var peerPorts []*engine.Port
	var peerHosts []*linktest.End
	for i := range peers {
		h, d := linktest.Pipe(16, 2000, 16)
		p, err := e.AddPort(d, engine.PortConfig{Name: fmt.Sprintf("node-%d", i), Kind: engine.KindPeer, MTU: 1500})
		if err != nil {
			t.Fatal(err)
		}
		peerPorts, peerHosts = append(peerPorts, p), append(peerHosts, h)
	}
	pods := func() map[*engine.Port]PodPort {
		return map[*engine.Port]PodPort{podPort: {Namespace: "shop", Pod: "cart-7d9f", Interface: "eth0"}}
	}
	scrapeWith := func(c *Collector) map[string]*dto.MetricFamily {
		reg := prometheus.NewRegistry()
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
		return scrape(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	agg := NewCollector(e, Options{Pods: pods})

	// Every peer sends 3 packets for no pod of this node: rx counted,
	// dropped (not-local: a peer's traffic must end here).
	for _, h := range peerHosts {
		for range 3 {
			_, _ = h.Write([][]byte{udp4(netip.MustParseAddr("10.244.2.5"), netip.MustParseAddr("10.99.0.1"), 64, 100)}, 0)
		}
	}
	var fams map[string]*dto.MetricFamily
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fams = scrapeWith(agg)
		if value(t, fams, "podrouter_port_packets_total", map[string]string{"port": PeersPort, "direction": "rx"}) == 3*peers || time.Now().After(deadline) {
			break
		}
	}
	// 2 pods + the peers' sum, rx and tx.
	if n := series(fams, "podrouter_port_packets_total"); n != 3*2 {
		t.Errorf("%d packet series with %d peers, want 6 (two pods and the peers' sum)", n, peers)
	}
	if got := value(t, fams, "podrouter_port_packets_total", map[string]string{"port": PeersPort, "kind": "peer", "direction": "rx"}); got != 3*peers {
		t.Errorf("peers' rx %v, want %d", got, 3*peers)
	}
	if got := value(t, fams, "podrouter_port_drops_total", map[string]string{"port": PeersPort, "reason": "not-local"}); got != 3*peers {
		t.Errorf("peers' not-local drops %v, want %d", got, 3*peers)
	}
	// The named pod: namespace, pod, its interface; no container ID.
	value(t, fams, "podrouter_port_packets_total", map[string]string{"namespace": "shop", "pod": "cart-7d9f", "port": "eth0", "kind": "pod", "direction": "rx"})
	for _, m := range fams["podrouter_port_packets_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if strings.Contains(l.GetValue(), "4f3c9a1b2e") {
				t.Errorf("series labelled with the named pod's container ID: %v", m.GetLabel())
			}
		}
	}
	// An unnamed pod (a runtime without CNI_ARGS) keeps its port name.
	value(t, fams, "podrouter_port_packets_total", map[string]string{"port": "77aa/eth0", "namespace": "", "pod": ""})

	// A peer goes: the sum does not go down (a counter reset to Prometheus).
	if err := e.RemovePort(peerPorts[0]); err != nil {
		t.Fatal(err)
	}
	fams = scrapeWith(agg)
	if got := value(t, fams, "podrouter_port_packets_total", map[string]string{"port": PeersPort, "direction": "rx"}); got != 3*peers {
		t.Errorf("peers' rx %v after a peer left, want still %d", got, 3*peers)
	}

	// Per peer on request.
	fams = scrapeWith(NewCollector(e, Options{PerPeer: true, Pods: pods}))
	if n := series(fams, "podrouter_port_packets_total"); n != 2*(2+peers-1) {
		t.Errorf("%d packet series per peer, want %d", n, 2*(2+peers-1))
	}
	if got := value(t, fams, "podrouter_port_packets_total", map[string]string{"port": "node-7", "kind": "peer", "direction": "rx"}); got != 3 {
		t.Errorf("node-7 rx %v, want 3", got)
	}
}

// TestOffloadSeriesOneQuantityEach: every offload family counts one kind
// of thing (super-packets, segments, checksums), never mixed under one
// label.
func TestOffloadSeriesOneQuantityEach(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	reg, err := NewRegistry(e, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if _, ok := fams["podrouter_offload_total"]; ok {
		t.Error("podrouter_offload_total still mixes super-packets, segments and checksums")
	}
	value(t, fams, "podrouter_offload_superpackets_total", map[string]string{"result": "whole"})
	value(t, fams, "podrouter_offload_superpackets_total", map[string]string{"result": "segmented"})
	value(t, fams, "podrouter_offload_segments_total", nil)
	value(t, fams, "podrouter_offload_checksums_total", nil)
}
