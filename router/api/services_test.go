package api

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// servicesHandler is fakeHandler with OpServices: one Service, "off" for
// the Service off/lb, not-found for any other filter.
type servicesHandler struct {
	fakeHandler
	mu  sync.Mutex
	got []ServicesRequest
}

func (h *servicesHandler) Services(_ context.Context, req ServicesRequest) (Services, error) {
	h.mu.Lock()
	h.got = append(h.got, req)
	h.mu.Unlock()
	vip := netip.MustParseAddr("10.96.0.10")
	switch {
	case req.Service == "off/lb":
		return Services{}, nil
	case req.Service != "" && req.Service != "kube-system/kube-dns", req.Addr.IsValid() && req.Addr != vip:
		return Services{}, fmt.Errorf("%w: no Service %s %s", ErrNotFound, req.Service, req.Addr)
	}
	return Services{
		Enabled: true,
		Services: []Service{{Namespace: "kube-system", Name: "kube-dns", Frontends: []Frontend{{
			Addr: netip.AddrPortFrom(vip, 53), Proto: "udp", PortName: "dns", Affinity: 3 * time.Hour, Flows: 7, Rejected: 1,
			Backends: []Backend{
				{Addr: netip.MustParseAddrPort("10.244.1.5:53"), Ready: true, Serving: true, Local: true, Usable: true, Flows: 7},
				{Addr: netip.MustParseAddrPort("10.244.2.5:53"), Gone: true, Flows: 0},
			},
		}}}},
		TotalServices: 3, TotalFrontends: 5, LiveFlows: 2,
		Stats: ServiceStats{Flows: 7, NoEndpoints: 1, Flushed: 2},
	}, nil
}

func TestServices(t *testing.T) {
	h := &servicesHandler{}
	var mu sync.Mutex
	var observed []string
	_, c := startCaptureServer(t, 2*time.Second, h, func(op Op, code Code, _ time.Duration) {
		mu.Lock()
		observed = append(observed, string(op)+"/"+string(code))
		mu.Unlock()
	})
	ctx := context.Background()
	sv, err := c.Services(ctx, ServicesRequest{Service: "kube-system/kube-dns", Addr: netip.MustParseAddr("10.96.0.10")})
	if err != nil {
		t.Fatal(err)
	}
	if !sv.Enabled || len(sv.Services) != 1 || sv.TotalServices != 3 || sv.TotalFrontends != 5 || sv.LiveFlows != 2 ||
		sv.Stats != (ServiceStats{Flows: 7, NoEndpoints: 1, Flushed: 2}) {
		t.Fatalf("reply %+v", sv)
	}
	s := sv.Services[0]
	if s.String() != "kube-system/kube-dns" || len(s.Frontends) != 1 {
		t.Fatalf("service %+v", s)
	}
	f := s.Frontends[0]
	if f.Addr != netip.MustParseAddrPort("10.96.0.10:53") || f.Proto != "udp" || f.PortName != "dns" || f.NodePort ||
		f.Affinity != 3*time.Hour || f.Flows != 7 || f.Rejected != 1 || len(f.Backends) != 2 {
		t.Fatalf("frontend %+v", f)
	}
	if b := f.Backends[0]; !b.Ready || !b.Serving || b.Terminating || !b.Local || !b.Usable || b.Gone || b.Flows != 7 {
		t.Fatalf("backend %+v", b)
	}
	if b := f.Backends[1]; !b.Gone || b.Usable || b.Ready {
		t.Fatalf("gone backend %+v", b)
	}
	// No filter: the handler sees an empty request.
	if _, err := c.Services(ctx, ServicesRequest{}); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	if g := h.got[len(h.got)-1]; g != (ServicesRequest{}) {
		t.Errorf("handler got %+v", g)
	}
	h.mu.Unlock()
	// Off: an empty list, not a missing reply.
	if sv, err := c.Services(ctx, ServicesRequest{Service: "off/lb"}); err != nil || sv.Enabled || sv.Services == nil || len(sv.Services) != 0 {
		t.Fatalf("off: %+v, %v", sv, err)
	}
	if _, err := c.Services(ctx, ServicesRequest{Service: "default/nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown Service: %v", err)
	}
	for _, bad := range []ServicesRequest{
		{Service: "noslash"}, {Service: "/name"}, {Service: "ns/"}, {Service: "a/b/c"}, {Service: "a b/c"},
		{Service: "ns/" + strings.Repeat("x", 300)}, {Addr: netip.MustParseAddr("::ffff:10.96.0.10")},
		{Addr: netip.MustParseAddr("fe80::1%eth0")},
	} {
		if _, err := c.Services(ctx, bad); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%+v: %v, want ErrBadRequest", bad, err)
		}
		// The server checks too.
		if _, err := c.do(ctx, request{Op: OpServices, Services: &bad}, nil); !errors.Is(err, ErrBadRequest) {
			t.Errorf("server, %+v: %v, want ErrBadRequest", bad, err)
		}
	}
	if _, err := c.do(ctx, request{Op: OpServices}, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("without its request: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(observed) == 0 || observed[0] != "services/" {
		t.Errorf("observed %v", observed)
	}
}

// A handler without OpServices answers bad-request.
func TestServicesUnsupported(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid()))
	if _, err := c.Services(context.Background(), ServicesRequest{}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("%v, want ErrBadRequest", err)
	}
}
