// Package metrics exposes the engine's counters to Prometheus and serves
// the node agent's HTTP endpoints: /metrics, /healthz (the process is
// alive) and /readyz (the agent is ready to carry traffic).
//
// Design notes: nothing here touches the data path. The collector reads the
// engine's atomic counters when scraped (a consistent-enough snapshot per
// port), so metrics cost the forwarding loop nothing. Label cardinality is
// bounded by the node: one series set per port (pods on this node, the
// uplink, peers) and per drop reason.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/version"
)

const ns = "podrouter"

var (
	descPackets = prometheus.NewDesc(ns+"_port_packets_total", "Packets through a port, by direction (rx: from the port's host into the engine; tx: to it).", []string{"port", "kind", "direction"}, nil)
	descBytes   = prometheus.NewDesc(ns+"_port_bytes_total", "Bytes through a port, by direction.", []string{"port", "kind", "direction"}, nil)
	descDrops   = prometheus.NewDesc(ns+"_port_drops_total", "Packets dropped on arrival at a port, by reason.", []string{"port", "kind", "reason"}, nil)
	descPorts   = prometheus.NewDesc(ns+"_ports", "Attached ports, by kind.", []string{"kind"}, nil)
	descRoutes  = prometheus.NewDesc(ns+"_routes", "Routes in the current table snapshot.", nil, nil)
	descICMP    = prometheus.NewDesc(ns+"_icmp_errors_total", "ICMP errors the engine originated (sent), suppressed by its rate limit (ratelimited), or made but could not route (undeliverable).", []string{"result"}, nil)
	descOffload = prometheus.NewDesc(ns+"_offload_total", "Offload work: super-packets passed whole, super-packets segmented in software, the segments made, partial checksums finished.", []string{"op"}, nil)
)

// Collector is a prometheus.Collector over an engine.
type Collector struct {
	e *engine.Engine
}

// NewCollector returns a collector reading e's counters at scrape time.
func NewCollector(e *engine.Engine) *Collector { return &Collector{e: e} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descPorts, descRoutes, descICMP, descOffload} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	kinds := map[string]int{}
	for _, p := range c.e.Ports() {
		s := p.Stats()
		name, kind := p.Name(), p.Config().Kind.String()
		kinds[kind]++
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.RxPackets), name, kind, "rx")
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.TxPackets), name, kind, "tx")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.RxBytes), name, kind, "rx")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.TxBytes), name, kind, "tx")
		for _, r := range engine.DropReasons() {
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.Drops[r]), name, kind, r.String())
		}
	}
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(descPorts, prometheus.GaugeValue, float64(n), k)
	}
	ch <- prometheus.MustNewConstMetric(descRoutes, prometheus.GaugeValue, float64(c.e.Routes().Len()))
	sent, limited := c.e.ICMPStats()
	ch <- prometheus.MustNewConstMetric(descICMP, prometheus.CounterValue, float64(sent), "sent")
	ch <- prometheus.MustNewConstMetric(descICMP, prometheus.CounterValue, float64(limited), "ratelimited")
	ch <- prometheus.MustNewConstMetric(descICMP, prometheus.CounterValue, float64(c.e.OriginatedDrops()), "undeliverable")
	o := c.e.OffloadStats()
	ch <- prometheus.MustNewConstMetric(descOffload, prometheus.CounterValue, float64(o.SuperPackets), "superpackets")
	ch <- prometheus.MustNewConstMetric(descOffload, prometheus.CounterValue, float64(o.Segmented), "segmented")
	ch <- prometheus.MustNewConstMetric(descOffload, prometheus.CounterValue, float64(o.Segments), "segments")
	ch <- prometheus.MustNewConstMetric(descOffload, prometheus.CounterValue, float64(o.ChecksumsFilled), "checksums")
}

// NewRegistry returns a registry with the engine collector, the build info
// (podrouter_build_info), the Go runtime
// and process collectors, and any extra collectors (CNI operations,
// conntrack, egress, ...).
func NewRegistry(e *engine.Engine, extra ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs := append([]prometheus.Collector{
		NewCollector(e),
		NewBuildInfo(version.Get()),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}, extra...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// Degraded is what a ready func returns when the agent is ready but runs
// degraded (e.g. on a stale cluster state): /readyz answers 200 with
// "ok: " and the reason, so probes pass and an operator sees why.
type Degraded struct{ Reason string }

func (d Degraded) Error() string { return d.Reason }

// Server serves /metrics, /healthz and /readyz.
type Server struct {
	srv *http.Server
	log *zap.Logger
}

// NewServer returns a server for reg. ready reports why the agent is not
// ready (routes not synced, uplink down, API not serving), a Degraded when
// it is ready but degraded, or nil.
func NewServer(reg *prometheus.Registry, ready func() error, log *zap.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		err := ready()
		var dg Degraded
		if errors.As(err, &dg) {
			_, _ = w.Write([]byte("ok: " + dg.Reason + "\n"))
			return
		}
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		log: log.Named("metrics"),
	}
}

// Handler returns the server's handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.srv.Handler }

// Serve serves on ln until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Info("serving metrics and health", zap.Stringer("addr", ln.Addr()))
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
