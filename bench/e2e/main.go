// Command e2e is podrouter's end-to-end benchmark harness (make bench-e2e).
// Each case builds the same topology several ways in one run -- a kernel
// baseline and podrouter -- measures it with iperf3 and prints one line per
// implementation:
//
//	case=<case> impl=<impl> tcp_gbps=<x> udp_kpps=<y>
//
// followed by each implementation's ratio to the case's baseline. It needs
// root (network namespaces, TAP devices) and iperf3; traffic stays inside
// namespaces it creates. Cases register themselves from their own files.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Result is one implementation's numbers in a case. A zero field was not
// measured by that case.
type Result struct {
	Impl    string
	TCPGbps float64
	UDPKpps float64
}

// Case is one benchmark topology measured several ways.
type Case struct {
	Name     string
	Baseline string // the Impl the ratios are taken against
	Run      func(ctx context.Context, opt Options) ([]Result, error)
}

// Options are the harness flags every case sees.
type Options struct {
	Duration  time.Duration // per iperf3 measurement
	Podrouter string        // path of the podrouter binary
}

var cases []Case

func register(c Case) { cases = append(cases, c) }

func main() {
	var opt Options
	only := flag.String("case", "", "comma-separated cases to run (default: all)")
	flag.DurationVar(&opt.Duration, "duration", 5*time.Second, "iperf3 time per measurement")
	flag.StringVar(&opt.Podrouter, "podrouter", "bin/podrouter", "podrouter binary")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-e2e: needs root (network namespaces and TAP devices)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	want := map[string]bool{}
	for _, c := range strings.Split(*only, ",") {
		if c != "" {
			want[c] = true
		}
	}
	slices.SortFunc(cases, func(a, b Case) int { return strings.Compare(a.Name, b.Name) })
	failed := false
	for _, c := range cases {
		if len(want) > 0 && !want[c.Name] {
			continue
		}
		res, err := c.Run(ctx, opt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case=%s error: %v\n", c.Name, err)
			failed = true
			continue
		}
		report(c, res)
	}
	if failed {
		os.Exit(1)
	}
}

func report(c Case, res []Result) {
	var base *Result
	for i := range res {
		if res[i].Impl == c.Baseline {
			base = &res[i]
		}
	}
	for _, r := range res {
		line := fmt.Sprintf("case=%s impl=%s", c.Name, r.Impl)
		if r.TCPGbps > 0 {
			line += fmt.Sprintf(" tcp_gbps=%.2f", r.TCPGbps)
		}
		if r.UDPKpps > 0 {
			line += fmt.Sprintf(" udp_kpps=%.1f", r.UDPKpps)
		}
		fmt.Println(line)
	}
	if base == nil {
		return
	}
	for _, r := range res {
		if r.Impl == base.Impl {
			continue
		}
		line := fmt.Sprintf("case=%s ratio=%s/%s", c.Name, r.Impl, base.Impl)
		if r.TCPGbps > 0 && base.TCPGbps > 0 {
			line += fmt.Sprintf(" tcp=%.2f", r.TCPGbps/base.TCPGbps)
		}
		if r.UDPKpps > 0 && base.UDPKpps > 0 {
			line += fmt.Sprintf(" udp=%.2f", r.UDPKpps/base.UDPKpps)
		}
		fmt.Println(line)
	}
}
