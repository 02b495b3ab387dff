package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// policyHandler is fakeHandler with OpPolicy: shop/cart isolated for
// ingress by shop/allow-web; "off/x" is a node without enforcement, any
// other pod is not found; "empty/x" answers with nil slices.
type policyHandler struct {
	fakeHandler
	mu  sync.Mutex
	got []PolicyRequest
}

var policyAt = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func (h *policyHandler) Policy(_ context.Context, req PolicyRequest) (Policy, error) {
	h.mu.Lock()
	h.got = append(h.got, req)
	h.mu.Unlock()
	switch req.Pod {
	case "off/x":
		return Policy{}, nil
	case "empty/x":
		return Policy{Enabled: true}, nil
	case "", "shop/cart":
	default:
		return Policy{}, fmt.Errorf("%w: no local pod %s", ErrNotFound, req.Pod)
	}
	cart := PolicyPod{Namespace: "shop", Name: "cart", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")},
		Ingress: PolicyRules{Isolated: true, Policies: []string{"shop/allow-web"}}}
	if req.Pod != "" {
		cart.Ingress.Rules = []PolicyRule{{Policy: "shop/allow-web", Rule: 0, Peers: []string{"pods{app=web} in namespace shop"}, Ports: []string{"TCP/8080"}}}
	}
	return Policy{
		Enabled: true, Policies: 3, IsolatedPods: 1, TrackedFlows: 2,
		Stats: PolicyStats{Allowed: 4, AllowedUntracked: 1, DeniedIngress: 2,
			DeniedByPolicy: []PolicyDenied{{Policy: "shop/allow-web", Direction: "ingress", Packets: 2}}},
		Pods: []PolicyPod{cart},
		Recent: []PolicyFlow{{Time: policyAt, Src: netip.MustParseAddr("10.244.2.9"), Dst: netip.MustParseAddr("10.244.1.5"),
			DstPod: "shop/cart", Proto: "tcp", Port: 81, Verdict: "denied", Direction: "ingress", Policy: "shop/allow-web"}},
	}, nil
}

func TestPolicy(t *testing.T) {
	h := &policyHandler{}
	var mu sync.Mutex
	var observed []string
	_, c := startCaptureServer(t, 2*time.Second, h, func(op Op, code Code, _ time.Duration) {
		mu.Lock()
		observed = append(observed, string(op)+"/"+string(code))
		mu.Unlock()
	})
	ctx := context.Background()
	p, err := c.Policy(ctx, PolicyRequest{Pod: "shop/cart", Recent: 5})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Enabled || p.Policies != 3 || p.IsolatedPods != 1 || p.TrackedFlows != 2 || len(p.Pods) != 1 || len(p.Recent) != 1 {
		t.Fatalf("reply %+v", p)
	}
	st := p.Stats
	if st.Allowed != 4 || st.AllowedUntracked != 1 || st.DeniedIngress != 2 || st.DeniedEgress != 0 ||
		len(st.DeniedByPolicy) != 1 || st.DeniedByPolicy[0] != (PolicyDenied{"shop/allow-web", "ingress", 2}) {
		t.Fatalf("stats %+v", st)
	}
	pod := p.Pods[0]
	if pod.String() != "shop/cart" || len(pod.IPs) != 1 || !pod.Ingress.Isolated || pod.Egress.Isolated ||
		len(pod.Ingress.Rules) != 1 || pod.Ingress.Rules[0].Peers[0] != "pods{app=web} in namespace shop" || pod.Ingress.Rules[0].Ports[0] != "TCP/8080" {
		t.Fatalf("pod %+v", pod)
	}
	if f := p.Recent[0]; !f.Time.Equal(policyAt) || f.Src != netip.MustParseAddr("10.244.2.9") || f.SrcPod != "" || f.DstPod != "shop/cart" ||
		f.Proto != "tcp" || f.Port != 81 || f.Verdict != "denied" || f.Direction != "ingress" || f.Policy != "shop/allow-web" {
		t.Fatalf("recent %+v", f)
	}
	// Defaults: Recent is filled in before the handler sees it.
	if p, err := c.Policy(ctx, PolicyRequest{}); err != nil || len(p.Pods[0].Ingress.Rules) != 0 {
		t.Fatalf("all pods: %+v, %v", p, err)
	}
	h.mu.Lock()
	if g := h.got; len(g) != 2 || g[0] != (PolicyRequest{Pod: "shop/cart", Recent: 5}) || g[1] != (PolicyRequest{Recent: DefaultPolicyRecent}) {
		t.Errorf("handler got %+v", g)
	}
	h.mu.Unlock()
	// Off, and nil slices: empty lists on the wire, not missing ones.
	if p, err := c.Policy(ctx, PolicyRequest{Pod: "off/x"}); err != nil || p.Enabled || p.Pods == nil || p.Recent == nil {
		t.Fatalf("off: %+v, %v", p, err)
	}
	if p, err := c.Policy(ctx, PolicyRequest{Pod: "empty/x"}); err != nil || !p.Enabled || p.Pods == nil || p.Recent == nil || p.Stats.DeniedByPolicy == nil {
		t.Fatalf("empty: %+v, %v", p, err)
	}
	if _, err := c.Policy(ctx, PolicyRequest{Pod: "shop/nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown pod: %v", err)
	}
	if _, err := c.do(ctx, request{Op: OpPolicy}, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("without its request: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(observed) == 0 || observed[0] != "policy/" {
		t.Errorf("observed %v", observed)
	}
}

// TestPolicyNormalize pins what a PolicyRequest may say; the server
// checks as the client does.
func TestPolicyNormalize(t *testing.T) {
	for _, c := range []struct {
		name string
		req  PolicyRequest
		want PolicyRequest // zero: ErrBadRequest
	}{
		{"empty", PolicyRequest{}, PolicyRequest{Recent: DefaultPolicyRecent}},
		{"pod", PolicyRequest{Pod: "kube-system/coredns-5d78c9869d-abcde", Recent: 1}, PolicyRequest{Pod: "kube-system/coredns-5d78c9869d-abcde", Recent: 1}},
		{"dotted-name", PolicyRequest{Pod: "ns/a.b-c", Recent: MaxPolicyRecent}, PolicyRequest{Pod: "ns/a.b-c", Recent: MaxPolicyRecent}},
		{"no-slash", PolicyRequest{Pod: "cart"}, PolicyRequest{}},
		{"no-namespace", PolicyRequest{Pod: "/cart"}, PolicyRequest{}},
		{"no-name", PolicyRequest{Pod: "shop/"}, PolicyRequest{}},
		{"two-slashes", PolicyRequest{Pod: "shop/cart/x"}, PolicyRequest{}},
		{"upper-case", PolicyRequest{Pod: "Shop/cart"}, PolicyRequest{}},
		{"space", PolicyRequest{Pod: "shop/ca rt"}, PolicyRequest{}},
		{"long-namespace", PolicyRequest{Pod: strings.Repeat("n", 64) + "/cart"}, PolicyRequest{}},
		{"long-name", PolicyRequest{Pod: "shop/" + strings.Repeat("x", 254)}, PolicyRequest{}},
		{"negative-recent", PolicyRequest{Recent: -1}, PolicyRequest{}},
		{"too-many-recent", PolicyRequest{Recent: MaxPolicyRecent + 1}, PolicyRequest{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := c.req
			err := r.Normalize()
			if c.want == (PolicyRequest{}) {
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("%+v: %v, want ErrBadRequest", c.req, err)
				}
				return
			}
			if err != nil || r != c.want {
				t.Fatalf("%+v: %+v, %v; want %+v", c.req, r, err, c.want)
			}
		})
	}
	// The server refuses what Normalize refuses, whatever the client did.
	_, c := startCaptureServer(t, 2*time.Second, &policyHandler{}, nil)
	for _, bad := range []PolicyRequest{{Pod: "a/b/c"}, {Recent: 1000}} {
		if _, err := c.do(context.Background(), request{Op: OpPolicy, Policy: &bad}, nil); !errors.Is(err, ErrBadRequest) {
			t.Errorf("server, %+v: %v, want ErrBadRequest", bad, err)
		}
	}
}

// A handler without OpPolicy answers bad-request.
func TestPolicyUnsupported(t *testing.T) {
	_, _, c := startServer(t, uint32(os.Getuid()))
	if _, err := c.Policy(context.Background(), PolicyRequest{}); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "does not show NetworkPolicy") {
		t.Fatalf("%v, want ErrBadRequest", err)
	}
}

// TestPolicyJSON pins the reply's field names (what `--json` users and
// scripts read).
func TestPolicyJSON(t *testing.T) {
	p, _ := (&policyHandler{}).Policy(context.Background(), PolicyRequest{Pod: "shop/cart"})
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"enabled":true`, `"policies":3`, `"isolatedPods":1`, `"trackedFlows":2`,
		`"allowedUntracked":1`, `"deniedByPolicy":[{"policy":"shop/allow-web","direction":"ingress","packets":2}]`,
		`"ingress":{"isolated":true,"policies":["shop/allow-web"],"rules":[{"policy":"shop/allow-web","rule":0,"peers":["pods{app=web} in namespace shop"],"ports":["TCP/8080"]}]}`,
		`"egress":{"isolated":false}`, `"dstPod":"shop/cart"`, `"verdict":"denied"`, `"time":"2025-03-04T05:06:07Z"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
}
