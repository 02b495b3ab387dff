package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/nstest"
)

// TestReadinessStates drives the readiness function through the daemon's
// life: each stage of New, a live uplink failure, and shutdown.
func TestReadinessStates(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	r := readiness{log: zap.New(core)}
	uplinkErr := error(nil)
	probe := func() error { return uplinkErr }
	serving := false
	isServing := func() bool { return serving }
	steps := []struct {
		name string
		do   func()
		want string // "" = ready
	}{
		{"zero", func() {}, "routes not synced"},
		{"routes before uplink", func() { r.routes.Store(true) }, "uplink not created"},
		{"uplink", func() { r.node.Store(&probe) }, "local API not serving"},
		{"api created", func() { r.api.Store(&isServing) }, "local API not serving"},
		{"api serving", func() { serving = true }, "re-attaching recorded pods"},
		{"pods", func() { r.pods.Store(true) }, ""},
		{"uplink down", func() { uplinkErr = errors.New("uplink podr0 is down") }, "uplink podr0 is down"},
		{"uplink back", func() { uplinkErr = nil }, ""},
		{"api stopped", func() { serving = false }, "local API not serving"},
		{"api back", func() { serving = true }, ""},
		{"closing", func() { r.closing.Store(true) }, "shutting down"},
	}
	for _, s := range steps {
		s.do()
		for range 3 { // repeated probes log nothing new
			err := r.check()
			if got := fmt.Sprint(err); s.want == "" && err != nil || s.want != "" && got != s.want {
				t.Fatalf("%s: check() = %v, want %q", s.name, err, s.want)
			}
		}
	}
	// One log entry per change of the answer; a ready daemon that becomes
	// unready (except by shutting down) warns.
	var got []string
	for _, e := range logs.All() {
		msg := e.Level.String() + " " + e.Message
		if err, ok := e.ContextMap()["error"]; ok {
			msg += ": " + fmt.Sprint(err)
		}
		got = append(got, msg)
	}
	want := []string{
		"info readiness: not ready: routes not synced",
		"info readiness: not ready: uplink not created",
		"info readiness: not ready: local API not serving",
		"info readiness: not ready: re-attaching recorded pods",
		"info readiness: ready",
		"warn readiness: not ready: uplink podr0 is down",
		"info readiness: ready",
		"warn readiness: not ready: local API not serving",
		"info readiness: ready",
		"info readiness: not ready: shutting down",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAPIMetricsBoundedLabels(t *testing.T) {
	m := newAPIMetrics()
	m.observe(api.OpAttach, "", time.Millisecond)
	m.observe(api.OpAttach, api.CodeConflict, time.Millisecond)
	m.observe(api.OpUnknown, api.CodeBadRequest, time.Millisecond)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.requests, m.latency)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "podrouter_api_requests_total" {
			continue
		}
		for _, mm := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range mm.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			series[l["op"]+"/"+l["result"]] = mm.GetCounter().GetValue()
		}
	}
	// Every known op starts at zero successes (so rate() works from the
	// first scrape), and nothing else appears but what was observed.
	if len(series) != len(api.Ops())+2 {
		t.Errorf("series %v: want %d", series, len(api.Ops())+2)
	}
	for k, want := range map[string]float64{"attach/ok": 1, "attach/conflict": 1, "unknown/bad-request": 1, "detach/ok": 0, "capture/ok": 0} {
		if series[k] != want {
			t.Errorf("%s = %v, want %v", k, series[k], want)
		}
	}
}

// TestDaemonReadyz runs a daemon in a throwaway netns (root) and holds its
// start before the route sync: /readyz is 503 there, 200 once New is done,
// 503 while the uplink is down, and "shutting down" after Close.
func TestDaemonReadyz(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t)
	dir := t.TempDir()
	uid := uint32(0)
	reached := make(chan *Daemon, 1)
	release := make(chan struct{})
	x := 1 + rand.IntN(250)
	cfg := Config{
		PodCIDR:     netip.MustParsePrefix(fmt.Sprintf("10.252.%d.0/24", x)),
		StateDir:    filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "run", "api.sock"),
		Uplink:      fmt.Sprintf("prd%05x", rand.IntN(1<<20)),
		APIAllowUID: &uid,
		MetricsAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Logger:      zaptest.NewLogger(t),
		hookBeforeRoutes: func(d *Daemon) {
			reached <- d
			<-release
		},
	}
	type result struct {
		d   *Daemon
		err error
	}
	done := make(chan result, 1)
	go func() {
		var d *Daemon
		err := ns.Do(func() error {
			var err error
			d, err = New(cfg)
			return err
		})
		done <- result{d, err}
	}()
	var d *Daemon
	select {
	case d = <-reached:
	case r := <-done:
		t.Fatalf("New returned before the hook: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("New never reached the route sync")
	}
	released := false
	defer func() {
		if !released {
			close(release)
			if r := <-done; r.d != nil {
				_ = r.d.Close()
			}
		}
	}()
	c := ns.HTTPClient()
	base := "http://" + d.MetricsAddr().String()
	if code, body := nstest.HTTPGet(t, c, base+"/readyz"); code != 503 || !strings.Contains(body, "routes not synced") {
		t.Fatalf("/readyz before the route sync: %d %q", code, body)
	}
	if code, body := nstest.HTTPGet(t, c, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	fams := scrapeURL(t, c, base+"/metrics")
	if v := gauge(fams, "podrouter_ready"); v != 0 {
		t.Errorf("podrouter_ready before the route sync = %v", v)
	}

	close(release)
	released = true
	r := <-done
	if r.err != nil {
		t.Fatalf("New: %v", r.err)
	}
	defer r.d.Close()
	if code, body := nstest.HTTPGet(t, c, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz after New: %d %q", code, body)
	}
	fams = scrapeURL(t, c, base+"/metrics")
	if v := gauge(fams, "podrouter_ready"); v != 1 {
		t.Errorf("podrouter_ready after New = %v", v)
	}
	if v := gauge(fams, "podrouter_routes"); v != 2 { // 0.0.0.0/0 -> uplink, and the podCIDR (unreachable)
		t.Errorf("podrouter_routes = %v, want 2", v)
	}

	// The probe sees the uplink as it is now.
	ns.Run(t, "ip", "link", "set", cfg.Uplink, "down")
	if code, body := nstest.HTTPGet(t, c, base+"/readyz"); code != 503 || !strings.Contains(body, "uplink "+cfg.Uplink+" is down") {
		t.Errorf("/readyz with the uplink down: %d %q", code, body)
	}
	st, err := (handler{d}).Status(context.Background())
	if err != nil || !st.Ready || !strings.Contains(st.NotReady, "is down") {
		t.Errorf("status with the uplink down: ready %v, notReady %q, %v", st.Ready, st.NotReady, err)
	}
	ns.Run(t, "ip", "link", "set", cfg.Uplink, "up")
	if code, body := nstest.HTTPGet(t, c, base+"/readyz"); code != 200 {
		t.Errorf("/readyz with the uplink up again: %d %q", code, body)
	}

	if err := r.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Ready(); !errors.Is(err, errShuttingDown) {
		t.Errorf("Ready after Close: %v", err)
	}
	if _, err := c.Get(base + "/readyz"); err == nil {
		t.Error("metrics server still answers after Close")
	}
}

func scrapeURL(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// gauge returns the first series of an unlabelled gauge (-1 when absent).
func gauge(fams map[string]*dto.MetricFamily, name string) float64 {
	f, ok := fams[name]
	if !ok || len(f.GetMetric()) == 0 {
		return -1
	}
	return f.GetMetric()[0].GetGauge().GetValue()
}
