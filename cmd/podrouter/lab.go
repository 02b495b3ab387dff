package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/podrouter/podrouter/netstackx/lab"
	"github.com/podrouter/podrouter/router/node"
)

func init() {
	register(command{
		name:    "lab",
		summary: "build a lab cluster (N nodes x M pods) in this process, check every pod pair, measure throughput",
		run:     runLab,
	})
}

// shapeFlags are the lab flags a topology file replaces.
var shapeFlags = []string{"nodes", "pods", "cluster-cidr", "cluster-cidr6", "pod-cidr", "pod-cidr6", "no-ipv6", "backend", "underlay-mtu", "mtu", "pod-mode"}

func runLab(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "exec" {
		return runLabExec(args[1:], stdout, stderr)
	}
	var cfg lab.Config
	var lf logFlags
	var backend, podMode, topology string
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.IntVar(&cfg.Nodes, "nodes", 1, "number of nodes (1..64), each with its own engine, podCIDR and underlay")
	fs.IntVar(&cfg.Pods, "pods", 4, "pods per node (2..250 on one node, 1..250 on several)")
	fs.StringVar(&podMode, "pod-mode", "virtual", "virtual (gVisor netstacks, no privileges) or netns (namespaces with TAPs, as root)")
	fs.StringVar(&backend, "backend", "vxlan", "underlay backend between nodes: "+strings.Join(slices.DeleteFunc(node.BackendNames(), func(s string) bool { return s == node.BackendHostGW }), ", "))
	fs.Var(prefixFlag{&cfg.ClusterCIDR}, "cluster-cidr", "cluster CIDR (default 10.244.0.0/16)")
	fs.Var(prefixFlag{&cfg.ClusterCIDR6}, "cluster-cidr6", "IPv6 cluster CIDR (default: --pod-cidr6 widened by 8 bits)")
	fs.Var(prefixFlag{&cfg.PodCIDR}, "pod-cidr", "the first node's podCIDR, inside the cluster CIDR; node i gets the i-th next (default: the cluster CIDR's first /24)")
	fs.Var(prefixFlag{&cfg.PodCIDR6}, "pod-cidr6", "the first node's IPv6 podCIDR; node i gets the i-th next (default fd00:10:244::/64)")
	fs.BoolVar(&cfg.NoIPv6, "no-ipv6", false, "IPv4 only: no IPv6 addresses or checks")
	fs.IntVar(&cfg.MTU, "mtu", 0, "pod MTU, 1280..65535 (default 1500 on one node, the underlay MTU less the encapsulation overhead on several)")
	fs.IntVar(&cfg.UnderlayMTU, "underlay-mtu", 1500, "the underlay's MTU (576..65535): peer ports get it less 28 (udp) or 50 (vxlan)")
	fs.StringVar(&topology, "topology", "", "YAML file describing the lab's nodes, pods, CIDRs and backend (replaces the flags above)")
	fs.DurationVar(&cfg.Duration, "duration", lab.DefaultDuration, "TCP throughput measurement time (0 skips it)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5e9, "time limit of each pair's checks")
	fs.IntVar(&cfg.Parallel, "parallel", 8, "pairs checked at once")
	fs.BoolVar(&cfg.Hold, "hold", false, "keep the lab running after the report until interrupted (for podrouter lab exec)")
	fs.StringVar(&cfg.StateFile, "state", lab.DefaultStateFile(), "state file of a held lab")
	lf.register(fs, "warn")
	if rc := parseFlags(fs, "Usage: podrouter lab [flags]\n"+
		"       podrouter lab exec [--state FILE] POD -- COMMAND [ARGS...]\n\n"+
		"Builds a cluster in this process: --nodes engines, each with its podCIDR carved\n"+
		"from the cluster CIDR, joined by UDP underlays over 127.0.0.1 (udp or vxlan\n"+
		"encapsulation), and --pods pods per node: virtual pods (gVisor netstacks, no\n"+
		"privileges) or, with --pod-mode netns, network namespaces with TAPs (as root).\n"+
		"Checks every ordered pod pair with ICMP echo, a TCP echo and a UDP echo (IPv4 and\n"+
		"IPv6), prints the pod x pod matrix, measures TCP throughput within a node and\n"+
		"across nodes, and prints the engines' and underlays' counters.\n"+
		"Exits 0 when every check passed, 1 naming the failed pairs otherwise, 2 on bad flags.\n\n"+
		"With --hold the lab keeps running after the report until interrupted; 'lab exec'\n"+
		"then runs a command inside one of its netns pods.\n\nFlags:\n", args, stdout, stderr); rc >= 0 {
		return rc
	}
	log := lf.logger("lab", stderr)
	if log == nil {
		return 2
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log
	if topology != "" {
		var clash string
		fs.Visit(func(f *flag.Flag) {
			for _, s := range shapeFlags {
				if f.Name == s && clash == "" {
					clash = f.Name
				}
			}
		})
		if clash != "" {
			fmt.Fprintf(stderr, "podrouter lab: --%s: not allowed with --topology (the file sets the lab's shape)\n", clash)
			return 2
		}
		if err := lab.LoadTopologyFile(topology, &cfg); err != nil {
			fmt.Fprintf(stderr, "podrouter lab: --topology %s\n", firstLine(err.Error()))
			return 2
		}
	} else {
		var err error
		if cfg.Nodes < 1 { // zero means the default to Validate; here it was typed
			fmt.Fprintf(stderr, "podrouter lab: --nodes %d: want 1..%d\n", cfg.Nodes, lab.MaxNodes)
			return 2
		}
		if _, err := node.LookupBackend(backend); err != nil {
			fmt.Fprintf(stderr, "podrouter lab: --%v\n", err)
			return 2
		}
		cfg.Backend = backend
		if cfg.PodMode, err = lab.ParsePodMode(podMode); err != nil {
			fmt.Fprintf(stderr, "podrouter lab: --pod-mode %v\n", err)
			return 2
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "podrouter lab: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := lab.Run(ctx, cfg, stdout); err != nil {
		fmt.Fprintf(stderr, "podrouter lab: %v\n", err)
		return 1
	}
	return 0
}

// runLabExec runs a command inside a pod of a held lab and exits with its
// status.
func runLabExec(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab exec", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	state := fs.String("state", lab.DefaultStateFile(), "state file of the held lab")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, "Usage: podrouter lab exec [--state FILE] POD -- COMMAND [ARGS...]\n\n"+
				"Runs COMMAND inside the network namespace of POD, a pod of the lab that\n"+
				"'podrouter lab --hold --pod-mode netns' is holding. Exits with COMMAND's status\n"+
				"(2 on bad arguments, 1 when the pod or the lab is not there).\n\nFlags:\n")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "podrouter lab exec: %s\n", firstLine(err.Error()))
		return 2
	}
	rest := fs.Args()
	if len(rest) < 3 || rest[1] != "--" {
		fmt.Fprintln(stderr, "podrouter lab exec: want POD -- COMMAND [ARGS...]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, err := lab.ExecCommand(ctx, *state, rest[0], rest[2:])
	if err != nil {
		fmt.Fprintf(stderr, "podrouter lab exec: %v\n", err)
		return 1
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(stderr, "podrouter lab exec: %v\n", err)
		return 1
	}
	return 0
}
