// Command e2e is podrouter's end-to-end benchmark harness (make bench-e2e).
// Each case builds the same topology several ways in one run -- a kernel
// baseline and podrouter -- measures it with iperf3 and prints one line per
// implementation:
//
//	case=<case> impl=<impl> tcp_gbps=<x> udp_kpps=<y> cpu_per_gbps=<z>
//
// (cpu_per_gbps: CPU-seconds per second, i.e. cores busy, per Gbit/s of
// the TCP stream, counted per process: see measure) followed by each
// implementation's ratio to the case's baseline. With
// -runs N each case runs N times: every run's lines carry run=<i>, and the
// untagged lines that follow give each number's median and the median of
// the runs' ratios (each ratio is taken within one run, so the baseline's
// run-to-run variation does not enter it). It needs root (network namespaces, TAP devices) and iperf3; traffic stays inside
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
	Impl       string
	TCPGbps    float64
	UDPKpps    float64
	CPUPerGbps float64 // cores busy per Gbit/s during the TCP stream (measure)
}

// Case is one benchmark topology measured several ways.
type Case struct {
	Name string
	// Baselines are the Impls the ratios may be taken against: the first
	// one a run measured (a case may have a baseline this machine cannot
	// build, and a fallback).
	Baselines []string
	Run       func(ctx context.Context, opt Options) ([]Result, error)
}

// Options are the harness flags every case sees.
type Options struct {
	Duration    time.Duration // per iperf3 measurement
	Podrouter   string        // path of the podrouter binary
	WireGuardGo string        // path of wireguard-go (make tools)
}

var cases []Case

func register(c Case) { cases = append(cases, c) }

func main() {
	var opt Options
	only := flag.String("case", "", "comma-separated cases to run (default: all)")
	flag.DurationVar(&opt.Duration, "duration", 5*time.Second, "iperf3 time per measurement")
	flag.StringVar(&opt.Podrouter, "podrouter", "bin/podrouter", "podrouter binary")
	flag.StringVar(&opt.WireGuardGo, "wireguard-go", ".cache/bin/wireguard", "wireguard-go binary (make tools), the userspace WireGuard baseline")
	runs := flag.Int("runs", 1, "times each case runs (more than one: per-run lines, then medians)")
	flag.Parse()
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "bench-e2e: -runs must be at least 1")
		os.Exit(2)
	}
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
		var all [][]Result
		for i := 1; i <= *runs; i++ {
			res, err := c.Run(ctx, opt)
			if err != nil {
				fmt.Fprintf(os.Stderr, "case=%s error: %v\n", c.Name, err)
				failed = true
				break
			}
			if *runs > 1 {
				report(c, res, ratios(c, res), fmt.Sprintf(" run=%d", i))
			}
			all = append(all, res)
		}
		if len(all) == *runs {
			med, rat := medians(c, all)
			report(c, med, rat, "")
		}
	}
	if failed {
		os.Exit(1)
	}
}

// ratio is an implementation's numbers over the baseline's (0: not
// measured by one of them).
type ratio struct {
	Impl, Baseline string
	TCP, UDP       float64
}

// ratios returns each non-baseline implementation's ratio to the case's
// first baseline in res (none when no baseline is there).
func ratios(c Case, res []Result) []ratio {
	i := -1
	for _, b := range c.Baselines {
		if i = slices.IndexFunc(res, func(r Result) bool { return r.Impl == b }); i >= 0 {
			break
		}
	}
	if i < 0 {
		return nil
	}
	base := res[i]
	var out []ratio
	for _, r := range res {
		if r.Impl == base.Impl {
			continue
		}
		q := ratio{Impl: r.Impl, Baseline: base.Impl}
		if r.TCPGbps > 0 && base.TCPGbps > 0 {
			q.TCP = r.TCPGbps / base.TCPGbps
		}
		if r.UDPKpps > 0 && base.UDPKpps > 0 {
			q.UDP = r.UDPKpps / base.UDPKpps
		}
		out = append(out, q)
	}
	return out
}

// medians returns, over the runs, each implementation's median numbers and
// the median of its per-run ratios. An implementation missing from some
// runs (its setup failed there) has the median of the runs it is in.
func medians(c Case, runs [][]Result) ([]Result, []ratio) {
	var impls []string
	for _, res := range runs {
		for _, r := range res {
			if !slices.Contains(impls, r.Impl) {
				impls = append(impls, r.Impl)
			}
		}
	}
	var res []Result
	var rat []ratio
	for _, impl := range impls {
		var tcp, udp, cpu, rtcp, rudp []float64
		base := ""
		for _, run := range runs {
			for _, r := range run {
				if r.Impl == impl {
					tcp, udp, cpu = append(tcp, r.TCPGbps), append(udp, r.UDPKpps), append(cpu, r.CPUPerGbps)
				}
			}
			for _, q := range ratios(c, run) {
				if q.Impl == impl && (base == "" || q.Baseline == base) {
					rtcp, rudp, base = append(rtcp, q.TCP), append(rudp, q.UDP), q.Baseline
				}
			}
		}
		res = append(res, Result{Impl: impl, TCPGbps: median(tcp), UDPKpps: median(udp), CPUPerGbps: median(cpu)})
		if len(rtcp) > 0 {
			rat = append(rat, ratio{Impl: impl, Baseline: base, TCP: median(rtcp), UDP: median(rudp)})
		}
	}
	return res, rat
}

// median of the non-zero values (0 when there are none).
func median(v []float64) float64 {
	v = slices.DeleteFunc(slices.Clone(v), func(x float64) bool { return x == 0 })
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// report prints res and rat, each line tagged with tag after the case.
func report(c Case, res []Result, rat []ratio, tag string) {
	for _, r := range res {
		line := fmt.Sprintf("case=%s%s impl=%s", c.Name, tag, r.Impl)
		if r.TCPGbps > 0 {
			line += fmt.Sprintf(" tcp_gbps=%.2f", r.TCPGbps)
		}
		if r.UDPKpps > 0 {
			line += fmt.Sprintf(" udp_kpps=%.1f", r.UDPKpps)
		}
		if r.CPUPerGbps > 0 {
			line += fmt.Sprintf(" cpu_per_gbps=%.3f", r.CPUPerGbps)
		}
		fmt.Println(line)
	}
	for _, q := range rat {
		line := fmt.Sprintf("case=%s%s ratio=%s/%s", c.Name, tag, q.Impl, q.Baseline)
		if q.TCP > 0 {
			line += fmt.Sprintf(" tcp=%.2f", q.TCP)
		}
		if q.UDP > 0 {
			line += fmt.Sprintf(" udp=%.2f", q.UDP)
		}
		fmt.Println(line)
	}
}
