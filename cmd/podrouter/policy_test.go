package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

// policyCLIHandler answers OpPolicy for a node with shop/cart isolated for
// ingress (shop/allow-web, one rule) and for egress (shop/deny-out, no
// rules), and shop/web not isolated; "off/x" is a node without
// enforcement, other pods are not found.
type policyCLIHandler struct {
	cliHandler
	mu  *sync.Mutex
	got *[]api.PolicyRequest
}

var policyCLIAt = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func (h policyCLIHandler) Policy(_ context.Context, req api.PolicyRequest) (api.Policy, error) {
	h.mu.Lock()
	*h.got = append(*h.got, req)
	h.mu.Unlock()
	cart := api.PolicyPod{Namespace: "shop", Name: "cart", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.6"), netip.MustParseAddr("fd00:10:244:1::6")},
		Ingress: api.PolicyRules{Isolated: true, Policies: []string{"shop/allow-web"}},
		Egress:  api.PolicyRules{Isolated: true, Policies: []string{"shop/deny-out"}}}
	web := api.PolicyPod{Namespace: "shop", Name: "web", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}
	p := api.Policy{Enabled: true, Policies: 2, IsolatedPods: 1, TrackedFlows: 3,
		Stats: api.PolicyStats{Allowed: 4, DeniedIngress: 2, DeniedEgress: 1, DeniedByPolicy: []api.PolicyDenied{
			{Policy: "shop/allow-web", Direction: "ingress", Packets: 2}, {Policy: "shop/deny-out", Direction: "egress", Packets: 1}}},
		Recent: []api.PolicyFlow{
			{Time: policyCLIAt.Add(-1500 * time.Millisecond), Src: netip.MustParseAddr("10.244.1.5"), Dst: netip.MustParseAddr("10.244.1.6"),
				SrcPod: "shop/web", DstPod: "shop/cart", Proto: "tcp", Port: 81, Verdict: "denied", Direction: "ingress", Policy: "shop/allow-web"},
			{Time: policyCLIAt.Add(-2 * time.Minute), Src: netip.MustParseAddr("10.244.1.5"), Dst: netip.MustParseAddr("10.244.1.6"),
				SrcPod: "shop/web", DstPod: "shop/cart", Proto: "tcp", Port: 8080, Verdict: "allowed", Direction: "ingress", Policy: "shop/allow-web"},
			{Time: policyCLIAt.Add(-3 * time.Minute), Src: netip.MustParseAddr("192.168.1.10"), Dst: netip.MustParseAddr("10.244.1.6"),
				DstPod: "shop/cart", Proto: "icmp", Verdict: "allowed", Direction: "ingress"},
		}}
	switch req.Pod {
	case "off/x":
		return api.Policy{Pods: []api.PolicyPod{}, Recent: []api.PolicyFlow{}}, nil
	case "":
		p.Pods = []api.PolicyPod{cart, web}
	case "shop/cart":
		cart.Ingress.Rules = []api.PolicyRule{{Policy: "shop/allow-web", Rule: 0,
			Peers: []string{"pods{app=web} in namespace shop", "ipBlock 10.0.0.0/8 except 10.1.0.0/16"}, Ports: []string{"TCP/http (=8080)", "TCP/9090"}}}
		p.Pods = []api.PolicyPod{cart}
	case "shop/web":
		p.Pods, p.Recent = []api.PolicyPod{web}, nil
	default:
		return api.Policy{}, fmt.Errorf("%w: no pod %s of this node", api.ErrNotFound, req.Pod)
	}
	return p, nil
}

// rowsOf returns out's lines with their runs of spaces squeezed.
func rowsOf(out string) []string {
	var rows []string
	for _, l := range strings.Split(out, "\n") {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	return rows
}

func TestPolicyCLI(t *testing.T) {
	var mu sync.Mutex
	var got []api.PolicyRequest
	last := func() api.PolicyRequest { mu.Lock(); defer mu.Unlock(); return got[len(got)-1] }
	sock := serveCLI(t, policyCLIHandler{cliHandler{ready: true}, &mu, &got})

	// The table, with a fixed clock.
	p, err := (&api.Client{Path: sock}).Policy(context.Background(), api.PolicyRequest{Pod: "shop/cart"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printPolicy(&out, p, true, policyCLIAt)
	want := []string{
		"2 policies in force, 1 isolated pods, 3 tracked flows",
		"counters: allowed=4,denied-egress=1,denied-ingress=2",
		"denied by policy: shop/allow-web ingress=2, shop/deny-out egress=1",
		"",
		"POD IPS INGRESS EGRESS",
		"shop/cart 10.244.1.6,fd00:10:244:1::6 shop/allow-web shop/deny-out",
		"",
		"DIRECTION POLICY RULE PEERS PORTS",
		"ingress shop/allow-web 0 pods{app=web} in namespace shop; ipBlock 10.0.0.0/8 except 10.1.0.0/16 TCP/http (=8080),TCP/9090",
		"egress shop/deny-out - no rules: allows nothing -",
		"",
		"AGE SRC DST PROTO/PORT VERDICT DIRECTION POLICY",
		"1.5s 10.244.1.5 (shop/web) 10.244.1.6 (shop/cart) tcp/81 denied ingress shop/allow-web",
		"2m0s 10.244.1.5 (shop/web) 10.244.1.6 (shop/cart) tcp/8080 allowed ingress shop/allow-web",
		"3m0s 192.168.1.10 10.244.1.6 (shop/cart) icmp allowed ingress -",
		"",
	}
	if rows := rowsOf(out.String()); strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("one pod:\n%s\nwant (spaces squeezed):\n%s", out.String(), strings.Join(want, "\n"))
	}
	if testing.Verbose() {
		t.Logf("podrouter policy shop/cart:\n%s", out.String())
	}

	// Through run: every pod, no rules table.
	var errb bytes.Buffer
	out.Reset()
	if rc := run([]string{"policy", "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	rows := rowsOf(out.String())
	for _, w := range []string{"shop/cart 10.244.1.6,fd00:10:244:1::6 shop/allow-web shop/deny-out", "shop/web 10.244.1.5 - -"} {
		if !containsRow(rows, w) {
			t.Errorf("no row %q in:\n%s", w, out.String())
		}
	}
	if strings.Contains(out.String(), "PEERS") {
		t.Errorf("rules listed without a pod:\n%s", out.String())
	}
	if g := last(); g != (api.PolicyRequest{Recent: api.DefaultPolicyRecent}) {
		t.Errorf("sent %+v", g)
	}
	// The pod before or after the flags; --recent; --json.
	for _, args := range [][]string{{"policy", "shop/cart", "--socket", sock, "--recent", "5", "--json"}, {"policy", "--socket", sock, "--recent=5", "--json", "shop/cart"}} {
		out.Reset()
		if rc := run(args, &out, &errb); rc != 0 {
			t.Fatalf("%v: exit %d: %s", args, rc, errb.String())
		}
		var p api.Policy
		if err := json.Unmarshal(out.Bytes(), &p); err != nil || len(p.Pods) != 1 || len(p.Pods[0].Ingress.Rules) != 1 || p.Stats.DeniedByPolicy[1].Policy != "shop/deny-out" {
			t.Fatalf("%v: --json: %v, %+v", args, err, p)
		}
		if g := last(); g != (api.PolicyRequest{Pod: "shop/cart", Recent: 5}) {
			t.Errorf("%v sent %+v", args, g)
		}
	}
	// An unisolated pod with no verdicts.
	out.Reset()
	if rc := run([]string{"policy", "--socket", sock, "shop/web"}, &out, &errb); rc != 0 ||
		!containsRow(rowsOf(out.String()), "(not isolated: every flow is allowed)") || !containsRow(rowsOf(out.String()), "no recent verdicts") {
		t.Errorf("shop/web: exit %d:\n%s", rc, out.String())
	}
	out.Reset()
	if rc := run([]string{"policy", "--socket", sock, "off/x"}, &out, &errb); rc != 0 || !strings.HasPrefix(out.String(), "policy off:") {
		t.Errorf("off: exit %d, output %q", rc, out.String())
	}
	errb.Reset()
	if rc := run([]string{"policy", "--socket", sock, "shop/nope"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "not found") {
		t.Errorf("unknown pod: exit %d, stderr %q", rc, errb.String())
	}
	mu.Lock()
	n := len(got)
	mu.Unlock()
	for _, args := range [][]string{{"policy", "cart"}, {"policy", "shop/cart/x"}, {"policy", "Shop/cart"}, {"policy", "a/b", "c/d"},
		{"policy", "--recent", "0"}, {"policy", "--recent", "257"}, {"policy", "--bogus"}, {"policy", "--timeout", "0s"}} {
		errb.Reset()
		if rc := run(append(args, "--socket", sock), &out, &errb); rc != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q: want 2 and one line", args, rc, errb.String())
		}
	}
	mu.Lock()
	if len(got) != n {
		t.Errorf("bad arguments reached the daemon: %+v", got[n:])
	}
	mu.Unlock()
	// -h: the usage on stdout, exit 0.
	out.Reset()
	if rc := run([]string{"policy", "-h"}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "Usage: podrouter policy") || !strings.Contains(out.String(), "-recent") {
		t.Errorf("-h: exit %d:\n%s", rc, out.String())
	}
	// A daemon that does not know the op.
	errb.Reset()
	if rc := run([]string{"policy", "--socket", serveCLI(t, cliHandler{ready: true})}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "does not show NetworkPolicy") {
		t.Errorf("old daemon: exit %d, stderr %q", rc, errb.String())
	}
}

func containsRow(rows []string, want string) bool {
	for _, r := range rows {
		if r == want {
			return true
		}
	}
	return false
}
