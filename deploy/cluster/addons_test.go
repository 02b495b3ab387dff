package cluster_test

import (
	"bufio"
	"bytes"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/podrouter/podrouter/deploy/cluster"
)

// coreDNSObjects decodes addons/coredns.yaml.
func coreDNSObjects(t *testing.T) []runtime.Object {
	t.Helper()
	var objs []runtime.Object
	for i, doc := range bytes.Split(cluster.CoreDNSManifest, []byte("\n---\n")) {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("addons/coredns.yaml document %d: %v", i, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// corednsModVersion is the CoreDNS version deploy/kubetools/coredns/go.mod pins.
func corednsModVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../kubetools/coredns/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "github.com/coredns/coredns" {
			return f[1]
		}
	}
	t.Fatal("deploy/kubetools/coredns/go.mod requires no github.com/coredns/coredns")
	return ""
}

// TestCoreDNSManifest checks the kube-dns addon against what the cluster
// and the image build rely on: the Service at the kubelets' clusterDNS,
// the image `make images` builds, the probes, RBAC, and a Corefile that
// forwards nothing out of the machine.
func TestCoreDNSManifest(t *testing.T) {
	if want := "registry.k8s.io/coredns/coredns:" + corednsModVersion(t); cluster.CoreDNSImage != want {
		t.Errorf("CoreDNSImage %s, deploy/kubetools/coredns/go.mod builds %s", cluster.CoreDNSImage, want)
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(mk, []byte("COREDNS_IMAGE := registry.k8s.io/coredns/coredns:$(COREDNS_VERSION)\n")) {
		t.Error("Makefile: COREDNS_IMAGE is not registry.k8s.io/coredns/coredns:$(COREDNS_VERSION)")
	}
	kinds := map[string]int{}
	for _, obj := range coreDNSObjects(t) {
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			kinds["ServiceAccount"]++
			if o.Name != "coredns" || o.Namespace != cluster.CoreDNSNamespace {
				t.Errorf("ServiceAccount %s/%s", o.Namespace, o.Name)
			}
		case *rbacv1.ClusterRole:
			kinds["ClusterRole"]++
			granted := map[string]bool{}
			for _, r := range o.Rules {
				if slices.Contains(r.Verbs, "list") && slices.Contains(r.Verbs, "watch") {
					for _, g := range r.APIGroups {
						for _, res := range r.Resources {
							granted[g+"/"+res] = true
						}
					}
				}
			}
			for _, res := range []string{"/services", "/pods", "/namespaces", "discovery.k8s.io/endpointslices"} {
				if !granted[res] {
					t.Errorf("ClusterRole %s: no list and watch on %s", o.Name, res)
				}
			}
		case *rbacv1.ClusterRoleBinding:
			kinds["ClusterRoleBinding"]++
			if len(o.Subjects) != 1 || o.Subjects[0].Name != "coredns" || o.Subjects[0].Namespace != cluster.CoreDNSNamespace || o.RoleRef.Name != "system:coredns" {
				t.Errorf("ClusterRoleBinding %s: %+v -> %+v", o.Name, o.Subjects, o.RoleRef)
			}
		case *corev1.ConfigMap:
			kinds["ConfigMap"]++
			checkCorefile(t, o.Data["Corefile"])
		case *appsv1.Deployment:
			kinds["Deployment"]++
			checkCoreDNSDeployment(t, o)
		case *corev1.Service:
			kinds["Service"]++
			if o.Name != "kube-dns" || o.Namespace != cluster.CoreDNSNamespace {
				t.Errorf("Service %s/%s, want kube-system/kube-dns", o.Namespace, o.Name)
			}
			ip, err := netip.ParseAddr(o.Spec.ClusterIP)
			if err != nil || o.Spec.ClusterIP != cluster.ClusterDNS || !netip.MustParsePrefix(cluster.ServiceCIDR).Contains(ip) {
				t.Errorf("Service clusterIP %q, want the kubelets' clusterDNS %s in %s", o.Spec.ClusterIP, cluster.ClusterDNS, cluster.ServiceCIDR)
			}
			var got []string
			for _, p := range o.Spec.Ports {
				got = append(got, p.Name+"/"+string(p.Protocol)+"/"+strconv.Itoa(int(p.Port)))
			}
			if want := []string{"dns/UDP/53", "dns-tcp/TCP/53", "metrics/TCP/9153"}; !slices.Equal(got, want) {
				t.Errorf("Service ports %v, want %v", got, want)
			}
			if o.Spec.Selector["k8s-app"] != "kube-dns" {
				t.Errorf("Service selector %v", o.Spec.Selector)
			}
		default:
			t.Errorf("unexpected object %T", obj)
		}
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s objects, want 1", kinds[k], k)
		}
	}
}

// checkCorefile checks the kube-dns Corefile: one server block for every
// zone on :53 with the plugins the cluster relies on, and nothing that
// sends a query elsewhere (forward, grpc, or the old proxy).
func checkCorefile(t *testing.T, corefile string) {
	t.Helper()
	var directives []string
	for _, line := range strings.Split(corefile, "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			directives = append(directives, strings.Join(f, " "))
		}
	}
	for _, want := range []string{
		".:53 {", "errors", "health {", "lameduck 5s", "ready",
		"kubernetes cluster.local in-addr.arpa ip6.arpa {", "pods insecure",
		"fallthrough in-addr.arpa ip6.arpa", "prometheus :9153", "cache 30 {", "loop", "reload",
	} {
		if !slices.Contains(directives, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, corefile)
		}
	}
	for _, d := range directives {
		if name := strings.Fields(d)[0]; name == "forward" || name == "grpc" || name == "proxy" {
			t.Errorf("Corefile sends queries elsewhere: %q", d)
		}
	}
}

// checkCoreDNSDeployment checks the Deployment's pods: the image, the
// ServiceAccount, the Corefile's volume, the ports and probes, and the
// capability that lets its non-root user bind :53.
func checkCoreDNSDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	if d.Name != "coredns" || d.Namespace != cluster.CoreDNSNamespace {
		t.Errorf("Deployment %s/%s", d.Namespace, d.Name)
	}
	if key, val, _ := strings.Cut(cluster.CoreDNSSelector, "="); d.Spec.Template.Labels[key] != val || d.Spec.Selector.MatchLabels[key] != val {
		t.Errorf("Deployment labels %v, selector %v; want %s", d.Spec.Template.Labels, d.Spec.Selector.MatchLabels, cluster.CoreDNSSelector)
	}
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "coredns" || spec.DNSPolicy != corev1.DNSDefault || spec.PriorityClassName != "system-cluster-critical" {
		t.Errorf("pod spec: serviceAccount %q, dnsPolicy %q, priorityClass %q", spec.ServiceAccountName, spec.DNSPolicy, spec.PriorityClassName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != cluster.CoreDNSImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want %s (IfNotPresent: imported, never pulled)", c.Image, c.ImagePullPolicy, cluster.CoreDNSImage)
	}
	if !slices.Equal(c.Args, []string{"-conf", "/etc/coredns/Corefile"}) || len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/etc/coredns" {
		t.Errorf("args %v, mounts %+v", c.Args, c.VolumeMounts)
	}
	var ports []string
	for _, p := range c.Ports {
		ports = append(ports, string(p.Protocol)+"/"+strconv.Itoa(int(p.ContainerPort)))
	}
	if want := []string{"UDP/53", "TCP/53", "TCP/9153"}; !slices.Equal(ports, want) {
		t.Errorf("container ports %v, want %v", ports, want)
	}
	probe := func(name string, p *corev1.Probe, path string, port int) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != port {
			t.Errorf("%s probe %+v, want GET %s on %d", name, p, path, port)
		}
	}
	probe("readiness", c.ReadinessProbe, "/ready", 8181)
	probe("liveness", c.LivenessProbe, "/health", 8080)
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE"}) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("securityContext %+v: want NET_BIND_SERVICE alone, no privilege escalation", sc)
	}
}
