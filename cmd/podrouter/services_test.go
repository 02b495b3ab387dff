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

// servicesCLIHandler answers OpServices with default/web (a ClusterIP and
// a nodePort frontend) and kube-system/dns (no backend); "off/lb" is a
// node without a load balancer; other filters are not found.
type servicesCLIHandler struct {
	cliHandler
	got *requests
}

// requests records what the handler was asked, from the server's
// goroutines.
type requests struct {
	mu sync.Mutex
	rs []api.ServicesRequest
}

func (r *requests) add(q api.ServicesRequest) { r.mu.Lock(); r.rs = append(r.rs, q); r.mu.Unlock() }

func (r *requests) all() []api.ServicesRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.ServicesRequest(nil), r.rs...)
}

func (h servicesCLIHandler) Services(_ context.Context, req api.ServicesRequest) (api.Services, error) {
	h.got.add(req)
	web := api.Service{Namespace: "default", Name: "web", Frontends: []api.Frontend{
		{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: "tcp", PortName: "http", Affinity: 3 * time.Hour, Flows: 5,
			Backends: []api.Backend{
				{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), Ready: true, Serving: true, Local: true, Usable: true, Flows: 4},
				{Addr: netip.MustParseAddrPort("10.244.2.7:8080"), Serving: true, Terminating: true},
				{Addr: netip.MustParseAddrPort("10.244.3.9:8080"), Gone: true, Flows: 1},
			}},
		{Addr: netip.MustParseAddrPort("192.168.1.10:30080"), Proto: "tcp", PortName: "http", NodePort: true,
			Backends: []api.Backend{{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), Ready: true, Serving: true, Local: true, Usable: true}}},
	}}
	dns := api.Service{Namespace: "kube-system", Name: "dns", Frontends: []api.Frontend{
		{Addr: netip.MustParseAddrPort("10.96.0.53:53"), Proto: "udp", Rejected: 2, Backends: []api.Backend{}}}}
	sv := api.Services{Enabled: true, TotalServices: 2, TotalFrontends: 3, LiveFlows: 1,
		Stats: api.ServiceStats{Flows: 5, NoEndpoints: 2, Flushed: 1}}
	switch {
	case req.Service == "off/lb":
		return api.Services{Services: []api.Service{}}, nil
	case req.Service == "" && !req.Addr.IsValid():
		sv.Services = []api.Service{web, dns}
	case req.Service == "default/web" || req.Addr == netip.MustParseAddr("10.96.0.10"):
		sv.Services = []api.Service{web}
	default:
		return api.Services{}, fmt.Errorf("%w: no Service %s", api.ErrNotFound, req.Service)
	}
	return sv, nil
}

func TestServicesCLI(t *testing.T) {
	var log requests
	sock := serveCLI(t, servicesCLIHandler{cliHandler{ready: true}, &log})
	var out, errb bytes.Buffer
	if rc := run([]string{"services", "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	lines := strings.Split(out.String(), "\n")
	row := func(prefix string) string {
		for _, l := range lines {
			if l := strings.Join(strings.Fields(l), " "); strings.HasPrefix(l, prefix) {
				return l
			}
		}
		t.Errorf("no row %q in:\n%s", prefix, out.String())
		return ""
	}
	for prefix, want := range map[string]string{
		"SERVICE":                   "SERVICE FRONTEND PORT AFFINITY FLOWS REJECTED BACKEND CONDITIONS USABLE FLOWS",
		"default/web 10.96.0.10:80": "default/web 10.96.0.10:80/tcp http 3h0m0s 5 0 10.244.1.5:8080 ready,serving,local yes 4",
		"10.244.2.7:8080":           "10.244.2.7:8080 serving,terminating no 0",
		"10.244.3.9:8080":           "10.244.3.9:8080 gone no 1",
		"default/web 192.168.1.10":  "default/web 192.168.1.10:30080/tcp nodePort http - 0 0 10.244.1.5:8080 ready,serving,local yes 0",
		"kube-system/dns":           "kube-system/dns 10.96.0.53:53/udp - - 0 2 (none) - - -",
		"2 Services":                "2 Services, 3 frontends listed (of 2, 3); 1 live Service flows",
		"load balancer:":            "load balancer: flows=5,flushed=1,no-endpoints=2",
	} {
		if got := row(prefix); got != want {
			t.Errorf("row %q:\n got %q\nwant %q", prefix, got, want)
		}
	}
	// --service takes a name or an address.
	out.Reset()
	if rc := run([]string{"services", "--socket", sock, "--service", "10.96.0.10", "--json"}, &out, &errb); rc != 0 {
		t.Fatalf("--service ADDR --json: exit %d: %s", rc, errb.String())
	}
	var sv api.Services
	if err := json.Unmarshal(out.Bytes(), &sv); err != nil || len(sv.Services) != 1 || sv.Services[0].Frontends[0].Backends[0].Flows != 4 {
		t.Fatalf("--json: %v, %+v", err, sv)
	}
	got := log.all()
	if g := got[len(got)-1]; g.Addr != netip.MustParseAddr("10.96.0.10") || g.Service != "" {
		t.Errorf("--service ADDR sent %+v", g)
	}
	out.Reset()
	if rc := run([]string{"services", "--socket", sock, "--service", "default/web"}, &out, &errb); rc != 0 || strings.Contains(out.String(), "kube-system") {
		t.Fatalf("--service NAME: exit %d: %s%s", rc, out.String(), errb.String())
	}
	got = log.all()
	if g := got[len(got)-1]; g.Service != "default/web" || g.Addr.IsValid() {
		t.Errorf("--service NAME sent %+v", g)
	}
	out.Reset()
	if rc := run([]string{"services", "--socket", sock, "--service", "off/lb"}, &out, &errb); rc != 0 || !strings.HasPrefix(out.String(), "services off:") {
		t.Errorf("off: exit %d, output %q", rc, out.String())
	}
	errb.Reset()
	if rc := run([]string{"services", "--socket", sock, "--service", "default/nope"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "not found") {
		t.Errorf("unknown Service: exit %d, stderr %q", rc, errb.String())
	}
	n := len(log.all())
	for _, args := range [][]string{{"services", "--service", "web"}, {"services", "--service", "a/b/c"}, {"services", "extra"}, {"services", "--bogus"}} {
		errb.Reset()
		if rc := run(append(args, "--socket", sock), &out, &errb); rc != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q: want 2 and one line", args, rc, errb.String())
		}
	}
	if got := log.all(); len(got) != n {
		t.Errorf("bad arguments reached the daemon: %+v", got[n:])
	}
	// A daemon that does not know the op.
	errb.Reset()
	if rc := run([]string{"services", "--socket", serveCLI(t, cliHandler{ready: true})}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "does not list Services") {
		t.Errorf("old daemon: exit %d, stderr %q", rc, errb.String())
	}
}
