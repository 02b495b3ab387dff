package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// reference is a naive reference: it reads the API objects for every
// flow, the way the API's doc comments say, with no compilation (it only
// remembers what metav1.LabelSelectorAsSelector made of each selector).
type reference struct {
	in       Input
	pols     []*networkingv1.NetworkPolicy
	nsLabels map[string]labels.Set
	sels     map[*metav1.LabelSelector]labels.Selector // nil: does not parse
}

func newReference(in Input) *reference {
	r := &reference{in: in, nsLabels: map[string]labels.Set{}, sels: map[*metav1.LabelSelector]labels.Selector{}}
	r.pols = append([]*networkingv1.NetworkPolicy(nil), in.Policies...)
	sort.SliceStable(r.pols, func(i, j int) bool {
		if r.pols[i].Namespace != r.pols[j].Namespace {
			return r.pols[i].Namespace < r.pols[j].Namespace
		}
		return r.pols[i].Name < r.pols[j].Name
	})
	for _, ns := range in.Namespaces {
		if _, dup := r.nsLabels[ns.Name]; !dup {
			r.nsLabels[ns.Name] = ns.Labels
		}
	}
	return r
}

func (r *reference) sel(ls *metav1.LabelSelector) (labels.Selector, error) {
	if s, ok := r.sels[ls]; ok {
		if s == nil {
			return nil, fmt.Errorf("bad")
		}
		return s, nil
	}
	s, err := metav1.LabelSelectorAsSelector(ls)
	r.sels[ls] = s
	if err != nil {
		r.sels[ls] = nil
	}
	return s, err
}

func (ref *reference) check(d Direction, local *Pod, peer netip.Addr, proto uint8, port uint16) (isolated bool, v Verdict) {
	in, pols, nsLabels := ref.in, ref.pols, ref.nsLabels
	peer = peer.Unmap()
	var peerPod *Pod
	for _, p := range in.Pods {
		for _, a := range p.IPs {
			if a.Unmap() == peer && peerPod == nil {
				peerPod = p
			}
		}
	}
	for i, np := range pols {
		sel, err := ref.sel(&np.Spec.PodSelector)
		if err != nil || np.Namespace != local.Namespace || !sel.Matches(labels.Set(local.Labels)) {
			continue
		}
		var types [2]bool
		if len(np.Spec.PolicyTypes) == 0 {
			types = [2]bool{true, len(np.Spec.Egress) > 0}
		}
		for _, t := range np.Spec.PolicyTypes {
			types[Ingress] = types[Ingress] || t == networkingv1.PolicyTypeIngress
			types[Egress] = types[Egress] || t == networkingv1.PolicyTypeEgress
		}
		if !types[d] {
			continue
		}
		isolated = true
		if v.Allowed {
			continue
		}
		type ruleT struct {
			peers []networkingv1.NetworkPolicyPeer
			ports []networkingv1.NetworkPolicyPort
		}
		var rules []ruleT
		if d == Ingress {
			for _, r := range np.Spec.Ingress {
				rules = append(rules, ruleT{r.From, r.Ports})
			}
		} else {
			for _, r := range np.Spec.Egress {
				rules = append(rules, ruleT{r.To, r.Ports})
			}
		}
		dst := local
		if d == Egress {
			dst = peerPod
		}
		for _, r := range rules {
			if ref.peers(np, nsLabels, r.peers, peer, peerPod) && refPorts(r.ports, dst, proto, port) {
				v = Verdict{Allowed: true, Policy: int32(i)}
				break
			}
		}
	}
	if !v.Allowed {
		v.Policy = -1
	}
	return isolated, v
}

func (ref *reference) peers(np *networkingv1.NetworkPolicy, nsLabels map[string]labels.Set, peers []networkingv1.NetworkPolicyPeer, peer netip.Addr, peerPod *Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pe := range peers {
		if pe.IPBlock != nil {
			if pe.PodSelector != nil || pe.NamespaceSelector != nil {
				continue
			}
			cidr, err := netip.ParsePrefix(pe.IPBlock.CIDR)
			if err != nil {
				continue
			}
			in, bad := cidr.Masked().Contains(peer), false
			for _, e := range pe.IPBlock.Except {
				ep, err := netip.ParsePrefix(e)
				bad = bad || err != nil
				if err == nil && ep.Masked().Contains(peer) {
					in = false
				}
			}
			if in && !bad {
				return true
			}
			continue
		}
		if peerPod == nil || pe.PodSelector == nil && pe.NamespaceSelector == nil {
			continue
		}
		podOK := true
		if pe.PodSelector != nil {
			s, err := ref.sel(pe.PodSelector)
			podOK = err == nil && s.Matches(labels.Set(peerPod.Labels))
		}
		nsOK := peerPod.Namespace == np.Namespace
		if pe.NamespaceSelector != nil {
			s, err := ref.sel(pe.NamespaceSelector)
			nsOK = err == nil && s.Matches(nsLabels[peerPod.Namespace])
		}
		if podOK && nsOK {
			return true
		}
	}
	return false
}

func refPorts(ports []networkingv1.NetworkPolicyPort, dst *Pod, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		want := uint8(pTCP)
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP:
			case corev1.ProtocolUDP:
				want = pUDP
			default:
				continue
			}
		}
		if want != proto {
			continue
		}
		switch {
		case p.Port == nil:
			if p.EndPort == nil {
				return true
			}
		case p.Port.Type == intstr.String:
			if p.EndPort != nil || p.Port.StrVal == "" || dst == nil {
				continue
			}
			for _, np := range dst.Ports {
				if np.Name == p.Port.StrVal && np.Proto == proto && np.Port == port {
					return true
				}
			}
		default:
			lo, hi := p.Port.IntVal, p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			if lo >= 1 && hi >= lo && hi <= 65535 && int32(port) >= lo && int32(port) <= hi {
				return true
			}
		}
	}
	return false
}

// compareWithRef checks every local pod, direction and a grid of flows.
func compareWithRef(t testing.TB, in Input, peers []netip.Addr) {
	s, _ := Compile(in)
	ref := newReference(in)
	for _, local := range in.Pods {
		if local.Node != in.Node || len(local.IPs) == 0 {
			continue
		}
		for d := Ingress; d <= Egress; d++ {
			for _, la := range local.IPs {
				r := s.Rules(d, la)
				for _, peer := range peers {
					for _, proto := range []uint8{pICMP, pTCP, pUDP, pSCTP} {
						for _, port := range []uint16{0, 53, 80, 1000, 1500, 8080} {
							iso, want := ref.check(d, local, peer, proto, port)
							got := r.Check(peer, proto, port)
							if (r != nil) != iso || iso && got != want {
								t.Fatalf("%s/%s (%s) %v peer %s proto %d port %d: isolated %v verdict %+v, reference: isolated %v verdict %+v",
									local.Namespace, local.Name, la, d, peer, proto, port, r != nil, got, iso, want)
							}
						}
					}
				}
			}
		}
	}
}

// randomInput is a small random cluster and random policies, broken
// parts included.
func randomInput(rng *rand.Rand) (Input, []netip.Addr) {
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	randLabels := func() map[string]string {
		m := map[string]string{}
		for _, k := range []string{"app", "tier", "env"} {
			if rng.IntN(2) == 0 {
				m[k] = pick("a", "b", "c")
			}
		}
		return m
	}
	in := Input{Node: "n1"}
	for i := range 4 { // ns4 is not listed
		in.Namespaces = append(in.Namespaces, mkNS(fmt.Sprintf("ns%d", i), randLabels()))
	}
	var peers []netip.Addr
	for i := range 30 {
		p := mkPod(fmt.Sprintf("ns%d", rng.IntN(5)), fmt.Sprintf("p%d", i), pick("n1", "n2", "n3"), randLabels())
		if rng.IntN(4) != 0 {
			p.IPs = append(p.IPs, netip.AddrFrom4([4]byte{10, byte(i / 8), byte(i % 8), 1}))
		}
		if rng.IntN(3) == 0 || len(p.IPs) == 0 {
			p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(i + 1)}))
		}
		for range rng.IntN(3) {
			p.Ports = append(p.Ports, NamedPort{pick("http", "dns", "web"), []uint8{pTCP, pUDP}[rng.IntN(2)], []uint16{53, 80, 8080}[rng.IntN(3)]})
		}
		in.Pods = append(in.Pods, p)
		peers = append(peers, p.IPs...)
	}
	peers = append(peers, netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00::ff"), netip.MustParseAddr("2001:db8::1"))
	randSel := func() *metav1.LabelSelector {
		s := &metav1.LabelSelector{}
		switch rng.IntN(8) {
		case 0:
		case 1:
			s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: pick("app", "tier"), Operator: metav1.LabelSelectorOperator(pick("In", "NotIn", "Exists", "DoesNotExist")), Values: []string{pick("a", "b")}}}
			if s.MatchExpressions[0].Operator == "Exists" || s.MatchExpressions[0].Operator == "DoesNotExist" {
				s.MatchExpressions[0].Values = nil
			}
		case 2:
			s.MatchLabels = map[string]string{pick("bad key!", "app"): pick("a", "bad value!")}
		default:
			s.MatchLabels = map[string]string{}
			for range 1 + rng.IntN(2) {
				s.MatchLabels[pick("app", "tier", "env")] = pick("a", "b", "c")
			}
		}
		return s
	}
	randPeer := func() networkingv1.NetworkPolicyPeer {
		switch rng.IntN(6) {
		case 0:
			return podPeer(randSel())
		case 1:
			return nsPeer(randSel())
		case 2:
			return bothPeer(randSel(), randSel())
		case 3:
			return blockPeer(pick("10.0.0.0/8", "10.1.0.0/16", "fd00::/120", "0.0.0.0/0", "10.0.0.0/33"), []string{"10.0.1.0/24", "fd00::8/125", "x"}[:rng.IntN(3)]...)
		case 4:
			return blockPeer(pick("10.0.0.0/8", "fd00::/16"))
		default:
			if rng.IntN(4) == 0 {
				return networkingv1.NetworkPolicyPeer{}
			}
			return podPeer(randSel())
		}
	}
	randPort := func() networkingv1.NetworkPolicyPort {
		pr := corev1.Protocol(pick("TCP", "TCP", "UDP", "SCTP", "ICMP"))
		switch rng.IntN(6) {
		case 0:
			return allPorts(pr)
		case 1:
			return portRng(pr, []int{53, 1000, 0}[rng.IntN(3)], []int{80, 1500, 999}[rng.IntN(3)])
		case 2:
			p := namedPort(pr, pick("http", "dns", "web", "none"))
			if rng.IntN(5) == 0 {
				p.EndPort = portRng(pr, 1, 2).EndPort
			}
			return p
		default:
			p := port(pr, []int{53, 80, 8080, 70000}[rng.IntN(4)])
			if rng.IntN(5) == 0 {
				p.Protocol = nil
			}
			return p
		}
	}
	for i := range 6 + rng.IntN(6) {
		spec := networkingv1.NetworkPolicySpec{PodSelector: *randSel()}
		spec.PolicyTypes = [][]networkingv1.PolicyType{nil, nil, typesI, typesE, typesIE}[rng.IntN(5)]
		for range rng.IntN(3) {
			var r networkingv1.NetworkPolicyIngressRule
			for range rng.IntN(3) {
				r.From = append(r.From, randPeer())
			}
			for range rng.IntN(3) {
				r.Ports = append(r.Ports, randPort())
			}
			spec.Ingress = append(spec.Ingress, r)
		}
		for range rng.IntN(3) {
			var r networkingv1.NetworkPolicyEgressRule
			for range rng.IntN(3) {
				r.To = append(r.To, randPeer())
			}
			for range rng.IntN(3) {
				r.Ports = append(r.Ports, randPort())
			}
			spec.Egress = append(spec.Egress, r)
		}
		in.Policies = append(in.Policies, mkPolicy(fmt.Sprintf("ns%d", rng.IntN(5)), fmt.Sprintf("np%d", i%5), spec))
	}
	return in, peers
}

func TestRandomAgainstReference(t *testing.T) {
	n := 150
	if testing.Short() {
		n = 30
	}
	for seed := range uint64(n) {
		in, peers := randomInput(rand.New(rand.NewPCG(seed, 1)))
		compareWithRef(t, in, peers)
	}
}

// FuzzCompile compiles policies (JSON, as the API server would hand them
// over, but unvalidated) against the fixture cluster and checks that
// Compile and Check do not panic and agree with the reference.
func FuzzCompile(f *testing.F) {
	for seed := range uint64(8) {
		in, _ := randomInput(rand.New(rand.NewPCG(seed, 2)))
		for i, p := range in.Policies {
			p.Namespace = []string{"a", "b", "c", "u"}[i%4] // the fixture's
		}
		js, err := json.Marshal(in.Policies)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`[{"metadata":{"namespace":"a","name":"x"},"spec":{"podSelector":{},"ingress":[{"ports":[{"port":"http","endPort":3}]}]}}]`))
	f.Add([]byte(`[{"metadata":{"namespace":"a"},"spec":{"podSelector":{"matchExpressions":[{"key":"app","operator":"Gt","values":["1"]}]},"policyTypes":["Bogus"]}}]`))
	peers := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.3.1"),
		netip.MustParseAddr("fd00::3:1"), netip.MustParseAddr("10.0.4.1"), netip.MustParseAddr("192.0.2.1"),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var pols []*networkingv1.NetworkPolicy
		if json.Unmarshal(data, &pols) != nil {
			return
		}
		for _, p := range pols {
			if p == nil {
				return
			}
		}
		in := fixture(pols...)
		s, _ := Compile(in)
		for _, lp := range s.LocalPods() {
			if _, ok := s.Explain(lp.Namespace, lp.Name); !ok {
				t.Fatalf("Explain(%s/%s) not found", lp.Namespace, lp.Name)
			}
		}
		compareWithRef(t, in, peers)
	})
}
