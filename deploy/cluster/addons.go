package cluster

// Addons: what a cluster runs besides the pod network, applied by Up after
// podrouter's DaemonSet. Today one: CoreDNS as kube-dns (addons/coredns.yaml),
// the Service at ClusterDNS that the kubelets write into every
// ClusterFirst pod's resolv.conf.
//
// Design notes. CoreDNS's kubernetes plugin reaches the API server through
// the `kubernetes` Service's ClusterIP, which only Services in the engine
// serve (no kube-proxy runs): until they do, CoreDNS starts (after its 5 s
// wait for the API) and answers what it can without the API, but its
// /ready, and so the pods' Ready condition, stays false. Up therefore does
// not wait for CoreDNS; it logs the pods' state.

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CoreDNS's names (addons/coredns.yaml).
const (
	// CoreDNSImage is the image the Deployment runs: `make images` builds
	// it from github.com/coredns/coredns at the version
	// deploy/kubetools/coredns/go.mod pins.
	CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.15.0"
	// CoreDNSNamespace and CoreDNSSelector find its pods; the Service is
	// kube-dns in the same namespace, at ClusterDNS.
	CoreDNSNamespace = "kube-system"
	CoreDNSSelector  = "k8s-app=kube-dns"
)

// CoreDNSManifest is addons/coredns.yaml: ServiceAccount, ClusterRole and
// binding, the Corefile's ConfigMap, Deployment and Service kube-dns.
//
//go:embed addons/coredns.yaml
var CoreDNSManifest []byte

// applyAddons applies the addons' manifests.
func (c *Cluster) applyAddons(ctx context.Context) error {
	dir := filepath.Join(c.Dir, "addons")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f := filepath.Join(dir, "coredns.yaml")
	if err := os.WriteFile(f, CoreDNSManifest, 0o644); err != nil {
		return err
	}
	out, err := c.Kubectl(ctx, "apply", "-f", f)
	if err != nil {
		return err
	}
	c.cfg.Log("%s", strings.TrimSpace(out))
	return nil
}

// CoreDNSState describes CoreDNS's pods in one line: for each, its node,
// address, phase, whether its container started and whether it is Ready.
func (c *Cluster) CoreDNSState(ctx context.Context) (string, error) {
	pods, err := c.Client.CoreV1().Pods(CoreDNSNamespace).List(ctx, metav1.ListOptions{LabelSelector: CoreDNSSelector})
	if err != nil {
		return "", fmt.Errorf("cluster: CoreDNS pods: %w", err)
	}
	if len(pods.Items) == 0 {
		return "no CoreDNS pods yet", nil
	}
	var parts []string
	for _, p := range pods.Items {
		started, ready := false, false
		for _, cs := range p.Status.ContainerStatuses {
			started = cs.Started != nil && *cs.Started
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				ready = cond.Status == corev1.ConditionTrue
			}
		}
		node := p.Spec.NodeName
		if node == "" {
			node = "unscheduled"
		}
		ip := p.Status.PodIP
		if ip == "" {
			ip = "no-ip"
		}
		parts = append(parts, fmt.Sprintf("%s on %s %s %s started=%v ready=%v", p.Name, node, ip, p.Status.Phase, started, ready))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; "), nil
}
