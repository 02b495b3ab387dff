package policy

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	pICMP = 1
	pTCP  = 6
	pUDP  = 17
	pSCTP = 132
)

// fixture is a small cluster: node n1 hosts a/server and a/egresser;
// namespace u is not listed (its pods' namespace has no labels).
func fixture(pols ...*networkingv1.NetworkPolicy) Input {
	return Input{
		Node: "n1",
		Namespaces: []*Namespace{
			mkNS("a", map[string]string{"kubernetes.io/metadata.name": "a", "team": "x"}),
			mkNS("b", map[string]string{"kubernetes.io/metadata.name": "b", "team": "y"}),
			mkNS("c", map[string]string{"kubernetes.io/metadata.name": "c"}),
		},
		Pods: []*Pod{
			withPorts(mkPod("a", "server", "n1", map[string]string{"app": "server"}, "10.0.0.1", "fd00::1"),
				NamedPort{"http", pTCP, 8080}, NamedPort{"dns", pUDP, 53}),
			mkPod("a", "egresser", "n1", map[string]string{"app": "egresser"}, "10.0.0.2"),
			mkPod("a", "client", "n2", map[string]string{"app": "client"}, "10.0.1.1", "fd00::1:1"),
			mkPod("a", "other", "n2", map[string]string{"app": "other", "tier": "web"}, "10.0.1.2"),
			withPorts(mkPod("b", "client", "n2", map[string]string{"app": "client"}, "10.0.2.1"),
				NamedPort{"web", pTCP, 9090}),
			mkPod("b", "other", "n2", map[string]string{"app": "other"}, "10.0.2.2"),
			withPorts(mkPod("c", "db", "n2", map[string]string{"app": "db", "tier": "data"}, "10.0.3.1", "fd00::3:1"),
				NamedPort{"http", pTCP, 5432}, NamedPort{"http", pUDP, 5433}),
			mkPod("u", "client", "n2", map[string]string{"app": "client"}, "10.0.4.1"),
		},
		Policies: pols,
	}
}

type flow struct {
	peer  string
	proto uint8
	port  uint16
	want  int32 // policy index that allows, -1: denied
}

func TestCheck(t *testing.T) {
	server := sel("app", "server")
	tests := []struct {
		name     string
		pols     []*networkingv1.NetworkPolicy
		dir      Direction
		local    string
		isolated bool
		flows    []flow
	}{
		{name: "no policy: not isolated", dir: Ingress, local: "10.0.0.1"},
		{
			name: "policy of another namespace does not isolate",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("b", "deny", networkingv1.NetworkPolicySpec{})},
			dir:  Ingress, local: "10.0.0.1",
		},
		{
			name: "policy selecting other pods does not isolate",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "deny", networkingv1.NetworkPolicySpec{PodSelector: sel("app", "client")})},
			dir:  Ingress, local: "10.0.0.1",
		},
		{
			name: "default deny ingress (no policyTypes, no rules)",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "deny", networkingv1.NetworkPolicySpec{})},
			dir:  Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.1.1", pTCP, 80, -1}, {"192.0.2.1", pICMP, 0, -1}, {"fd00::1:1", pTCP, 80, -1}},
		},
		{
			name: "default policyTypes do not isolate egress without egress rules",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "deny", networkingv1.NetworkPolicySpec{})},
			dir:  Egress, local: "10.0.0.1",
		},
		{
			name: "default policyTypes isolate egress with egress rules",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Egress: []networkingv1.NetworkPolicyEgressRule{egress(ports(port(corev1.ProtocolUDP, 53)))},
			})},
			dir: Egress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"192.0.2.1", pUDP, 53, 0}, {"192.0.2.1", pTCP, 53, -1}},
		},
		{
			name: "egress-only policy does not isolate ingress",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PolicyTypes: typesE,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(psel("app", "nobody")))},
			})},
			dir: Ingress, local: "10.0.0.1",
		},
		{
			name: "explicit Egress type without rules denies all egress",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{PolicyTypes: typesIE})},
			dir:  Egress, local: "10.0.0.2", isolated: true,
			flows: []flow{{"10.0.0.1", pTCP, 80, -1}, {"8.8.8.8", pUDP, 53, -1}},
		},
		{
			name: "empty from allows every peer, pods and outside",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PodSelector: server,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.1.1", pTCP, 80, 0}, {"192.0.2.1", pICMP, 0, 0}, {"2001:db8::1", pSCTP, 9, 0}},
		},
		{
			name: "podSelector alone: the policy's namespace only",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PodSelector: server,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(psel("app", "client")))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{
				{"10.0.1.1", pTCP, 80, 0}, {"fd00::1:1", pUDP, 5, 0}, // both addresses of a/client
				{"10.0.1.2", pTCP, 80, -1}, {"10.0.2.1", pTCP, 80, -1}, {"10.0.4.1", pTCP, 80, -1},
				{"192.0.2.1", pTCP, 80, -1},
			},
		},
		{
			name: "empty podSelector peer: every pod of the namespace",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(psel()))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.1.1", pTCP, 80, 0}, {"10.0.1.2", pTCP, 80, 0}, {"10.0.0.2", pTCP, 80, 0}, {"10.0.2.1", pTCP, 80, -1}},
		},
		{
			name: "namespaceSelector {}: every pod, listed namespace or not, nothing outside",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, nsPeer(psel()))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.2.1", pTCP, 80, 0}, {"10.0.4.1", pTCP, 80, 0}, {"10.0.3.1", pUDP, 1, 0}, {"192.0.2.1", pTCP, 80, -1}, {"10.0.9.9", pTCP, 80, -1}},
		},
		{
			name: "namespaceSelector by label",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, nsPeer(psel("team", "y")))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.2.1", pTCP, 80, 0}, {"10.0.2.2", pTCP, 80, 0}, {"10.0.1.1", pTCP, 80, -1}, {"10.0.4.1", pTCP, 80, -1}},
		},
		{
			name: "namespaceSelector DoesNotExist matches the unlisted namespace",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, nsPeer(expr("team", metav1.LabelSelectorOpDoesNotExist)))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.4.1", pTCP, 80, 0}, {"10.0.3.1", pTCP, 80, 0}, {"10.0.1.1", pTCP, 80, -1}, {"10.0.2.1", pTCP, 80, -1}},
		},
		{
			name: "namespace and pod selector together",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, bothPeer(psel("team", "y"), psel("app", "client")))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"10.0.2.1", pTCP, 80, 0}, {"10.0.2.2", pTCP, 80, -1}, {"10.0.1.1", pTCP, 80, -1}, {"10.0.4.1", pTCP, 80, -1}},
		},
		{
			name: "matchExpressions In, NotIn, Exists",
			pols: []*networkingv1.NetworkPolicy{
				mkPolicy("a", "in", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 1)), bothPeer(psel(), expr("app", metav1.LabelSelectorOpIn, "db", "other")))},
				}),
				mkPolicy("a", "notin", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 2)), bothPeer(psel(), expr("app", metav1.LabelSelectorOpNotIn, "client", "server")))},
				}),
				mkPolicy("a", "exists", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 3)), bothPeer(psel(), expr("tier", metav1.LabelSelectorOpExists)))},
				}),
			},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{
				// Index order: exists 0, in 1, notin 2.
				{"10.0.3.1", pTCP, 1, 1}, {"10.0.2.2", pTCP, 1, 1}, {"10.0.2.1", pTCP, 1, -1},
				{"10.0.3.1", pTCP, 2, 2}, {"10.0.0.2", pTCP, 2, 2}, {"10.0.1.1", pTCP, 2, -1},
				{"10.0.1.2", pTCP, 3, 0}, {"10.0.3.1", pTCP, 3, 0}, {"10.0.2.2", pTCP, 3, -1},
			},
		},
		{
			name: "ipBlock with except, pod addresses included, other family never",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, blockPeer("10.0.0.0/8", "10.0.2.0/24", "10.0.4.1/32"))},
			})},
			dir: Ingress, local: "fd00::1", isolated: true,
			flows: []flow{
				{"10.0.1.1", pTCP, 80, 0}, {"10.9.9.9", pTCP, 80, 0}, {"10.0.2.1", pTCP, 80, -1},
				{"10.0.4.1", pTCP, 80, -1}, {"10.0.4.2", pTCP, 80, 0}, {"192.0.2.1", pTCP, 80, -1},
				{"fd00::1:1", pTCP, 80, -1}, {"::ffff:10.0.1.1", pTCP, 80, 0},
			},
		},
		{
			name: "IPv6 ipBlock",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, blockPeer("fd00::/16", "fd00::3:0/112"))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"fd00::1:1", pTCP, 80, 0}, {"fd00::3:1", pTCP, 80, -1}, {"10.0.1.1", pTCP, 80, -1}},
		},
		{
			name: "ports: a rule with ports never matches other protocols",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(networkingv1.NetworkPolicyPort{Port: port(corev1.ProtocolTCP, 8080).Port}))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"192.0.2.1", pTCP, 8080, 0}, {"192.0.2.1", pTCP, 80, -1}, {"192.0.2.1", pUDP, 8080, -1}, {"192.0.2.1", pICMP, 0, -1}, {"192.0.2.1", pSCTP, 8080, -1}},
		},
		{
			name: "ports: protocol without port, ranges",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(allPorts(corev1.ProtocolUDP), portRng(corev1.ProtocolTCP, 1000, 2000)))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{
				{"192.0.2.1", pUDP, 1, 0}, {"192.0.2.1", pUDP, 65535, 0}, {"192.0.2.1", pTCP, 999, -1},
				{"192.0.2.1", pTCP, 1000, 0}, {"192.0.2.1", pTCP, 2000, 0}, {"192.0.2.1", pTCP, 2001, -1},
			},
		},
		{
			name: "ingress named port resolves against the local pod by name and protocol",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(namedPort(corev1.ProtocolTCP, "http"), namedPort(corev1.ProtocolTCP, "dns"), namedPort(corev1.ProtocolUDP, "nope")))},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"192.0.2.1", pTCP, 8080, 0}, {"192.0.2.1", pTCP, 80, -1}, {"192.0.2.1", pUDP, 8080, -1}, {"192.0.2.1", pUDP, 53, -1}, {"192.0.2.1", pTCP, 53, -1}},
		},
		{
			name: "egress named port resolves against the peer",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PolicyTypes: typesE,
				Egress: []networkingv1.NetworkPolicyEgressRule{
					egress(ports(namedPort(corev1.ProtocolTCP, "http"), namedPort(corev1.ProtocolUDP, "http")), nsPeer(psel())),
					egress(ports(namedPort(corev1.ProtocolTCP, "web"))),
				},
			})},
			dir: Egress, local: "10.0.0.2", isolated: true,
			flows: []flow{
				{"10.0.3.1", pTCP, 5432, 0}, {"fd00::3:1", pTCP, 5432, 0}, {"10.0.3.1", pUDP, 5433, 0},
				{"10.0.3.1", pTCP, 5433, -1}, {"10.0.3.1", pTCP, 8080, -1},
				{"10.0.0.1", pTCP, 8080, 0}, {"10.0.0.1", pTCP, 5432, -1},
				{"10.0.2.1", pTCP, 9090, 0}, {"10.0.2.1", pTCP, 5432, -1},
				{"192.0.2.1", pTCP, 9090, -1}, // not a pod: no named port
			},
		},
		{
			name: "first allowing policy in index order (sorted by namespace/name)",
			pols: []*networkingv1.NetworkPolicy{
				mkPolicy("a", "zz", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 80)))},
				}),
				mkPolicy("a", "mm", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 81))), ingress(nil, podPeer(psel("app", "client")))},
				}),
				mkPolicy("a", "aa", networkingv1.NetworkPolicySpec{PodSelector: server}),
			},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"192.0.2.1", pTCP, 80, 2}, {"192.0.2.1", pTCP, 81, 1}, {"10.0.1.1", pTCP, 80, 1}, {"10.0.1.1", pUDP, 80, 1}, {"192.0.2.1", pTCP, 82, -1}},
		},
		{
			name: "SCTP port matches nothing; a rule without ports allows SCTP",
			pols: []*networkingv1.NetworkPolicy{
				mkPolicy("a", "a", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolSCTP, 9)))},
				}),
				mkPolicy("a", "b", networkingv1.NetworkPolicySpec{
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(psel("app", "client")))},
				}),
			},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{{"192.0.2.1", pSCTP, 9, -1}, {"10.0.1.1", pSCTP, 9, 1}},
		},
		{
			name: "broken peers and ports match nothing; their siblings still do",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingress(nil, blockPeer("10.0.0.0/33"), podPeer(expr("app", "Like", "x")), podPeer(psel("app", "client"))),
					ingress(ports(port(corev1.ProtocolTCP, 0), port("ICMP", 1), portRng(corev1.ProtocolTCP, 90, 80), port(corev1.ProtocolUDP, 7))),
					ingress(nil, blockPeer("10.0.0.0/8", "bad")),
					ingress(nil, networkingv1.NetworkPolicyPeer{}),
					ingress(nil, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}, PodSelector: psel()}),
				},
			})},
			dir: Ingress, local: "10.0.0.1", isolated: true,
			flows: []flow{
				{"10.0.1.1", pTCP, 1, 0}, {"10.0.1.2", pTCP, 1, -1}, {"192.0.2.1", pICMP, 0, -1},
				{"192.0.2.1", pUDP, 7, 0}, {"192.0.2.1", pTCP, 0, -1}, {"192.0.2.1", pTCP, 85, -1}, {"10.1.1.1", pTCP, 5, -1},
			},
		},
		{
			name: "a policy whose podSelector does not parse selects nothing",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PodSelector: *expr("app", metav1.LabelSelectorOpIn), // In without values
			})},
			dir: Ingress, local: "10.0.0.1",
		},
		{
			name: "dual-stack local pod: its IPv6 address has the same rules",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
				PolicyTypes: typesE,
				Egress:      []networkingv1.NetworkPolicyEgressRule{egress(nil, blockPeer("0.0.0.0/0")), egress(nil, podPeer(psel("app", "client")))},
			})},
			dir: Egress, local: "fd00::1", isolated: true,
			flows: []flow{{"8.8.8.8", pUDP, 53, 0}, {"2001:4860::8888", pUDP, 53, -1}, {"fd00::1:1", pTCP, 1, 0}},
		},
		{
			name: "a remote pod gets no rules",
			pols: []*networkingv1.NetworkPolicy{mkPolicy("a", "deny", networkingv1.NetworkPolicySpec{})},
			dir:  Ingress, local: "10.0.1.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := Compile(fixture(tt.pols...))
			r := s.Rules(tt.dir, netip.MustParseAddr(tt.local))
			if (r != nil) != tt.isolated {
				t.Fatalf("Rules(%v, %s) isolated = %v, want %v", tt.dir, tt.local, r != nil, tt.isolated)
			}
			for _, f := range tt.flows {
				v := r.Check(netip.MustParseAddr(f.peer), f.proto, f.port)
				want := Verdict{Allowed: f.want >= 0, Policy: f.want}
				if v != want {
					t.Errorf("Check(%s, %d, %d) = %+v, want %+v", f.peer, f.proto, f.port, v, want)
				}
			}
		})
	}
}

func TestPoliciesAndNames(t *testing.T) {
	in := fixture(
		mkPolicy("b", "x", networkingv1.NetworkPolicySpec{}),
		mkPolicy("a", "z", networkingv1.NetworkPolicySpec{PolicyTypes: typesIE}),
		mkPolicy("a", "other", networkingv1.NetworkPolicySpec{PodSelector: sel("app", "client")}),
		mkPolicy("a", "y", networkingv1.NetworkPolicySpec{PolicyTypes: typesE, PodSelector: sel("app", "server")}),
	)
	s, probs := Compile(in)
	if len(probs) != 0 {
		t.Fatalf("problems: %v", probs)
	}
	if s.NumPolicies() != 4 {
		t.Fatalf("NumPolicies = %d", s.NumPolicies())
	}
	want := [][2]string{{"a", "other"}, {"a", "y"}, {"a", "z"}, {"b", "x"}}
	for i, w := range want {
		if ns, n := s.Policy(int32(i)); ns != w[0] || n != w[1] {
			t.Errorf("Policy(%d) = %s/%s, want %s/%s", i, ns, n, w[0], w[1])
		}
	}
	if ns, n := s.Policy(4); ns != "" || n != "" {
		t.Errorf("Policy(4) = %q/%q", ns, n)
	}
	srv := netip.MustParseAddr("10.0.0.1")
	if got := s.Rules(Ingress, srv).Policies(); !reflect.DeepEqual(got, []int32{2}) {
		t.Errorf("ingress policies = %v", got)
	}
	if got := s.Rules(Egress, srv).Policies(); !reflect.DeepEqual(got, []int32{1, 2}) {
		t.Errorf("egress policies = %v", got)
	}
}

func TestProblems(t *testing.T) {
	in := fixture(
		mkPolicy("a", "bad", networkingv1.NetworkPolicySpec{
			PodSelector: *expr("app", "Like", "x"),
			PolicyTypes: typesIE,
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(port(corev1.ProtocolSCTP, 9), port("ICMP", 1), port(corev1.ProtocolTCP, 70000), portRng(corev1.ProtocolTCP, 90, 80)),
					blockPeer("10.0.0.0/33"), blockPeer("10.0.0.0/8", "x"), networkingv1.NetworkPolicyPeer{}),
			},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(ports(networkingv1.NetworkPolicyPort{EndPort: portRng(corev1.ProtocolTCP, 1, 2).EndPort}),
					nsPeer(psel("bad key!", "v")), podPeer(psel("k", "bad value!"))),
			},
		}),
		mkPolicy("a", "good", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(namedPort(corev1.ProtocolTCP, "http")), blockPeer("fd00::/8"))},
		}),
	)
	_, probs := Compile(in)
	want := []struct {
		reason ProblemReason
		detail string
	}{
		{ProblemBadSelector, "spec.podSelector"},
		{ProblemBadCIDR, "spec.ingress[0].from[0]"},
		{ProblemBadCIDR, "spec.ingress[0].from[1]"},
		{ProblemBadSelector, "spec.ingress[0].from[2]"},
		{ProblemSCTP, "spec.ingress[0].ports[0]"},
		{ProblemBadProtocol, "spec.ingress[0].ports[1]"},
		{ProblemBadPort, "spec.ingress[0].ports[2]"},
		{ProblemBadPort, "spec.ingress[0].ports[3]"},
		{ProblemBadSelector, "spec.egress[0].to[0]"},
		{ProblemBadSelector, "spec.egress[0].to[1]"},
		{ProblemBadPort, "spec.egress[0].ports[0]"},
	}
	if len(probs) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(probs), len(want), probs)
	}
	for i, w := range want {
		p := probs[i]
		if p.Namespace != "a" || p.Name != "bad" || p.Reason != w.reason || !strings.HasPrefix(p.Detail, w.detail) {
			t.Errorf("problem %d = %+v, want a/bad %v %s...", i, p, w.reason, w.detail)
		}
	}
}

func TestProblemsDeduplicated(t *testing.T) {
	np := mkPolicy("a", "dup", networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolSCTP, 9)))},
	})
	c := &compiler{seen: map[problemKey]struct{}{}, nsID: map[string]int32{}, portNames: map[string]int32{}}
	c.parsePolicy(0, np)
	c.parsePolicy(0, np) // the same policy and detail again: reported once
	c.parsePolicy(1, np) // another policy (a duplicate input object) counts apart
	if len(c.problems) != 2 {
		t.Fatalf("problems = %v, want 2", c.problems)
	}
}

func TestNilSafety(t *testing.T) {
	var s *Set
	a := netip.MustParseAddr("10.0.0.1")
	if s.Rules(Ingress, a) != nil || s.NumPolicies() != 0 || s.LocalPods() != nil {
		t.Error("nil Set is not empty")
	}
	if ns, n := s.Policy(0); ns != "" || n != "" {
		t.Error("nil Set has a policy")
	}
	if _, _, ok := s.PodAt(a); ok {
		t.Error("nil Set has a pod")
	}
	if _, ok := s.Explain("a", "server"); ok {
		t.Error("nil Set explains a pod")
	}
	var r *Rules
	if v := r.Check(a, pTCP, 80); v != (Verdict{Allowed: true, Policy: -1}) {
		t.Errorf("nil Rules Check = %+v", v)
	}
	if r.Policies() != nil {
		t.Error("nil Rules have policies")
	}
	s, probs := Compile(Input{})
	if len(probs) != 0 || s.Rules(Egress, a) != nil || s.NumPolicies() != 0 {
		t.Error("empty input compiles to rules")
	}
	s, _ = Compile(Input{Node: "n1", Pods: []*Pod{nil, mkPod("a", "x", "n1", nil)}, Namespaces: []*Namespace{nil}, Policies: []*networkingv1.NetworkPolicy{nil}})
	if len(s.LocalPods()) != 0 {
		t.Error("a pod without addresses is local")
	}
}

func TestPodsAndExplain(t *testing.T) {
	in := fixture(
		mkPolicy("a", "web", networkingv1.NetworkPolicySpec{
			PodSelector: sel("app", "server"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(port(corev1.ProtocolTCP, 80), portRng(corev1.ProtocolUDP, 1000, 2000), namedPort(corev1.ProtocolTCP, "http"), namedPort(corev1.ProtocolTCP, "nope")),
					bothPeer(psel("team", "x"), psel("app", "a")), podPeer(psel()), blockPeer("10.0.0.0/8", "10.1.0.0/16")),
				{},
			},
		}),
		mkPolicy("a", "out", networkingv1.NetworkPolicySpec{
			PolicyTypes: typesE, // every pod of a
			Egress:      []networkingv1.NetworkPolicyEgressRule{egress(ports(namedPort(corev1.ProtocolTCP, "http"), port(corev1.ProtocolSCTP, 1)), nsPeer(psel()))},
		}),
	)
	s, _ := Compile(in)
	locals := s.LocalPods()
	if len(locals) != 2 || locals[0].Name != "egresser" || locals[1].Name != "server" || len(locals[1].IPs) != 2 {
		t.Fatalf("LocalPods = %+v", locals)
	}
	for _, c := range []struct{ addr, ns, name string }{{"10.0.0.1", "a", "server"}, {"fd00::3:1", "c", "db"}, {"10.0.4.1", "u", "client"}} {
		if ns, n, ok := s.PodAt(netip.MustParseAddr(c.addr)); !ok || ns != c.ns || n != c.name {
			t.Errorf("PodAt(%s) = %s/%s %v", c.addr, ns, n, ok)
		}
	}
	if _, _, ok := s.PodAt(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("PodAt(outside) found a pod")
	}
	if _, ok := s.Explain("a", "client"); ok {
		t.Error("Explain of a remote pod")
	}
	pr, ok := s.Explain("a", "server")
	if !ok {
		t.Fatal("Explain(a/server) not found")
	}
	want := PodRules{
		PodRef: PodRef{Namespace: "a", Name: "server", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
		Ingress: DirectionRules{
			Isolated: true,
			Policies: []string{"a/web"},
			Rules: []RuleInfo{
				{
					Policy: "a/web", PolicyIndex: 1, Rule: 0,
					Peers: []string{"pods{app=a} in namespaces{team=x}", "pods{} in namespace a", "ipBlock 10.0.0.0/8 except 10.1.0.0/16"},
					Ports: []string{"TCP/80", "UDP/1000-2000", "TCP/http (=8080)", "TCP/nope (unresolved)"},
				},
				{Policy: "a/web", PolicyIndex: 1, Rule: 1, Peers: []string{"any"}, Ports: []string{"any"}},
			},
		},
		Egress: DirectionRules{
			Isolated: true,
			Policies: []string{"a/out"},
			Rules: []RuleInfo{{
				Policy: "a/out", PolicyIndex: 0, Rule: 0,
				Peers: []string{"pods{} in namespaces{}"},
				Ports: []string{"SCTP/1 (invalid: SCTP is not supported, matches nothing)", "TCP/http (the peer's)"},
			}},
		},
	}
	if !reflect.DeepEqual(pr, want) {
		t.Errorf("Explain(a/server) =\n%+v\nwant\n%+v", pr, want)
	}
	pe, _ := s.Explain("a", "egresser")
	js, err := json.Marshal(pe)
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"namespace":"a","name":"egresser","ips":["10.0.0.2"],"ingress":{"isolated":false},` +
		`"egress":{"isolated":true,"policies":["a/out"],"rules":[{"policy":"a/out","policyIndex":0,"rule":0,` +
		`"peers":["pods{} in namespaces{}"],"ports":["SCTP/1 (invalid: SCTP is not supported, matches nothing)","TCP/http (the peer's)"]}]}}`
	if string(js) != wantJSON {
		t.Errorf("Explain JSON =\n%s\nwant\n%s", js, wantJSON)
	}
}

func TestCheckAllocs(t *testing.T) {
	s, _ := Compile(fixture(
		mkPolicy("a", "p", networkingv1.NetworkPolicySpec{
			PolicyTypes: typesIE,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(port(corev1.ProtocolTCP, 1)), podPeer(psel("app", "client")), blockPeer("192.0.2.0/24", "192.0.2.1/32"))},
			Egress:      []networkingv1.NetworkPolicyEgressRule{egress(ports(namedPort(corev1.ProtocolTCP, "http")), nsPeer(psel()))},
		}),
	))
	in := s.Rules(Ingress, netip.MustParseAddr("10.0.0.1"))
	out := s.Rules(Egress, netip.MustParseAddr("fd00::1"))
	peers := []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00::3:1"), netip.MustParseAddr("::ffff:10.0.3.1")}
	n := testing.AllocsPerRun(1000, func() {
		for _, p := range peers {
			in.Check(p, pTCP, 1)
			out.Check(p, pTCP, 5432)
		}
		s.Rules(Ingress, peers[0])
	})
	if n != 0 {
		t.Errorf("Check allocates %v times per run", n)
	}
}
