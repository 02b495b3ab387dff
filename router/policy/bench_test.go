package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// synthCluster is 5,000 pods in 100 namespaces on 50 nodes (node n0 is
// local: about 100 pods), a tenth of them dual-stack, and 1,000 policies,
// 10 per namespace, mixing default deny, podSelector, namespaceSelector,
// both, ipBlock with except, port ranges and named ports, ingress and
// egress, the shapes the upstream guides and Helm charts write.
func synthCluster() Input {
	rng := rand.New(rand.NewPCG(1, 2))
	apps := []string{"web", "api", "db", "cache", "worker", "auth", "search", "queue", "frontend", "backend", "metrics", "batch"}
	tiers := map[string]string{"web": "frontend", "frontend": "frontend", "api": "backend", "backend": "backend", "auth": "backend",
		"search": "backend", "worker": "backend", "batch": "backend", "db": "data", "cache": "data", "queue": "data", "metrics": "ops"}
	appPorts := map[string][]NamedPort{
		"web":      {{"http", pTCP, 80}, {"metrics", pTCP, 9090}},
		"frontend": {{"http", pTCP, 3000}, {"metrics", pTCP, 9090}},
		"api":      {{"http", pTCP, 8080}, {"grpc", pTCP, 9000}, {"metrics", pTCP, 9090}},
		"db":       {{"postgres", pTCP, 5432}, {"metrics", pTCP, 9187}},
		"cache":    {{"redis", pTCP, 6379}},
		"queue":    {{"amqp", pTCP, 5672}, {"metrics", pTCP, 15692}},
		"metrics":  {{"http", pTCP, 9090}},
		"auth":     {{"http", pTCP, 8080}, {"dns", pUDP, 53}},
	}
	teams := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"}
	var in Input
	in.Node = "n0"
	for i := range 100 {
		name := fmt.Sprintf("ns%02d", i)
		if i == 0 {
			name = "kube-system"
		}
		env := "prod"
		if i%3 == 0 {
			env = "staging"
		}
		in.Namespaces = append(in.Namespaces, mkNS(name, map[string]string{
			"kubernetes.io/metadata.name": name, "team": teams[i%len(teams)], "env": env,
		}))
	}
	for i := range 5000 {
		ns := in.Namespaces[i%100].Name
		app := apps[rng.IntN(len(apps))]
		lbls := map[string]string{"app": app, "tier": tiers[app], "version": []string{"v1", "v2"}[rng.IntN(2)]}
		lbls["pod-template-hash"] = fmt.Sprintf("%s-%s-%s", ns, app, lbls["version"])
		if ns == "kube-system" && i%7 == 0 {
			lbls = map[string]string{"k8s-app": "kube-dns"}
		}
		p := mkPod(ns, fmt.Sprintf("%s-%d", app, i), fmt.Sprintf("n%d", i%50), lbls)
		p.IPs = append(p.IPs, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if i%10 == 0 {
			p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i >> 8), 15: byte(i)}))
		}
		p.Ports = appPorts[app]
		in.Pods = append(in.Pods, p)
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	for i := range 1000 {
		ns := in.Namespaces[i%100].Name
		k := i / 100
		app := apps[(i+k)%len(apps)]
		other := apps[(i+k+3)%len(apps)]
		var spec networkingv1.NetworkPolicySpec
		switch k {
		case 0: // default deny ingress and egress
			spec = networkingv1.NetworkPolicySpec{PolicyTypes: typesIE}
		case 1: // DNS egress for everyone
			spec = networkingv1.NetworkPolicySpec{PolicyTypes: typesE, Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(ports(port(udp, 53), port(tcp, 53)), bothPeer(psel("kubernetes.io/metadata.name", "kube-system"), psel("k8s-app", "kube-dns"))),
			}}
		case 2: // app from another app of the namespace, numeric port
			spec = networkingv1.NetworkPolicySpec{PodSelector: sel("app", app), Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(port(tcp, 8080), port(tcp, 80)), podPeer(psel("app", other))),
				ingress(ports(namedPort(tcp, "http")), podPeer(psel("tier", "frontend"))),
			}}
		case 3: // from the team's namespaces, named port
			spec = networkingv1.NetworkPolicySpec{PodSelector: sel("tier", tiers[app]), Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(namedPort(tcp, "http"), namedPort(tcp, "grpc")), bothPeer(psel("team", teams[rng.IntN(len(teams))]), psel("tier", "frontend"))),
			}}
		case 4: // metrics scraping from the monitoring namespace
			spec = networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(namedPort(tcp, "metrics")), bothPeer(psel("kubernetes.io/metadata.name", "ns01"), psel("app", "metrics"))),
			}}
		case 5: // from outside the cluster (load balancers), port range
			spec = networkingv1.NetworkPolicySpec{PodSelector: sel("app", app), Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(portRng(tcp, 30000, 32767), port(tcp, 443)), blockPeer("0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), blockPeer("::/0", "fd00::/8")),
			}}
		case 6: // egress to the data tier by named port, anywhere in env
			spec = networkingv1.NetworkPolicySpec{PodSelector: sel("tier", "backend"), PolicyTypes: typesE, Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(ports(namedPort(tcp, "postgres"), namedPort(tcp, "redis"), namedPort(tcp, "amqp")), bothPeer(psel("env", in.Namespaces[i%100].Labels["env"]), psel("tier", "data"))),
				egress(ports(port(tcp, 443)), blockPeer("0.0.0.0/0", "10.0.0.0/8")),
			}}
		case 7: // matchExpressions
			spec = networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{app, other}}}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingress(nil, bothPeer(expr("env", metav1.LabelSelectorOpNotIn, "staging"), expr("version", metav1.LabelSelectorOpIn, "v2"))),
					ingress(ports(port(udp, 5000)), nsPeer(psel("team", teams[(i+1)%len(teams)]))),
				},
			}
		case 8: // whole namespace from the same namespace
			spec = networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(psel()))}}
		default: // egress within the namespace and to a service range
			spec = networkingv1.NetworkPolicySpec{PodSelector: sel("app", app), PolicyTypes: typesE, Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(nil, podPeer(psel())),
				egress(ports(portRng(tcp, 8000, 8999)), blockPeer("10.96.0.0/12"), blockPeer("fd00:96::/108")),
			}}
		}
		in.Policies = append(in.Policies, mkPolicy(ns, fmt.Sprintf("np-%d", k), spec))
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	in := synthCluster()
	b.ReportAllocs()
	var s *Set
	for b.Loop() {
		s, _ = Compile(in)
	}
	// Bytes the set holds: the heap after a GC with and without it.
	var m0, m1 runtime.MemStats
	s = nil
	runtime.GC()
	runtime.ReadMemStats(&m0)
	s, probs := Compile(in)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc), "set-bytes")
	b.ReportMetric(float64(len(s.locals)), "local-pods")
	runtime.KeepAlive(s)
	if len(probs) != 0 {
		b.Fatal(probs)
	}
}

// benchFlows finds, for the local pod with the most ingress rules, flows
// that the first and the last of its policies allow and one denied, and
// an egress flow a named port allows.
type benchFlow struct {
	peer  netip.Addr
	proto uint8
	port  uint16
}

func benchFlows(tb testing.TB, s *Set, in Input) (ing, eg *Rules, first, last, deny, named benchFlow) {
	var best *localPod
	for _, lp := range s.locals {
		if lp.rules[Ingress] != nil && lp.rules[Egress] != nil && (best == nil || len(lp.rules[Ingress].rules) > len(best.rules[Ingress].rules)) {
			best = lp
		}
	}
	ing, eg = best.rules[Ingress], best.rules[Egress]
	var peers []netip.Addr
	for _, p := range in.Pods {
		peers = append(peers, p.IPs...)
	}
	peers = append(peers, netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7"))
	type fl = benchFlow
	lastPol := ing.policies[len(ing.policies)-1]
	found := 0
	for _, peer := range peers {
		for _, pp := range []struct {
			proto uint8
			port  uint16
		}{{pTCP, 80}, {pTCP, 8080}, {pTCP, 3000}, {pTCP, 9090}, {pTCP, 31000}, {pUDP, 5000}, {pTCP, 5432}, {pTCP, 6379}, {pTCP, 5}} {
			v := ing.Check(peer, pp.proto, pp.port)
			switch {
			case v.Allowed && v.Policy == ing.rules[0].policy && !first.peer.IsValid():
				first, found = fl{peer, pp.proto, pp.port}, found+1
			case v.Allowed && v.Policy == lastPol && v.Policy != ing.rules[0].policy && !last.peer.IsValid():
				last, found = fl{peer, pp.proto, pp.port}, found+1
			case !v.Allowed && !deny.peer.IsValid() && peer.Is4() && !peer.IsPrivate():
				deny, found = fl{peer, pp.proto, pp.port}, found+1
			}
			if !named.peer.IsValid() && len(eg.rules) > 0 {
				if v := eg.Check(peer, pp.proto, pp.port); v.Allowed {
					for _, r := range eg.rules {
						if r.policy == v.Policy && len(r.named) > 0 && !r.anyPort && len(r.ports) == 0 {
							named, found = fl{peer, pp.proto, pp.port}, found+1
						}
					}
				}
			}
		}
	}
	if found != 4 {
		tb.Fatalf("flows not found: first %v last %v deny %v named %v", first, last, deny, named)
	}
	return
}

func BenchmarkCheck(b *testing.B) {
	in := synthCluster()
	s, _ := Compile(in)
	ing, eg, first, last, deny, named := benchFlows(b, s, in)
	for _, c := range []struct {
		name string
		r    *Rules
		f    benchFlow
	}{{"allow-first", ing, first}, {"allow-last", ing, last}, {"deny", ing, deny}, {"egress-named-port", eg, named}} {
		b.Run(c.name, func(b *testing.B) {
			peer, proto, port := c.f.peer, c.f.proto, c.f.port
			b.ReportAllocs()
			var v Verdict
			for b.Loop() {
				v = c.r.Check(peer, proto, port)
			}
			b.ReportMetric(float64(len(c.r.rules)), "rules")
			b.ReportMetric(float64(len(c.r.policies)), "policies")
			if v.Allowed == (c.name == "deny") {
				b.Fatalf("verdict %+v", v)
			}
		})
	}
	// The worst case: a pod selected by 25 policies with 45 rules, each
	// matching the port, none the peer (a pod), so Check tries them all.
	b.Run("deny-45-rules", func(b *testing.B) {
		big, lp := manyRules(in, s)
		r := big.Rules(Ingress, lp.IPs[0])
		var peer netip.Addr
		for _, p := range in.Pods {
			if p.Labels["app"] == "api" && !r.Check(p.IPs[0], pTCP, 80).Allowed {
				peer = p.IPs[0]
				break
			}
		}
		b.ReportAllocs()
		for b.Loop() {
			if r.Check(peer, pTCP, 80).Allowed {
				b.Fatal("allowed")
			}
		}
		b.ReportMetric(float64(len(r.rules)), "rules")
		b.ReportMetric(float64(len(r.policies)), "policies")
	})
	b.Run("rules-lookup", func(b *testing.B) {
		a := s.locals[0].rec.pod.IPs[0]
		for b.Loop() {
			s.Rules(Ingress, a)
		}
	})
}

// manyRules adds 20 policies of 2 rules (TCP/80 from pods of a team's
// namespaces, TCP/80 from an ipBlock) selecting the local pod with the
// most ingress rules in s, and compiles again.
func manyRules(in Input, s *Set) (*Set, *Pod) {
	var lp *Pod
	most := -1
	for _, l := range s.locals {
		if r := l.rules[Ingress]; r != nil && len(r.rules) > most {
			lp, most = l.rec.pod, len(r.rules)
		}
	}
	in.Policies = append([]*networkingv1.NetworkPolicy(nil), in.Policies...)
	for i := range 20 {
		in.Policies = append(in.Policies, mkPolicy(lp.Namespace, fmt.Sprintf("extra-%d", i), networkingv1.NetworkPolicySpec{
			PodSelector: sel("app", lp.Labels["app"]),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(port(corev1.ProtocolTCP, 80), namedPort(corev1.ProtocolTCP, "http")), bothPeer(psel("team", "alpha"), psel("app", "web"))),
				ingress(ports(port(corev1.ProtocolTCP, 80)), blockPeer(fmt.Sprintf("172.16.%d.0/24", i))),
			},
		}))
	}
	big, _ := Compile(in)
	return big, lp
}

// TestSynthCluster checks the benchmark cluster compiles cleanly and its
// hot path allocates nothing.
func TestSynthCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("large input")
	}
	in := synthCluster()
	s, probs := Compile(in)
	if len(probs) != 0 {
		t.Fatal(probs)
	}
	ing, eg, first, last, deny, named := benchFlows(t, s, in)
	if n := testing.AllocsPerRun(100, func() {
		for _, f := range []benchFlow{first, last, deny} {
			ing.Check(f.peer, f.proto, f.port)
		}
		eg.Check(named.peer, named.proto, named.port)
	}); n != 0 {
		t.Errorf("Check allocates %v times per run", n)
	}
}
