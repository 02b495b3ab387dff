// Package metrics exposes the engine's counters to Prometheus and serves
// the node agent's HTTP endpoints: /metrics, /healthz (the process is
// alive) and /readyz (the agent is ready to carry traffic).
//
// Design notes: nothing here touches the data path. The collector reads the
// engine's atomic counters when scraped (a consistent-enough snapshot per
// port), so metrics cost the forwarding loop nothing. Label cardinality is
// bounded by the node, whatever the cluster's size, so that a cluster-wide
// Prometheus can scrape every node: one series set per local port (pods on
// this node, labelled with their namespace and pod, the uplink, egress) and
// per drop reason, and one set for all the peer nodes together (per peer
// only when asked: Options.PerPeer).
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/version"
)

const ns = "podrouter"

// Port series labels: port and kind name the port; namespace and pod are a
// pod port's Kubernetes pod (empty for other ports, and for pods whose
// runtime passed no names), and its port label is then its interface in
// the pod (eth0), not its container ID.
var portLabels = []string{"port", "kind", "namespace", "pod"}

var (
	descPackets = prometheus.NewDesc(ns+"_port_packets_total", "Packets through a port, by direction (rx: from the port's host into the engine; tx: to it). Peers are summed into port \"peers\" unless the daemon runs with --metrics-per-peer.", append(portLabels, "direction"), nil)
	descBytes   = prometheus.NewDesc(ns+"_port_bytes_total", "Bytes through a port, by direction.", append(portLabels, "direction"), nil)
	descDrops   = prometheus.NewDesc(ns+"_port_drops_total", "Packets dropped on arrival at a port, by reason.", append(portLabels, "reason"), nil)
	descPorts   = prometheus.NewDesc(ns+"_ports", "Attached ports, by kind.", []string{"kind"}, nil)
	descRoutes  = prometheus.NewDesc(ns+"_routes", "Routes in the current table snapshot.", nil, nil)
	descICMP    = prometheus.NewDesc(ns+"_icmp_errors_total", "ICMP errors the engine originated (sent), suppressed by its rate limit (ratelimited), or made but could not route (undeliverable).", []string{"result"}, nil)
	// Offload: one quantity per series family (super-packets, segments,
	// checksums), so that a sum over a family's labels means something.
	descSuperPackets = prometheus.NewDesc(ns+"_offload_superpackets_total", "Super-packets (TSO/GSO) the engine forwarded, by result: passed whole to a port that takes them (whole), or cut in software (segmented).", []string{"result"}, nil)
	descSegments     = prometheus.NewDesc(ns+"_offload_segments_total", "Packets the engine made by cutting super-packets in software.", nil, nil)
	descChecksums    = prometheus.NewDesc(ns+"_offload_checksums_total", "Packets whose partial (offloaded) checksum the engine finished in software.", nil, nil)
)

// PeersPort is the port label of the peers' summed series.
const PeersPort = "peers"

// PodPort is what the metrics say of a pod's port.
type PodPort struct {
	Namespace, Pod string // from CNI_ARGS; empty when the runtime gave none
	Interface      string // the interface in the pod (CNI_IFNAME)
}

// Options configure a Collector.
type Options struct {
	// PerPeer gives every peer node's port its own series (port: the
	// peer's name). The default sums them into one set (port "peers"), so
	// that a node's series count does not grow with the cluster: N nodes
	// each reporting N peers is N² series for a cluster-wide Prometheus.
	PerPeer bool
	// Pods, when set, is called once per scrape and names the pod of each
	// pod port; a pod port it does not name keeps its port name (the
	// attachment's containerID/ifName) and empty pod labels.
	Pods func() map[*engine.Port]PodPort
}

// Collector is a prometheus.Collector over an engine.
type Collector struct {
	e    *engine.Engine
	opts Options

	// The peers' sum stays monotonic when a peer goes: its counts at the
	// last scrape move into gone (what it counted between that scrape and
	// its removal is lost: peers come and go rarely).
	mu   sync.Mutex
	seen map[*engine.Port]engine.PortStats
	gone engine.PortStats
}

// NewCollector returns a collector reading e's counters at scrape time.
func NewCollector(e *engine.Engine, opts Options) *Collector {
	return &Collector{e: e, opts: opts, seen: map[*engine.Port]engine.PortStats{}, gone: engine.PortStats{Drops: map[engine.DropReason]uint64{}}}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descPorts, descRoutes, descICMP, descSuperPackets, descSegments, descChecksums} {
		ch <- d
	}
}

// portKey is one set of port series; ports that share a key are summed
// (two sandboxes of one pod while the old one is torn down).
type portKey struct{ port, kind, namespace, pod string }

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var pods map[*engine.Port]PodPort
	if c.opts.Pods != nil {
		pods = c.opts.Pods()
	}
	kinds := map[string]int{}
	sums := map[portKey]*engine.PortStats{}
	var order []portKey
	add := func(k portKey, s engine.PortStats) {
		t, ok := sums[k]
		if !ok {
			t = &engine.PortStats{Drops: map[engine.DropReason]uint64{}}
			sums[k] = t
			order = append(order, k)
		}
		addStats(t, s)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	live := map[*engine.Port]bool{}
	peers := false
	for _, p := range c.e.Ports() {
		s := p.Stats()
		kind := p.Config().Kind
		kinds[kind.String()]++
		k := portKey{port: p.Name(), kind: kind.String()}
		switch kind {
		case engine.KindPeer:
			if !c.opts.PerPeer {
				live[p] = true
				c.seen[p] = s
				peers = true
				continue // summed below
			}
		case engine.KindPod:
			if pp, ok := pods[p]; ok && pp.Pod != "" {
				k.port, k.namespace, k.pod = pp.Interface, pp.Namespace, pp.Pod
			}
		}
		add(k, s)
	}
	if !c.opts.PerPeer {
		for p, s := range c.seen {
			if !live[p] {
				addStats(&c.gone, s)
				delete(c.seen, p)
			}
		}
		if peers || c.gone.RxPackets+c.gone.TxPackets > 0 {
			k := portKey{port: PeersPort, kind: engine.KindPeer.String()}
			add(k, c.gone)
			for _, s := range c.seen {
				add(k, s)
			}
		}
	}
	for _, k := range order {
		s := sums[k]
		l := []string{k.port, k.kind, k.namespace, k.pod}
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.RxPackets), append(l, "rx")...)
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.TxPackets), append(l, "tx")...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.RxBytes), append(l, "rx")...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.TxBytes), append(l, "tx")...)
		for _, r := range engine.DropReasons() {
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.Drops[r]), append(l, r.String())...)
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
	ch <- prometheus.MustNewConstMetric(descSuperPackets, prometheus.CounterValue, float64(o.SuperPackets), "whole")
	ch <- prometheus.MustNewConstMetric(descSuperPackets, prometheus.CounterValue, float64(o.Segmented), "segmented")
	ch <- prometheus.MustNewConstMetric(descSegments, prometheus.CounterValue, float64(o.Segments))
	ch <- prometheus.MustNewConstMetric(descChecksums, prometheus.CounterValue, float64(o.ChecksumsFilled))
}

func addStats(t *engine.PortStats, s engine.PortStats) {
	t.RxPackets += s.RxPackets
	t.RxBytes += s.RxBytes
	t.TxPackets += s.TxPackets
	t.TxBytes += s.TxBytes
	for r, v := range s.Drops {
		t.Drops[r] += v
	}
}

// NewRegistry returns a registry with the engine collector, the build info
// (podrouter_build_info), the Go runtime
// and process collectors, and any extra collectors (CNI operations,
// conntrack, egress, ...).
func NewRegistry(e *engine.Engine, opts Options, extra ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs := append([]prometheus.Collector{
		NewCollector(e, opts),
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
