// Package daemon is the composition root of the podrouter node daemon: it
// builds, in order, the state store, the engine, the uplink, the local API
// and the pods' ports, wrapping each step's error, and tears them down in
// reverse.
//
//	New: config ─► state store (locked) ─► engine (podCIDRs, gateway)
//	     ─► uplink TUN + host routes ─► uplink port + engine routes
//	     ─► API server (status answers, ready=false) ─► re-attach recorded pods
//	     ─► ready=true
//	Close: API stops ─► ports detached (TAPs stay, records stay) ─► engine,
//	     uplink (the kernel removes podr0 and its routes) ─► store unlocked
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
)

// Daemon is a running node daemon. It implements api.Handler.
type Daemon struct {
	cfg     Config
	log     *zap.Logger
	started time.Time
	store   *store
	eng     *engine.Engine
	up      *uplink
	upPort  *engine.Port
	srv     *api.Server
	served  chan error
	pods    pods
	ready   atomic.Bool

	reattached, reattachFailed int
	reattachTime               time.Duration
	closed                     atomic.Bool
}

var _ api.Handler = (*Daemon)(nil)

// New builds a daemon from cfg and starts serving its API. On error,
// everything built so far is torn down again.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger.Named("daemon"), started: time.Now()}
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
	if d.eng, err = engine.New(engine.Config{
		PodCIDR:      cfg.PodCIDR,
		PodCIDR6:     cfg.PodCIDR6,
		ClusterCIDRs: cfg.ClusterCIDRs,
		Logger:       cfg.Logger,
	}); err != nil {
		return nil, fmt.Errorf("daemon: engine: %w", err)
	}
	d.pods = pods{eng: d.eng, store: d.store, log: d.log, byID: map[api.AttachmentID]*pod{}}
	if d.up, err = createUplink(cfg.Uplink, cfg.MTU, cfg.PodCIDRs(), cfg.NodeIPs); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if d.upPort, err = d.eng.AddPort(d.up.dev, engine.PortConfig{Name: cfg.Uplink, Kind: engine.KindUplink, MTU: cfg.MTU}); err != nil {
		_ = d.up.dev.Close()
		d.up = nil
		return nil, fmt.Errorf("daemon: uplink port: %w", err)
	}
	if err := d.eng.SetRoutes(uplinkRoutes(cfg, d.upPort.Index())); err != nil {
		return nil, fmt.Errorf("daemon: engine routes: %w", err)
	}
	if d.srv, err = api.Listen(api.ServerConfig{Path: cfg.Socket, AllowUID: cfg.APIAllowUID, Logger: cfg.Logger}, d); err != nil {
		return nil, fmt.Errorf("daemon: local API: %w", err)
	}
	d.served = make(chan error, 1)
	go func() { d.served <- d.srv.Serve() }()
	t0 := time.Now()
	d.reattached, d.reattachFailed = d.pods.reattach(recs)
	d.reattachTime = time.Since(t0)
	d.ready.Store(true)
	d.log.Info("ready", zap.Stringers("podCIDRs", cfg.PodCIDRs()), zap.String("uplink", cfg.Uplink),
		zap.String("socket", cfg.Socket), zap.Int("reattached", d.reattached), zap.Int("reattachFailed", d.reattachFailed),
		zap.Duration("reattachTime", d.reattachTime))
	success = true
	return d, nil
}

// uplinkRoutes sends the node's addresses (or, without them, everything
// outside the cluster) to the uplink port.
func uplinkRoutes(cfg Config, up int32) []route.Route {
	var rs []route.Route
	for _, a := range cfg.NodeIPs {
		rs = append(rs, route.Route{Prefix: netip.PrefixFrom(a, a.BitLen()), NextHop: route.ToEgress(up)})
	}
	if len(rs) == 0 {
		rs = append(rs, route.Route{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(up)})
		if cfg.PodCIDR6.IsValid() {
			rs = append(rs, route.Route{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(up)})
		}
	}
	return rs
}

// Run serves until ctx is done (then it closes the daemon and returns nil)
// or the API server fails.
func (d *Daemon) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		d.log.Info("shutting down")
		return d.Close()
	case err := <-d.served:
		d.served <- err
		return errors.Join(fmt.Errorf("daemon: local API: %w", err), d.Close())
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
	d.ready.Store(false)
	var errs []error
	if d.srv != nil {
		errs = append(errs, d.srv.Close())
		if d.served != nil {
			if err := <-d.served; err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.eng != nil {
		d.pods.closeAll()
		errs = append(errs, d.eng.Close()) // closes the uplink port's TUN too
	} else if d.up != nil {
		errs = append(errs, d.up.dev.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// Status implements api.Handler.
func (d *Daemon) Status(context.Context) (api.Status, error) {
	d.pods.mu.Lock()
	n := len(d.pods.byID)
	d.pods.mu.Unlock()
	st := api.Status{
		Ready:          d.ready.Load(),
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
		Reattached:     d.reattached,
		ReattachFailed: d.reattachFailed,
		ReattachTime:   d.reattachTime,
		Goroutines:     runtime.NumGoroutine(),
		FDs:            openFDs(),
	}
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
func (d *Daemon) Routes(context.Context) ([]api.Route, error) {
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
func (d *Daemon) Ports(context.Context) ([]api.Port, error) {
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
		out = append(out, ap)
	}
	return out, nil
}
