package daemon

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/policy"
)

var (
	polWeb   = netip.MustParseAddr("10.244.1.5") // shop/web, app=web
	polCart  = netip.MustParseAddr("10.244.1.6") // shop/cart, app=cart: isolated for ingress
	polIdle  = netip.MustParseAddr("10.244.1.7") // shop/idle: not isolated, no traffic
	polOther = netip.MustParseAddr("10.244.2.9") // shop/other, on another node
)

// newPolicyDaemon is newEgressDaemon with NetworkPolicy enforcement on and
// three pod ports (bare IP, on pipes): web, cart and idle. It returns the
// host ends of web's and cart's ports.
func newPolicyDaemon(t *testing.T) (d *Daemon, web, cart *linktest.End) {
	t.Helper()
	pfx := netip.MustParsePrefix
	d = newEgressDaemon(t, Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		Egress: EgressConfig{Mode: EgressUplink}, Policy: node.PolicyConfig{Enabled: true}})
	ends := map[netip.Addr]*linktest.End{}
	for _, a := range []netip.Addr{polWeb, polCart, polIdle} {
		dev, host := linktest.Pipe(64, 2048, 8)
		if _, err := d.eng.AddPort(dev, engine.PortConfig{Name: "c-" + a.String() + "/eth0", Kind: engine.KindPod, MTU: 1500, Addrs: []netip.Addr{a}}); err != nil {
			t.Fatal(err)
		}
		ends[a] = host
	}
	return d, ends[polWeb], ends[polCart]
}

// allowWeb is shop/allow-web: pods app=cart accept TCP 8080 ("http") from
// app=web, and nothing else.
func allowWeb() *networkingv1.NetworkPolicy {
	tcp, port := corev1.ProtocolTCP, intstr.FromString("http")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "allow-web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "cart"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

// setShopPolicy compiles allowWeb over the shop's pods (three here, one on
// node n2) and makes it the node's set.
func setShopPolicy(t *testing.T, d *Daemon) {
	t.Helper()
	pod := func(name, nodeName string, a netip.Addr, ports ...policy.NamedPort) *policy.Pod {
		return &policy.Pod{Namespace: "shop", Name: name, Node: nodeName, Labels: map[string]string{"app": name}, IPs: []netip.Addr{a}, Ports: ports}
	}
	s, problems := policy.Compile(policy.Input{
		Node: "n1",
		Pods: []*policy.Pod{
			pod("web", "n1", polWeb), pod("cart", "n1", polCart, policy.NamedPort{Name: "http", Proto: packet.ProtoTCP, Port: 8080}),
			pod("idle", "n1", polIdle), pod("other", "n2", polOther),
		},
		Namespaces: []*policy.Namespace{{Name: "shop"}},
		Policies:   []*networkingv1.NetworkPolicy{allowWeb()},
	})
	if len(problems) > 0 {
		t.Fatalf("problems: %+v", problems)
	}
	if err := d.node.SetPolicy(s); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyOff: without enforcement the API says so, whatever the pod,
// and lists nothing.
func TestPolicyOff(t *testing.T) {
	pfx := netip.MustParsePrefix
	d := newEgressDaemon(t, Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		Egress: EgressConfig{Mode: EgressUplink}})
	for _, req := range []api.PolicyRequest{{}, {Pod: "shop/cart", Recent: 3}} {
		p, err := (handler{d}).Policy(context.Background(), req)
		if err != nil || p.Enabled || p.Pods == nil || len(p.Pods) != 0 || p.Recent == nil || len(p.Recent) != 0 || p.Policies != 0 {
			t.Errorf("%+v: %+v, %v", req, p, err)
		}
	}
	if _, err := (handler{d}).Policy(context.Background(), api.PolicyRequest{Pod: "shop"}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad pod: %v", err)
	}
}

// TestPolicyView: web's SYN to cart:8080 is allowed, its SYN to cart:81
// denied by shop/allow-web; the operator sees the set, each pod's
// isolation, cart's rules, the counters and both verdicts, newest first.
func TestPolicyView(t *testing.T) {
	d, web, cart := newPolicyDaemon(t)
	h := handler{d}
	ctx := context.Background()

	// Enforcement on, no set yet: no pod known, nothing isolated.
	p, err := h.Policy(ctx, api.PolicyRequest{})
	if err != nil || !p.Enabled || len(p.Pods) != 0 || p.Policies != 0 || p.IsolatedPods != 0 {
		t.Fatalf("no set: %+v, %v", p, err)
	}
	if _, err := h.Policy(ctx, api.PolicyRequest{Pod: "shop/cart"}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("no set, a pod: %v, want ErrNotFound", err)
	}

	setShopPolicy(t, d)
	before := time.Now().Add(-time.Second)
	pkts := [][]byte{
		hostPacket(netip.AddrPortFrom(polWeb, 40000), netip.AddrPortFrom(polCart, 8080), header.TCPProtocolNumber),
		hostPacket(netip.AddrPortFrom(polWeb, 40001), netip.AddrPortFrom(polCart, 81), header.TCPProtocolNumber),
	}
	if _, err := web.Write(pkts, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st := d.node.PolicyStats(); st.Allowed != 1 || st.DeniedIngress != 1; st = d.node.PolicyStats() {
		if time.Now().After(deadline) {
			t.Fatalf("policy counters %+v: never got to one allowed, one denied", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Only the allowed SYN reached cart.
	bufs, sizes := [][]byte{make([]byte, 2048), make([]byte, 2048)}, make([]int, 2)
	if n, err := cart.Read(bufs, sizes, 0); err != nil || n != 1 || header.TCP(bufs[0][header.IPv4MinimumSize:sizes[0]]).DestinationPort() != 8080 {
		t.Fatalf("cart read %d packets, %v", n, err)
	}

	p, err = h.Policy(ctx, api.PolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Enabled || p.Policies != 1 || p.IsolatedPods != 1 || p.TrackedFlows != 1 {
		t.Fatalf("totals %+v", p)
	}
	wantStats := api.PolicyStats{Allowed: 1, DeniedIngress: 1,
		DeniedByPolicy: []api.PolicyDenied{{Policy: "shop/allow-web", Direction: "ingress", Packets: 1}}}
	if st := p.Stats; st.Allowed != wantStats.Allowed || st.DeniedIngress != wantStats.DeniedIngress || st.DeniedEgress != 0 ||
		st.AllowedUntracked != 0 || st.Cut != 0 || !slices.Equal(st.DeniedByPolicy, wantStats.DeniedByPolicy) {
		t.Errorf("stats %+v, want %+v", st, wantStats)
	}
	// The local pods by name, the remote one not among them; rules only
	// for a pod asked for by name.
	var names []string
	for _, pod := range p.Pods {
		names = append(names, pod.String())
		if len(pod.Ingress.Rules)+len(pod.Egress.Rules) != 0 || pod.Egress.Isolated {
			t.Errorf("pod %+v: rules in the list of all pods, or isolated for egress", pod)
		}
		if isolated := pod.Name == "cart"; pod.Ingress.Isolated != isolated ||
			isolated != slices.Equal(pod.Ingress.Policies, []string{"shop/allow-web"}) {
			t.Errorf("pod %+v: ingress isolation", pod)
		}
	}
	if !slices.Equal(names, []string{"shop/cart", "shop/idle", "shop/web"}) {
		t.Errorf("pods %v", names)
	}
	// Recent, newest first: the denied SYN to 81, then the allowed one.
	if len(p.Recent) != 2 {
		t.Fatalf("recent %+v", p.Recent)
	}
	denied, allowed := p.Recent[0], p.Recent[1]
	want := api.PolicyFlow{Src: polWeb, Dst: polCart, SrcPod: "shop/web", DstPod: "shop/cart", Proto: "tcp", Port: 81,
		Verdict: "denied", Direction: "ingress", Policy: "shop/allow-web"}
	if denied.Time.Before(before) || denied.Time.After(time.Now()) {
		t.Errorf("denied at %v, want about now", denied.Time)
	}
	denied.Time, allowed.Time = time.Time{}, time.Time{}
	if denied != want {
		t.Errorf("denied flow\n %+v\nwant %+v", denied, want)
	}
	want.Port, want.Verdict = 8080, "allowed"
	if allowed != want {
		t.Errorf("allowed flow\n %+v\nwant %+v", allowed, want)
	}

	// One pod: its rules, and only its flows; Recent bounds them.
	p, err = h.Policy(ctx, api.PolicyRequest{Pod: "shop/cart", Recent: 1})
	if err != nil || len(p.Pods) != 1 || len(p.Recent) != 1 || p.Recent[0].Verdict != "denied" {
		t.Fatalf("shop/cart: %+v, %v", p, err)
	}
	c := p.Pods[0]
	wantRules := []api.PolicyRule{{Policy: "shop/allow-web", Rule: 0, Peers: []string{"pods{app=web} in namespace shop"}, Ports: []string{"TCP/http (=8080)"}}}
	if c.String() != "shop/cart" || !slices.Equal(c.IPs, []netip.Addr{polCart}) || !c.Ingress.Isolated || c.Egress.Isolated ||
		len(c.Ingress.Rules) != 1 || !equalRule(c.Ingress.Rules[0], wantRules[0]) || len(c.Egress.Rules) != 0 {
		t.Errorf("shop/cart %+v, want ingress rules %+v", c, wantRules)
	}
	if p, err := h.Policy(ctx, api.PolicyRequest{Pod: "shop/web"}); err != nil || len(p.Recent) != 2 || p.Pods[0].Ingress.Isolated {
		t.Errorf("shop/web: %+v, %v", p, err)
	}
	if p, err := h.Policy(ctx, api.PolicyRequest{Pod: "shop/idle"}); err != nil || len(p.Recent) != 0 || len(p.Pods) != 1 {
		t.Errorf("shop/idle: %+v, %v", p, err)
	}
	// A pod of another node, or none: not found.
	for _, pod := range []string{"shop/other", "shop/nope"} {
		if _, err := h.Policy(ctx, api.PolicyRequest{Pod: pod}); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", pod, err)
		}
	}
}

func equalRule(a, b api.PolicyRule) bool {
	return a.Policy == b.Policy && a.Rule == b.Rule && slices.Equal(a.Peers, b.Peers) && slices.Equal(a.Ports, b.Ports)
}
