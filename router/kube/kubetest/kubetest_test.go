package kubetest

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestBinariesMissing(t *testing.T) {
	t.Setenv(EnvBin, t.TempDir())
	_, _, _, err := Binaries()
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("Binaries() in an empty directory: err = %v, want ErrNoBinaries", err)
	}
}

// TestCluster starts a cluster in a subtest and checks, against it, the
// admin identity, kubectl, TokenRequest and RBAC as a ServiceAccount sees
// it; then, after the subtest's cleanup, that no process is left.
func TestCluster(t *testing.T) {
	binariesOrSkip(t) // here too: a skipped subtest would leave no pids
	var pids []int
	t.Run("api", func(t *testing.T) {
		began := time.Now()
		c := Start(t)
		t.Logf("Start took %v", time.Since(began).Round(time.Millisecond))
		for _, p := range c.procs {
			pids = append(pids, p.Pid())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		admin := c.Client()

		// The admin (system:masters) creates a Node; kubectl sees it.
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
			Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
		}
		if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatalf("admin create node: %v", err)
		}
		out, err := c.Kubectl(ctx, "get", "node", "node-a", "-o", "jsonpath={.spec.podCIDR}")
		if err != nil || out != "10.244.1.0/24" {
			t.Fatalf("kubectl get node: %q, %v; want the podCIDR", out, err)
		}
		if _, err := c.Kubectl(ctx, "get", "node", "no-such-node"); err == nil || !strings.Contains(err.Error(), "NotFound") {
			t.Fatalf("kubectl get of a missing node: err = %v, want NotFound with the output", err)
		}

		// A ServiceAccount with no RBAC grant is authenticated and denied.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"}}
		if _, err := admin.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create serviceaccount: %v", err)
		}
		sac, err := kubernetes.NewForConfig(c.ServiceAccountConfig(t, "default", "probe"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sac.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("serviceaccount lists nodes without a grant: err = %v, want Forbidden", err)
		} else if !strings.Contains(err.Error(), "system:serviceaccount:default:probe") {
			t.Fatalf("Forbidden names another user: %v", err)
		}

		// Granted get/list on nodes, it can list them but still not delete one
		// or read secrets. RBAC reaches the authorizer through an informer, so
		// the grant takes a moment.
		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "probe-node-reader"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}}},
		}
		if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "probe-node-reader"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "probe"}},
		}
		if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var nodes *corev1.NodeList
		for {
			nodes, err = sac.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err == nil || !apierrors.IsForbidden(err) || ctx.Err() != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil || len(nodes.Items) != 1 || nodes.Items[0].Name != "node-a" {
			t.Fatalf("serviceaccount lists nodes after the grant: %v, %v; want [node-a]", nodes, err)
		}
		if err := sac.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("serviceaccount deletes a node: err = %v, want Forbidden", err)
		}
		if _, err := sac.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("serviceaccount lists secrets: err = %v, want Forbidden", err)
		}
	})
	if len(pids) != 2 {
		t.Fatalf("the subtest recorded %d pids, want 2 (etcd, kube-apiserver)", len(pids))
	}
	for _, pid := range pids {
		// Reaped by the cleanup's Wait: the pid is gone, not a zombie.
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after the cleanup (kill 0: %v)", pid, err)
		}
	}
}
