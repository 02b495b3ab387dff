package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

func ptrTo[T any](v T) *T { return &v }

// testService is a ClusterIP Service 10.96.0.10 with port "http" 80/TCP;
// mod changes it.
func testService(ns, name string, mod func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
	if mod != nil {
		mod(s)
	}
	return s
}

// testSlice is an EndpointSlice of Service svc.
func testSlice(ns, name, svc string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func slicePort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptrTo(name), Protocol: ptrTo(proto), Port: ptrTo(port)}
}

// endpoint on node with conditions (nil: unset) and addresses.
func endpoint(node string, ready, serving, terminating *bool, addrs ...string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}}
	if node != "" {
		e.NodeName = ptrTo(node)
	}
	return e
}

var (
	yes = ptrTo(true)
	no  = ptrTo(false)
)

func backend(addr string, port uint16, local, ready, serving, terminating bool) service.Backend {
	return service.Backend{Addr: netip.MustParseAddr(addr), Port: port, Local: local, Ready: ready, Serving: serving, Terminating: terminating}
}

func addrs(ss ...string) []netip.Addr {
	var as []netip.Addr
	for _, s := range ss {
		as = append(as, netip.MustParseAddr(s))
	}
	return as
}

func TestResolve(t *testing.T) {
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	http := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	svcCIDRs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/112")}
	httpPort := func(bs ...service.Backend) []service.Port {
		return []service.Port{{Name: "http", Proto: packet.ProtoTCP, Port: 80, Backends: bs}}
	}
	tests := []struct {
		name   string
		svc    *corev1.Service
		eps    []*discoveryv1.EndpointSlice
		ok     bool
		want   service.Service // Namespace and Name: ns/web when ok
		reason []SkipReason    // sorted
	}{
		{
			name: "conditions default as the API defines",
			svc:  testService("ns", "web", nil),
			eps: []*discoveryv1.EndpointSlice{testSlice("ns", "web-a", "web", v4, http,
				endpoint("self", nil, nil, nil, "10.244.0.5"),
				endpoint("other", no, nil, nil, "10.244.1.5"),
				endpoint("other", no, yes, yes, "10.244.1.6"),
				endpoint("", yes, no, no, "10.244.1.7"),
			)},
			ok: true,
			want: service.Service{ClusterIPs: addrs("10.96.0.10"), Ports: httpPort(
				backend("10.244.0.5", 8080, true, true, true, false),
				backend("10.244.1.5", 8080, false, false, false, false),
				backend("10.244.1.6", 8080, false, false, true, true),
				backend("10.244.1.7", 8080, false, true, false, false),
			)},
		},
		{
			name: "another proxy's",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Labels = map[string]string{LabelServiceProxyName: "other"}
			}),
			reason: []SkipReason{SkipOtherProxy},
		},
		{
			name: "ExternalName",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}
			}),
			reason: []SkipReason{SkipExternalName},
		},
		{
			name: "headless",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			}),
			eps:    []*discoveryv1.EndpointSlice{testSlice("ns", "web-a", "web", v4, http, endpoint("", nil, nil, nil, "10.244.0.5"))},
			reason: []SkipReason{SkipHeadless},
		},
		{
			name: "dual stack, a slice per family; externalIPs, affinity default, policies",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
				s.Spec.ExternalIPs = []string{"192.0.2.80", "2001:db8::80", "192.0.2.80", "not-an-ip", "127.0.0.1"}
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.InternalTrafficPolicy = ptrTo(corev1.ServiceInternalTrafficPolicyLocal)
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			}),
			eps: []*discoveryv1.EndpointSlice{
				testSlice("ns", "web-6", "web", v6, http, endpoint("self", nil, nil, nil, "fd00:244::5")),
				testSlice("ns", "web-4", "web", v4, http, endpoint("self", nil, nil, nil, "10.244.0.5")),
				testSlice("ns", "web-fqdn", "web", discoveryv1.AddressTypeFQDN, http, endpoint("", nil, nil, nil, "example.com")),
			},
			ok: true,
			want: service.Service{
				ClusterIPs: addrs("10.96.0.10", "fd00:96::10"), ExternalIPs: addrs("192.0.2.80", "2001:db8::80"),
				Affinity: DefaultAffinityTimeout, InternalLocal: true, ExternalLocal: true,
				Ports: []service.Port{{Name: "http", Proto: packet.ProtoTCP, Port: 80, NodePort: 30080, Backends: []service.Backend{
					backend("10.244.0.5", 8080, true, true, true, false),
					backend("fd00:244::5", 8080, true, true, true, false),
				}}},
			},
			reason: []SkipReason{SkipBadExternalIP, SkipBadExternalIP},
		},
		{
			name: "IPv4-only Service ignores IPv6 slices; affinity timeout",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptrTo[int32](60)}}
			}),
			eps: []*discoveryv1.EndpointSlice{
				testSlice("ns", "web-6", "web", v6, http, endpoint("self", nil, nil, nil, "fd00:244::5")),
				testSlice("ns", "web-4", "web", v4, http, endpoint("self", nil, nil, nil, "10.244.0.5")),
			},
			ok:   true,
			want: service.Service{ClusterIPs: addrs("10.96.0.10"), Affinity: time.Minute, Ports: httpPort(backend("10.244.0.5", 8080, true, true, true, false))},
		},
		{
			name: "ports matched by name and protocol; SCTP, port 0 and duplicates skipped",
			svc: testService("ns", "dns", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{
					{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
					{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53},
					{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 9},
					{Name: "zero", Protocol: corev1.ProtocolTCP, Port: 0},
					{Name: "again", Protocol: corev1.ProtocolUDP, Port: 53},
					{Name: "unmatched", Port: 81}, // protocol unset: TCP
				}
			}),
			eps: []*discoveryv1.EndpointSlice{testSlice("ns", "dns-a", "dns", v4, []discoveryv1.EndpointPort{
				slicePort("dns", corev1.ProtocolUDP, 5353),
				slicePort("dns-tcp", corev1.ProtocolTCP, 5354),
				slicePort("dns", corev1.ProtocolTCP, 9999), // the name of the UDP port, protocol TCP: not it
				slicePort("zero", corev1.ProtocolTCP, 0),
				{Name: ptrTo("all")}, // no port: not for proxies
			}, endpoint("", nil, nil, nil, "10.244.0.53"))},
			ok: true,
			want: service.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []service.Port{
				{Name: "dns", Proto: packet.ProtoUDP, Port: 53, Backends: []service.Backend{backend("10.244.0.53", 5353, false, true, true, false)}},
				{Name: "dns-tcp", Proto: packet.ProtoTCP, Port: 53, Backends: []service.Backend{backend("10.244.0.53", 5354, false, true, true, false)}},
				{Name: "unmatched", Proto: packet.ProtoTCP, Port: 81},
			}},
			reason: []SkipReason{SkipSCTP, SkipBadPort, SkipBadPort, SkipBadEndpointPort},
		},
		{
			name: "bad endpoint addresses skipped; the API server's host address kept",
			svc:  testService("default", "kubernetes", nil),
			eps: []*discoveryv1.EndpointSlice{testSlice("default", "kubernetes", "kubernetes", v4, http,
				endpoint("", nil, nil, nil, "127.0.0.1"),
				endpoint("", nil, nil, nil, "169.254.1.1"),
				endpoint("", nil, nil, nil, "224.0.0.1"),
				endpoint("", nil, nil, nil, "0.0.0.0"),
				endpoint("", nil, nil, nil, "255.255.255.255"),
				endpoint("", nil, nil, nil, "fd00::1"),    // IPv6 in an IPv4 slice
				endpoint("", nil, nil, nil, "10.1.2.300"), // not an address
				endpoint("", nil, nil, nil, "10.96.0.20"), // another Service
				endpoint("", nil, nil, nil, "172.18.0.2", "127.0.0.2"),
			)},
			ok:     true,
			want:   service.Service{ClusterIPs: addrs("10.96.0.10"), Ports: httpPort(backend("172.18.0.2", 8080, false, true, true, false))},
			reason: []SkipReason{SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipEndpointInService},
		},
		{
			name: "bad IPv6 endpoint addresses",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00:96::10", []string{"fd00:96::10"}
			}),
			eps: []*discoveryv1.EndpointSlice{testSlice("ns", "web-6", "web", v6, http,
				endpoint("", nil, nil, nil, "::1", "fe80::1", "ff02::1", "::", "::ffff:10.244.0.5", "fd00:96::20", "fd00:244::5"),
			)},
			ok:     true,
			want:   service.Service{ClusterIPs: addrs("fd00:96::10"), Ports: httpPort(backend("fd00:244::5", 8080, false, true, true, false))},
			reason: []SkipReason{SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipBadEndpointAddr, SkipEndpointInService},
		},
		{
			name: "identical backends across slices are one, a ready copy wins",
			svc:  testService("ns", "web", nil),
			eps: []*discoveryv1.EndpointSlice{
				testSlice("ns", "web-b", "web", v4, http, endpoint("self", yes, nil, nil, "10.244.0.5"), endpoint("", nil, nil, nil, "10.244.1.9")),
				testSlice("ns", "web-a", "web", v4, http, endpoint("self", no, yes, yes, "10.244.0.5"), endpoint("", nil, nil, nil, "10.244.1.9")),
				testSlice("ns", "web-c", "web", v4, http, endpoint("self", no, no, yes, "10.244.0.5")),
			},
			ok: true,
			want: service.Service{ClusterIPs: addrs("10.96.0.10"), Ports: httpPort(
				backend("10.244.0.5", 8080, true, true, true, false),
				backend("10.244.1.9", 8080, false, true, true, false),
			)},
		},
		{
			name: "no valid cluster IP",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.300", []string{"10.96.0.300", "224.0.0.1"}
			}),
			reason: []SkipReason{SkipBadClusterIP, SkipBadClusterIP},
		},
		{
			name: "no usable port",
			svc: testService("ns", "web", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 9}}
			}),
			reason: []SkipReason{SkipSCTP},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Resolve(tc.svc, tc.eps, "self", svcCIDRs)
			var reasons []SkipReason
			for _, p := range res.Problems {
				reasons = append(reasons, p.Reason)
				if p.Detail == "" {
					t.Errorf("problem %v without detail", p.Reason)
				}
			}
			slices.Sort(reasons)
			if !slices.Equal(reasons, tc.reason) {
				t.Errorf("reasons %v, want %v (%+v)", reasons, tc.reason, res.Problems)
			}
			if res.OK != tc.ok {
				t.Fatalf("OK = %v, want %v", res.OK, tc.ok)
			}
			if !tc.ok {
				return
			}
			tc.want.Namespace, tc.want.Name = tc.svc.Namespace, tc.svc.Name
			if !sameResolved(res.Service, tc.want) {
				t.Errorf("got  %+v\nwant %+v", res.Service, tc.want)
			}
		})
	}
}

// sameResolved compares two Services field by field (nil and empty slices
// alike).
func sameResolved(a, b service.Service) bool {
	if a.Namespace != b.Namespace || a.Name != b.Name || !slices.Equal(a.ClusterIPs, b.ClusterIPs) || !slices.Equal(a.ExternalIPs, b.ExternalIPs) ||
		a.Affinity != b.Affinity || a.InternalLocal != b.InternalLocal || a.ExternalLocal != b.ExternalLocal || len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.Ports {
		p, q := a.Ports[i], b.Ports[i]
		if p.Name != q.Name || p.Proto != q.Proto || p.Port != q.Port || p.NodePort != q.NodePort || !slices.Equal(p.Backends, q.Backends) {
			return false
		}
	}
	return true
}

func TestTrimServiceObjects(t *testing.T) {
	svc := testService("ns", "web", func(s *corev1.Service) {
		s.Labels = map[string]string{"app": "web", LabelServiceProxyName: "x"}
		s.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
		s.Spec.Selector = map[string]string{"app": "web"}
		s.Spec.Ports[0].TargetPort.IntVal = 8080
		s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	})
	got, _ := TrimService(svc)
	ts := got.(*corev1.Service)
	if len(ts.Labels) != 1 || ts.Annotations != nil || ts.Spec.Selector != nil || ts.ManagedFields != nil || ts.Spec.Ports[0].TargetPort.IntVal != 0 {
		t.Errorf("trimmed service keeps %+v", ts)
	}
	if r1, r2 := Resolve(svc, nil, "self", nil), Resolve(ts, nil, "self", nil); r1.OK != r2.OK || len(r1.Problems) != len(r2.Problems) {
		t.Errorf("trimming changes the resolution: %+v vs %+v", r1, r2)
	}
	sl := testSlice("ns", "web-a", "web", discoveryv1.AddressTypeIPv4, nil, endpoint("n", nil, nil, nil, "10.244.0.5"))
	sl.Labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
	sl.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: "web-1"}
	sl.Endpoints[0].Zone = ptrTo("z")
	got, _ = TrimEndpointSlice(sl)
	tsl := got.(*discoveryv1.EndpointSlice)
	if len(tsl.Labels) != 1 || tsl.Endpoints[0].TargetRef != nil || tsl.Endpoints[0].Zone != nil || *tsl.Endpoints[0].NodeName != "n" {
		t.Errorf("trimmed slice %+v", tsl)
	}
	if o, _ := TrimService("other"); o != "other" {
		t.Errorf("non-Service changed: %v", o)
	}
}

func TestNewServiceWatcherValidates(t *testing.T) {
	cs := fake.NewClientset()
	sink := func([]service.Service) {}
	for _, cfg := range []ServiceWatcherConfig{
		{NodeName: "n", Sink: sink},
		{Client: cs, Sink: sink},
		{Client: cs, NodeName: "n"},
		{Client: cs, NodeName: "n", Sink: sink, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.1/16")}},
	} {
		if _, err := NewServiceWatcher(cfg); !errors.Is(err, ErrServiceConfigInvalid) {
			t.Errorf("%+v: err %v", cfg, err)
		}
	}
}

// svcSink records the snapshots a ServiceWatcher hands over.
type svcSink struct {
	mu    sync.Mutex
	last  []service.Service
	at    time.Time
	total int
	calls int // concurrent calls seen (must stay 0)
	busy  bool
	ch    chan struct{}
}

func newSvcSink() *svcSink { return &svcSink{ch: make(chan struct{}, 1)} }

func (s *svcSink) Sink(snap []service.Service) {
	s.mu.Lock()
	if s.busy {
		s.calls++
	}
	s.busy = true
	s.mu.Unlock()
	if !slices.IsSortedFunc(snap, func(a, b service.Service) int {
		if a.Namespace != b.Namespace {
			return strings.Compare(a.Namespace, b.Namespace)
		}
		return strings.Compare(a.Name, b.Name)
	}) {
		panic("snapshot not sorted")
	}
	s.mu.Lock()
	s.busy = false
	s.last, s.at = snap, time.Now()
	s.total++
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *svcSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// waitFor waits until the last snapshot satisfies ok.
func (s *svcSink) waitFor(t testing.TB, timeout time.Duration, what string, ok func([]service.Service) bool) ([]service.Service, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		snap, at, n := s.last, s.at, s.total
		s.mu.Unlock()
		if n > 0 && ok(snap) {
			return snap, at
		}
		select {
		case <-s.ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not reached in %v; last snapshot (%d services) %+v", what, timeout, len(snap), snap[:min(len(snap), 3)])
		}
	}
}

// findService finds ns/name in a sorted snapshot.
func findService(snap []service.Service, ns, name string) (service.Service, bool) {
	i, ok := slices.BinarySearchFunc(snap, [2]string{ns, name}, func(s service.Service, key [2]string) int {
		return cmp.Or(strings.Compare(s.Namespace, key[0]), strings.Compare(s.Name, key[1]))
	})
	if !ok {
		return service.Service{}, false
	}
	return snap[i], true
}

func runServiceWatcher(t *testing.T, cfg ServiceWatcherConfig) *ServiceWatcher {
	t.Helper()
	w, err := NewServiceWatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
	})
	return w
}

// newServiceFake returns a fake clientset holding objs; watching is
// closed once both the Service and the EndpointSlice informers watch
// (the fake has no resourceVersions to resume from).
func newServiceFake(objs ...runtime.Object) (*fake.Clientset, chan struct{}) {
	cs := fake.NewClientset(objs...)
	watching := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]bool{}
	cs.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := cs.Tracker().Watch(a.GetResource(), a.GetNamespace())
		mu.Lock()
		defer mu.Unlock()
		seen[a.GetResource().Resource] = true
		if seen["services"] && seen["endpointslices"] && !seen["done"] {
			seen["done"] = true
			close(watching)
		}
		return true, w, err
	})
	return cs, watching
}

// TestServiceWatcher: snapshots through the fake clientset; conditions
// change, a slice moves, a Service goes; bad parts are counted and logged
// once per object version.
func TestServiceWatcher(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	http := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	cs, watching := newServiceFake(
		testService("ns", "web", nil),
		testSlice("ns", "web-a", "web", v4, http, endpoint("self", nil, nil, nil, "10.244.0.5"), endpoint("other", nil, nil, nil, "10.244.1.5")),
		testSlice("ns", "web-b", "web", v4, http, endpoint("other", nil, nil, nil, "10.244.1.6", "127.0.0.1")),
		testService("ns", "db", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", nil }),
		testService("ns", "headless", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, nil }),
		testService("ns", "bad-port", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.12", nil
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dup", Protocol: corev1.ProtocolTCP, Port: 80})
		}),
		testSlice("ns", "orphan", "", v4, http, endpoint("", nil, nil, nil, "10.244.1.7")),
		// sorts after ns's Services (as a string "ns-b/a" would not)
		testService("ns-b", "a", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.13", nil }),
	)
	core, logs := observer.New(zap.DebugLevel)
	sink := newSvcSink()
	w := runServiceWatcher(t, ServiceWatcherConfig{Client: cs, NodeName: "self", Sink: sink.Sink, Batch: 20 * time.Millisecond, Logger: zap.New(core),
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
	snap, _ := sink.waitFor(t, 10*time.Second, "initial snapshot", func([]service.Service) bool { return true })
	if len(snap) != 4 || snap[0].Name != "bad-port" || snap[1].Name != "db" || snap[2].Name != "web" || snap[3].Namespace != "ns-b" || len(snap[0].Ports) != 1 {
		t.Fatalf("initial snapshot %+v", snap)
	}
	if bs := snap[2].Ports[0].Backends; len(bs) != 3 || !bs[0].Local || bs[1].Local || bs[2].Addr != netip.MustParseAddr("10.244.1.6") {
		t.Fatalf("web's backends %+v", bs)
	}
	if sink.count() != 1 {
		t.Fatalf("%d snapshots for the initial list, want 1", sink.count())
	}
	st := w.Stats()
	if st.Services != 5 || st.Slices != 3 || st.Usable != 4 || st.Backends != 3 ||
		!maps.Equal(st.Skipped, map[SkipReason]int{SkipHeadless: 1, SkipBadPort: 1, SkipBadEndpointAddr: 1}) {
		t.Fatalf("stats %+v", st)
	}
	warns := func() int { return logs.FilterMessage("parts of a service left out").Len() }
	if n := warns(); n != 2 {
		t.Fatalf("%d warnings, want 2 (bad-port, web-b): %v", n, logs.All())
	}
	<-watching
	ctx := context.Background()
	eps := cs.DiscoveryV1().EndpointSlices("ns")

	// web-a's first endpoint terminates: the Service is resolved again,
	// web-b's bad address is not logged again (web-b did not change).
	sl, err := eps.Get(ctx, "web-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: no, Serving: yes, Terminating: yes}
	sl.ResourceVersion = "2"
	if _, err := eps.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "web-a's endpoint terminates", func(ss []service.Service) bool {
		s, _ := findService(ss, "ns", "web")
		return len(s.Ports) == 1 && len(s.Ports[0].Backends) == 3 && s.Ports[0].Backends[0].Terminating && !s.Ports[0].Backends[0].Ready
	})
	if n := warns(); n != 2 {
		t.Fatalf("%d warnings after an unrelated change, want 2: %v", n, logs.All())
	}
	// web-b changes, still with its bad address: logged again.
	sl, _ = eps.Get(ctx, "web-b", metav1.GetOptions{})
	sl.Endpoints[0].Addresses = []string{"10.244.1.8", "127.0.0.1"}
	sl.ResourceVersion = "3"
	if _, err := eps.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "web-b's endpoint moves", func(ss []service.Service) bool {
		s, _ := findService(ss, "ns", "web")
		return len(s.Ports) == 1 && len(s.Ports[0].Backends) == 3 && s.Ports[0].Backends[2].Addr == netip.MustParseAddr("10.244.1.8")
	})
	if n := warns(); n != 3 {
		t.Fatalf("%d warnings after web-b changed, want 3: %v", n, logs.All())
	}
	// The orphan slice is labelled for db: db gets a backend.
	sl, _ = eps.Get(ctx, "orphan", metav1.GetOptions{})
	sl.Labels[discoveryv1.LabelServiceName] = "db"
	sl.ResourceVersion = "4"
	if _, err := eps.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 5*time.Second, "db gets the orphan's backend", func(ss []service.Service) bool {
		s, _ := findService(ss, "ns", "db")
		return len(s.Ports) == 1 && len(s.Ports[0].Backends) == 1
	})
	// web goes; web-b's problem is no longer counted.
	if err := cs.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	snap, _ = sink.waitFor(t, 5*time.Second, "web goes", func(ss []service.Service) bool { _, ok := findService(ss, "ns", "web"); return !ok })
	if len(snap) != 3 {
		t.Fatalf("snapshot %+v", snap)
	}
	st = w.Stats()
	if st.Services != 4 || st.Usable != 3 || st.Backends != 1 || !maps.Equal(st.Skipped, map[SkipReason]int{SkipHeadless: 1, SkipBadPort: 1}) {
		t.Fatalf("stats %+v", st)
	}
	// A Service change that changes nothing resolved: no snapshot.
	before := sink.count()
	svc, _ := cs.CoreV1().Services("ns").Get(ctx, "db", metav1.GetOptions{})
	svc.Labels = map[string]string{"x": "y"}
	svc.ResourceVersion = "5"
	if _, err := cs.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := sink.count(); got != before {
		t.Fatalf("%d snapshots after a label change, want %d", got, before)
	}
	sink.mu.Lock()
	overlaps := sink.calls
	sink.mu.Unlock()
	if overlaps != 0 {
		t.Fatalf("%d overlapping sink calls", overlaps)
	}
}

// TestServiceWatcherRandom checks the incremental watcher against a
// reference that resolves every Service from scratch, after a seeded
// random sequence of creates, updates (conditions, addresses, ports, the
// service-name label) and deletes.
func TestServiceWatcherRandom(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { randomWatcherRun(t, seed) })
	}
}

func randomWatcherRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	const nsvc, nslice = 12, 30
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	cs, watching := newServiceFake()
	sink := newSvcSink()
	w := runServiceWatcher(t, ServiceWatcherConfig{Client: cs, NodeName: "self", Sink: sink.Sink, Batch: 5 * time.Millisecond, ServiceCIDRs: cidrs})
	sink.waitFor(t, 10*time.Second, "initial snapshot", func([]service.Service) bool { return true })
	<-watching
	ctx := context.Background()
	rv := 0
	nextRV := func() string { rv++; return fmt.Sprint(rv) }
	randService := func(i int) *corev1.Service {
		return testService("ns", fmt.Sprint("s", i), func(s *corev1.Service) {
			s.ResourceVersion = nextRV()
			s.Spec.ClusterIP, s.Spec.ClusterIPs = fmt.Sprintf("10.96.0.%d", i+1), nil
			switch rng.IntN(8) {
			case 0:
				s.Spec.ClusterIP = corev1.ClusterIPNone
			case 1:
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dup", Protocol: corev1.ProtocolTCP, Port: 80})
			case 2:
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
			case 3:
				s.Labels = map[string]string{LabelServiceProxyName: "x"}
			}
		})
	}
	addrPool := []string{"10.244.0.1", "10.244.0.2", "10.244.1.1", "10.244.1.2", "192.168.5.5", "127.0.0.1", "10.96.0.9", "fe80::1"}
	randSlice := func(i int) *discoveryv1.EndpointSlice {
		ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, int32(8080+rng.IntN(2)))}
		if rng.IntN(3) == 0 {
			ports = append(ports, slicePort("dns", corev1.ProtocolUDP, int32(rng.IntN(2)*53))) // 0: bad
		}
		var eps []discoveryv1.Endpoint
		for range rng.IntN(4) {
			b := func() *bool {
				switch rng.IntN(3) {
				case 0:
					return nil
				case 1:
					return yes
				}
				return no
			}
			node := []string{"", "self", "other"}[rng.IntN(3)]
			eps = append(eps, endpoint(node, b(), b(), b(), addrPool[rng.IntN(len(addrPool))]))
		}
		sl := testSlice("ns", fmt.Sprint("e", i), fmt.Sprint("s", rng.IntN(nsvc)), discoveryv1.AddressTypeIPv4, ports, eps...)
		sl.ResourceVersion = nextRV()
		return sl
	}
	svcs, eps := cs.CoreV1().Services("ns"), cs.DiscoveryV1().EndpointSlices("ns")
	haveSvc, haveSlice := map[int]bool{}, map[int]bool{}
	for range 300 {
		var err error
		if rng.IntN(3) == 0 {
			i := rng.IntN(nsvc)
			switch {
			case !haveSvc[i]:
				_, err = svcs.Create(ctx, randService(i), metav1.CreateOptions{})
				haveSvc[i] = true
			case rng.IntN(3) == 0:
				err = svcs.Delete(ctx, fmt.Sprint("s", i), metav1.DeleteOptions{})
				haveSvc[i] = false
			default:
				_, err = svcs.Update(ctx, randService(i), metav1.UpdateOptions{})
			}
		} else {
			i := rng.IntN(nslice)
			switch {
			case !haveSlice[i]:
				_, err = eps.Create(ctx, randSlice(i), metav1.CreateOptions{})
				haveSlice[i] = true
			case rng.IntN(4) == 0:
				err = eps.Delete(ctx, fmt.Sprint("e", i), metav1.DeleteOptions{})
				haveSlice[i] = false
			default:
				_, err = eps.Update(ctx, randSlice(i), metav1.UpdateOptions{})
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if rng.IntN(20) == 0 {
			time.Sleep(10 * time.Millisecond) // let some batches go out mid-way
		}
	}

	// The reference: every Service resolved from the API's objects.
	sl, err := svcs.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	el, err := eps.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []service.Service
	skipped := map[SkipReason]int{}
	for i := range sl.Items {
		s := &sl.Items[i]
		var mine []*discoveryv1.EndpointSlice
		for j := range el.Items {
			if el.Items[j].Labels[discoveryv1.LabelServiceName] == s.Name {
				mine = append(mine, &el.Items[j])
			}
		}
		res := Resolve(s, mine, "self", cidrs)
		if res.OK {
			want = append(want, res.Service)
		}
		for _, p := range res.Problems {
			skipped[p.Reason]++
		}
	}
	slices.SortFunc(want, func(a, b service.Service) int { return strings.Compare(a.Name, b.Name) })
	backends := 0
	for _, s := range want {
		for _, p := range s.Ports {
			backends += len(p.Backends)
		}
	}
	t.Logf("reference: %d usable services, %d backends, left out %v", len(want), backends, skipped)
	if len(want) == 0 || backends == 0 || len(skipped) < 4 {
		t.Fatal("the random sequence exercises too little")
	}
	sink.waitFor(t, 10*time.Second, "the reference", func(got []service.Service) bool {
		return slices.EqualFunc(got, want, sameResolved)
	})
	// The last events may change only what is left out: not a snapshot.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := w.Stats()
		if maps.Equal(st.Skipped, skipped) && st.Usable == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want skipped %v, usable %d", st, skipped, len(want))
		}
	}
}

// BenchmarkServiceWatcherChange is one Service's change at 10,000
// Services: resolve it again, then the snapshot the sink gets.
func BenchmarkServiceWatcherChange(b *testing.B) {
	const n = 10000
	var objs []runtime.Object
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		objs = append(objs, testService("ns", name, nil), testSlice("ns", name+"-x", name, discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)},
			endpoint("self", nil, nil, nil, fmt.Sprintf("10.244.%d.%d", i>>8, i&255)), endpoint("other", nil, nil, nil, "10.245.0.1")))
	}
	got := 0
	w, err := NewServiceWatcher(ServiceWatcherConfig{Client: fake.NewClientset(objs...), NodeName: "self", Sink: func(s []service.Service) { got = len(s) }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.factory.Start(ctx.Done())
	defer func() {
		cancel()
		w.factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), w.svcInf.HasSynced, w.epsInf.HasSynced) {
		b.Fatal("no sync")
	}
	for i := range n {
		w.process(fmt.Sprintf("ns/svc-%05d", i))
	}
	w.synced = true
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.mu.Lock()
		w.dirty = true
		w.mu.Unlock()
		w.process(fmt.Sprintf("ns/svc-%05d", i%n))
		w.flush()
	}
	if got != n {
		b.Fatalf("snapshot of %d services, want %d", got, n)
	}
}
