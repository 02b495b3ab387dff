package kube

// ServiceWatcher against a real kube-apiserver (kubetest; skipped without
// the binaries unless PODROUTER_REQUIRE_KUBE=1), with the token of
// deploy/'s ServiceAccount bound by deploy/rbac.yaml.

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

// kubetest's --service-cluster-ip-range.
var kubetestServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")

func createNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createService creates svc (its clusterIP allocated by the API server) and
// returns the allocated address.
func createService(ctx context.Context, cs kubernetes.Interface, svc *corev1.Service) (netip.Addr, error) {
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", nil
	got, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(got.Spec.ClusterIP)
}

func TestAPIServerServices(t *testing.T) {
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v4 := discoveryv1.AddressTypeIPv4
	createNamespace(ctx, t, admin, "app")

	// The default kubernetes Service (kubetest runs no endpoint
	// reconciler): its endpoint is the API server's host address, outside
	// any pod CIDR, and kept.
	kube, err := admin.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slicesAPI := func(ns string) func(*discoveryv1.EndpointSlice) {
		return func(s *discoveryv1.EndpointSlice) {
			t.Helper()
			if _, err := admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create slice %s: %v", s.Name, err)
			}
		}
	}
	slicesAPI("default")(testSlice("default", "kubernetes", "kubernetes", v4,
		[]discoveryv1.EndpointPort{slicePort("https", corev1.ProtocolTCP, 6443)}, endpoint("", nil, nil, nil, "172.18.0.2")))

	web := testService("app", "web", func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 9},
		}
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.ExternalIPs = []string{"192.0.2.80"}
	})
	webIP, err := createService(ctx, admin, web)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := createService(ctx, admin, testService("app", "other", func(s *corev1.Service) {
		s.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
	})); err != nil {
		t.Fatal(err)
	}
	hl := testService("app", "headless", nil)
	hl.Spec.ClusterIP, hl.Spec.ClusterIPs = corev1.ClusterIPNone, nil
	if _, err := admin.CoreV1().Services("app").Create(ctx, hl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("dns", corev1.ProtocolUDP, 5353)}
	slicesAPI("app")(testSlice("app", "web-a", "web", v4, ports,
		endpoint("self", ptrTo(true), nil, nil, "10.244.0.5"),
		endpoint("node-b", ptrTo(true), nil, nil, "10.244.1.5")))
	slicesAPI("app")(testSlice("app", "web-b", "web", v4, ports,
		endpoint("node-b", ptrTo(true), nil, nil, "10.244.1.6"),
		endpoint("node-b", ptrTo(true), nil, nil, "10.96.7.7"))) // inside the Service range: left out
	slicesAPI("app")(testSlice("app", "headless-a", "headless", v4, ports, endpoint("", nil, nil, nil, "10.244.1.9")))

	sink := newSvcSink()
	w := runServiceWatcher(t, ServiceWatcherConfig{Client: sa, NodeName: "self", Sink: sink.Sink, Logger: zaptest.NewLogger(t),
		ServiceCIDRs: []netip.Prefix{kubetestServiceCIDR}})
	wantWeb := func(ss []service.Service, check func(s service.Service) bool) bool {
		s, ok := findService(ss, "app", "web")
		return ok && check(s)
	}
	snap, _ := sink.waitFor(t, 30*time.Second, "web and kubernetes", func(ss []service.Service) bool {
		return len(ss) == 2 && wantWeb(ss, func(s service.Service) bool { return len(s.Ports) == 2 && len(s.Ports[0].Backends) == 3 })
	})
	k, _ := findService(snap, "default", "kubernetes")
	if len(k.Ports) != 1 || k.Ports[0].Port != 443 || !slices.Equal(k.Ports[0].Backends, []service.Backend{backend("172.18.0.2", 6443, false, true, true, false)}) ||
		k.ClusterIPs[0].String() != kube.Spec.ClusterIP {
		t.Fatalf("kubernetes %+v", k)
	}
	s, _ := findService(snap, "app", "web")
	want := service.Service{Namespace: "app", Name: "web", ClusterIPs: []netip.Addr{webIP}, ExternalIPs: addrs("192.0.2.80"), Affinity: DefaultAffinityTimeout,
		Ports: []service.Port{
			{Name: "http", Proto: packet.ProtoTCP, Port: 80, Backends: []service.Backend{
				backend("10.244.0.5", 8080, true, true, true, false),
				backend("10.244.1.5", 8080, false, true, true, false),
				backend("10.244.1.6", 8080, false, true, true, false),
			}},
			{Name: "dns", Proto: packet.ProtoUDP, Port: 53, Backends: []service.Backend{
				backend("10.244.0.5", 5353, true, true, true, false),
				backend("10.244.1.5", 5353, false, true, true, false),
				backend("10.244.1.6", 5353, false, true, true, false),
			}},
		}}
	if !sameResolved(s, want) {
		t.Fatalf("web\n got  %+v\n want %+v", s, want)
	}
	st := w.Stats()
	if !maps.Equal(st.Skipped, map[SkipReason]int{SkipOtherProxy: 1, SkipHeadless: 1, SkipSCTP: 1, SkipEndpointInService: 1}) {
		t.Errorf("stats %+v", st)
	}

	// The local endpoint terminates.
	eps := admin.DiscoveryV1().EndpointSlices("app")
	sl, err := eps.Get(ctx, "web-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
	if _, err := eps.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "10.244.0.5 terminates", func(ss []service.Service) bool {
		return wantWeb(ss, func(s service.Service) bool {
			b := s.Ports[0].Backends[0]
			return b.Addr == netip.MustParseAddr("10.244.0.5") && !b.Ready && b.Serving && b.Terminating && b.Local
		})
	})
	// web-b goes: its backend with it.
	if err := eps.Delete(ctx, "web-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, 10*time.Second, "web-b goes", func(ss []service.Service) bool {
		return wantWeb(ss, func(s service.Service) bool { return len(s.Ports[0].Backends) == 2 && len(s.Ports[1].Backends) == 2 })
	})
	// web goes.
	if err := admin.CoreV1().Services("app").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	snap, _ = sink.waitFor(t, 10*time.Second, "web goes", func(ss []service.Service) bool { return len(ss) == 1 })
	if snap[0].Name != "kubernetes" {
		t.Fatalf("snapshot %+v", snap)
	}
	if st := w.Stats(); !maps.Equal(st.Skipped, map[SkipReason]int{SkipOtherProxy: 1, SkipHeadless: 1}) || st.Usable != 1 {
		t.Errorf("stats %+v", st)
	}

	// The ServiceAccount reads, and may not write.
	if _, err := sa.CoreV1().Services("app").Get(ctx, "other", metav1.GetOptions{}); err != nil {
		t.Errorf("serviceaccount gets a service: %v", err)
	}
	if err := sa.CoreV1().Services("app").Delete(ctx, "other", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("serviceaccount deletes a service: err = %v, want Forbidden", err)
	}
	if _, err := sa.DiscoveryV1().EndpointSlices("app").Create(ctx, testSlice("app", "evil", "other", v4, ports), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("serviceaccount creates an endpointslice: err = %v, want Forbidden", err)
	}
}

// TestAPIServerServicesScale: 10,000 Services with one EndpointSlice each;
// the time from one EndpointSlice change to the sink's snapshot, and the
// watcher's memory.
func TestAPIServerServicesScale(t *testing.T) {
	if testing.Short() || os.Getenv("PODROUTER_SCALE") != "1" {
		t.Skip("skipped unless PODROUTER_SCALE=1 (and not -short): creates 20,000 objects, minutes on 2 cores; " +
			"PODROUTER_SCALE=1 go test -run TestAPIServerServicesScale -v ./router/kube")
	}
	const services = 10000
	_, admin, sa := startWithRBAC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	createNamespace(ctx, t, admin, "scale")
	t0 := time.Now()
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	// Services and slices are independent objects (a slice names its
	// Service by label): one pool of creators takes both, interleaved.
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				i := j / 2
				name := fmt.Sprintf("svc-%05d", i)
				var err error
				if j%2 == 0 {
					// A chosen clusterIP: measured somewhat cheaper for the
					// API server than its pick of a free one (both grow
					// with the number of Services).
					ip := fmt.Sprintf("10.96.%d.%d", 1+i>>8, i&255)
					_, err = admin.CoreV1().Services("scale").Create(ctx, testService("scale", name, func(s *corev1.Service) {
						s.Labels = map[string]string{"app": name}
						s.Spec.Selector = map[string]string{"app": name}
						s.Spec.ClusterIP, s.Spec.ClusterIPs = ip, []string{ip}
						s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090})
					}), metav1.CreateOptions{})
				} else {
					sl := testSlice("scale", name+"-x", name, discoveryv1.AddressTypeIPv4,
						[]discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("metrics", corev1.ProtocolTCP, 9090)},
						endpoint(fmt.Sprintf("node-%d", i%100), ptrTo(true), nil, nil, fmt.Sprintf("10.%d.%d.%d", 64+i>>14, i>>6&255, i<<2&255)),
						endpoint(fmt.Sprintf("node-%d", (i+1)%100), ptrTo(true), nil, nil, fmt.Sprintf("10.%d.%d.%d", 64+i>>14, i>>6&255, i<<2&255+1)))
					sl.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: "scale", Name: name + "-pod-0"}
					_, err = admin.DiscoveryV1().EndpointSlices("scale").Create(ctx, sl, metav1.CreateOptions{})
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: %w", name, err):
					default:
					}
					return
				}
			}
		}()
	}
	for j := range 2 * services {
		select {
		case work <- j:
		case err := <-errs:
			t.Fatal(err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	t.Logf("created %d services and %d endpointslices in %v", services, services, time.Since(t0).Round(time.Millisecond))

	heap0 := heapInuse()
	sink := newSvcSink()
	t1 := time.Now()
	w := runServiceWatcher(t, ServiceWatcherConfig{Client: sa, NodeName: "node-0", Sink: sink.Sink, Logger: zaptest.NewLogger(t),
		ServiceCIDRs: []netip.Prefix{kubetestServiceCIDR}})
	sink.waitFor(t, 3*time.Minute, "all services", func(ss []service.Service) bool { return len(ss) == services+1 })
	t.Logf("initial sync of %d services: %v, %d snapshot(s)", services, time.Since(t1).Round(time.Millisecond), sink.count())
	heap1 := heapInuse()

	var lat []time.Duration
	eps := admin.DiscoveryV1().EndpointSlices("scale")
	for k := range 10 {
		i := 1 + k*(services/10)
		name := fmt.Sprintf("svc-%05d", i)
		sl, err := eps.Get(ctx, name+"-x", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sl.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
		start := time.Now()
		if _, err := eps.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, at := sink.waitFor(t, 30*time.Second, name+" terminates", func(ss []service.Service) bool {
			s, ok := findService(ss, "scale", name)
			return ok && len(s.Ports) == 2 && len(s.Ports[0].Backends) == 2 && slices.ContainsFunc(s.Ports[0].Backends, func(b service.Backend) bool { return b.Terminating })
		})
		lat = append(lat, at.Sub(start))
	}
	slices.Sort(lat)
	st := w.Stats()
	t.Logf("endpointslice update -> sink at %d services: min %v median %v max %v (%d updates, batch %v)", services,
		lat[0].Round(time.Microsecond), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), len(lat), w.cfg.Batch)
	t.Logf("memory: heap in use %.1f MiB after sync (%.1f MiB before the watcher started: the watcher's share %.1f MiB); process VmRSS %s; stats %+v",
		mib(heap1), mib(heap0), mib(heap1)-mib(heap0), vmRSS(), st)
	if lat[len(lat)/2] > time.Second {
		t.Errorf("median convergence %v at %d services: want <= 1s", lat[len(lat)/2], services)
	}
	if st.Services != services+1 || st.Slices != services || st.Usable != services+1 || st.Backends != 4*services || len(st.Skipped) != 0 {
		t.Errorf("stats %+v", st)
	}
}
