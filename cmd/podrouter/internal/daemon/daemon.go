// Package daemon is the composition root of the podrouter node daemon: it
// builds, in order, the state store, the node (router/node: engine, uplink,
// egress, underlay), the metrics server, the local API and the pods' ports,
// wrapping each step's error, and tears them down in reverse. Datapath
// decisions are the node's; the daemon owns the local API, the state store,
// readiness, metrics and the Kubernetes wiring.
//
//	New: config ─► state store (locked) ─► [wireguard: private key from
//	     the state directory, made once] ─► node (engine, backend, uplink
//	     TUN + host routes, egress) ─► metrics/health server (/readyz 503:
//	     routes not synced) ─► node routes (and static peers)
//	     ─► API server (status answers, ready=false) ─► re-attach recorded pods
//	     ─► ready=true (/readyz 200)
//	Close: not ready ─► API stops (captures end) ─► ports detached (TAPs
//	     stay, records stay) ─► node (the kernel removes podr0 and its
//	     routes) ─► metrics server ─► store unlocked
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	_ "github.com/podrouter/podrouter/netstackx/egress" // registers the netstack egress
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/kube"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/metrics"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/version"
)

// Daemon is a running node daemon. Its local API is served by handler.
type Daemon struct {
	cfg     Config
	log     *zap.Logger
	started time.Time
	store   *store
	node    *node.Node
	eng     *engine.Engine // the node's
	srv     *api.Server
	served  chan error
	pods    pods
	ready   readiness
	apiM    *apiMetrics

	metricsSrv    *metrics.Server
	metricsAddr   net.Addr
	metricsServed chan error

	reattach atomic.Pointer[reattachStats]
	closed   atomic.Bool
	// services is the Kubernetes mode's Service watcher (nil: none).
	services atomic.Pointer[kube.ServiceWatcher]
	// policies is the Kubernetes mode's NetworkPolicy watcher (nil: none).
	policies atomic.Pointer[kube.PolicyWatcher]
}

// handler serves the local API (api.Handler, api.CaptureHandler,
// api.ConntrackHandler, api.ServicesHandler: services.go) from the
// daemon's state.
type handler struct{ *Daemon }

var (
	_ api.CaptureHandler   = handler{}
	_ api.ConntrackHandler = handler{}
)

// New builds a daemon from cfg and starts serving its API. On error,
// everything built so far is torn down again.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger.Named("daemon"), started: time.Now(), apiM: newAPIMetrics()}
	d.ready.log = d.log
	v := version.Get()
	d.log.Info("starting", zap.String("version", v.Version), zap.String("commit", v.Commit), zap.String("goVersion", v.GoVersion))
	success := false
	defer func() {
		if !success {
			d.teardown()
		}
	}()
	var err error
	if d.store, err = openStore(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("daemon: state store: %w", err)
	}
	recs, bad, err := d.store.load()
	if err != nil {
		return nil, fmt.Errorf("daemon: state store: %w", err)
	}
	for _, b := range bad {
		d.log.Warn("unreadable attachment record left in place", zap.String("file", b))
	}
	if cfg.Underlay.Backend == node.BackendWireGuard && cfg.Underlay.PrivateKey.IsZero() {
		k, err := loadOrCreateKey(filepath.Join(cfg.StateDir, WireGuardKeyFile), d.log)
		if err != nil {
			return nil, err
		}
		cfg.Underlay.PrivateKey, d.cfg.Underlay.PrivateKey = k, k
	}
	if d.node, err = node.New(cfg.nodeConfig()); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.eng = d.node.Engine()
	d.cfg.MTU = d.node.MTU()
	if b := d.node.Backend(); b != nil {
		d.log.Info("underlay", underlayFields(b.Announce())...)
	}
	nodeProbe := d.node.Ready
	d.ready.node.Store(&nodeProbe)
	d.pods = pods{eng: d.eng, store: d.store, log: d.log, byID: map[api.AttachmentID]*pod{}, hp: hostPorts{node: d.node}}
	if cfg.MetricsAddr.IsValid() {
		if err := d.startMetrics(); err != nil {
			return nil, err
		}
	}
	if cfg.hookBeforeRoutes != nil {
		cfg.hookBeforeRoutes(d)
	}
	if err := d.node.Start(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.ready.routes.Store(true)
	if d.srv, err = api.Listen(api.ServerConfig{Path: cfg.Socket, AllowUID: cfg.APIAllowUID, Logger: cfg.Logger, Observe: d.apiM.observe}, handler{d}); err != nil {
		return nil, fmt.Errorf("daemon: local API: %w", err)
	}
	serving := d.srv.Serving
	d.ready.api.Store(&serving)
	d.served = make(chan error, 1)
	go func() { d.served <- d.srv.Serve() }()
	t0 := time.Now()
	var rs reattachStats
	rs.ok, rs.failed = d.pods.reattach(recs)
	rs.took = time.Since(t0)
	d.reattach.Store(&rs)
	d.ready.pods.Store(true)
	d.log.Info("ready", zap.Stringers("podCIDRs", cfg.PodCIDRs()), zap.String("uplink", cfg.Uplink),
		zap.String("socket", cfg.Socket), zap.Int("reattached", rs.ok), zap.Int("reattachFailed", rs.failed),
		zap.Duration("reattachTime", rs.took))
	if err := tap.BatchedWrites(); err != nil {
		d.log.Info("pod TAPs read and written frame by frame (no io_uring batching)", zap.Error(err))
	}
	if rs.failed > 0 {
		d.log.Warn("running degraded: some recorded pods are not attached", zap.Int("unattached", rs.failed))
	}
	success = true
	return d, nil
}

// underlayFields are the log fields of what the node announces: backend,
// endpoint, and the backend's own (vxlan: VNI and VTEP MAC; wireguard: the
// public key), which a static peer list elsewhere must give for this node.
func underlayFields(ann node.Announcement) []zap.Field {
	fs := []zap.Field{zap.String("backend", ann.Backend), zap.Stringer("endpoint", ann.Endpoint)}
	if ann.VNI != 0 || ann.VTEPMAC != (packet.MAC{}) {
		fs = append(fs, zap.Uint32("vni", ann.VNI), zap.Stringer("vtepMAC", ann.VTEPMAC))
	}
	if !ann.PublicKey.IsZero() {
		fs = append(fs, zap.Stringer("publicKey", ann.PublicKey))
	}
	return fs
}

// Node returns the daemon's node (its peers are set through it).
func (d *Daemon) Node() *node.Node { return d.node }

// startMetrics listens on cfg.MetricsAddr and serves the engine's and the
// daemon's metrics, /healthz and /readyz from there on.
func (d *Daemon) startMetrics() error {
	opts := metrics.Options{PerPeer: d.cfg.MetricsPerPeer, Pods: d.pods.metricPorts}
	reg, err := metrics.NewRegistry(d.eng, opts, collector{d}, d.apiM.requests, d.apiM.latency)
	if err != nil {
		return fmt.Errorf("daemon: metrics: %w", err)
	}
	ln, err := net.Listen("tcp", d.cfg.MetricsAddr.String())
	if err != nil {
		return fmt.Errorf("daemon: metrics-addr %s: %w", d.cfg.MetricsAddr, err)
	}
	d.metricsAddr = ln.Addr()
	d.metricsSrv = metrics.NewServer(reg, d.ready.readyz, d.cfg.Logger)
	d.metricsServed = make(chan error, 1)
	go func() { d.metricsServed <- d.metricsSrv.Serve(ln) }()
	return nil
}

// MetricsAddr returns the address the metrics server listens on (with the
// port chosen when the configured one is 0), or nil without one.
func (d *Daemon) MetricsAddr() net.Addr { return d.metricsAddr }

// Ready returns nil when the daemon is ready to carry traffic (what /readyz
// reports), else why it is not.
func (d *Daemon) Ready() error { return d.ready.check() }

// attachable reports whether attach requests are served: the recorded pods
// are re-attached and the daemon is not stopping.
func (d *Daemon) attachable() bool { return d.ready.pods.Load() && !d.ready.closing.Load() }

// Run serves until ctx is done (then it closes the daemon and returns nil)
// or the API or metrics server fails.
func (d *Daemon) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		d.log.Info("shutting down")
		return d.Close()
	case err := <-d.served:
		d.served <- err
		d.log.Error("local API failed", zap.Error(err))
		return errors.Join(fmt.Errorf("daemon: local API: %w", err), d.Close())
	case err := <-d.metricsServed: // nil channel without a metrics server
		d.metricsServed <- err
		d.log.Error("metrics server failed", zap.Error(err))
		return errors.Join(fmt.Errorf("daemon: metrics: %w", err), d.Close())
	}
}

// Close stops the daemon: the API stops (requests in progress finish), the
// pods' ports are detached (their persistent TAPs and records stay, so the
// next daemon re-attaches them), the engine and the uplink close (the kernel
// removes the uplink TUN and its routes) and the state directory is
// unlocked. It is idempotent.
func (d *Daemon) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	return d.teardown()
}

func (d *Daemon) teardown() error {
	d.ready.closing.Store(true)
	var errs []error
	if d.srv != nil {
		errs = append(errs, d.srv.Close())
		if d.served != nil {
			if err := <-d.served; err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.node != nil {
		d.pods.closeAll()
		errs = append(errs, d.node.Close()) // closes the uplink TUN too
	}
	if d.metricsSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
		errs = append(errs, d.metricsSrv.Shutdown(ctx))
		cancel()
		if err := <-d.metricsServed; err != nil {
			errs = append(errs, err)
		}
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// Status implements api.Handler.
func (d handler) Status(context.Context) (api.Status, error) {
	d.pods.mu.Lock()
	n := len(d.pods.byID)
	d.pods.mu.Unlock()
	var rs reattachStats
	if p := d.reattach.Load(); p != nil {
		rs = *p
	}
	notReady := ""
	if err := d.ready.check(); err != nil {
		notReady = err.Error()
	}
	st := api.Status{
		Ready:          d.attachable(),
		NotReady:       notReady,
		PID:            os.Getpid(),
		Started:        d.started.UTC(),
		PodCIDRs:       d.cfg.PodCIDRs(),
		ClusterCIDRs:   d.cfg.ClusterCIDRs,
		Gateway:        d.eng.Gateway(),
		Gateway6:       d.eng.Gateway6(),
		GatewayMAC:     api.MAC(d.eng.GatewayMAC()),
		Uplink:         d.cfg.Uplink,
		MTU:            d.cfg.MTU,
		Attachments:    n,
		Reattached:     rs.ok,
		ReattachFailed: rs.failed,
		ReattachTime:   rs.took,
		Goroutines:     runtime.NumGoroutine(),
		FDs:            openFDs(),
		EgressMode:     d.node.EgressMode().String(),
		NoMasquerade:   d.cfg.Egress.NoMasquerade,
	}
	if s := d.ready.stale.Load(); s != nil {
		st.Stale = *s
	}
	if eg := d.node.Egress(); eg != nil {
		st.Egress = eg.Stats()
	}
	if b := d.node.Backend(); b != nil {
		ann := b.Announce()
		st.Backend, st.Endpoint = ann.Backend, ann.Endpoint
		if !ann.PublicKey.IsZero() {
			st.PublicKey = ann.PublicKey.String()
		}
		st.VNI, st.VTEPMAC = ann.VNI, api.MAC(ann.VTEPMAC)
	}
	v := version.Get()
	st.Version, st.Commit = v.Version, v.Commit
	return st, nil
}

// openFDs counts this process's open file descriptors (-1 without /proc).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // the directory being read
}

// Routes implements api.Handler.
func (d handler) Routes(context.Context) ([]api.Route, error) {
	var out []api.Route
	for r := range d.eng.Routes().All() {
		ar := api.Route{Prefix: r.Prefix, Kind: r.NextHop.Kind.String()}
		switch r.NextHop.Kind {
		case route.Local, route.Egress:
			ar.Port = r.NextHop.Port
		case route.Peer:
			ar.Port = r.NextHop.Peer
		default:
			ar.Port = -1
		}
		if ar.Port >= 0 {
			if p := d.eng.PortByIndex(ar.Port); p != nil {
				ar.PortName = p.Name()
			}
		}
		out = append(out, ar)
	}
	return out, nil
}

// Ports implements api.Handler.
func (d handler) Ports(context.Context) ([]api.Port, error) {
	var out []api.Port
	for _, p := range d.eng.Ports() {
		pc := p.Config()
		st := p.Stats()
		ap := api.Port{
			Index: p.Index(), Name: pc.Name, Kind: pc.Kind.String(), L2: pc.L2, MTU: pc.MTU, Addrs: pc.Addrs,
			RxPackets: st.RxPackets, RxBytes: st.RxBytes, TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		}
		if len(st.Drops) > 0 {
			ap.Drops = map[string]uint64{}
			for r, n := range st.Drops {
				ap.Drops[r.String()] = n
			}
		}
		ap.Underlay = d.node.UnderlayCounters(p)
		out = append(out, ap)
	}
	return out, nil
}

// Conntrack implements api.ConntrackHandler: the egress's live flows (none
// in uplink mode, where the host kernel tracks them), then the load
// balancer's Service flows (services.go).
func (d handler) Conntrack(_ context.Context, req api.ConntrackRequest) (api.Conntrack, error) {
	if err := req.Normalize(); err != nil {
		return api.Conntrack{}, err
	}
	out := api.Conntrack{Egress: d.node.EgressMode().String(), Flows: []api.Flow{}}
	var srcs []netip.Addr
	if req.Pod != "" {
		if a, err := netip.ParseAddr(req.Pod); err == nil {
			srcs = []netip.Addr{a}
		} else {
			p, err := d.findPort(req.Pod)
			if err != nil {
				return api.Conntrack{}, err
			}
			srcs = p.Config().Addrs
			if len(srcs) == 0 {
				return out, nil // a port without addresses (the uplink) sends no pod flows
			}
		}
	}
	names := d.podNames()
	if eg := d.node.Egress(); eg != nil && eg.Stats() != nil {
		out.Stats = eg.Stats()
		flows, truncated := eg.Flows(srcs, req.Max)
		for _, f := range flows {
			f.Table = "egress"
			f.Pod = names[f.Src.Addr()]
			out.Flows = append(out.Flows, f)
		}
		out.Truncated = truncated
	}
	d.serviceFlows(&out, srcs, req, names)
	return out, nil
}

// podNames maps the attached pods' addresses to their port names.
func (d handler) podNames() map[netip.Addr]string {
	names := map[netip.Addr]string{}
	for _, p := range d.eng.Ports() {
		if p.Config().Kind == engine.KindPod {
			for _, a := range p.Config().Addrs {
				names[a] = p.Name()
			}
		}
	}
	return names
}
