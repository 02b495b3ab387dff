package metrics

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/version"
)

// TestBuildInfo: every registry serves podrouter_build_info = 1 with this
// binary's version, commit and Go version (an unstamped test binary says
// devel).
func TestBuildInfo(t *testing.T) {
	e, err := engine.New(engine.Config{PodCIDR: podCIDR, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv, _, _ := newServer(t, e)
	fams := scrape(t, srv.Handler())
	in := version.Get()
	labels := map[string]string{"version": version.Devel, "commit": in.Commit, "goversion": runtime.Version()}
	if v := value(t, fams, "podrouter_build_info", labels); v != 1 {
		t.Errorf("podrouter_build_info%v = %v, want 1", labels, v)
	}
	if n := len(fams["podrouter_build_info"].GetMetric()); n != 1 {
		t.Errorf("%d podrouter_build_info series, want 1", n)
	}
	// A stamped build's labels, exactly.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewBuildInfo(version.Info{Version: "v1.2.3", Commit: "0123abc", GoVersion: "go1.99"}))
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range got {
		if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	if want := `podrouter_build_info{commit="0123abc",goversion="go1.99",version="v1.2.3"} 1`; !strings.Contains(b.String(), want+"\n") || !strings.Contains(b.String(), "# TYPE podrouter_build_info gauge\n") {
		t.Errorf("exposition:\n%s\nwant a gauge and the line %s", b.String(), want)
	}
}
