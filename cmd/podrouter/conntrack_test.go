package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/api"
)

// conntrackCLIHandler answers OpConntrack with two egress flows and a
// Service flow, or one egress flow for --pod 10.244.1.5, and not-found for
// any other pod.
type conntrackCLIHandler struct{ cliHandler }

func (conntrackCLIHandler) Conntrack(_ context.Context, req api.ConntrackRequest) (api.Conntrack, error) {
	now := time.Now().UTC()
	tcp := api.Flow{Proto: "tcp", Src: netip.MustParseAddrPort("10.244.1.5:40000"), Dst: netip.MustParseAddrPort("10.253.0.2:80"),
		ReplySrc: netip.MustParseAddrPort("10.253.0.2:80"), ReplyDst: netip.MustParseAddrPort("10.253.0.1:51000"),
		State: "established", Started: now.Add(-time.Minute), Pod: "c1/eth0"}
	udp := api.Flow{Proto: "udp", Src: netip.MustParseAddrPort("10.244.1.6:5353"), Dst: netip.MustParseAddrPort("10.253.0.2:53"),
		State: "dialing", Started: now, Expires: now.Add(10 * time.Second)}
	svc := api.Flow{Table: "service", Service: "default/web", Proto: "tcp", Src: netip.MustParseAddrPort("10.244.1.6:41000"),
		Dst: netip.MustParseAddrPort("10.96.0.10:80"), ReplySrc: netip.MustParseAddrPort("10.244.2.7:8080"),
		ReplyDst: netip.MustParseAddrPort("10.244.1.6:41000"), State: "established", Expires: now.Add(time.Hour), Pod: "c2/eth0"}
	ct := api.Conntrack{Egress: "netstack", Stats: &api.Egress{Flows: 2, Inserts: 5,
		Events: map[string]uint64{"tcp-dials": 5, "udp-flows": 0}, Drops: map[string]uint64{"tcp-flow-limit": 3}},
		ServiceTable: &api.Egress{Flows: 1, Inserts: 4, Events: map[string]uint64{"expired": 3}, Drops: map[string]uint64{"clash": 1, "table-full": 0}}}
	switch req.Pod {
	case "":
		ct.Flows = []api.Flow{tcp, udp, svc}
	case "10.244.1.5":
		ct.Flows = []api.Flow{tcp}
	default:
		return api.Conntrack{}, fmt.Errorf("%w: no pod %q", api.ErrNotFound, req.Pod)
	}
	return ct, nil
}

func TestConntrackCLI(t *testing.T) {
	sock := serveCLI(t, conntrackCLIHandler{cliHandler{ready: true}})
	var out, errb bytes.Buffer
	if rc := run([]string{"conntrack", "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	for _, w := range []string{"PROTO", "10.244.1.5:40000 -> 10.253.0.2:80", "10.253.0.2:80 -> 10.253.0.1:51000", "established",
		"c1/eth0", "dialing", "3 flows, egress netstack, 1 of them Service flows", "tcp-dials=5", "tcp-flow-limit=3",
		"service flow table: live flows 1, flows opened 4", "service events: expired=3", "service drops: clash=1"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
	if strings.Contains(out.String(), "udp-flows=0") || strings.Contains(out.String(), "table-full") {
		t.Errorf("zero counts printed:\n%s", out.String())
	}
	// One row per flow: egress ones (named so, or by an older daemon not
	// at all) and the Service flow, client -> ClusterIP, backend -> client.
	rows := map[string]bool{}
	for _, l := range strings.Split(out.String(), "\n") {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, w := range []string{
		"TABLE PROTO ORIGINAL REPLY STATE EXPIRES AGE POD SERVICE",
		"egress tcp 10.244.1.5:40000 -> 10.253.0.2:80 10.253.0.2:80 -> 10.253.0.1:51000 established - 1m0s c1/eth0 -",
		"service tcp 10.244.1.6:41000 -> 10.96.0.10:80 10.244.2.7:8080 -> 10.244.1.6:41000 established 1h0m0s - c2/eth0 default/web",
	} {
		if !rows[w] {
			t.Errorf("no row %q in:\n%s", w, out.String())
		}
	}
	out.Reset()
	if rc := run([]string{"conntrack", "--socket", sock, "--pod", "10.244.1.5", "--json"}, &out, &errb); rc != 0 {
		t.Fatalf("--pod --json: exit %d: %s", rc, errb.String())
	}
	var ct api.Conntrack
	if err := json.Unmarshal(out.Bytes(), &ct); err != nil || len(ct.Flows) != 1 || ct.Flows[0].Pod != "c1/eth0" {
		t.Fatalf("--json: %v, %+v", err, ct)
	}
	errb.Reset()
	if rc := run([]string{"conntrack", "--socket", sock, "--pod", "nope"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "not found") {
		t.Errorf("unknown pod: exit %d, stderr %q", rc, errb.String())
	}
	for _, args := range [][]string{{"conntrack", "--max", "-1"}, {"conntrack", "extra"}, {"conntrack", "--bogus"}, {"daemon", "--pod-cidr", "10.244.1.0/24", "--egress", "iptables"}} {
		errb.Reset()
		if rc := run(append(args, "--socket", sock), &out, &errb); rc != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q: want 2 and one line", args, rc, errb.String())
		}
	}
}
