package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/lab"
)

func init() {
	register(command{
		name:    "lab",
		summary: "build a lab node of virtual pods in this process, check every pod pair, measure throughput",
		run:     runLab,
	})
}

func runLab(args []string, stdout, stderr io.Writer) int {
	var cfg lab.Config
	var lf logFlags
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(prefixFlag{&cfg.ClusterCIDR}, "cluster-cidr", "cluster CIDR (default 10.244.0.0/16)")
	fs.Var(prefixFlag{&cfg.PodCIDR}, "pod-cidr", "this node's podCIDR, inside the cluster CIDR (default: its first /24)")
	fs.Var(prefixFlag{&cfg.PodCIDR6}, "pod-cidr6", "this node's IPv6 podCIDR (default fd00:10:244::/64)")
	fs.BoolVar(&cfg.NoIPv6, "no-ipv6", false, "IPv4 only: no IPv6 addresses or checks")
	fs.IntVar(&cfg.Pods, "pods", 4, "number of virtual pods (2..250)")
	fs.IntVar(&cfg.MTU, "mtu", 1500, "pod MTU (1280..65535)")
	fs.DurationVar(&cfg.Duration, "duration", lab.DefaultDuration, "TCP throughput measurement time (0 skips it)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5e9, "time limit of each pair's checks")
	fs.IntVar(&cfg.Parallel, "parallel", 8, "pairs checked at once")
	lf.register(fs, "warn")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, "Usage: podrouter lab [flags]\n\n"+
				"Builds one node in this process, without privileges: the engine with its podCIDR\n"+
				"and gateway, and virtual pods (gVisor netstacks) on L2 ports. Checks every ordered\n"+
				"pod pair with ICMP echo, a TCP echo and a UDP echo (IPv4 and IPv6), measures TCP\n"+
				"throughput from pod-0 to pod-1, and prints the results and the engine's counters.\n"+
				"Exits 0 when every check passed, 1 naming the failed pairs otherwise, 2 on bad flags.\n\nFlags:\n")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "podrouter lab: %s\n", firstLine(err.Error()))
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "podrouter lab: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log, err := lf.build(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "podrouter lab: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log
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
