package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Builders for test inputs.

func mkPod(ns, name, node string, lbls map[string]string, ips ...string) *Pod {
	p := &Pod{Namespace: ns, Name: name, Node: node, Labels: lbls}
	for _, s := range ips {
		p.IPs = append(p.IPs, netip.MustParseAddr(s))
	}
	return p
}

func withPorts(p *Pod, ports ...NamedPort) *Pod {
	p.Ports = ports
	return p
}

func mkNS(name string, lbls map[string]string) *Namespace {
	return &Namespace{Name: name, Labels: lbls}
}

func mkPolicy(ns, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       spec,
	}
}

func sel(kv ...string) metav1.LabelSelector {
	s := metav1.LabelSelector{}
	if len(kv) > 0 {
		s.MatchLabels = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func psel(kv ...string) *metav1.LabelSelector {
	s := sel(kv...)
	return &s
}

func expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func bothPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func proto(p corev1.Protocol) *corev1.Protocol { return &p }

func port(pr corev1.Protocol, n int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(n))
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr), Port: &v}
}

func portRng(pr corev1.Protocol, lo, hi int) networkingv1.NetworkPolicyPort {
	p := port(pr, lo)
	e := int32(hi)
	p.EndPort = &e
	return p
}

func namedPort(pr corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr), Port: &v}
}

func allPorts(pr corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr)}
}

func ingress(ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{Ports: ports, From: from}
}

func egress(ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{Ports: ports, To: to}
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

var (
	typesI  = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	typesE  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	typesIE = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)
