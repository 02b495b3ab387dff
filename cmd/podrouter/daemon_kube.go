package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/daemon"
	"github.com/podrouter/podrouter/router/kube"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/underlay"
)

// kubeFlags are the daemon's Kubernetes-mode flags (README "Kubernetes
// mode").
type kubeFlags struct {
	on            bool
	kubeconfig    string
	nodeName      string
	netConf       string
	backend       string
	port          uint
	iface         string
	publicIP      string
	cniConf       string
	subnetEnv     string
	cniData       string
	cniChain      string
	peersFile     string
	trustEPs      bool
	directRouting bool
	// directRoutingSet: --direct-routing given (--kube: overrides net-conf).
	directRoutingSet bool
	firstRead        time.Duration
	services         string
	svcCIDRs         []netip.Prefix
	netpol           string
	polLogDenied     bool
}

// DefaultServiceCIDR is kube-apiserver's default --service-cluster-ip-range.
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

func (k *kubeFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&k.on, "kube", false, "Kubernetes mode: podCIDR from this node's Node, cluster CIDR and backend from --net-conf, peers from the cluster's Nodes")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (--kube; default: in-cluster service account)")
	fs.StringVar(&k.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Node name (--kube; default $NODE_NAME)")
	fs.StringVar(&k.netConf, "net-conf", "/etc/kube-podrouter/net-conf.json", "the cluster network configuration, flannel's net-conf.json fields (--kube)")
	fs.StringVar(&k.backend, "backend", "", "underlay backend udp, vxlan, wireguard or host-gw (--kube; default: net-conf's Backend.Type)")
	fs.BoolVar(&k.directRouting, "direct-routing", false, "vxlan: peers on a subnet of the underlay interface are reached through host routes, unencapsulated (flannel's DirectRouting; --kube: net-conf's Backend.DirectRouting, which this overrides when given)")
	fs.UintVar(&k.port, "underlay-port", 0, "underlay UDP port (--kube; default: net-conf's Backend.Port, else 8472 vxlan / 8285 udp / 51820 wireguard)")
	fs.StringVar(&k.iface, "iface", "", "interface whose address and MTU the underlay uses (--kube; default: the Node's InternalIP)")
	fs.StringVar(&k.publicIP, "public-ip", "", "underlay address published to the other nodes (--kube; default: --iface's address, else the Node's InternalIP)")
	fs.StringVar(&k.cniConf, "cni-conf", daemon.DefaultCNIConf, "where --kube writes the node's CNI conflist (atomically; empty: none)")
	fs.StringVar(&k.cniData, "cni-data-dir", daemon.DefaultCNIData, "host-local's dataDir in the conflist --kube writes")
	fs.StringVar(&k.cniChain, "cni-chain", daemon.DefaultCNIChain, "--kube: the plugins the conflist chains after podrouter-cni, a JSON array: \"portmap\", \"bandwidth\", \"tuning\" or plugin objects (the ConfigMap's cni-chain.json; a missing file chains none)")
	fs.StringVar(&k.peersFile, "peers", "", "without --kube: a static peer list (YAML or JSON: name, endpoint IP:port (host-gw: IP), vtepMAC, publicKey, podCIDRs) over an underlay on --public-ip:--underlay-port with --backend (default vxlan)")
	fs.BoolVar(&k.trustEPs, "trust-annotated-endpoints", false, "--kube: accept a peer's announced underlay endpoint even when it is none of its Node's addresses (default: such a node is skipped)")
	fs.DurationVar(&k.firstRead, "kube-first-read", daemon.DefaultFirstRead, "--kube: when the first read of this node's Node gets no answer within this, start at once from the cluster state persisted in --state-dir (podCIDRs, net-conf, peers)")
	fs.StringVar(&k.services, "services", "on", "--kube: on: the engine load-balances the cluster's Services (ClusterIP, externalIPs, NodePort) with no kube-proxy; off: leave Services to an existing kube-proxy")
	fs.Var(prefixListFlag(&k.svcCIDRs), "service-cidr", "--kube: the Service CIDR (kube-apiserver's --service-cluster-ip-range), repeatable for dual-stack (default "+DefaultServiceCIDR.String()+")")
	fs.StringVar(&k.netpol, "network-policy", "on", "--kube: on: the engine enforces the cluster's NetworkPolicies on this node's pods; off: no NetworkPolicy (every pod reaches every other, as with flannel alone)")
	fs.BoolVar(&k.polLogDenied, "policy-log-denied", false, "--kube: log the first packet of every flow a NetworkPolicy denies (at most 10 a second)")
	fs.StringVar(&k.subnetEnv, "subnet-env", daemon.DefaultSubnetEnv, "where --kube writes flannel's subnet.env (empty: none)")
}

// run runs the daemon in Kubernetes mode; exit status as runDaemon's.
func (k *kubeFlags) run(cfg daemon.Config, fs *flag.FlagSet, stderr io.Writer) int {
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "podrouter daemon: "+format+"\n", a...)
		return code
	}
	ko := daemon.KubeOptions{Kubeconfig: k.kubeconfig, NodeName: k.nodeName, Iface: k.iface, CNIConf: k.cniConf, SubnetEnv: k.subnetEnv, CNIDataDir: k.cniData,
		TrustAnnotatedEndpoints: k.trustEPs, FirstRead: k.firstRead}
	ipMasqSet := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "mtu":
			ko.MTUSet = true
		case "ip-masq":
			ipMasqSet = true
		case "direct-routing":
			k.directRoutingSet = true
		}
	})
	if ko.NodeName == "" {
		return fail(2, "--node-name: required with --kube (or $NODE_NAME)")
	}
	if k.firstRead <= 0 {
		return fail(2, "--kube-first-read %v: want a positive duration", k.firstRead)
	}
	switch k.services {
	case "on":
		cfg.Services.CIDRs = k.svcCIDRs
		if len(cfg.Services.CIDRs) == 0 {
			cfg.Services.CIDRs = []netip.Prefix{DefaultServiceCIDR}
		}
	case "off": // --service-cidr with it: daemonConflicts
	default:
		return fail(2, "--services %q: want on or off", k.services)
	}
	switch k.netpol {
	case "on":
		cfg.Policy = node.PolicyConfig{Enabled: true, LogDenied: k.polLogDenied}
	case "off": // --policy-log-denied with it: daemonConflicts
	default:
		return fail(2, "--network-policy %q: want on or off", k.netpol)
	}
	nc, err := k.loadNetConf(cfg, ipMasqSet)
	if err != nil {
		return fail(2, "%v", err)
	}
	ko.NetConf = nc
	if k.cniChain != "" {
		if ko.CNIChain, err = daemon.LoadCNIChain(k.cniChain); err != nil {
			return fail(2, "--cni-chain: %v", err)
		}
	}
	if k.publicIP != "" {
		if ko.PublicIP, err = netip.ParseAddr(k.publicIP); err != nil || ko.PublicIP.Zone() != "" {
			return fail(2, "--public-ip %q: not an IP address", k.publicIP)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.RunKube(ctx, cfg, ko); err != nil {
		return fail(1, "%v", err)
	}
	return 0
}

// loadNetConf reads --net-conf (its warnings logged once on cfg.Logger)
// and applies the flags that override it: --backend, --underlay-port and,
// when given (ipMasqSet), --ip-masq. Errors name the flag.
func (k *kubeFlags) loadNetConf(cfg daemon.Config, ipMasqSet bool) (kube.NetConf, error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	nc, err := kube.LoadNetConf(k.netConf, log.Named("net-conf"))
	if err != nil {
		return kube.NetConf{}, fmt.Errorf("--net-conf: %w", err)
	}
	if k.backend != "" {
		e, err := kube.ParseBackend(k.backend)
		if err != nil {
			return kube.NetConf{}, fmt.Errorf("--backend: %w", err)
		}
		if e != nc.Backend {
			nc.Backend, nc.Port, nc.VNI = e, e.DefaultPort(), 0
			if e == kube.BackendVXLAN {
				nc.VNI = underlay.DefaultVNI
			}
		}
	}
	if k.port != 0 {
		if k.port > 65535 {
			return kube.NetConf{}, fmt.Errorf("--underlay-port %d: out of range 1..65535", k.port)
		}
		nc.Port = uint16(k.port)
	}
	if ipMasqSet {
		nc.Masquerade = !cfg.Egress.NoMasquerade
	}
	if k.directRoutingSet {
		nc.DirectRouting = k.directRouting
	}
	if nc.DirectRouting && nc.Backend != kube.BackendVXLAN {
		if k.directRoutingSet {
			return kube.NetConf{}, fmt.Errorf("--direct-routing: only with the vxlan backend (backend is %s)", nc.Backend)
		}
		nc.DirectRouting = false // net-conf's, for vxlan; --backend changed it
	}
	return nc, nil
}

// static configures the underlay and its static peers from --peers,
// --backend, --public-ip and --underlay-port (without --kube).
func (k *kubeFlags) static(cfg *daemon.Config) error {
	if k.peersFile == "" {
		return nil
	}
	name := "vxlan"
	if k.backend != "" {
		name = k.backend
	}
	kind, err := node.LookupBackend(name)
	if err != nil {
		return fmt.Errorf("--backend: %w", err)
	}
	ip, err := netip.ParseAddr(k.publicIP)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("--public-ip %q: required with --peers: the underlay address", k.publicIP)
	}
	port := kind.DefaultPort
	if k.port != 0 {
		if k.port > 65535 {
			return fmt.Errorf("--underlay-port %d: out of range 1..65535", k.port)
		}
		port = uint16(k.port)
	}
	peers, err := daemon.LoadPeers(k.peersFile)
	if err != nil {
		return fmt.Errorf("--peers: %w", err)
	}
	for _, q := range peers {
		if q.Addr.Port() == 0 && kind.DefaultPort != 0 {
			return fmt.Errorf("--peers: peer %s: endpoint %s: want IP:port (the %s backend)", q.Name, q.Addr.Addr(), kind.Name)
		}
	}
	if k.directRouting && kind.Name != "vxlan" {
		return fmt.Errorf("--direct-routing: only with --backend vxlan (backend is %s)", kind.Name)
	}
	cfg.Underlay = daemon.UnderlayConfig{Backend: kind.Name, Listen: netip.AddrPortFrom(ip, port), Peers: peers, DirectRouting: k.directRouting}
	return nil
}
