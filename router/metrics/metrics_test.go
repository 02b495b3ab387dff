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
	reg, err := NewRegistry(e)
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
