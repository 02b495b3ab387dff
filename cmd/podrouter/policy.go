package main

// podrouter policy: NetworkPolicy enforcement as the engine does it: the
// set in force, each local pod's isolation (and for one pod its rules),
// the counters, and the flows judged most recently.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(command{name: "policy", summary: "show NetworkPolicy enforcement: pods' isolation and rules, counters, recent verdicts", run: runPolicy})
}

const policyDoc = `Shows the node's NetworkPolicy enforcement (the daemon's --network-policy). First
the set in force: its policies (the cluster's), this node's pods isolated in at
least one direction, the live flows of isolated pods, and the counters since
the start: allowed (flows allowed and tracked), allowed-untracked (packets
allowed that start no flow), denied-ingress (by the receiver's rules),
denied-egress (by the sender's), cut (established flows a changed policy
denies), and the denials per isolating policy and direction.

Then this node's pods with their isolation per direction: "-" when no policy
isolates the pod that way (everything is allowed), else the isolating
policies. With NAMESPACE/POD, only that pod, then its rules as written:
direction, policy, rule index, peers (one per from/to entry) and ports; a
flow is allowed when any rule of its direction allows it, and an isolating
policy without rules of a direction allows nothing ("no rules").

Last the flows judged most recently, newest first (only the pod's with
NAMESPACE/POD): their age, ends (with the pod's name where the set lists it),
protocol and destination port, verdict, the direction that decided, and the
allowing policy or, for a denial, the isolating ones. The node's own
addresses always reach its pods; replies and the rest of an allowed flow are
not judged again.

A node without enforcement says "policy off" and exits 0; a pod that is not
this node's exits 1 ("not found"); bad arguments exit 2.`

func runPolicy(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	req := api.PolicyRequest{Recent: api.DefaultPolicyRecent}
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	fs.IntVar(&req.Recent, "recent", api.DefaultPolicyRecent, fmt.Sprintf("list at most this many recent verdicts (1..%d)", api.MaxPolicyRecent))
	usage := fmt.Sprintf("Usage: podrouter policy [--recent N] [--json] [flags] [NAMESPACE/POD]\n\n%s\n\nFlags:\n", policyDoc)
	// Parsing no arguments registers the client flags on fs; NAMESPACE/POD
	// may then come before, between or after the flags.
	if rc := cf.parseWith(fs, usage, nil, stdout, stderr); rc >= 0 {
		return rc
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return parseError(fs, err, usage, stdout, stderr)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case len(pos) > 1:
		fmt.Fprintf(stderr, "podrouter policy: unexpected argument %q\n", pos[1])
		return 2
	case cf.timeout <= 0:
		fmt.Fprintf(stderr, "podrouter policy: --timeout %v: want a positive duration\n", cf.timeout)
		return 2
	case req.Recent < 1 || req.Recent > api.MaxPolicyRecent:
		fmt.Fprintf(stderr, "podrouter policy: --recent %d: want 1..%d\n", req.Recent, api.MaxPolicyRecent)
		return 2
	}
	if len(pos) == 1 {
		req.Pod = pos[0]
	}
	if err := req.Normalize(); err != nil {
		fmt.Fprintf(stderr, "podrouter policy: %v\n", err)
		return 2
	}
	get := func(c *api.Client, ctx context.Context) (api.Policy, error) { return c.Policy(ctx, req) }
	return show(&cf, "policy", stdout, stderr, get, func(w io.Writer, p api.Policy) { printPolicy(w, p, req.Pod != "", time.Now()) })
}

// printPolicy prints p; onePod: the request named a pod (its rules are
// listed). Ages are counted back from now.
func printPolicy(w io.Writer, p api.Policy, onePod bool, now time.Time) {
	if !p.Enabled {
		fmt.Fprintln(w, "policy off: this node does not enforce NetworkPolicy (the daemon's --network-policy is off)")
		return
	}
	st := p.Stats
	fmt.Fprintf(w, "%d policies in force, %d isolated pods, %d tracked flows\n", p.Policies, p.IsolatedPods, p.TrackedFlows)
	fmt.Fprintf(w, "counters: %s\n", countsText(map[string]uint64{
		"allowed": st.Allowed, "allowed-untracked": st.AllowedUntracked, "denied-ingress": st.DeniedIngress,
		"denied-egress": st.DeniedEgress, "cut": st.Cut,
	}))
	if len(st.DeniedByPolicy) > 0 {
		var s []string
		for _, d := range st.DeniedByPolicy {
			s = append(s, fmt.Sprintf("%s %s=%d", d.Policy, d.Direction, d.Packets))
		}
		fmt.Fprintf(w, "denied by policy: %s\n", strings.Join(s, ", "))
	}

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tIPS\tINGRESS\tEGRESS")
	for _, pod := range p.Pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", pod.String(), joinStringers(pod.IPs), isolation(pod.Ingress), isolation(pod.Egress))
	}
	if len(p.Pods) == 0 {
		fmt.Fprintln(tw, "(no pod of this node in the set in force)\t\t\t")
	}
	_ = tw.Flush()

	if onePod && len(p.Pods) == 1 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "DIRECTION\tPOLICY\tRULE\tPEERS\tPORTS")
		pod := p.Pods[0]
		rows := 0
		for _, d := range []struct {
			name string
			r    api.PolicyRules
		}{{"ingress", pod.Ingress}, {"egress", pod.Egress}} {
			for _, pol := range d.r.Policies {
				n := 0
				for _, r := range d.r.Rules {
					if r.Policy == pol {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", d.name, pol, r.Rule, dash(strings.Join(r.Peers, "; ")), dash(strings.Join(r.Ports, ",")))
						n++
					}
				}
				if n == 0 {
					fmt.Fprintf(tw, "%s\t%s\t-\tno rules: allows nothing\t-\n", d.name, pol)
				}
				rows++
			}
		}
		if rows == 0 {
			fmt.Fprintln(tw, "(not isolated: every flow is allowed)\t\t\t\t")
		}
		_ = tw.Flush()
	}

	fmt.Fprintln(w)
	if len(p.Recent) == 0 {
		fmt.Fprintln(w, "no recent verdicts")
		return
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGE\tSRC\tDST\tPROTO/PORT\tVERDICT\tDIRECTION\tPOLICY")
	for _, f := range p.Recent {
		end := func(a fmt.Stringer, pod string) string {
			if pod == "" {
				return a.String()
			}
			return a.String() + " (" + pod + ")"
		}
		proto := f.Proto
		if f.Port != 0 {
			proto += fmt.Sprintf("/%d", f.Port)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", age(now.Sub(f.Time)), end(f.Src, f.SrcPod), end(f.Dst, f.DstPod),
			proto, f.Verdict, f.Direction, dash(f.Policy))
	}
	_ = tw.Flush()
}

// isolation prints a pod's isolation one way: "-" when not isolated, else
// the isolating policies.
func isolation(r api.PolicyRules) string {
	if !r.Isolated {
		return "-"
	}
	return strings.Join(r.Policies, ",")
}

// age prints how long ago a verdict was, to the millisecond below a
// minute, to the second above.
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return d.Truncate(time.Millisecond).String()
	}
	return d.Truncate(time.Second).String()
}
