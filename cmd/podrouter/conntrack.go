package main

// podrouter conntrack: the daemon's flows to the outside (the netstack
// egress forwarder's live flows, or the engine's snat table's), the load
// balancer's Service flows, and the egress and Service flow table counters.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(command{name: "conntrack", summary: "show the flows to the outside (netstack or snat egress) and the Service flows with their translated tuples, and the counters", run: runConntrack})
}

const conntrackDoc = `Lists the daemon's flows to the outside: protocol, the original tuple (pod ->
destination), the reply tuple as the outside sees it (remote -> the node's
address and port), state, when the flow expires if idle, and the pod. Then
the egress counters: live flows, dials in flight, flows opened, events and
drops by reason. In snat egress mode the flows are the engine's conntrack
table's (reply tuple: remote -> the SNAT address and port; state: TCP's, or
unreplied/replied/assured), and the counters the table's. In uplink egress
mode the host kernel tracks the flows (conntrack -L), so none is listed.

With the node's load balancer on (Services without kube-proxy), the Service
flows follow (TABLE service, and the Service's namespace/name): original
tuple client -> ClusterIP (or node address:nodePort) and port, reply tuple
backend -> client (for a hairpin, a pod reaching itself through its Service:
backend -> the pod gateway's address and port). Then the Service flow
table's counters. --pod and --max apply to both tables (--max to them
together, egress flows first).`

func runConntrack(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var req api.ConntrackRequest
	fs := flag.NewFlagSet("conntrack", flag.ContinueOnError)
	fs.StringVar(&req.Pod, "pod", "", "only this pod's flows: a pod address, a port name (containerID/ifName), or a container ID or a unique prefix of one")
	fs.IntVar(&req.Max, "max", 0, fmt.Sprintf("list at most this many flows (0: %d)", api.MaxConntrackFlows))
	usage := fmt.Sprintf("Usage: podrouter conntrack [--pod P] [--json] [flags]\n\n%s\n\nFlags:\n", conntrackDoc)
	if rc := cf.parseWith(fs, usage, args, stdout, stderr); rc >= 0 {
		return rc
	}
	if err := req.Normalize(); err != nil {
		fmt.Fprintf(stderr, "podrouter conntrack: %v\n", err)
		return 2
	}
	get := func(c *api.Client, ctx context.Context) (api.Conntrack, error) { return c.Conntrack(ctx, req) }
	return show(&cf, "conntrack", stdout, stderr, get, func(w io.Writer, ct api.Conntrack) { printConntrack(w, ct, time.Now()) })
}

func printConntrack(w io.Writer, ct api.Conntrack, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tPROTO\tORIGINAL\tREPLY\tSTATE\tEXPIRES\tAGE\tPOD\tSERVICE")
	services := 0
	for _, f := range ct.Flows {
		reply := "-"
		if f.ReplySrc.IsValid() {
			reply = f.ReplySrc.String() + " -> " + apString(f.ReplyDst)
		}
		exp := "-"
		if !f.Expires.IsZero() {
			exp = max(f.Expires.Sub(now), 0).Round(time.Second).String()
		}
		pod := f.Pod
		if pod == "" {
			pod = "-"
		}
		age := "-" // unknown (snat egress, Service flows)
		if !f.Started.IsZero() {
			age = now.Sub(f.Started).Round(time.Second).String()
		}
		table, svc := f.Table, "-"
		switch table {
		case "":
			table = "egress" // from a daemon that names no table
		case "service":
			services++
			if f.Service != "" {
				svc = f.Service
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s -> %s\t%s\t%s\t%s\t%s\t%s\t%s\n", table, f.Proto, f.Src, apString(f.Dst), reply, f.State, exp,
			age, pod, svc)
	}
	_ = tw.Flush()
	more := ""
	if ct.Truncated {
		more = " (more left out: see --max)"
	}
	fmt.Fprintf(w, "%d flows%s, egress %s", len(ct.Flows), more, ct.Egress)
	if ct.ServiceTable != nil {
		fmt.Fprintf(w, ", %d of them Service flows", services)
	}
	fmt.Fprintln(w)
	if s := ct.Stats; s != nil {
		fmt.Fprintf(w, "live flows %d, dials in flight %d, flows opened %d, bytes to remote %d, to pods %d\n",
			s.Flows, s.DialsInFlight, s.Inserts, s.BytesToRemote, s.BytesToPod)
		fmt.Fprintf(w, "events: %s\n", countsText(s.Events))
		fmt.Fprintf(w, "drops: %s\n", countsText(s.Drops))
	}
	if s := ct.ServiceTable; s != nil {
		fmt.Fprintf(w, "service flow table: live flows %d, flows opened %d\n", s.Flows, s.Inserts)
		fmt.Fprintf(w, "service events: %s\n", countsText(s.Events))
		fmt.Fprintf(w, "service drops: %s\n", countsText(s.Drops))
	}
}

// apString prints an address and port; a port 0 (ICMP destinations) as
// the address alone, an invalid one as "?".
func apString(ap netip.AddrPort) string {
	switch {
	case !ap.IsValid():
		return "?"
	case ap.Port() == 0:
		return ap.Addr().String()
	}
	return ap.String()
}

// countsText prints the non-zero counts as name=n, sorted ("none" when
// all are zero).
func countsText(m map[string]uint64) string {
	var s []string
	for k, v := range m {
		if v > 0 {
			s = append(s, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(s) == 0 {
		return "none"
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}
