package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/daemon"
	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(command{
		name:    "daemon",
		summary: "run the node daemon: the engine, the uplink, the pods' ports and the local API for the CNI plugin",
		run:     runDaemon,
	})
}

// listFlag collects repeated (or comma-separated) values, each checked by
// parse when set.
type listFlag[T fmt.Stringer] struct {
	xs    *[]T
	parse func(string) (T, error)
}

// prefixListFlag collects prefixes, checked as prefixFlag does.
func prefixListFlag(ps *[]netip.Prefix) listFlag[netip.Prefix] {
	return listFlag[netip.Prefix]{ps, func(s string) (p netip.Prefix, err error) {
		err = prefixFlag{&p}.Set(s)
		return p, err
	}}
}

// addrListFlag collects IP addresses.
func addrListFlag(as *[]netip.Addr) listFlag[netip.Addr] {
	return listFlag[netip.Addr]{as, func(s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return a, errors.New("not an IP address")
		}
		return a, nil
	}}
}

func (f listFlag[T]) String() string {
	if f.xs == nil {
		return ""
	}
	var s []string
	for _, x := range *f.xs {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}

func (f listFlag[T]) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		x, err := f.parse(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
		*f.xs = append(*f.xs, x)
	}
	return nil
}

// listenAddrFlag holds the metrics listener's address: IP:PORT ([IPv6]:PORT),
// :PORT for every address, or "" / "off" for none (the zero AddrPort).
type listenAddrFlag struct{ ap *netip.AddrPort }

func (f listenAddrFlag) String() string { return flagText(f.ap, "off") }

func (f listenAddrFlag) Set(s string) error {
	switch {
	case s == "" || s == "off":
		*f.ap = netip.AddrPort{}
		return nil
	case strings.HasPrefix(s, ":"):
		s = "[::]" + s
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" {
		return fmt.Errorf("want IP:PORT, [IPv6]:PORT, :PORT or off")
	}
	*f.ap = ap
	return nil
}

func runDaemon(args []string, stdout, stderr io.Writer) int {
	var cfg daemon.Config
	cfg.MetricsAddr = daemon.DefaultMetricsAddr
	var lf logFlags
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.Var(prefixFlag{&cfg.PodCIDR}, "pod-cidr", "this node's IPv4 podCIDR (required), e.g. 10.244.1.0/24; its first address is the pods' gateway")
	fs.Var(prefixFlag{&cfg.PodCIDR6}, "pod-cidr6", "this node's IPv6 podCIDR (optional)")
	fs.Var(prefixListFlag(&cfg.ClusterCIDRs), "cluster-cidr", "cluster CIDR, repeatable (default: the podCIDRs); unrouted destinations inside it are unreachable")
	fs.Var(addrListFlag(&cfg.NodeIPs), "node-ip", "the node's own address, repeatable: pods reach it through the uplink, and the node reaches its pods from it (default: the uplink takes everything outside the cluster)")
	fs.StringVar(&cfg.StateDir, "state-dir", daemon.DefaultStateDir, "directory of the attachment records (locked while the daemon runs)")
	fs.StringVar(&cfg.Socket, "socket", api.DefaultSocket, "local API socket (its directory is made 0700, the socket 0600)")
	fs.StringVar(&cfg.Uplink, "uplink", daemon.DefaultUplink, "name of the uplink TUN device in this network namespace")
	fs.IntVar(&cfg.MTU, "mtu", daemon.DefaultMTU, "pods' default MTU and the uplink's MTU (1280..65535)")
	registerEgressFlags(fs, &cfg.Egress)
	var kf kubeFlags
	kf.register(fs)
	fs.Var(listenAddrFlag{&cfg.MetricsAddr}, "metrics-addr", "where to serve /metrics, /healthz and /readyz over HTTP: IP:PORT, :PORT (every address), or off")
	fs.BoolVar(&cfg.MetricsPerPeer, "metrics-per-peer", false, "give every peer node its own port and underlay-drop series (default: the peers summed, so a node's series do not grow with the cluster)")
	lf.register(fs, "info")
	if rc := parseFlags(fs, "Usage: podrouter daemon --pod-cidr CIDR [flags]\n       podrouter daemon --kube [flags]   (Kubernetes mode: README \"Kubernetes mode\")\n\n"+
		"Runs the node daemon in this network namespace: the engine with the podCIDR and\n"+
		"its gateway, the uplink TUN (routes to the podCIDRs), and the local API on a\n"+
		"root-only unix socket that podrouter-cni attaches pods through. Pods recorded in\n"+
		"the state directory are re-attached at start, without CNI. Prometheus metrics,\n"+
		"/healthz and /readyz are served over HTTP on --metrics-addr (/readyz answers 503\n"+
		"until the routes are synced, the uplink is up, the API serves and the recorded\n"+
		"pods are re-attached, and again while stopping). SIGTERM or SIGINT stops it\n"+
		"cleanly: the pods keep their interfaces for the next start.\n"+
		"Every flag can also come from the environment: --pod-cidr from $PODROUTER_POD_CIDR,\n"+
		"--kube from $PODROUTER_KUBE, and so on (upper case, '-' as '_'); a flag given on\n"+
		"the command line wins.\n"+
		"Exits 0 after a clean stop, 1 when it fails, 2 on bad flags.\n\nFlags:\n", args, stdout, stderr); rc >= 0 {
		return rc
	}
	fromEnv, err := flagsFromEnv(fs, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 2
	}
	log := lf.logger("daemon", stderr)
	if log == nil {
		return 2
	}
	defer func() { _ = log.Sync() }()
	defer routeKlog(log)()
	cfg.Logger = log
	if err := daemonConflicts(fs, fromEnv, kf.on); err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 2
	}
	if kf.on {
		return kf.run(cfg, fs, stderr)
	}
	if err := kf.static(&cfg); err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "podrouter daemon: %v\n", err)
		return 1
	}
	return 0
}

// daemonConflicts refuses flags given (on the command line or from the
// environment) that make no sense together, naming the first conflict:
// each mode takes its inputs from one place, and a flag the mode would
// ignore or overwrite is an operator's mistake, not a no-op. A flag set
// from the environment (fromEnv) is named with its variable.
func daemonConflicts(fs *flag.FlagSet, fromEnv map[string]bool, kube bool) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	value := func(name string) string { return fs.Lookup(name).Value.String() }
	conflict := func(names []string, why string) error {
		for _, n := range names {
			if given[n] {
				if fromEnv[n] {
					return fmt.Errorf("--%s %q (from $%s): %s", n, value(n), envName(n), why)
				}
				return fmt.Errorf("--%s %q: %s", n, value(n), why)
			}
		}
		return nil
	}
	var errs []error
	if given["metrics-per-peer"] && value("metrics-addr") == "off" {
		errs = append(errs, errors.New("--metrics-per-peer: given with --metrics-addr off (no metrics are served)"))
	}
	if kube {
		errs = append(errs,
			conflict([]string{"pod-cidr", "pod-cidr6"}, "given with --kube, which takes the podCIDRs from this node's Node (spec.podCIDRs)"),
			conflict([]string{"cluster-cidr"}, "given with --kube, which takes the cluster CIDR from --net-conf's Network (and IPv6Network)"),
			conflict([]string{"peers"}, "given with --kube, which takes the peers from the cluster's Nodes"))
		if given["policy-log-denied"] && value("network-policy") == "off" {
			errs = append(errs, errors.New("--policy-log-denied: given with --network-policy=off (nothing is enforced, nothing denied)"))
		}
		if given["service-cidr"] && value("services") == "off" {
			errs = append(errs, fmt.Errorf("--service-cidr %q: given with --services=off (the engine then has no Service CIDR)", value("service-cidr")))
		}
	} else {
		errs = append(errs,
			conflict([]string{"services", "service-cidr"}, "Services come from the cluster; they need --kube"),
			conflict([]string{"network-policy", "policy-log-denied"}, "NetworkPolicies come from the cluster; they need --kube"),
			conflict([]string{"kubeconfig", "node-name", "net-conf", "iface", "cni-conf", "cni-data-dir", "cni-chain", "subnet-env", "trust-annotated-endpoints", "kube-first-read"},
				"only with --kube (Kubernetes mode)"))
		if !given["pod-cidr"] {
			errs = append(errs, errors.New("--pod-cidr: required (the node's IPv4 podCIDR), or --kube to take it from the node's Node"))
		}
		if !given["peers"] {
			errs = append(errs, conflict([]string{"backend", "underlay-port", "public-ip", "direct-routing"}, "only with --kube or --peers (without them the node has no underlay)"))
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
