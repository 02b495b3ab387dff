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

// conntrackHandler is fakeHandler with OpConntrack.
type conntrackHandler struct {
	fakeHandler
	mu  sync.Mutex
	got []ConntrackRequest
}

func (h *conntrackHandler) Conntrack(_ context.Context, req ConntrackRequest) (Conntrack, error) {
	h.mu.Lock()
	h.got = append(h.got, req)
	h.mu.Unlock()
	switch req.Pod {
	case "missing":
		return Conntrack{}, fmt.Errorf("%w: no pod %q", ErrNotFound, req.Pod)
	case "empty":
		return Conntrack{Egress: "uplink"}, nil
	}
	return Conntrack{
		Egress: "netstack",
		Flows: []Flow{{
			Proto: "tcp", Src: netip.MustParseAddrPort("10.250.0.5:40000"), Dst: netip.MustParseAddrPort("10.253.0.2:80"),
			ReplySrc: netip.MustParseAddrPort("10.253.0.2:80"), ReplyDst: netip.MustParseAddrPort("10.253.0.1:51000"),
			State: "established", Started: time.Unix(100, 0).UTC(), Pod: "c1/eth0",
		}},
		Truncated: req.Max == 1,
		Stats:     &Egress{Flows: 1, Inserts: 3, Events: map[string]uint64{"tcp-dials": 3}, Drops: map[string]uint64{"tcp-flow-limit": 2}},
	}, nil
}

func TestConntrack(t *testing.T) {
	h := &conntrackHandler{}
	var mu sync.Mutex
	var observed []string
	_, c := startCaptureServer(t, 2*time.Second, h, func(op Op, code Code, _ time.Duration) {
		mu.Lock()
		observed = append(observed, string(op)+"/"+string(code))
		mu.Unlock()
	})
	ctx := context.Background()
	ct, err := c.Conntrack(ctx, ConntrackRequest{Pod: "10.250.0.5", Max: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ct.Egress != "netstack" || len(ct.Flows) != 1 || !ct.Truncated || ct.Stats == nil || ct.Stats.Drops["tcp-flow-limit"] != 2 {
		t.Fatalf("reply %+v", ct)
	}
	f := ct.Flows[0]
	if f.Proto != "tcp" || f.ReplyDst != netip.MustParseAddrPort("10.253.0.1:51000") || f.Pod != "c1/eth0" ||
		!f.Started.Equal(time.Unix(100, 0)) || !f.Expires.IsZero() {
		t.Fatalf("flow %+v", f)
	}
	// Normalize filled in the bound the handler sees.
	if _, err := c.Conntrack(ctx, ConntrackRequest{}); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	if g := h.got[len(h.got)-1]; g.Max != MaxConntrackFlows || g.Pod != "" {
		t.Errorf("handler got %+v", g)
	}
	h.mu.Unlock()
	// No flows is an empty list, not a missing reply.
	if ct, err := c.Conntrack(ctx, ConntrackRequest{Pod: "empty"}); err != nil || ct.Flows == nil || len(ct.Flows) != 0 || ct.Egress != "uplink" {
		t.Fatalf("empty: %+v, %v", ct, err)
	}
	if _, err := c.Conntrack(ctx, ConntrackRequest{Pod: "missing"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing pod: %v", err)
	}
	for _, bad := range []ConntrackRequest{{Max: -1}, {Max: MaxConntrackFlows + 1}, {Pod: "a b"}, {Pod: strings.Repeat("x", 2000)}} {
		if _, err := c.Conntrack(ctx, bad); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%+v: %v, want ErrBadRequest", bad, err)
		}
		// The server checks too.
		if _, err := c.do(ctx, request{Op: OpConntrack, Conntrack: &bad}, nil); !errors.Is(err, ErrBadRequest) {
			t.Errorf("server, %+v: %v, want ErrBadRequest", bad, err)
		}
	}
	if _, err := c.do(ctx, request{Op: OpConntrack}, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("without its request: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(observed) == 0 || observed[0] != "conntrack/" {
		t.Errorf("observed %v", observed)
	}
}

// A handler without OpConntrack answers bad-request.
func TestConntrackUnsupported(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid()))
	if _, err := c.Conntrack(context.Background(), ConntrackRequest{}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("%v, want ErrBadRequest", err)
	}
}
