package daemon

// Kubernetes mode: the daemon as a DaemonSet pod.
//
//	RunKube: client ─► first read of our Node (FirstRead bound) ─┬─ answered:
//	     wait for its podCIDR(s)                                  │
//	     └─ no answer: kube-state.json (podCIDRs, net-conf, peers), stale
//	     ─► daemon config (podCIDRs, net-conf's cluster CIDRs, underlay
//	     address and port) ─► New (the node: engine, underlay, pod MTU,
//	     uplink, egress) ─► [stale: persisted peers into SetPeers] ─► CNI
//	     conflist + subnet.env written ─► node controller (peers into
//	     SetPeers, each applied snapshot persisted and clearing stale; our
//	     annotations, NetworkUnavailable=False) ─► Run
//
// Design notes. A node must keep its pods forwarding through an API server
// outage, including its own restart: the liveness probe would otherwise
// restart-loop a daemon that waits for its podCIDR. So every applied peer
// snapshot is persisted with the podCIDRs and net-conf, and a daemon whose
// first read of its Node gets no answer (an error that is not an API
// status) within FirstRead starts from that state at once, shown as stale
// in /readyz and the status until the controller's first fresh snapshot
// replaces it. An API server that answers (even NotFound or Forbidden) is
// believed: the persisted state is then not used.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podrouter/podrouter/router/atomicfile"
	"github.com/podrouter/podrouter/router/kube"
	"github.com/podrouter/podrouter/router/metrics"
	"github.com/podrouter/podrouter/router/policy"
	"github.com/podrouter/podrouter/router/service"
	"github.com/podrouter/podrouter/router/underlay"
)

// Defaults of Kubernetes mode.
const (
	DefaultCNIConf   = "/etc/cni/net.d/10-podrouter.conflist"
	DefaultSubnetEnv = "/run/flannel/subnet.env"
	DefaultCNIData   = "/var/lib/cni/networks"
)

// KubeOptions configure RunKube.
type KubeOptions struct {
	// Rest is the API client config; nil: Kubeconfig, or in-cluster when
	// that is empty too.
	Rest       *rest.Config
	Kubeconfig string
	// NodeName is this node's Node (required).
	NodeName string
	// NetConf is the cluster network configuration (net-conf.json).
	NetConf kube.NetConf
	// PublicIP is the underlay address (default: Iface's first address,
	// else the Node's first InternalIP). Iface also gives the underlay MTU.
	PublicIP netip.Addr
	Iface    string
	// MTUSet: Config.MTU was given explicitly; otherwise the pod MTU is
	// NetConf.MTU, else the underlay MTU minus the encapsulation overhead.
	MTUSet bool
	// CNIConf and SubnetEnv are where the conflist and subnet.env go
	// ("" for none).
	CNIConf, SubnetEnv string
	// CNIDataDir is host-local's dataDir in the conflist (default
	// DefaultCNIData).
	CNIDataDir string
	// CNIChain are the plugins the conflist chains after podrouter-cni
	// (the ConfigMap's cni-chain.json: LoadCNIChain).
	CNIChain []ChainedPlugin
	// TrustAnnotatedEndpoints accepts peers' announced underlay endpoints
	// that are none of their Node's addresses (kube.Config's field).
	TrustAnnotatedEndpoints bool
	// FirstRead bounds the first read of our Node (default
	// DefaultFirstRead): without an answer by then the daemon starts from
	// the state persisted in Config.StateDir, if any.
	FirstRead time.Duration

	// client, when set, is used instead of one made from Rest (tests).
	client kubernetes.Interface
	// filesCheck overrides DefaultFilesCheck (tests).
	filesCheck time.Duration
	// started, when set, is called once the daemon is built and its
	// persisted peers (if stale) applied, before the controller runs
	// (tests).
	started func(*Daemon)
}

// DefaultFirstRead is KubeOptions.FirstRead's default.
const DefaultFirstRead = 2 * time.Second

// RunKube runs the daemon in Kubernetes mode until ctx is done (then it
// stops cleanly and returns nil) or something fails. cfg is the daemon's
// configuration less what the cluster provides (podCIDRs, cluster CIDRs,
// underlay, MTU unless ko.MTUSet).
func RunKube(ctx context.Context, cfg Config, ko KubeOptions) error {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
		cfg.Logger = log
	}
	if ko.NodeName == "" {
		return fmt.Errorf("%w: node-name: required in Kubernetes mode (or $NODE_NAME)", ErrConfig)
	}
	rc := ko.Rest
	if rc == nil && ko.client == nil {
		var err error
		if ko.Kubeconfig != "" {
			rc, err = clientcmd.BuildConfigFromFlags("", ko.Kubeconfig)
		} else {
			rc, err = rest.InClusterConfig()
		}
		if err != nil {
			return fmt.Errorf("daemon: kubernetes client config: %w", err)
		}
	}
	client := ko.client
	if client == nil {
		var err error
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return fmt.Errorf("daemon: kubernetes client: %w", err)
		}
	}
	waiting, err := serveWaiting(cfg, ko.NodeName)
	if err != nil {
		return err
	}
	self, persisted, err := firstRead(ctx, client, cfg.StateDir, ko, log, waiting.set)
	waiting.close()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := kubeConfig(&cfg, ko, self); err != nil {
		return err
	}
	d, err := New(cfg)
	if err != nil {
		return err
	}
	sink := &persistSink{d: d, log: log.Named("kube-state"), fresh: make(chan struct{}), base: kubeState{
		Node: ko.NodeName, PodCIDRs: self.PodCIDRs, InternalIPs: self.InternalIPs, NetConf: ko.NetConf,
	}}
	if persisted != nil {
		d.ready.setStale(fmt.Sprintf("API server unreachable at start; running on the peer snapshot of %s (%d peers)",
			persisted.Saved.UTC().Format(time.RFC3339), len(persisted.Peers)))
		switch {
		case persisted.NetConf != ko.NetConf:
			log.Warn("net-conf changed since the persisted peer snapshot; starting without peers until the API server answers")
		default:
			if err := d.node.SetPeers(persisted.Peers); err != nil {
				log.Warn("persisted peer snapshot refused; starting without peers until the API server answers", zap.Error(err))
			}
		}
	}
	if ko.started != nil {
		ko.started(d)
	}
	if err := writeNodeFiles(d.cfg, ko); err != nil {
		return errors.Join(err, d.Close())
	}
	ann := d.node.Backend().Announce()
	c, err := kube.New(kube.Config{
		Client: client, NodeName: ko.NodeName, Sink: sink, Logger: log, TrustAnnotatedEndpoints: ko.TrustAnnotatedEndpoints,
		PodCIDRs: self.PodCIDRs,
		Local:    kube.Local{Backend: ko.NetConf.Backend, Endpoint: ann.Endpoint, VNI: ann.VNI, VTEPMAC: ann.VTEPMAC, PublicKey: ann.PublicKey},
	})
	if err != nil {
		return errors.Join(err, d.Close())
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fdone := make(chan struct{})
	go func() {
		defer close(fdone)
		keepNodeFiles(cctx, d.cfg, ko, cmp.Or(ko.filesCheck, DefaultFilesCheck))
	}()
	defer func() { cancel(); <-fdone }()
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(cctx) }()
	if len(d.cfg.Services.CIDRs) > 0 {
		sw, err := kube.NewServiceWatcher(kube.ServiceWatcherConfig{
			Client: client, NodeName: ko.NodeName, ServiceCIDRs: d.cfg.Services.CIDRs, Logger: log,
			Sink: func(svcs []service.Service) {
				if err := d.node.SetServices(svcs); err != nil {
					log.Error("services not applied", zap.Error(err))
					return
				}
				d.setNodePorts(svcs)
			},
		})
		if err != nil {
			cancel()
			return errors.Join(err, <-cdone, d.Close())
		}
		d.services.Store(sw)
		sdone := make(chan struct{})
		go func() {
			defer close(sdone)
			if err := sw.Run(cctx); err != nil && cctx.Err() == nil {
				log.Error("service watcher stopped; Services are no longer updated", zap.Error(err))
			}
		}()
		defer func() { cancel(); <-sdone }()
	}
	if d.node.PolicyEnabled() {
		pw, err := kube.NewPolicyWatcher(kube.PolicyWatcherConfig{
			Client: client, NodeName: ko.NodeName, Logger: log,
			Sink: func(s *policy.Set) {
				if err := d.node.SetPolicy(s); err != nil {
					log.Error("network policies not applied", zap.Error(err))
				}
			},
		})
		if err != nil {
			cancel()
			return errors.Join(err, <-cdone, d.Close())
		}
		d.policies.Store(pw)
		pdone := make(chan struct{})
		go func() {
			defer close(pdone)
			if err := pw.Run(cctx); err != nil && cctx.Err() == nil {
				log.Error("policy watcher stopped; NetworkPolicies are no longer updated", zap.Error(err))
			}
		}()
		defer func() { cancel(); <-pdone }()
	}
	ddone := make(chan error, 1)
	go func() { ddone <- d.Run(cctx) }()
	var vdone chan error // stale start: the podCIDRs checked once the API server is back
	if persisted != nil {
		vdone = make(chan error, 1)
		go func() {
			select {
			case <-sink.fresh:
				vdone <- checkPodCIDRs(cctx, client, ko.NodeName, self.PodCIDRs, log)
			case <-cctx.Done():
				vdone <- nil
			}
		}()
	}
	for {
		select {
		case err := <-ddone:
			cancel()
			return errors.Join(err, <-cdone)
		case err := <-cdone:
			cancel() // the controller failed (or ctx ended): stop the daemon too
			return errors.Join(err, <-ddone)
		case err := <-vdone:
			vdone = nil
			if err != nil {
				log.Error("the node's podCIDRs changed while the API server was away; stopping to restart with the new ones", zap.Error(err))
				cancel()
				return errors.Join(err, <-ddone, <-cdone)
			}
		}
	}
}

// ErrPodCIDRChanged: the Node's podCIDRs differ from those the daemon
// started with (from its persisted state, or the Node was deleted and
// registered again with new ones); the daemon stops, to be restarted
// with the new ones. It is kube.ErrPodCIDRChanged.
var ErrPodCIDRChanged = kube.ErrPodCIDRChanged

// checkPodCIDRs reads the named Node (waiting for its podCIDRs) and
// returns an error wrapping ErrPodCIDRChanged when they are not want; nil
// when they are, or when ctx ends first.
func checkPodCIDRs(ctx context.Context, client kubernetes.Interface, name string, want []netip.Prefix, log *zap.Logger) error {
	self, err := kube.WaitForPodCIDRs(ctx, client, name, 0, log)
	if err != nil {
		return nil // only when ctx is done
	}
	if !slices.Equal(self.PodCIDRs, want) {
		return fmt.Errorf("%w: node %s has %v, the persisted state %v", ErrPodCIDRChanged, name, self.PodCIDRs, want)
	}
	log.Info("the node's podCIDRs are still the persisted ones", zap.Stringers("podCIDRs", want))
	return nil
}

// firstRead returns our Node's podCIDRs and InternalIPs: from the API
// server, waiting for the podCIDR as long as it takes, or, when the first
// read gets no answer within ko.FirstRead and stateDir holds this node's
// persisted state, from that state (then persisted is it, and the daemon
// runs stale).
func firstRead(ctx context.Context, client kubernetes.Interface, stateDir string, ko KubeOptions, log *zap.Logger, report func(string)) (self kube.Self, persisted *kubeState, err error) {
	bound := ko.FirstRead
	if bound <= 0 {
		bound = DefaultFirstRead
	}
	rctx, cancel := context.WithTimeout(ctx, bound)
	_, err = client.CoreV1().Nodes().Get(rctx, ko.NodeName, metav1.GetOptions{})
	cancel()
	var status apierrors.APIStatus
	if err != nil && !errors.As(err, &status) && ctx.Err() == nil {
		st, lerr := loadKubeState(stateDir, ko.NodeName)
		if lerr == nil {
			log.Warn("API server unreachable; starting from the persisted cluster state",
				zap.Error(err), zap.Time("saved", st.Saved), zap.Stringers("podCIDRs", st.PodCIDRs), zap.Int("peers", len(st.Peers)))
			return kube.Self{PodCIDRs: st.PodCIDRs, InternalIPs: st.InternalIPs}, &st, nil
		}
		if !errors.Is(lerr, os.ErrNotExist) {
			log.Warn("persisted cluster state not usable", zap.Error(lerr))
		}
		log.Warn("API server unreachable and no persisted state; waiting for it", zap.Error(err))
	}
	self, err = kube.WaitForPodCIDRsReporting(ctx, client, ko.NodeName, 0, log, report)
	return self, nil, err
}

// waitingServer serves /healthz (ok) and /readyz (503 and why) on the
// metrics address while the daemon waits for its Node's podCIDR, before it
// has a node to serve metrics of: the kubelet's probes then see a live
// daemon that says what it waits for, rather than a refused connection
// (and a liveness restart loop).
type waitingServer struct {
	srv *metrics.Server
	why atomic.Pointer[string]
}

// serveWaiting starts a waitingServer on cfg.MetricsAddr (none without
// one).
func serveWaiting(cfg Config, nodeName string) (*waitingServer, error) {
	w := &waitingServer{}
	w.set(fmt.Sprintf("reading node %s from the API server", nodeName))
	if !cfg.MetricsAddr.IsValid() {
		return w, nil
	}
	ln, err := net.Listen("tcp", cfg.MetricsAddr.String())
	if err != nil {
		return nil, fmt.Errorf("daemon: metrics-addr %s: %w", cfg.MetricsAddr, err)
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	w.srv = metrics.NewServer(prometheus.NewRegistry(), func() error {
		return errors.New("waiting: " + *w.why.Load())
	}, log)
	go func() { _ = w.srv.Serve(ln) }()
	return w, nil
}

// set records why the daemon is still waiting.
func (w *waitingServer) set(why string) { w.why.Store(&why) }

// close stops the server (the daemon's own takes the address over).
func (w *waitingServer) close() {
	if w.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = w.srv.Shutdown(ctx)
}

// persistSink is the controller's PeerSink: it applies each snapshot to
// the node, persists it with the node's podCIDRs and net-conf, and clears
// the daemon's stale state. A failed write is logged, not refused: the
// snapshot is in force, only a restart without API server would miss it.
type persistSink struct {
	d     *Daemon
	log   *zap.Logger
	base  kubeState
	fresh chan struct{} // closed at the first applied snapshot
	once  sync.Once
}

// SetPeers implements kube.PeerSink.
func (s *persistSink) SetPeers(peers []underlay.Peer) error {
	if err := s.d.node.SetPeers(peers); err != nil {
		return err
	}
	st := s.base
	st.Peers, st.Saved = peers, time.Now()
	if err := saveKubeState(s.d.cfg.StateDir, st); err != nil {
		s.log.Warn("persisting the peer snapshot failed", zap.Error(err))
	}
	s.d.ready.setStale("")
	s.once.Do(func() { close(s.fresh) })
	return nil
}

var _ kube.PeerSink = (*persistSink)(nil)

// kubeConfig fills in what the cluster provides.
func kubeConfig(cfg *Config, ko KubeOptions, self kube.Self) error {
	nc := ko.NetConf
	for _, p := range self.PodCIDRs {
		if p.Addr().Is4() {
			cfg.PodCIDR = p
		} else {
			cfg.PodCIDR6 = p
		}
	}
	if !cfg.PodCIDR.IsValid() {
		return fmt.Errorf("%w: node %s: no IPv4 podCIDR (IPv6-only nodes are not supported)", ErrConfig, ko.NodeName)
	}
	cfg.ClusterCIDRs = nc.ClusterCIDRs()
	cfg.Egress.NoMasquerade = !nc.Masquerade
	for _, p := range self.PodCIDRs {
		if err := nc.CheckPodCIDR(p); err != nil && cfg.Logger != nil {
			cfg.Logger.Warn("net-conf.json does not match the node's podCIDR (kube-controller-manager assigns it; podrouter uses it)",
				zap.String("node", ko.NodeName), zap.Error(err))
		}
	}
	if len(cfg.NodeIPs) == 0 {
		cfg.NodeIPs = self.InternalIPs
	}
	addr := ko.PublicIP
	if !addr.IsValid() && ko.Iface != "" {
		a, err := ifaceAddr(ko.Iface)
		if err != nil {
			return fmt.Errorf("%w: iface: %w", ErrConfig, err)
		}
		addr = a
	}
	if !addr.IsValid() {
		for _, a := range self.InternalIPs {
			if !addr.IsValid() || (a.Is4() && !addr.Is4()) {
				addr = a
			}
		}
	}
	if !addr.IsValid() {
		return fmt.Errorf("%w: node %s: no underlay address (no InternalIP; give --public-ip or --iface)", ErrConfig, ko.NodeName)
	}
	cfg.Underlay.Backend = nc.Backend.String()
	cfg.Underlay.Listen = netip.AddrPortFrom(addr, nc.Port)
	cfg.Underlay.VNI = nc.VNI
	cfg.Underlay.DirectRouting = nc.DirectRouting
	if nc.UnderlayMTU != 0 {
		cfg.Underlay.MTU = nc.UnderlayMTU
	}
	cfg.Underlay.Interface = ko.Iface
	if cfg.Underlay.Interface == "" {
		cfg.Underlay.Interface = ifaceOf(addr)
	}
	switch {
	case ko.MTUSet:
	case nc.MTU != 0:
		cfg.MTU = nc.MTU
	default:
		cfg.MTU = 0 // the node's rule: the underlay's MTU less the encapsulation (node.PodMTU)
	}
	return nil
}

// ifaceAddr returns the first global unicast address of the interface,
// IPv4 first.
func ifaceAddr(name string) (netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	var best netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsLoopback() && !strings.HasPrefix(name, "lo") {
			continue
		}
		if !best.IsValid() || (ip.Is4() && !best.Is4()) {
			best = ip
		}
	}
	if !best.IsValid() {
		return best, fmt.Errorf("%s has no usable address", name)
	}
	return best, nil
}

// ifaceOf returns the name of the interface holding addr, or "".
func ifaceOf(addr netip.Addr) string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap() == addr {
					return ifi.Name
				}
			}
		}
	}
	return ""
}

// SubnetEnv returns flannel's subnet.env for the node: FLANNEL_NETWORK,
// FLANNEL_SUBNET (the gateway with the podCIDR's length, as flannel writes
// it), FLANNEL_MTU, FLANNEL_IPMASQ and, dual-stack, the IPv6 pair.
func SubnetEnv(cfg Config, nc kube.NetConf) []byte {
	var b strings.Builder
	gw := func(p netip.Prefix) string { return netip.PrefixFrom(p.Addr().Next(), p.Bits()).String() }
	if nc.Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", nc.Network)
	}
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", gw(cfg.PodCIDR))
	if nc.IPv6Network.IsValid() && cfg.PodCIDR6.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\n", nc.IPv6Network, gw(cfg.PodCIDR6))
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n", cfg.MTU, nc.Masquerade)
	return []byte(b.String())
}

// DefaultFilesCheck is how often the Kubernetes mode checks that the node
// files it wrote (conflist, subnet.env) are still there and unchanged.
const DefaultFilesCheck = 5 * time.Second

// keepNodeFiles rewrites the node files (writeNodeFiles) whenever one is
// gone or changed, every interval until ctx ends: an operator or another
// agent's installer removing the conflist would otherwise leave the
// kubelet with no network for new pods, silently (flannel rewrites its
// conflist only at start).
func keepNodeFiles(ctx context.Context, cfg Config, ko KubeOptions, interval time.Duration) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	want := map[string][]byte{}
	if ko.CNIConf != "" {
		b, err := CNIConfList(cfg, ko.CNIDataDir, ko.CNIChain)
		if err != nil {
			log.Error("CNI conflist not kept", zap.Error(err))
		} else {
			want[ko.CNIConf] = b
		}
	}
	if ko.SubnetEnv != "" {
		want[ko.SubnetEnv] = SubnetEnv(cfg, ko.NetConf)
	}
	if len(want) == 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for path, b := range want {
			if got, err := os.ReadFile(path); err == nil && bytes.Equal(got, b) {
				continue
			}
			if err := writeFile(path, b, 0o644); err != nil {
				log.Error("node file gone or changed, and rewriting it failed", zap.String("file", path), zap.Error(err))
				continue
			}
			log.Warn("node file was gone or changed; rewritten", zap.String("file", path))
		}
	}
}

func writeNodeFiles(cfg Config, ko KubeOptions) error {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if ko.CNIConf != "" {
		b, err := CNIConfList(cfg, ko.CNIDataDir, ko.CNIChain)
		if err != nil {
			return err
		}
		if err := writeFile(ko.CNIConf, b, 0o644); err != nil {
			return fmt.Errorf("daemon: cni conflist: %w", err)
		}
		log.Info("CNI conflist written", zap.String("file", ko.CNIConf), zap.Strings("chained", chainTypes(ko.CNIChain)))
		for _, w := range chainWarnings(ko.CNIChain, cfg.Egress.Mode) {
			log.Warn(w, zap.Stringer("egress", cfg.Egress.Mode))
		}
	}
	if ko.SubnetEnv != "" {
		if err := writeFile(ko.SubnetEnv, SubnetEnv(cfg, ko.NetConf), 0o644); err != nil {
			return fmt.Errorf("daemon: subnet.env: %w", err)
		}
		log.Info("subnet.env written", zap.String("file", ko.SubnetEnv))
	}
	return nil
}

// writeFile writes data to path atomically (atomicfile), making path's
// directory first when it is missing.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, mode)
}
