// Package kubetest starts a real Kubernetes control plane for tests: etcd
// and kube-apiserver as child processes on 127.0.0.1, built from the Go
// module proxy by `make kube-tools` (deploy/kubetools) into .cache/kube/bin.
//
//	Start(t) ─► CA, serving, admin client and service-account signing keys (crypto/x509, in t.TempDir())
//	         ─► etcd (free loopback ports, --unsafe-no-fsync) ─► kube-apiserver (RBAC, TokenRequest)
//	         ─► wait for /readyz ─► *Cluster{Admin, Kubeconfig}
//	t.Cleanup ─► SIGTERM kube-apiserver, then etcd; SIGKILL after 5 s; logs of a failed test are printed
//
// What runs is the API server alone: no controller-manager, scheduler or
// kubelet. So no controller creates the "default" ServiceAccount of a
// namespace (the ServiceAccount admission plugin then refuses Pods that
// name none), deleted namespaces stay Terminating, nothing assigns
// podCIDRs (tests set spec.podCIDR themselves) and no Pod ever runs.
// Admission plugins are the API server's defaults; none of them needs a
// controller to admit Nodes, ServiceAccounts, RBAC objects, ConfigMaps or
// DaemonSets.
//
// Every Cluster is its own pair of processes (about 2-5 s to start on 2
// cores); tests that need several clusters or many objects should share
// one where they can. When the binaries are missing Start skips the test,
// unless PODROUTER_REQUIRE_KUBE=1 (set by `make test`), where it fails.
package kubetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podrouter/podrouter/router/kube/kubepki"
	"github.com/podrouter/podrouter/router/kube/kubeproc"
)

// Environment variables.
const (
	// EnvBin overrides the directory of the binaries.
	EnvBin = "PODROUTER_KUBE_BIN"
	// EnvRequire, when "1", turns a missing binary into a test failure.
	EnvRequire = "PODROUTER_REQUIRE_KUBE"
)

// Binary names inside the binary directory.
const (
	apiserverName = "kube-apiserver"
	etcdName      = "etcd"
	kubectlName   = "kubectl"
)

// Timeouts.
const (
	readyTimeout = 90 * time.Second // a loaded 2-core CI machine, -race siblings included
	stopGrace    = 5 * time.Second  // SIGTERM to SIGKILL
	startTries   = 3                // a free port taken between pick and bind
)

// ErrNoBinaries is returned by Binaries when one of the three is missing;
// `make kube-tools` builds them.
var ErrNoBinaries = errors.New("kubetest: kube binaries not built (run `make kube-tools`)")

// errExited is returned by wait when a process exits before the API server
// is ready.
var errExited = errors.New("exited before the API server was ready")

// Binaries returns the paths of kube-apiserver, etcd and kubectl: in
// $PODROUTER_KUBE_BIN when set, else in <repo root>/.cache/kube/bin (the
// repo root is the nearest parent of the working directory holding the
// podrouter go.mod). The error wraps ErrNoBinaries when one is missing or
// not executable.
func Binaries() (apiserver, etcd, kubectl string, err error) {
	dir := os.Getenv(EnvBin)
	if dir == "" {
		root, rerr := repoRoot()
		if rerr != nil {
			return "", "", "", fmt.Errorf("%w: %v", ErrNoBinaries, rerr)
		}
		dir = filepath.Join(root, ".cache", "kube", "bin")
	}
	paths := make([]string, 3)
	for i, name := range []string{apiserverName, etcdName, kubectlName} {
		p := filepath.Join(dir, name)
		st, serr := os.Stat(p)
		if serr != nil {
			return "", "", "", fmt.Errorf("%w: %v", ErrNoBinaries, serr)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return "", "", "", fmt.Errorf("%w: %s is not an executable file", ErrNoBinaries, p)
		}
		paths[i] = p
	}
	return paths[0], paths[1], paths[2], nil
}

// repoRoot walks up from the working directory to the directory whose
// go.mod declares the podrouter module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module github.com/podrouter/podrouter\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no podrouter go.mod above the working directory")
		}
		dir = parent
	}
}

// Cluster is a running etcd and kube-apiserver pair. Its fields are set by
// Start and read-only afterwards; the processes live until the test's
// cleanup.
type Cluster struct {
	// Admin authenticates with a client certificate in system:masters
	// (user "kubetest-admin"): RBAC allows it everything. Callers may
	// copy it (rest.CopyConfig) and change rates and timeouts.
	Admin *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same admin
	// credentials (context "kubetest"), for kubectl and for code that
	// reads kubeconfig files.
	Kubeconfig string
	// Host is the API server's URL, https://127.0.0.1:PORT.
	Host string
	// CAData is the PEM of the CA that signed the serving certificate
	// (and the admin client certificate); CAFile is its path.
	CAData []byte
	CAFile string
	// EtcdURL is etcd's client URL (plain HTTP on loopback).
	EtcdURL string
	// Dir is the cluster's directory: certificates, data, and the logs
	// etcd.log and kube-apiserver.log.
	Dir string

	kubectl  string
	cacheDir string
	client   *kubernetes.Clientset
	procs    []*kubeproc.Proc // etcd, kube-apiserver
	// how kube-apiserver was started (StartAPIServer repeats it)
	apiBin, apiLog string
	apiArgs        []string
	tlsConf        *tls.Config
}

// Start starts etcd and kube-apiserver on 127.0.0.1 with certificates made
// here and returns once /readyz answers 200. The API server runs with RBAC
// authorization, client-certificate and service-account token
// authentication, and TokenRequest (service-account issuer and signing
// key) enabled. t.Cleanup stops both processes (SIGTERM, SIGKILL after 5 s)
// and waits for them, whatever the test's outcome; when the test failed
// it logs the tail of both logs. A process that dies with the test binary
// is killed too (Pdeathsig, Linux). Missing binaries skip the test (or
// fail it under PODROUTER_REQUIRE_KUBE=1).
func Start(t testing.TB) *Cluster {
	t.Helper()
	apiserver, etcd, kubectl := binariesOrSkip(t)
	began := time.Now()
	dir := t.TempDir()
	pki, err := kubepki.New(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatalf("kubetest: certificates: %v", err)
	}
	c := &Cluster{
		CAData:   pki.CAPEM,
		CAFile:   pki.CAFile,
		Dir:      dir,
		kubectl:  kubectl,
		cacheDir: filepath.Join(dir, "kubectl-cache"),
	}
	var lastErr error
	for try := 1; try <= startTries; try++ {
		lastErr = c.start(t, apiserver, etcd, pki, try)
		if lastErr == nil {
			break
		}
		if !errors.Is(lastErr, errExited) {
			break
		}
		t.Logf("kubetest: attempt %d: %v; retrying with other ports", try, lastErr)
	}
	if lastErr != nil {
		t.Fatalf("kubetest: %v", lastErr)
	}
	c.Admin = &rest.Config{
		Host: c.Host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pki.CAPEM,
			CertData: pki.Admin.CertPEM,
			KeyData:  pki.Admin.KeyPEM,
		},
		QPS:   200,
		Burst: 400,
	}
	c.client, err = kubernetes.NewForConfig(c.Admin)
	if err != nil {
		t.Fatalf("kubetest: admin client: %v", err)
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, pki.Kubeconfig(c.Host, "podrouter-test-admin", pki.Admin), 0o600); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Logf("kubetest: kube-apiserver %s ready in %v", c.Host, time.Since(began).Round(time.Millisecond))
	return c
}

// binariesOrSkip returns Binaries, or skips the test when they are
// missing (fails it under PODROUTER_REQUIRE_KUBE=1).
func binariesOrSkip(t testing.TB) (apiserver, etcd, kubectl string) {
	t.Helper()
	apiserver, etcd, kubectl, err := Binaries()
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("%v (%s=1)", err, EnvRequire)
		}
		t.Skipf("skipped: %v (or point %s at them)", err, EnvBin)
	}
	return apiserver, etcd, kubectl
}

// start runs one attempt: fresh ports, fresh etcd data, both processes,
// then the wait for /readyz. On error both processes are already stopped.
func (c *Cluster) start(t testing.TB, apiserver, etcd string, pki *kubepki.PKI, try int) error {
	t.Helper()
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	data := filepath.Join(c.Dir, "etcd-"+strconv.Itoa(try))
	etcdProc, err := startProc(t, etcd, filepath.Join(c.Dir, "etcd.log"),
		"--name=kubetest",
		"--data-dir="+data,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--unsafe-no-fsync", // throwaway data: no fsync per write
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	apiArgs := []string{
		"--etcd-servers=" + clientURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + filepath.Join(c.Dir, "pki"),
		"--tls-cert-file=" + pki.ServingCertFile,
		"--tls-private-key-file=" + pki.ServingKeyFile,
		"--client-ca-file=" + pki.CAFile,
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.SAPubFile,
		"--service-account-signing-key-file=" + pki.SAKeyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none", // no lease or endpoints for 127.0.0.1
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	apiLog := filepath.Join(c.Dir, "kube-apiserver.log")
	apiProc, err := startProc(t, apiserver, apiLog, apiArgs...)
	if err != nil {
		stop(t, etcdProc)
		return err
	}
	adminTLS, err := pki.Admin.TLS()
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{RootCAs: x509.NewCertPool(), Certificates: []tls.Certificate{adminTLS}}
	tlsConf.RootCAs.AppendCertsFromPEM(pki.CAPEM)
	if err := waitReady(t, host, tlsConf, etcdProc, apiProc); err != nil {
		return err
	}
	c.Host = host
	c.EtcdURL = clientURL
	c.procs = []*kubeproc.Proc{etcdProc, apiProc}
	c.apiBin, c.apiLog, c.apiArgs, c.tlsConf = apiserver, apiLog, apiArgs, tlsConf
	// Registered last so that cleanups (LIFO) stop the API server first.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubetest: kube-apiserver log tail:\n%s", kubeproc.Tail(c.apiLog, 4096))
			t.Logf("kubetest: etcd log tail:\n%s", kubeproc.Tail(etcdProc.Log, 2048))
		}
	})
	return nil
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL); etcd and its
// data stay. Clients get connection refused until StartAPIServer.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	stop(t, c.procs[1])
}

// StartAPIServer starts kube-apiserver again after StopAPIServer: same
// address, certificates and etcd, so clients and their objects carry on.
// It returns once /readyz answers 200.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	apiProc, err := startProc(t, c.apiBin, c.apiLog, c.apiArgs...)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	c.procs[1] = apiProc
	if err := waitReady(t, c.Host, c.tlsConf, c.procs[0], apiProc); err != nil {
		t.Fatalf("kubetest: restart: %v", err)
	}
}

// waitReady waits until host's /readyz answers 200; on error (a process
// exited, or readyTimeout) both processes are stopped.
func waitReady(t testing.TB, host string, tlsConf *tls.Config, etcdProc, apiProc *kubeproc.Proc) error {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(readyTimeout)
	lastStatus := "no answer"
	for {
		select {
		case <-etcdProc.Done():
			stop(t, apiProc)
			return fmt.Errorf("etcd %w (%v): %s", errExited, exitErr(etcdProc), kubeproc.Tail(etcdProc.Log, 2048))
		case <-apiProc.Done():
			stop(t, etcdProc)
			return fmt.Errorf("kube-apiserver %w (%v): %s", errExited, exitErr(apiProc), kubeproc.Tail(apiProc.Log, 2048))
		default:
		}
		if time.Now().After(deadline) {
			stop(t, apiProc)
			stop(t, etcdProc)
			return fmt.Errorf("kube-apiserver not ready after %v (last /readyz: %s): %s",
				readyTimeout, lastStatus, kubeproc.Tail(apiProc.Log, 2048))
		}
		resp, err := hc.Get(host + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			lastStatus = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			lastStatus = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// startProc starts bin with args (kubeproc.Start: own process group,
// killed with the test binary, output appended to logPath) and registers
// a cleanup that stops it (cleanups run in reverse order, so a process
// started later is stopped first).
func startProc(t testing.TB, bin, logPath string, args ...string) (*kubeproc.Proc, error) {
	p, err := kubeproc.Start(logPath, []string{"GOMAXPROCS=2"}, append([]string{bin}, args...)...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { stop(t, p) })
	return p, nil
}

// stop stops p: SIGTERM, then SIGKILL after stopGrace. It is idempotent.
func stop(t testing.TB, p *kubeproc.Proc) {
	if p.Stop(stopGrace) {
		t.Logf("kubetest: %s ignored SIGTERM for %v; killed it", p.Name, stopGrace)
	}
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago (another process may take one before it is bound; Start retries).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Kubectl runs kubectl with the admin kubeconfig (and a discovery cache
// inside the cluster's directory) and returns its combined output. The
// error names the command and includes the output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--kubeconfig=" + c.Kubeconfig, "--cache-dir=" + c.cacheDir}, args...)
	cmd := exec.CommandContext(ctx, c.kubectl, full...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Client returns a clientset authenticated as the admin.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// ServiceAccountConfig returns a rest.Config that authenticates as the
// ServiceAccount namespace/name with a token from the TokenRequest API
// (valid for an hour, audience: the API server). The ServiceAccount must
// exist; the test fails otherwise. The config carries the CA and no
// client certificate, so RBAC sees only
// system:serviceaccount:namespace:name and its groups.
func (c *Cluster) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	expiry := int64(3600)
	tr, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for serviceaccount %s/%s: %v", namespace, name, err)
	}
	return &rest.Config{
		Host:            c.Host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData},
		QPS:             200,
		Burst:           400,
	}
}

// exitErr is how an exited process ended.
func exitErr(p *kubeproc.Proc) error {
	_, err := p.Exited()
	return err
}
