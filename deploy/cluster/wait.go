package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podrouter/podrouter/router/kube/kubeproc"
)

// registerTimeout bounds the wait for the kubelets to register their Nodes.
const registerTimeout = 90 * time.Second

// waitRegistered waits until every node's kubelet has registered its Node.
func (c *Cluster) waitRegistered(ctx context.Context) error {
	return waitFor(ctx, "kubelets registering", registerTimeout, nil, func() (bool, error) {
		for _, n := range c.Nodes {
			if gone, err := n.kubelet.Exited(); gone {
				return false, fmt.Errorf("%s kubelet %v; log tail:\n%s", n.Name, err, kubeproc.Tail(n.kubelet.Log, 3000))
			}
			if _, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

// WaitReady waits until every node reports Ready.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	return waitFor(ctx, "nodes Ready", timeout, nil, func() (bool, error) {
		for _, n := range c.Nodes {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if !NodeReady(node) {
				return false, fmt.Errorf("%s: %s", n.Name, readyMessage(node))
			}
		}
		return true, nil
	})
}

// recordNotReady keeps each node's Ready condition (reason: message) in
// Node.NotReadyBefore until it names the missing network
// (NetworkPluginNotReady: the kubelet's first conditions may name
// something else), for at most 20 s. A node Ready before any network
// exists is an error.
func (c *Cluster) recordNotReady(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		done := true
		for _, n := range c.Nodes {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("cluster: %w", err)
			}
			if NodeReady(node) {
				return fmt.Errorf("cluster: %s is Ready before any pod network exists", n.Name)
			}
			n.NotReadyBefore = readyMessage(node)
			done = done && strings.Contains(n.NotReadyBefore, "NetworkPluginNotReady")
		}
		if done || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitFirstRunning waits until a pod in namespace ns is Running.
func (c *Cluster) waitFirstRunning(ctx context.Context, ns string, timeout time.Duration) error {
	return waitFor(ctx, "a pod Running in "+ns, timeout, nil, func() (bool, error) {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d pods, none Running", len(pods.Items))
	})
}

// NodeReady reports whether node's Ready condition is True.
func NodeReady(node *corev1.Node) bool {
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// readyMessage is node's Ready condition's message.
func readyMessage(node *corev1.Node) string {
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Reason + ": " + cond.Message
		}
	}
	return "no Ready condition"
}

// Apply runs `kubectl apply -k dir` with image as the podrouter image
// (a copy of the kustomization with its images entry set; dir itself is
// not touched), after the kubernetes-services-endpoint ConfigMap that
// tells the daemon where the API server is: no kube-proxy runs, so the
// "kubernetes" Service's ClusterIP leads nowhere until podrouter serves
// Services itself.
func (c *Cluster) Apply(ctx context.Context, dir, image string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	overlay := filepath.Join(c.Dir, "deploy")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return err
	}
	name, tag, ok := strings.Cut(image, ":")
	if !ok {
		tag = "latest"
	}
	rel, err := filepath.Rel(overlay, abs)
	if err != nil {
		return err
	}
	kust := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
  - services-endpoint.yaml
images:
  - name: podrouter
    newName: %s
    newTag: %q
`, rel, name, tag)
	u := strings.TrimPrefix(c.Server, "https://")
	host, port, _ := strings.Cut(u, ":")
	cm := fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: kubernetes-services-endpoint
  namespace: kube-podrouter
data:
  KUBERNETES_SERVICE_HOST: %q
  KUBERNETES_SERVICE_PORT: %q
`, host, port)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(overlay, "services-endpoint.yaml"), []byte(cm), 0o644); err != nil {
		return err
	}
	out, err := c.Kubectl(ctx, "apply", "-k", overlay)
	if err != nil {
		return err
	}
	c.cfg.Log("%s", strings.TrimSpace(out))
	return nil
}
