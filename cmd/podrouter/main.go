// Command podrouter is the podrouter node agent, its lab mode and its
// operator CLI. main stays thin: flags -> config -> run.
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

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/lab"
)

const usage = `podrouter: a userspace virtual router for Kubernetes pod networking.

Usage:
  podrouter lab [flags]     build a node of virtual pods in this process, check every
                            pod pair (ICMP, TCP, UDP, IPv4 and IPv6), measure TCP
                            throughput, print a report; exit 0 when all is well
  podrouter help [command]  show help

Run 'podrouter help lab' for the lab's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "lab":
		return runLab(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[1] == "lab" {
			return runLab([]string{"-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "podrouter: unknown command %q (try 'podrouter help')\n", args[0])
		return 2
	}
}

// prefixFlag is a flag.Value holding a netip.Prefix, validated when parsed.
type prefixFlag struct{ p *netip.Prefix }

func (f prefixFlag) String() string {
	if f.p == nil || !f.p.IsValid() {
		return ""
	}
	return f.p.String()
}

func (f prefixFlag) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("not a CIDR prefix")
	}
	if p != p.Masked() {
		return fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	*f.p = p
	return nil
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet, defLevel string) {
	fs.StringVar(&l.level, "log-level", defLevel, "log level: debug, info, warn, error")
	fs.StringVar(&l.format, "log-format", "console", "log format: console or json")
}

func (l *logFlags) build(stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(l.level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch l.format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", l.format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)), nil
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

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
