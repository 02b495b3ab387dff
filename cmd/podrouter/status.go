package main

// The operator CLI: podrouter status | routes | ports | pods | peers read
// the daemon's local API and print a table (or, with --json, the API's
// JSON). podrouter pcap lives in pcap.go.

import (
	"context"
	"encoding/json"
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
	register(command{name: "status", summary: "show the daemon's status (exit 0 when ready, 1 when not)", run: runStatus})
	register(command{name: "routes", summary: "show the engine's routing table",
		run: apiCommand("routes", routesDoc, (*api.Client).Routes, printRoutes)})
	register(command{name: "ports", summary: "show the engine's ports with their counters and drop reasons",
		run: apiCommand("ports", portsDoc, (*api.Client).Ports, printPorts)})
	register(command{name: "pods", summary: "show the attached pods",
		run: apiCommand("pods", podsDoc, (*api.Client).Attachments, printPods)})
	register(command{name: "peers", summary: "show the peer nodes' ports and the podCIDRs routed to them",
		run: apiCommand("peers", peersDoc, getPeers, printPeers)})
}

// The help texts of the API commands that take only the client flags.
const (
	routesDoc = "Shows the engine's routing table: prefix, next hop kind and port."
	portsDoc  = "Shows the engine's ports: packets and bytes each way and drops by reason."
	podsDoc   = "Shows the attached pods: container, interface, netns, MAC, MTU, addresses and port\n(port -1: recorded but not attached, its re-attach failed)."
	peersDoc  = "Shows the engine's peer ports (other nodes, through the underlay) with their\n" +
		"counters and the podCIDRs routed to each. A daemon without peers shows none.\n" +
		"ADDR is a peer's underlay endpoint (on the underlay row, the receive port, the local one).\n" +
		"A peer's RX counts what the underlay delivered from it (its port itself receives nothing).\n" +
		"DROPS are the engine's drops at the port; UNDERLAY DROPS the underlay's, by reason: on a\n" +
		"peer's row those of its datagrams (foreign-source, wrong-vni, short, bad-checksum, ...) and\n" +
		"of packets to it; on the underlay row all of them, unknown-sender (from no peer) included."
)

// clientFlags are the flags of every command that reads the API.
type clientFlags struct {
	socket  string
	json    bool
	timeout time.Duration
}

// parse parses args for the API command name (doc: its help text); it
// returns an exit code >= 0 when the command must stop (help printed, or a
// bad flag).
func (c *clientFlags) parse(name, doc string, args []string, stdout, stderr io.Writer) int {
	usage := fmt.Sprintf("Usage: podrouter %s [flags]\n\n%s\n\nFlags:\n", name, doc)
	return c.parseWith(flag.NewFlagSet(name, flag.ContinueOnError), usage, args, stdout, stderr)
}

// parseWith registers the client flags on fs, which may hold the command's
// own flags too, and parses args as parse does.
func (c *clientFlags) parseWith(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) int {
	fs.StringVar(&c.socket, "socket", api.DefaultSocket, "the daemon's local API socket")
	fs.BoolVar(&c.json, "json", false, "print the API's JSON instead of a table")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "time limit of the request")
	if rc := parseFlags(fs, usage, args, stdout, stderr); rc >= 0 {
		return rc
	}
	if c.timeout <= 0 {
		fmt.Fprintf(stderr, "podrouter %s: --timeout %v: want a positive duration\n", fs.Name(), c.timeout)
		return 2
	}
	return -1
}

func (c *clientFlags) client() *api.Client { return &api.Client{Path: c.socket, Timeout: c.timeout} }

// apiCommand returns the run func of an API command that takes only the
// client flags (doc: its help text): it parses them, then shows what get
// returns.
func apiCommand[T any](name, doc string, get func(*api.Client, context.Context) (T, error), table func(io.Writer, T)) func(args []string, stdout, stderr io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		var cf clientFlags
		if rc := cf.parse(name, doc, args, stdout, stderr); rc >= 0 {
			return rc
		}
		return show(&cf, name, stdout, stderr, get, table)
	}
}

// show finishes an API command whose flags are parsed: it gets the value
// from the daemon with get (a Client method such as (*api.Client).Routes,
// hence the receiver first) and prints it to stdout, as the API's JSON with
// --json, else with table. A failed get prints "podrouter name: err" to
// stderr and returns 1; otherwise show returns 0.
func show[T any](c *clientFlags, name string, stdout, stderr io.Writer,
	get func(*api.Client, context.Context) (T, error), table func(io.Writer, T)) int {
	v, err := get(c.client(), context.Background())
	if err != nil {
		fmt.Fprintf(stderr, "podrouter %s: %v\n", name, err)
		return 1
	}
	if c.json {
		printJSON(stdout, v)
	} else {
		table(stdout, v)
	}
	return 0
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func joinStringers[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	if rc := cf.parse("status", "Shows the daemon's status. Exits 0 when the daemon is ready, 1 when it is\nnot ready or does not answer, 2 on bad flags.", args, stdout, stderr); rc >= 0 {
		return rc
	}
	ready := false
	get := func(c *api.Client, ctx context.Context) (api.Status, error) {
		st, err := c.Status(ctx)
		ready = st.Ready
		return st, err
	}
	if rc := show(&cf, "status", stdout, stderr, get, printStatus); rc != 0 || !ready {
		return 1
	}
	return 0
}

func printStatus(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	gw := st.Gateway.String()
	if st.Gateway6.IsValid() {
		gw += "," + st.Gateway6.String()
	}
	kvs := [][2]string{
		{"ready", fmt.Sprint(st.Ready)},
		{"readiness", readiness(st)},
		{"pid", fmt.Sprint(st.PID)},
		{"started", st.Started.Format(time.RFC3339)},
		{"pod CIDRs", joinStringers(st.PodCIDRs)},
		{"cluster CIDRs", joinStringers(st.ClusterCIDRs)},
		{"gateway", gw + " (" + st.GatewayMAC.String() + ")"},
		{"uplink", st.Uplink},
		{"mtu", fmt.Sprint(st.MTU)},
	}
	if st.Version != "" {
		kvs = append(kvs, [2]string{"version", st.Version + " (commit " + st.Commit + ")"})
	}
	if st.Backend != "" {
		kvs = append(kvs, [2]string{"backend", st.Backend + " on " + st.Endpoint.String()})
	}
	if st.VNI != 0 || st.VTEPMAC != (api.MAC{}) {
		kvs = append(kvs, [2]string{"vni", fmt.Sprint(st.VNI)}, [2]string{"vtep mac", st.VTEPMAC.String()})
	}
	if st.PublicKey != "" {
		kvs = append(kvs, [2]string{"public key", st.PublicKey})
	}
	kvs = append(kvs, [][2]string{
		{"attachments", fmt.Sprint(st.Attachments)},
		{"re-attached", fmt.Sprintf("%d in %v (%d failed)", st.Reattached, st.ReattachTime.Round(time.Microsecond), st.ReattachFailed)},
		{"goroutines", fmt.Sprint(st.Goroutines)},
		{"open fds", fmt.Sprint(st.FDs)},
	}...)
	for _, kv := range kvs {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	_ = tw.Flush()
}

// readiness is what /readyz says.
func readiness(st api.Status) string {
	if st.NotReady == "" {
		if st.Stale != "" {
			return "ok: stale: " + st.Stale
		}
		return "ok"
	}
	return "not ready: " + st.NotReady
}

func printRoutes(w io.Writer, rs []api.Route) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tNEXT HOP\tPORT")
	for _, r := range rs {
		port := "-"
		if r.Port >= 0 && r.Kind != "unreachable" && r.Kind != "blackhole" {
			port = fmt.Sprintf("%d %s", r.Port, r.PortName)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Prefix, r.Kind, port)
	}
	_ = tw.Flush()
}

func printPorts(w io.Writer, ps []api.Port) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tNAME\tKIND\tMTU\tADDRS\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPS")
	for _, p := range ps {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\n", p.Index, p.Name, p.Kind, p.MTU, joinStringers(p.Addrs),
			p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes, dropsText(p.Drops))
	}
	_ = tw.Flush()
}

// dropsText prints drops by reason as "a=1,b=2" (sorted), or "-".
func dropsText(drops map[string]uint64) string {
	var ds []string
	for r, n := range drops {
		ds = append(ds, fmt.Sprintf("%s=%d", r, n))
	}
	if len(ds) == 0 {
		return "-"
	}
	slices.Sort(ds)
	return strings.Join(ds, ",")
}

func printPods(w io.Writer, as []api.Attachment) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tIFNAME\tNETNS\tMAC\tMTU\tADDRS\tPORT")
	for _, a := range as {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\n", a.ContainerID, a.IfName, a.Netns, a.MAC, a.MTU, joinStringers(a.Addrs), a.PortIndex)
	}
	_ = tw.Flush()
}

// peer is one peer port with the prefixes routed to it, as podrouter peers
// prints it.
type peer struct {
	api.Port
	Prefixes []netip.Prefix `json:"prefixes"`
}

// peersOf joins the peer ports with the peer routes that name them.
func peersOf(ps []api.Port, rs []api.Route) []peer {
	out := []peer{}
	for _, p := range ps {
		if p.Kind != "peer" {
			continue
		}
		pr := peer{Port: p, Prefixes: []netip.Prefix{}}
		for _, r := range rs {
			if r.Kind == "peer" && r.Port == p.Index {
				pr.Prefixes = append(pr.Prefixes, r.Prefix)
			}
		}
		out = append(out, pr)
	}
	return out
}

// getPeers gets the ports and the routes and joins them (peersOf).
func getPeers(c *api.Client, ctx context.Context) ([]peer, error) {
	ps, err := c.Ports(ctx)
	if err != nil {
		return nil, err
	}
	rs, err := c.Routes(ctx)
	if err != nil {
		return nil, err
	}
	return peersOf(ps, rs), nil
}

func printPeers(w io.Writer, peers []peer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tNAME\tADDR\tMTU\tPREFIXES\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPS\tUNDERLAY DROPS")
	for _, p := range peers {
		addr, rxp, rxb, udrops := "-", p.RxPackets, p.RxBytes, "-"
		if u := p.Underlay; u != nil {
			if u.Addr.IsValid() {
				addr = u.Addr.String()
			}
			if u.Peer != "" {
				rxp, rxb = u.RxPackets, u.RxBytes
			}
			udrops = dropsText(u.Drops)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", p.Index, p.Name, addr, p.MTU, joinStringers(p.Prefixes),
			rxp, rxb, p.TxPackets, p.TxBytes, dropsText(p.Drops), udrops)
	}
	_ = tw.Flush()
}
