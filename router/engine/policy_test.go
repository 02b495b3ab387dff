package engine

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/policy"
	"github.com/podrouter/podrouter/router/service"
)

var hostAddr = netip.MustParseAddr("192.168.50.1") // the node's own address in the policy rig

// newPolicyRig is the Services rig with NetworkPolicy enforcement on and
// the node's address hostAddr; pod A is app=a, pod B app=b, both in
// namespace "ns" on node "n1".
func newPolicyRig(t *testing.T) (*snatRig, *conntrack.Table) {
	t.Helper()
	r, _ := newSvcRigWith(t, func(c *Config) { c.HostAddrs = []netip.Addr{hostAddr} })
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1024, MaxPerSource: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.e.EnablePolicy(PolicyConfig{Table: ct, LogDenied: true, Resweep: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := r.e.EnablePolicy(PolicyConfig{Table: ct}); err == nil {
		t.Fatal("EnablePolicy twice: no error")
	}
	return r, ct
}

// setPolicies compiles pols over the rig's pods and swaps them in.
func setPolicies(t *testing.T, r *snatRig, pols ...*networkingv1.NetworkPolicy) *policy.Set {
	t.Helper()
	in := policy.Input{
		Node: "n1",
		Pods: []*policy.Pod{
			{Namespace: "ns", Name: "a", Node: "n1", Labels: map[string]string{"app": "a"}, IPs: []netip.Addr{addrA, addrA6}},
			{Namespace: "ns", Name: "b", Node: "n1", Labels: map[string]string{"app": "b"}, IPs: []netip.Addr{addrB, addrB6},
				Ports: []policy.NamedPort{{Name: "http", Proto: packet.ProtoTCP, Port: 8080}}},
		},
		Namespaces: []*policy.Namespace{{Name: "ns", Labels: map[string]string{"kubernetes.io/metadata.name": "ns"}}},
		Policies:   pols,
	}
	s, problems := policy.Compile(in)
	if len(problems) > 0 {
		t.Fatalf("problems: %+v", problems)
	}
	if err := r.e.SetPolicy(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func npObj(name string, sel map[string]string, types []networkingv1.PolicyType, in []networkingv1.NetworkPolicyIngressRule, eg []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types, Ingress: in, Egress: eg},
	}
}

func fromApp(app string, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}}},
		Ports: ports,
	}
}

func tcpPort(p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	proto := corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

var ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}

func synTo(src, dst netip.Addr, sp, dp uint16) []byte {
	return ipPacket(src, dst, header.TCPProtocolNumber, tcpSeg(sp, dp, header.TCPFlagSyn, 1, 0, 0))
}

func policyDrops(p *Port) uint64 { return p.Stats().Drops[DropPolicy] }

// TestPolicyIngress: B isolated for ingress, allowing app=a on TCP 8080
// (named "http"): A's SYN to 8080 passes and the flow's replies and later
// segments pass; 81 and an echo are denied and counted; B's own flow to A
// (A not isolated) passes and is answered.
func TestPolicyIngress(t *testing.T) {
	r, ct := newPolicyRig(t)
	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a", tcpPort(intstr.FromString("http")))}, nil))
	for _, v6 := range []bool{false, true} {
		a, b := addrA, addrB
		if v6 {
			a, b = addrA6, addrB6
		}
		send(t, r.a, eth(r.e, macA, synTo(a, b, 40000, 8080)))
		expectB(t, r, a, b)
		send(t, r.b, eth(r.e, macB, ipPacket(b, a, header.TCPProtocolNumber, tcpSeg(8080, 40000, header.TCPFlagSyn|header.TCPFlagAck, 1, 2, 0))))
		expectPod(t, r, b, a)
		send(t, r.a, eth(r.e, macA, ipPacket(a, b, header.TCPProtocolNumber, tcpSeg(40000, 8080, header.TCPFlagAck, 2, 2, 100))))
		expectB(t, r, a, b)

		before := policyDrops(r.pa)
		send(t, r.a, eth(r.e, macA, synTo(a, b, 40001, 81)))
		r.noPacket(t, r.b)
		send(t, r.a, eth(r.e, macA, ipPacket(a, b, icmpProto(v6), echo(v6, false, 7, 1))))
		r.noPacket(t, r.b)
		if got := policyDrops(r.pa) - before; got != 2 {
			t.Fatalf("v6=%v: %d policy drops, want 2", v6, got)
		}
		// B is isolated only for ingress: its own flows go out, and
		// their replies come back though B's ingress rules would deny A.
		send(t, r.b, eth(r.e, macB, synTo(b, a, 50000, 9999)))
		expectPod(t, r, b, a)
		send(t, r.a, eth(r.e, macA, ipPacket(a, b, header.TCPProtocolNumber, tcpSeg(9999, 50000, header.TCPFlagSyn|header.TCPFlagAck, 1, 2, 0))))
		expectB(t, r, a, b)
	}
	st := r.e.PolicyStats()
	if st.DeniedIngress != 4 || st.DeniedEgress != 0 || st.Allowed != 4 || st.IsolatedPorts != 1 || st.Policies != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n := st.DeniedByPolicy[PolicyKey{"ns/allow-a", policy.Ingress}]; n != 4 {
		t.Fatalf("denied by ns/allow-a: %d, want 4 (%v)", n, st.DeniedByPolicy)
	}
	if ct.Len() != 4 {
		t.Fatalf("%d tracked flows, want 4", ct.Len())
	}
	recent := r.e.PolicyRecent(addrB)
	if len(recent) == 0 || recent[0].Src != addrB6 || !recent[0].Allowed {
		t.Fatalf("recent %+v", recent)
	}
	var denied *PolicyVerdict
	for i := range recent {
		if !recent[i].Allowed {
			denied = &recent[i]
			break
		}
	}
	if denied == nil || denied.Policy != "ns/allow-a" || denied.Direction != policy.Ingress {
		t.Fatalf("recent %+v: want a denial by ns/allow-a", recent)
	}
}

func icmpProto(v6 bool) tcpip.TransportProtocolNumber {
	if v6 {
		return header.ICMPv6ProtocolNumber
	}
	return header.ICMPv4ProtocolNumber
}

// TestPolicyEgress: A isolated for egress with one rule, UDP 53 to
// app=b: A reaches B there, not on TCP, not the outside; B's flows into A
// (A not isolated for ingress) pass, and so do A's answers, which its
// egress rules alone would deny.
func TestPolicyEgress(t *testing.T) {
	r, _ := newPolicyRig(t)
	setPolicies(t, r, npObj("a-out", map[string]string{"app": "a"}, []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}, nil,
		[]networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr(corev1.ProtocolUDP), Port: ptr(intstr.FromInt32(53))}},
		}}))
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(5000, 53, 10))))
	expectB(t, r, addrA, addrB)
	send(t, r.a, eth(r.e, macA, synTo(addrA, addrB, 40000, 53)))
	r.noPacket(t, r.b)
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, outside, header.UDPProtocolNumber, udpSeg(5000, 53, 10))))
	r.noPacket(t, r.up)
	if st := r.e.PolicyStats(); st.DeniedEgress != 2 || st.DeniedByPolicy[PolicyKey{"ns/a-out", policy.Egress}] != 2 {
		t.Fatalf("stats %+v", st)
	}
	send(t, r.b, eth(r.e, macB, synTo(addrB, addrA, 1234, 22)))
	expectPod(t, r, addrB, addrA)
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, addrB, header.TCPProtocolNumber, tcpSeg(22, 1234, header.TCPFlagSyn|header.TCPFlagAck, 1, 2, 0))))
	expectB(t, r, addrA, addrB)
}

// TestPolicyNodeAllowed: a default-deny ingress policy on B leaves the
// node's own traffic (its host address, the kubelet's probes) through.
func TestPolicyNodeAllowed(t *testing.T) {
	r, _ := newPolicyRig(t)
	setPolicies(t, r, npObj("deny", nil, ingressOnly, nil, nil))
	send(t, r.up, synTo(hostAddr, addrB, 33000, 8080))
	expectB(t, r, hostAddr, addrB)
	send(t, r.up, synTo(outside, addrB, 33000, 8080))
	r.noPacket(t, r.b)
	send(t, r.a, eth(r.e, macA, synTo(addrA, addrB, 33000, 8080)))
	r.noPacket(t, r.b)
}

// TestPolicyCut: an established flow a new policy denies is cut: its
// next packet is dropped; a flow the new policy still allows goes on.
func TestPolicyCut(t *testing.T) {
	r, ct := newPolicyRig(t)
	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a")}, nil))
	for _, dp := range []uint16{8080, 9090} {
		send(t, r.a, eth(r.e, macA, synTo(addrA, addrB, 40000, dp)))
		expectB(t, r, addrA, addrB)
		send(t, r.b, eth(r.e, macB, ipPacket(addrB, addrA, header.TCPProtocolNumber, tcpSeg(dp, 40000, header.TCPFlagSyn|header.TCPFlagAck, 1, 2, 0))))
		expectPod(t, r, addrB, addrA)
	}
	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a", tcpPort(intstr.FromInt32(8080)))}, nil))
	if ct.Len() != 1 {
		t.Fatalf("%d flows left, want 1", ct.Len())
	}
	if st := r.e.PolicyStats(); st.Cut != 1 {
		t.Fatalf("stats %+v", st)
	}
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, addrB, header.TCPProtocolNumber, tcpSeg(40000, 9090, header.TCPFlagAck, 2, 2, 10))))
	r.noPacket(t, r.b)
	send(t, r.a, eth(r.e, macA, ipPacket(addrA, addrB, header.TCPProtocolNumber, tcpSeg(40000, 8080, header.TCPFlagAck, 2, 2, 10))))
	expectB(t, r, addrA, addrB)
	// No policy at all: everything passes again.
	if err := r.e.SetPolicy(nil); err != nil {
		t.Fatal(err)
	}
	send(t, r.a, eth(r.e, macA, synTo(addrA, addrB, 40001, 9090)))
	expectB(t, r, addrA, addrB)
	if st := r.e.PolicyStats(); st.DeniedByPolicy[PolicyKey{"ns/allow-a", policy.Ingress}] != 1 {
		t.Fatalf("denials of retired sets lost: %+v", st)
	}
}

// TestPolicyService: a flow through a ClusterIP is judged against its
// backend after DNAT: B's rule allows port 8080 (the backend's), so
// A -> VIP:80 passes and its replies come back as the Service; a rule
// for port 80 alone would not allow it.
func TestPolicyService(t *testing.T) {
	r, _ := newPolicyRig(t)
	if err := r.e.SetServices(service.NewTable(oneService(packet.ProtoTCP, 80, ready(addrB, 8080)), service.Options{})); err != nil {
		t.Fatal(err)
	}
	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a", tcpPort(intstr.FromInt32(8080)))}, nil))
	send(t, r.a, eth(r.e, macA, synTo(addrA, vip, 40000, 80)))
	expectB(t, r, addrA, addrB)
	send(t, r.b, eth(r.e, macB, ipPacket(addrB, addrA, header.TCPProtocolNumber, tcpSeg(8080, 40000, header.TCPFlagSyn|header.TCPFlagAck, 1, 2, 0))))
	expectPod(t, r, vip, addrA)

	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a", tcpPort(intstr.FromInt32(80)))}, nil))
	send(t, r.a, eth(r.e, macA, synTo(addrA, vip, 40001, 80)))
	r.noPacket(t, r.b)
}

// TestPolicyFragments: a datagram's later fragments get its first
// fragment's verdict.
func TestPolicyFragments(t *testing.T) {
	r, _ := newPolicyRig(t)
	setPolicies(t, r, npObj("allow-a", map[string]string{"app": "b"}, ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{fromApp("a", networkingv1.NetworkPolicyPort{Protocol: ptr(corev1.ProtocolUDP), Port: ptr(intstr.FromInt32(53))})}, nil))
	for _, tc := range []struct {
		port uint16
		pass bool
	}{{53, true}, {54, false}} {
		whole := ipPacket(addrA, addrB, header.UDPProtocolNumber, udpSeg(5000, tc.port, 2000))
		frags := frag4(whole, 100) // 800-byte fragments
		if len(frags) < 3 {
			t.Fatalf("%d fragments", len(frags))
		}
		for _, f := range frags {
			send(t, r.a, eth(r.e, macA, f))
			if tc.pass {
				checkEth(t, r.e, r.get(t, r.b), macB)
			} else {
				r.noPacket(t, r.b)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// benchPolicySet compiles 1,000 policies over 5,000 pods in 100
// namespaces; A (app=client) and B (app=server) are pods of ns0 on this
// node. When isolateB, five policies select B, and only the last rule of
// the last one allows A (UDP 2000, A's benchmark flow).
func benchPolicySet(tb testing.TB, isolateB bool) *policy.Set {
	in := policy.Input{Node: "n1"}
	for i := range 100 {
		ns := fmt.Sprint("ns", i)
		in.Namespaces = append(in.Namespaces, &policy.Namespace{Name: ns, Labels: map[string]string{"kubernetes.io/metadata.name": ns, "team": fmt.Sprint("t", i%10)}})
	}
	for i := range 5000 {
		a := netip.AddrFrom4([4]byte{172, byte(16 + i/65536), byte(i >> 8), byte(i)})
		in.Pods = append(in.Pods, &policy.Pod{Namespace: fmt.Sprint("ns", i%100), Name: fmt.Sprint("p", i), Node: fmt.Sprint("n", 2+i%50),
			Labels: map[string]string{"app": fmt.Sprint("app", i%50), "tier": fmt.Sprint("t", i%5)}, IPs: []netip.Addr{a}})
	}
	in.Pods = append(in.Pods,
		&policy.Pod{Namespace: "ns0", Name: "client", Node: "n1", Labels: map[string]string{"app": "client"}, IPs: []netip.Addr{addrA}},
		&policy.Pod{Namespace: "ns0", Name: "server", Node: "n1", Labels: map[string]string{"app": "server"}, IPs: []netip.Addr{addrB}})
	udp := corev1.ProtocolUDP
	for i := range 1000 {
		ns := fmt.Sprint("ns", 1+i%99)
		sel := map[string]string{"app": fmt.Sprint("app", i%50)}
		if isolateB && i < 5 {
			ns, sel = "ns0", map[string]string{"app": "server"}
		}
		var rules []networkingv1.NetworkPolicyIngressRule
		for j := range 4 {
			rules = append(rules, networkingv1.NetworkPolicyIngressRule{
				From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint("t", 1+j)}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprint("t", j)}}},
					{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", j)}},
				},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr(intstr.FromInt32(int32(5000 + j)))}},
			})
		}
		if isolateB && i == 4 {
			rules = append(rules, networkingv1.NetworkPolicyIngressRule{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr(intstr.FromInt32(2000))}},
			})
		}
		p := npObj(fmt.Sprint("pol", i), sel, ingressOnly, rules, nil)
		p.Namespace = ns
		in.Policies = append(in.Policies, p)
	}
	s, problems := policy.Compile(in)
	if len(problems) > 0 {
		tb.Fatalf("problems: %+v", problems)
	}
	return s
}

// BenchmarkPolicy measures the policy stage on the switched path (pod A
// to pod B, UDP 64 B) against the same path with enforcement off, with
// 1,000 policies over 5,000 pods loaded: unisolated (no policy selects A
// or B: two loads), established (B isolated by five policies: a
// conntrack lookup per packet), first (every packet a new flow: the
// verdict, from B's fifth policy's last rule, and the flow's insert).
func BenchmarkPolicy(b *testing.B) {
	for _, mode := range []string{"off", "unisolated", "established", "first"} {
		b.Run(mode, func(b *testing.B) {
			w, out, done := benchRig(b, 64, false)
			defer done()
			e := w.e
			var ct *conntrack.Table
			if mode != "off" {
				var err error
				if ct, err = conntrack.New(conntrack.Config{MaxEntries: 1 << 20, MaxPerSource: 1 << 20}); err != nil {
					b.Fatal(err)
				}
				if err := e.EnablePolicy(PolicyConfig{Table: ct}); err != nil {
					b.Fatal(err)
				}
				if err := e.SetPolicy(benchPolicySet(b, mode != "unisolated")); err != nil {
					b.Fatal(err)
				}
				w.snap = e.state.Load()
			}
			frame := append([]byte(nil), w.bufs[0][readOffset:readOffset+w.sizes[0]]...)
			header.UDP(frame[14+20:]).SetChecksum(0) // the source port changes below
			n := len(w.bufs)
			var port uint16 = 1
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += n {
				refillN(w, frame, 14+20+8)
				if mode == "first" {
					for j := range w.bufs {
						binary.BigEndian.PutUint16(w.bufs[j][readOffset+14+20:], port)
						port++
						if port == 0 {
							b.StopTimer()
							ct.Reap(ct.Now()+1<<20, 1<<21)
							b.StartTimer()
							port = 1
						}
					}
				}
				w.process(min(n, b.N-i))
			}
			if out.n.Load() != uint64(b.N) {
				b.Fatalf("forwarded %d of %d (drops %v)", out.n.Load(), b.N, w.in.Stats().Drops)
			}
			if mode == "first" && e.PolicyStats().Allowed == 0 {
				b.Fatal("no flow tracked")
			}
		})
	}
}
