package kubetest

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/podrouter/podrouter/router/kube"
)

// What deploy/ creates.
const (
	deployNS        = "kube-podrouter"
	deploySA        = "podrouter"
	deployCM        = "podrouter-cfg"
	deployDS        = "podrouter"
	deployRole      = "podrouter"
	metricsPort     = 9602
	netConfMountDir = "/etc/kube-podrouter"
)

// TestDeploy applies deploy/ (kubectl apply -k) to a real API server:
// first as a server-side dry run, which must pass every object through
// validation and admission and create none, then for real, which must
// create every object as written; then it checks, with the
// ServiceAccount's own token, that the RBAC grants exactly what the node
// controller does and denies the rest.
func TestDeploy(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy")
	c := Start(t)
	admin := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A server-side dry run does not create the Namespace, so the
	// namespaced objects would fail NotFound on a fresh server: apply the
	// Namespace first, then dry-run the whole kustomization.
	if _, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(dir, "namespace.yaml")); err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl(ctx, "apply", "--dry-run=server", "-k", dir)
	if err != nil {
		t.Fatal(err)
	}
	wantCreated := []string{
		"serviceaccount/" + deploySA,
		"clusterrole.rbac.authorization.k8s.io/" + deployRole,
		"clusterrolebinding.rbac.authorization.k8s.io/" + deployRole,
		"configmap/" + deployCM,
		"daemonset.apps/" + deployDS,
	}
	for _, obj := range wantCreated {
		if !strings.Contains(out, obj+" created (server dry run)") {
			t.Errorf("dry run output lacks %q created:\n%s", obj, out)
		}
	}
	if _, err := admin.AppsV1().DaemonSets(deployNS).Get(ctx, deployDS, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the dry run created the DaemonSet (get: %v)", err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(deployNS).Get(ctx, deploySA, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the dry run created the ServiceAccount (get: %v)", err)
	}

	// For real, then a dry run over the existing objects.
	out, err = c.Kubectl(ctx, "apply", "-k", dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply -k deploy/:\n%s", out)
	for _, obj := range wantCreated {
		if !strings.Contains(out, obj+" created") {
			t.Errorf("apply output lacks %q created:\n%s", obj, out)
		}
	}
	if out, err := c.Kubectl(ctx, "apply", "--dry-run=server", "-k", dir); err != nil {
		t.Fatal(err)
	} else if strings.Contains(out, "configured") {
		t.Errorf("a second apply would change objects just applied:\n%s", out)
	}

	checkDaemonSet(ctx, t, admin)
	cm, err := admin.CoreV1().ConfigMaps(deployNS).Get(ctx, deployCM, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := kube.ParseNetConf([]byte(cm.Data["net-conf.json"]), nil)
	if err != nil {
		t.Fatalf("the ConfigMap's net-conf.json: %v", err)
	}
	if nc.Network.String() != "10.244.0.0/16" || !nc.Masquerade {
		t.Errorf("net-conf.json parsed to %+v, want Network 10.244.0.0/16 with masquerade", nc)
	}

	checkControllerRBAC(ctx, t, c)
}

// checkDaemonSet checks the stored DaemonSet against what the node agent
// needs and the least-privilege promises of deploy/daemonset.yaml.
func checkDaemonSet(ctx context.Context, t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	ds, err := admin.AppsV1().DaemonSets(deployNS).Get(ctx, deployDS, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Labels["app.kubernetes.io/part-of"] != "podrouter" {
		t.Errorf("DaemonSet labels %v lack the kustomization's part-of", ds.Labels)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", ds.Spec.UpdateStrategy.Type)
	}
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.HostPID || ps.HostIPC {
		t.Errorf("hostNetwork %v, hostPID %v, hostIPC %v: want only hostNetwork", ps.HostNetwork, ps.HostPID, ps.HostIPC)
	}
	if ps.ServiceAccountName != deploySA || ps.PriorityClassName != "system-node-critical" {
		t.Errorf("serviceAccountName %q, priorityClassName %q", ps.ServiceAccountName, ps.PriorityClassName)
	}
	if len(ps.Tolerations) != 1 || ps.Tolerations[0].Operator != corev1.TolerationOpExists || ps.Tolerations[0].Key != "" || ps.Tolerations[0].Effect != "" {
		t.Errorf("tolerations %+v, want one {operator: Exists} (every taint)", ps.Tolerations)
	}
	hostPaths := map[string]string{} // volume name -> host path
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if len(ps.InitContainers) != 1 || len(ps.Containers) != 1 {
		t.Fatalf("%d init containers and %d containers, want 1 and 1", len(ps.InitContainers), len(ps.Containers))
	}
	ic := ps.InitContainers[0]
	if !slices.Contains(ic.Command, "install-cni") || !slices.Contains(ic.Command, "--dest=/host/opt/cni/bin") {
		t.Errorf("init container runs %v, want podrouter install-cni into /host/opt/cni/bin", ic.Command)
	}
	if m := mountedHostPaths(ic, hostPaths); m["/host/opt/cni/bin"] != "/opt/cni/bin" {
		t.Errorf("init container mounts %v, want the host's /opt/cni/bin at /host/opt/cni/bin", m)
	}
	for _, ctr := range []corev1.Container{ic, ps.Containers[0]} {
		sc := ctr.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Errorf("container %s: no securityContext with capabilities", ctr.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", ctr.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation not false", ctr.Name)
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("container %s drops %v, want ALL", ctr.Name, sc.Capabilities.Drop)
		}
	}
	if add := ic.SecurityContext.Capabilities.Add; len(add) != 0 {
		t.Errorf("install-cni adds capabilities %v, want none", add)
	}
	d := ps.Containers[0]
	if add := d.SecurityContext.Capabilities.Add; !slices.Equal(add, []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}) {
		t.Errorf("daemon adds capabilities %v, want exactly NET_ADMIN and SYS_ADMIN", add)
	}
	if len(d.Env) != 1 || d.Env[0].Name != "NODE_NAME" || d.Env[0].ValueFrom == nil ||
		d.Env[0].ValueFrom.FieldRef == nil || d.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("daemon env %+v, want NODE_NAME from spec.nodeName", d.Env)
	}
	args := strings.Join(append(d.Command, d.Args...), " ")
	for _, want := range []string{
		" daemon ",
		"--net-conf=" + netConfMountDir + "/net-conf.json",
		fmt.Sprintf("--metrics-addr=127.0.0.1:%d", metricsPort),
	} {
		if !strings.Contains(args, want) {
			t.Errorf("daemon runs %q, lacking %q", args, want)
		}
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", d.LivenessProbe, "/healthz"}, {"readiness", d.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("daemon has no HTTP %s probe", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Host != "127.0.0.1" || g.Port.IntValue() != metricsPort {
			t.Errorf("%s probe %s:%s%s, want 127.0.0.1:%d%s (where --metrics-addr serves)", p.name, g.Host, g.Port.String(), g.Path, metricsPort, p.path)
		}
	}
	if d.Resources.Requests.Cpu().IsZero() || d.Resources.Requests.Memory().IsZero() || d.Resources.Limits.Memory().IsZero() {
		t.Errorf("daemon resources %+v: want cpu and memory requests and a memory limit", d.Resources)
	}
	m := mountedHostPaths(d, hostPaths)
	for mount, host := range map[string]string{
		"/dev/net/tun":       "/dev/net/tun",
		"/run/podrouter":     "/run/podrouter",
		"/var/lib/podrouter": "/var/lib/podrouter",
		"/etc/cni/net.d":     "/etc/cni/net.d",
		"/run/flannel":       "/run/flannel",
		"/var/run/netns":     "/run/netns",
	} {
		if m[mount] != host {
			t.Errorf("daemon mounts %v: want the host's %s at %s", m, host, mount)
		}
	}
	confMounted := false
	for _, vm := range d.VolumeMounts {
		for _, v := range ps.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == deployCM && vm.MountPath == netConfMountDir {
				confMounted = true
			}
		}
	}
	if !confMounted {
		t.Errorf("the ConfigMap %s is not mounted at %s", deployCM, netConfMountDir)
	}
}

// mountedHostPaths maps a container's mount paths to the host paths
// mounted there.
func mountedHostPaths(c corev1.Container, hostPaths map[string]string) map[string]string {
	m := map[string]string{}
	for _, vm := range c.VolumeMounts {
		if hp, ok := hostPaths[vm.Name]; ok {
			m[vm.MountPath] = hp
		}
	}
	return m
}

// checkControllerRBAC acts as the DaemonSet's ServiceAccount: everything
// the node controller does is allowed, the rest is denied.
func checkControllerRBAC(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	admin := c.Client()
	self := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-self"},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, self, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(c.ServiceAccountConfig(t, deployNS, deploySA))
	if err != nil {
		t.Fatal(err)
	}
	// RBAC reaches the authorizer through an informer: wait for the grant.
	var list *corev1.NodeList
	for {
		list, err = sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil || !apierrors.IsForbidden(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("serviceaccount lists nodes: %v, %v", list, err)
	}

	// watch: a node created by someone else arrives.
	w, err := sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatalf("serviceaccount watches nodes: %v", err)
	}
	defer w.Stop()
	peer := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-peer"}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, peer, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if n, ok := ev.Object.(*corev1.Node); ev.Type != watch.Added || !ok || n.Name != "node-peer" {
			t.Fatalf("watch event %s %T, want ADDED node-peer", ev.Type, ev.Object)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the serviceaccount's watch saw no event for a new node")
	}

	// get, patch annotations through nodes/status, patch the
	// NetworkUnavailable condition; patch on the node itself is refused.
	if _, err := sa.CoreV1().Nodes().Get(ctx, "node-self", metav1.GetOptions{}); err != nil {
		t.Fatalf("serviceaccount gets its node: %v", err)
	}
	annot := []byte(`{"metadata":{"annotations":{"podrouter.io/underlay-endpoint":"192.0.2.10:8472"}}}`)
	if _, err := sa.CoreV1().Nodes().Patch(ctx, "node-self", types.MergePatchType, annot, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("serviceaccount patches a node (not its status): err = %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Nodes().Patch(ctx, "node-self", types.MergePatchType, annot, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("serviceaccount patches node annotations through nodes/status: %v", err)
	}
	now := metav1.Now().Rfc3339Copy()
	cond := fmt.Appendf(nil, `{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"PodrouterIsUp","message":"podrouter is running on this node","lastTransitionTime":%q,"lastHeartbeatTime":%q}]}}`,
		now.Format(time.RFC3339), now.Format(time.RFC3339))
	if _, err := sa.CoreV1().Nodes().PatchStatus(ctx, "node-self", cond); err != nil {
		t.Fatalf("serviceaccount patches node status: %v", err)
	}
	got, err := admin.CoreV1().Nodes().Get(ctx, "node-self", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations["podrouter.io/underlay-endpoint"] != "192.0.2.10:8472" {
		t.Errorf("annotation not stored: %v", got.Annotations)
	}
	var netUnavail *corev1.NodeCondition
	for i := range got.Status.Conditions {
		if got.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
			netUnavail = &got.Status.Conditions[i]
		}
	}
	if netUnavail == nil || netUnavail.Status != corev1.ConditionFalse {
		t.Errorf("NetworkUnavailable not stored False: %+v", got.Status.Conditions)
	}

	// The NetworkPolicy watcher lists and watches pods, namespaces and
	// networkpolicies, and records (creates, then patches) Events.
	for what, do := range map[string]func() error{
		"list pods": func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1}); return err },
		"watch pods": func() error {
			w, err := sa.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		},
		"list namespaces": func() error { _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{Limit: 1}); return err },
		"list networkpolicies": func() error {
			_, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{Limit: 1})
			return err
		},
		"create and patch an event": func() error {
			ev, err := sa.CoreV1().Events(deployNS).Create(ctx, &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{Name: "podrouter-rbac-check"},
				InvolvedObject: corev1.ObjectReference{Kind: "NetworkPolicy", Namespace: deployNS, Name: "x"},
				Type:           corev1.EventTypeWarning, Reason: kube.EventPolicyNotEnforceable, Count: 1,
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = sa.CoreV1().Events(deployNS).Patch(ctx, ev.Name, types.MergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
			return err
		},
	} {
		if err := do(); err != nil {
			t.Errorf("serviceaccount may not %s: %v", what, err)
		}
	}

	// Denied: everything else the controller does not do.
	denied := []struct {
		what string
		do   func() error
	}{
		{"create a node", func() error {
			_, err := sa.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-evil"}}, metav1.CreateOptions{})
			return err
		}},
		{"update (PUT) a node", func() error {
			_, err := sa.CoreV1().Nodes().Update(ctx, got, metav1.UpdateOptions{})
			return err
		}},
		{"delete a node", func() error { return sa.CoreV1().Nodes().Delete(ctx, "node-peer", metav1.DeleteOptions{}) }},
		{"patch another node's podCIDR", func() error {
			_, err := sa.CoreV1().Nodes().Patch(ctx, "node-peer", types.MergePatchType, []byte(`{"spec":{"podCIDR":"10.244.1.0/24"}}`), metav1.PatchOptions{})
			return err
		}},
		{"label a node", func() error {
			_, err := sa.CoreV1().Nodes().Patch(ctx, "node-peer", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"list secrets", func() error {
			_, err := sa.CoreV1().Secrets(deployNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"get secrets in kube-system", func() error {
			_, err := sa.CoreV1().Secrets("kube-system").Get(ctx, "any", metav1.GetOptions{})
			return err
		}},
		{"read its ConfigMap through the API", func() error {
			_, err := sa.CoreV1().ConfigMaps(deployNS).Get(ctx, deployCM, metav1.GetOptions{})
			return err
		}},
		{"get a pod", func() error {
			_, err := sa.CoreV1().Pods(deployNS).Get(ctx, "any", metav1.GetOptions{})
			return err
		}},
		{"create a pod", func() error {
			_, err := sa.CoreV1().Pods(deployNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "evil"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, metav1.CreateOptions{})
			return err
		}},
		{"label a namespace", func() error {
			_, err := sa.CoreV1().Namespaces().Patch(ctx, deployNS, types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"create a networkpolicy", func() error {
			_, err := sa.NetworkingV1().NetworkPolicies(deployNS).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "evil"}}, metav1.CreateOptions{})
			return err
		}},
		{"delete events", func() error {
			return sa.CoreV1().Events(deployNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		}},
		{"list events", func() error {
			_, err := sa.CoreV1().Events(deployNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"change its own RBAC", func() error {
			return sa.RbacV1().ClusterRoles().Delete(ctx, deployRole, metav1.DeleteOptions{})
		}},
		{"patch the DaemonSet", func() error {
			_, err := sa.AppsV1().DaemonSets(deployNS).Patch(ctx, deployDS, types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
	}
	for _, d := range denied {
		if err := d.do(); !apierrors.IsForbidden(err) {
			t.Errorf("serviceaccount may %s: err = %v, want Forbidden", d.what, err)
		}
	}
}
