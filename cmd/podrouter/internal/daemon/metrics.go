package daemon

// Operability: the daemon's readiness and its own metrics, served with the
// engine's by router/metrics.
//
//	New: node ─► metrics server (ready: "routes not synced") ─► node
//	     routes (routes) ─► API Serve (api) ─► re-attach (pods) ─► ready
//	Close: closing ("shutting down") ─► API, ports, engine ─► metrics server
//
// Design notes. Readiness is a function of flags that New sets as each stage
// completes, plus one live probe of the node at probe time (an operator
// can set podr0 down, or delete it, under a running daemon; the egress
// port can be detached). The metrics
// server starts right after the engine, before the routes, so /readyz
// answers 503 until the first route sync, and stops last, so it answers 503
// while the daemon shuts down. Nothing here runs per packet: the engine's
// counters are read at scrape time, and the API counters move once per
// request.

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/metrics"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/underlay"
)

// Reasons readiness gives.
var (
	errShuttingDown = errors.New("shutting down")
	errNoRoutes     = errors.New("routes not synced")
	errNoAPI        = errors.New("local API not serving")
	errReattaching  = errors.New("re-attaching recorded pods")
)

// readiness is what /readyz reports. Its zero value is "routes not synced";
// New sets each flag as the stage completes, Close sets closing first.
type readiness struct {
	routes, pods, closing atomic.Bool
	// api reports whether the local API accepts connections (nil: not
	// created yet).
	api atomic.Pointer[func() bool]
	// node probes the node: its uplink and its egress (nil: not built
	// yet).
	node atomic.Pointer[func() error]

	// stale is why the daemon runs on a persisted cluster state (Kubernetes
	// mode, API server unreachable at start), nil or "" when it does not.
	// It does not make the daemon unready: its pods forward.
	stale atomic.Pointer[string]

	log     *zap.Logger
	lastErr atomic.Pointer[string] // last reason reported, "" = ready
}

// readyz is what /readyz serves: check's answer, or when ready but stale,
// a metrics.Degraded naming the stale state (200 "ok: stale: ...").
func (r *readiness) readyz() error {
	if err := r.check(); err != nil {
		return err
	}
	if s := r.stale.Load(); s != nil && *s != "" {
		return metrics.Degraded{Reason: "stale: " + *s}
	}
	return nil
}

// setStale records why the daemon runs on a stale state ("": not any
// more), logging each change.
func (r *readiness) setStale(why string) {
	prev := r.stale.Swap(&why)
	if prev != nil && *prev == why || prev == nil && why == "" {
		return
	}
	if r.log == nil {
		return
	}
	if why == "" {
		r.log.Info("readiness: cluster state fresh again")
	} else {
		r.log.Warn("readiness: running on a stale cluster state", zap.String("stale", why))
	}
}

// check returns nil when the daemon is ready to carry traffic, else why
// not. It logs each change of the answer (info; warn when a ready daemon
// becomes unready other than by shutting down).
func (r *readiness) check() error {
	err := r.reason()
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if prev := r.lastErr.Swap(&msg); r.log != nil && (prev == nil || *prev != msg) {
		switch {
		case err == nil:
			r.log.Info("readiness: ready")
		case prev != nil && *prev == "" && !errors.Is(err, errShuttingDown):
			r.log.Warn("readiness: not ready", zap.Error(err))
		default:
			r.log.Info("readiness: not ready", zap.Error(err))
		}
	}
	return err
}

func (r *readiness) reason() error {
	if r.closing.Load() {
		return errShuttingDown
	}
	if !r.routes.Load() {
		return errNoRoutes
	}
	if probe := r.node.Load(); probe == nil {
		return errors.New("uplink not created")
	} else if err := (*probe)(); err != nil {
		return err
	}
	if serving := r.api.Load(); serving == nil || !(*serving)() {
		return errNoAPI
	}
	if !r.pods.Load() {
		return errReattaching
	}
	return nil
}

// reattachStats is the outcome of the start's re-attach.
type reattachStats struct {
	ok, failed int
	took       time.Duration
}

var (
	descReady = prometheus.NewDesc("podrouter_ready",
		"1 when the daemon is ready (its /readyz passes), else 0.", nil, nil)
	descStale = prometheus.NewDesc("podrouter_kube_stale",
		"1 while the daemon runs on the cluster state persisted by an earlier run (API server unreachable at start), else 0.", nil, nil)
	descAttachments = prometheus.NewDesc("podrouter_attachments",
		"Recorded pod attachments: attached to the engine, or recorded but unattached (their re-attach failed).", []string{"state"}, nil)
	descReattached = prometheus.NewDesc("podrouter_reattach_pods",
		"Recorded pods the daemon re-attached at its start (ok) or could not (failed).", []string{"result"}, nil)
	descReattachTime = prometheus.NewDesc("podrouter_reattach_seconds",
		"How long re-attaching the recorded pods took at the daemon's start.", nil, nil)
	descUnderlayDrops = prometheus.NewDesc("podrouter_underlay_drops_total",
		"Datagrams and packets the underlay dropped, by reason (unknown-sender, foreign-source, bad-vni, short, bad-checksum, ...).", []string{"reason"}, nil)
	descUnderlayPeerDrops = prometheus.NewDesc("podrouter_underlay_peer_drops_total",
		"Underlay drops counted on a peer node, by peer and reason (non-zero reasons only; with --metrics-per-peer).", []string{"peer", "reason"}, nil)
)

// apiMetrics counts the local API's requests (the CNI plugin's attach and
// detach, the CLI's reads and captures) by op and result. Both labels take
// a fixed set of values: api.Ops plus "unknown", and "ok" plus the API's
// error codes.
type apiMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newAPIMetrics() *apiMetrics {
	m := &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podrouter_api_requests_total",
			Help: "Local API requests (CNI attach/detach, CLI reads, captures) by op and result (ok, or the error code).",
		}, []string{"op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podrouter_api_request_duration_seconds",
			Help:    "Local API request time from accept to reply, by op (a capture's includes its duration).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}, []string{"op"}),
	}
	for _, op := range api.Ops() {
		m.requests.WithLabelValues(string(op), "ok")
		m.latency.WithLabelValues(string(op))
	}
	return m
}

// observe is the api.ServerConfig.Observe hook.
func (m *apiMetrics) observe(op api.Op, code api.Code, elapsed time.Duration) {
	result := "ok"
	if code != "" {
		result = string(code)
	}
	m.requests.WithLabelValues(string(op), result).Inc()
	m.latency.WithLabelValues(string(op)).Observe(elapsed.Seconds())
}

// collector reads the daemon's state at scrape time.
type collector struct{ d *Daemon }

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descStale, descAttachments, descReattached, descReattachTime, descUnderlayDrops, descUnderlayPeerDrops} {
		ch <- d
	}
	node.DescribeEgress(ch)
	describeServices(ch)
	describePolicy(ch)
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	ready := 0.0
	if c.d.ready.check() == nil {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
	stale := 0.0
	if s := c.d.ready.stale.Load(); s != nil && *s != "" {
		stale = 1
	}
	ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, stale)
	attached, unattached := c.d.pods.count()
	ch <- prometheus.MustNewConstMetric(descAttachments, prometheus.GaugeValue, float64(attached), "attached")
	ch <- prometheus.MustNewConstMetric(descAttachments, prometheus.GaugeValue, float64(unattached), "unattached")
	if rs := c.d.reattach.Load(); rs != nil {
		ch <- prometheus.MustNewConstMetric(descReattached, prometheus.GaugeValue, float64(rs.ok), "ok")
		ch <- prometheus.MustNewConstMetric(descReattached, prometheus.GaugeValue, float64(rs.failed), "failed")
		ch <- prometheus.MustNewConstMetric(descReattachTime, prometheus.GaugeValue, rs.took.Seconds())
	}
	if eg := c.d.node.Egress(); eg != nil {
		eg.Collect(ch)
	}
	c.d.collectServices(ch)
	c.d.collectPolicy(ch)
	if b := c.d.node.Backend(); b != nil {
		drops := b.Stats().Drops
		for _, r := range underlay.DropReasons() {
			ch <- prometheus.MustNewConstMetric(descUnderlayDrops, prometheus.CounterValue, float64(drops[r]), r.String())
		}
		for _, q := range b.Peers() {
			if !c.d.cfg.MetricsPerPeer {
				break // podrouter_underlay_drops_total has the sum
			}
			ps, ok := b.PeerStats(q.Name)
			if !ok {
				continue
			}
			for r, v := range ps.Drops {
				ch <- prometheus.MustNewConstMetric(descUnderlayPeerDrops, prometheus.CounterValue, float64(v), q.Name, r.String())
			}
		}
	}
}

// count returns how many recorded pods are attached and how many are not.
func (p *pods) count() (attached, unattached int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pd := range p.byID {
		if pd.port != nil {
			attached++
		} else {
			unattached++
		}
	}
	return attached, unattached
}

// metricPorts names the pod of each attached pod port, for the metrics'
// namespace and pod labels (router/metrics Options.Pods).
func (p *pods) metricPorts() map[*engine.Port]metrics.PodPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[*engine.Port]metrics.PodPort, len(p.byID))
	for _, pd := range p.byID {
		if pd.port != nil {
			m[pd.port] = metrics.PodPort{Namespace: pd.rec.Pod.Namespace, Pod: pd.rec.Pod.Name, Interface: pd.rec.IfName}
		}
	}
	return m
}
