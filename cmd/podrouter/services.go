package main

// podrouter services: the node's load balancer (Services without
// kube-proxy) as the engine has it: each Service's frontends with their
// backends and counters, and the load balancer's totals.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(command{name: "services", summary: "show the Services the engine load-balances: frontends, backends and their flows", run: runServices})
}

const servicesDoc = `Lists the Services of the node's load balancer (Services without kube-proxy),
one row per frontend and backend. A frontend is where clients reach a Service:
a ClusterIP or externalIP and port, or a node address and nodePort (marked
nodePort), with its protocol, port name, ClientIP affinity timeout, the flows it
started and the new flows it rejected for want of a backend. Each backend is
listed with its EndpointSlice conditions (ready, serving, terminating; local:
on this node), whether it takes new flows now (USABLE: ready, else serving
and terminating when none is ready, and local under a Local traffic policy)
and the flows it was given; "gone" is a backend that left the Endpoints but
took flows before. Then the totals: Services, frontends, live Service flows,
and the load balancer's counters (flows, hairpins, no-endpoints, no-port,
unsupported, refused, flushed). A node without a Service CIDR has no load
balancer (kube-proxy handles Services) and says so. The Service flows
themselves are in 'podrouter conntrack'.`

func runServices(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var filter string
	fs := flag.NewFlagSet("services", flag.ContinueOnError)
	fs.StringVar(&filter, "service", "", "only this Service: namespace/name, or an address (a ClusterIP or externalIP: its Services; a node address: those with a nodePort)")
	usage := fmt.Sprintf("Usage: podrouter services [--service NS/NAME|ADDR] [--json] [flags]\n\n%s\n\nFlags:\n", servicesDoc)
	if rc := cf.parseWith(fs, usage, args, stdout, stderr); rc >= 0 {
		return rc
	}
	var req api.ServicesRequest
	if a, err := netip.ParseAddr(filter); err == nil {
		req.Addr = a
	} else {
		req.Service = filter
	}
	if err := req.Normalize(); err != nil {
		fmt.Fprintf(stderr, "podrouter services: %v\n", err)
		return 2
	}
	get := func(c *api.Client, ctx context.Context) (api.Services, error) { return c.Services(ctx, req) }
	return show(&cf, "services", stdout, stderr, get, printServices)
}

func printServices(w io.Writer, sv api.Services) {
	if !sv.Enabled {
		fmt.Fprintln(w, "services off: this node has no load balancer (no Service CIDR configured; kube-proxy, if any, handles Services)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tFRONTEND\tPORT\tAFFINITY\tFLOWS\tREJECTED\tBACKEND\tCONDITIONS\tUSABLE\tFLOWS")
	frontends := 0
	for _, s := range sv.Services {
		for _, f := range s.Frontends {
			frontends++
			front := fmt.Sprintf("%s/%s", f.Addr, f.Proto)
			if f.NodePort {
				front += " nodePort"
			}
			aff := "-"
			if f.Affinity > 0 {
				aff = f.Affinity.String()
			}
			head := fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%d", s.String(), front, dash(f.PortName), aff, f.Flows, f.Rejected)
			if len(f.Backends) == 0 {
				fmt.Fprintf(tw, "%s\t(none)\t-\t-\t-\n", head)
				continue
			}
			for i, b := range f.Backends {
				if i > 0 {
					head = "\t\t\t\t\t"
				}
				usable := "no"
				if b.Usable {
					usable = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", head, b.Addr, conditions(b), usable, b.Flows)
			}
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d Services, %d frontends listed (of %d, %d); %d live Service flows\n",
		len(sv.Services), frontends, sv.TotalServices, sv.TotalFrontends, sv.LiveFlows)
	st := sv.Stats
	fmt.Fprintf(w, "load balancer: %s\n", countsText(map[string]uint64{
		"flows": st.Flows, "hairpins": st.Hairpins, "no-endpoints": st.NoEndpoints, "no-port": st.NoPort,
		"unsupported": st.Unsupported, "refused": st.Refused, "flushed": st.Flushed,
	}))
}

// conditions prints a backend's conditions ("gone" for one that left the
// Endpoints, "-" for none).
func conditions(b api.Backend) string {
	if b.Gone {
		return "gone"
	}
	var c []string
	for _, x := range []struct {
		on   bool
		name string
	}{{b.Ready, "ready"}, {b.Serving, "serving"}, {b.Terminating, "terminating"}, {b.Local, "local"}} {
		if x.on {
			c = append(c, x.name)
		}
	}
	return dash(strings.Join(c, ","))
}

// dash returns s, or "-" when it is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
