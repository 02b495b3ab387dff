package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podrouter/podrouter/router/version"
)

// NewBuildInfo returns the podrouter_build_info gauge: 1, labelled with
// the build's version, commit and Go version (router/version), the usual
// way to join a build onto any other series (`* on(instance)
// group_left(version) podrouter_build_info`) or count a rollout's nodes
// by version.
func NewBuildInfo(in version.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        ns + "_build_info",
		Help:        "podrouter's build: version and commit as stamped by the build (devel and the VCS commit when unstamped), Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": in.Version, "commit": in.Commit, "goversion": in.GoVersion},
	})
	g.Set(1)
	return g
}
