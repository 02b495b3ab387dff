package lab

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/underlay"
)

// Run starts a lab, checks it, measures it, writes the report to out and
// closes it; with hold, it keeps the lab until ctx ends, after writing a
// state file for `podrouter lab exec` (see Hold). The error is non-nil when
// any check failed.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Result, error) {
	l, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	res := l.Report(ctx, out)
	fails := res.Failures()
	if l.cfg.Hold {
		if err := l.Hold(ctx, out); err != nil {
			return res, err
		}
	}
	if len(fails) > 0 {
		return res, fmt.Errorf("lab: %d checks failed", len(fails))
	}
	return res, nil
}

// Report runs the checks and measurements on a started lab and writes the
// report to out.
func (l *Lab) Report(ctx context.Context, out io.Writer) *Result {
	cfg := l.cfg
	multi := len(l.Nodes) > 1
	l.writeHeader(out)
	res := &Result{Pairs: l.CheckPairs(ctx)}
	if len(res.Pairs) > 0 {
		writeMatrix(out, l.pods, res.Pairs)
		if !multi {
			fmt.Fprintln(out)
			writePairs(out, res.Pairs)
		}
		writeRTT(out, res.Pairs, multi)
	}
	if cfg.Duration > 0 {
		same, cross := l.throughputPairs()
		if same[0] != nil {
			res.Throughput, res.ThroughErr = Throughput(ctx, same[0], same[1], cfg.Duration)
			if res.ThroughErr == nil {
				where := ""
				if multi {
					where = " (same node)"
				}
				fmt.Fprintf(out, "\nthroughput %s -> %s TCP%s: %.2f Gbit/s over %s\n", same[0].Name(), same[1].Name(), where, res.Throughput, cfg.Duration)
			}
		}
		if cross[0] != nil {
			res.CrossThroughput, res.CrossErr = Throughput(ctx, cross[0], cross[1], cfg.Duration)
			if res.CrossErr == nil {
				nl := "\n"
				if same[0] != nil && res.ThroughErr == nil {
					nl = ""
				}
				fmt.Fprintf(out, "%sthroughput %s -> %s TCP (cross node, %s): %.2f Gbit/s over %s\n", nl, cross[0].Name(), cross[1].Name(), cfg.Backend, res.CrossThroughput, cfg.Duration)
			}
		}
	}
	for _, n := range l.Nodes {
		if multi {
			fmt.Fprintf(out, "\nnode %s:", n.Name)
		}
		writeCounters(out, n.Eng)
		if n.Underlay != nil {
			writeUnderlay(out, n.Underlay)
		}
	}
	fails := res.Failures()
	okPairs := 0
	for _, p := range res.Pairs {
		if len(p.Failed()) == 0 {
			okPairs++
		}
	}
	fmt.Fprintf(out, "\nresult: %d/%d pairs ok", okPairs, len(res.Pairs))
	if len(fails) == 0 {
		fmt.Fprintln(out, ": PASS")
	} else {
		fmt.Fprintln(out, ": FAIL")
		for _, f := range fails {
			fmt.Fprintf(out, "FAIL %s\n", f)
		}
	}
	return res
}

func (l *Lab) writeHeader(out io.Writer) {
	cfg := l.cfg
	if len(l.Nodes) == 1 {
		n := l.Nodes[0]
		fmt.Fprintf(out, "podrouter lab: 1 node, podCIDR %s", n.PodCIDR)
		if n.PodCIDR6.IsValid() {
			fmt.Fprintf(out, " + %s", n.PodCIDR6)
		}
		fmt.Fprintf(out, ", gateway %s, %d %s pods, MTU %d\n\n", n.Eng.Gateway(), len(l.pods), cfg.PodMode, cfg.MTU)
	} else {
		fmt.Fprintf(out, "podrouter lab: %d nodes, %d %s pods, backend %s over 127.0.0.1 (underlay MTU %d, peer MTU %d, pod MTU %d), cluster CIDR %s",
			len(l.Nodes), len(l.pods), cfg.PodMode, cfg.Backend, cfg.UnderlayMTU, l.Nodes[0].Node.Backend().MTU(), cfg.MTU, cfg.ClusterCIDR)
		if cfg.ClusterCIDR6.IsValid() {
			fmt.Fprintf(out, " + %s", cfg.ClusterCIDR6)
		}
		fmt.Fprint(out, "\n\n")
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPODCIDR\tPODCIDR6\tGATEWAY\tUNDERLAY\tVTEP MAC\tGSO/GRO")
		for _, n := range l.Nodes {
			p6, mac := "-", "-"
			if n.PodCIDR6.IsValid() {
				p6 = n.PodCIDR6.String()
			}
			offl := "-"
			if n.Underlay != nil {
				if n.Underlay.Encap() == underlay.EncapVXLAN {
					mac = n.Underlay.VTEPMAC().String()
				}
				gso, gro := n.Underlay.Offloads()
				offl = onOff(gso) + "/" + onOff(gro)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.PodCIDR, p6, n.Eng.Gateway(), n.Node.Backend().LocalAddr(), mac, offl)
		}
		_ = tw.Flush()
		fmt.Fprintln(out)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	ns := cfg.PodMode == Netns
	hdr := "POD\t"
	if len(l.Nodes) > 1 {
		hdr += "NODE\t"
	}
	hdr += "IPv4\tIPv6\tMAC"
	if ns {
		hdr += "\tNETNS"
	}
	fmt.Fprintln(tw, hdr)
	for _, p := range l.pods {
		a6 := "-"
		if p.Addr6().IsValid() {
			a6 = p.Addr6().String()
		}
		row := p.Name() + "\t"
		if len(l.Nodes) > 1 {
			row += l.node[p].Name + "\t"
		}
		row += fmt.Sprintf("%s\t%s\t%s", p.Addr(), a6, p.MAC())
		if nsp, ok := p.(interface{ NetNS() string }); ok {
			row += "\t" + nsp.NetNS()
		}
		fmt.Fprintln(tw, row)
	}
	_ = tw.Flush()
	fmt.Fprintln(out)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// writeMatrix writes the compact connectivity matrix: a row per source
// pod, a column per destination.
func writeMatrix(out io.Writer, pods []Pod, pairs []PairResult) {
	var names []string
	for _, c := range pairs[0].Checks {
		names = append(names, c.Name)
	}
	fmt.Fprintf(out, "connectivity (row: source, column: destination; ok = %s passed):\n", strings.Join(names, ", "))
	cell := map[[2]string]string{}
	for _, p := range pairs {
		v := "ok"
		if len(p.Failed()) > 0 {
			v = "FAIL"
		}
		cell[[2]string{p.Src, p.Dst}] = v
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	hdr := "\t\t"
	for j := range pods {
		hdr += fmt.Sprintf("%d\t", j)
	}
	fmt.Fprintln(tw, hdr)
	for i, a := range pods {
		row := fmt.Sprintf("%d\t%s\t", i, a.Name())
		for _, b := range pods {
			v := "."
			if a != b {
				v = cell[[2]string{a.Name(), b.Name()}]
			}
			row += v + "\t"
		}
		fmt.Fprintln(tw, row)
	}
	_ = tw.Flush()
}

// writePairs writes a row per pair with each check's outcome (ping RTTs).
func writePairs(out io.Writer, pairs []PairResult) {
	var names []string
	for _, c := range pairs[0].Checks {
		names = append(names, strings.ToUpper(c.Name))
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SRC\tDST\t%s\n", strings.Join(names, "\t"))
	for _, p := range pairs {
		cells := make([]string, len(p.Checks))
		for i, c := range p.Checks {
			switch {
			case c.Err != nil:
				cells[i] = "FAIL"
			case c.RTT > 0:
				cells[i] = c.RTT.Round(time.Microsecond).String()
			default:
				cells[i] = "ok"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Src, p.Dst, strings.Join(cells, "\t"))
	}
	_ = tw.Flush()
}

// writeRTT writes the median IPv4 ping RTT, same node and across nodes.
func writeRTT(out io.Writer, pairs []PairResult, multi bool) {
	var same, cross []time.Duration
	for _, p := range pairs {
		for _, c := range p.Checks {
			if c.Name == "ping" && c.Err == nil {
				if p.CrossNode {
					cross = append(cross, c.RTT)
				} else {
					same = append(same, c.RTT)
				}
			}
		}
	}
	median := func(d []time.Duration) string {
		if len(d) == 0 {
			return "-"
		}
		slices.Sort(d)
		return fmt.Sprintf("%s (%d pairs)", d[len(d)/2].Round(time.Microsecond), len(d))
	}
	if multi {
		fmt.Fprintf(out, "ping RTT median: same node %s, cross node %s\n", median(same), median(cross))
	} else {
		fmt.Fprintf(out, "ping RTT median: %s\n", median(same))
	}
}

func writeCounters(out io.Writer, eng *engine.Engine) {
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPS")
	ports := eng.Ports()
	slices.SortFunc(ports, func(a, b *engine.Port) int { return strings.Compare(a.Name(), b.Name()) })
	for _, p := range ports {
		s := p.Stats()
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", p.Name(), s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes,
			dropsText(engine.DropReasons(), s.Drops))
	}
	_ = tw.Flush()
	sent, limited := eng.ICMPStats()
	fmt.Fprintf(out, "icmp errors sent %d, rate-limited %d\n", sent, limited)
}

func writeUnderlay(out io.Writer, u *underlay.Underlay) {
	s := u.Stats()
	fmt.Fprintf(out, "underlay %s %s: rx %d pkts in %d recvmmsg (%d GRO), tx %d pkts in %d sendmmsg (%d GSO), drops %s\n",
		u.Encap(), u.LocalAddr(), s.RxPackets, s.RxCalls, s.RxGRO, s.TxPackets, s.TxCalls, s.TxGSO,
		dropsText(underlay.DropReasons(), s.Drops))
}

// dropsText prints the non-zero drops as "reason=n,...", in the order of
// reasons (all of a layer's, from its DropReasons), or "0" when there are none.
func dropsText[R interface {
	comparable
	fmt.Stringer
}](reasons []R, drops map[R]uint64) string {
	var ds []string
	for _, r := range reasons {
		if n := drops[r]; n > 0 {
			ds = append(ds, fmt.Sprintf("%s=%d", r, n))
		}
	}
	if len(ds) == 0 {
		return "0"
	}
	return strings.Join(ds, ",")
}
