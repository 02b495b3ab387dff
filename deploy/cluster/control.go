package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/podrouter/podrouter/router/kube/kubepki"
	"github.com/podrouter/podrouter/router/kube/kubeproc"
)

// controlTimeout bounds the wait for the API server's /readyz.
const controlTimeout = 120 * time.Second

// freePort returns a TCP port free on addr a moment ago.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("cluster: pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in the host's netns; the API server listens on the
// bridge's address, where the nodes reach it.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	bin := func(name string) string { return filepath.Join(c.cfg.Bin, name) }
	host := c.hostAddr().String()
	pki, err := kubepki.New(filepath.Join(c.Dir, "pki"), c.hostAddr().AsSlice())
	if err != nil {
		return err
	}
	c.pki = pki
	egressConf, err := c.startEgressProxy()
	if err != nil {
		return err
	}
	var ports [3]int
	for i, a := range []string{"127.0.0.1", "127.0.0.1", host} {
		if ports[i], err = freePort(a); err != nil {
			return err
		}
	}
	logs := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	env := []string{"PODROUTER_CLUSTER=" + c.ID}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	etcd, err := kubeproc.Start(filepath.Join(logs, "etcd.log"), env, bin("etcd"),
		"--name=podrouter-cluster", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=podrouter-cluster="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	c.control = append(c.control, etcd)
	apiClient, err := pki.Client("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	kcFile := filepath.Join(pki.Dir, "kubelet-client")
	if err := os.WriteFile(kcFile+".crt", apiClient.CertPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(kcFile+".key", apiClient.KeyPEM, 0o600); err != nil {
		return err
	}
	c.Server = "https://" + net.JoinHostPort(host, strconv.Itoa(ports[2]))
	api, err := kubeproc.Start(filepath.Join(logs, "kube-apiserver.log"), env, bin("kube-apiserver"),
		"--etcd-servers="+clientURL,
		"--bind-address="+host,
		"--advertise-address="+host,
		"--secure-port="+strconv.Itoa(ports[2]),
		"--cert-dir="+pki.Dir,
		"--tls-cert-file="+pki.ServingCertFile,
		"--tls-private-key-file="+pki.ServingKeyFile,
		"--client-ca-file="+pki.CAFile,
		"--kubelet-client-certificate="+kcFile+".crt",
		"--kubelet-client-key="+kcFile+".key",
		"--kubelet-preferred-address-types=InternalIP",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--anonymous-auth=false",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.SAPubFile,
		"--service-account-signing-key-file="+pki.SAKeyFile,
		"--service-cluster-ip-range="+ServiceCIDR,
		"--egress-selector-config-file="+egressConf,
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1")
	if err != nil {
		return err
	}
	c.control = append(c.control, api)
	adminTLS, err := pki.Admin.TLS()
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{RootCAs: x509.NewCertPool(), Certificates: []tls.Certificate{adminTLS}}
	tlsConf.RootCAs.AppendCertsFromPEM(pki.CAPEM)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer hc.CloseIdleConnections()
	if err := waitFor(ctx, "kube-apiserver /readyz", controlTimeout, api, func() (bool, error) {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		resp, err := hc.Get(c.Server + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Errorf("/readyz: %s", resp.Status)
	}); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, pki.Kubeconfig(c.Server, "podrouter-test-admin", pki.Admin), 0o600); err != nil {
		return err
	}
	if err := c.adminClient(); err != nil {
		return err
	}
	for _, comp := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", []string{
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + ClusterCIDR,
			"--node-cidr-mask-size=24",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--root-ca-file=" + pki.CAFile,
			"--service-account-private-key-file=" + pki.SAKeyFile,
			"--use-service-account-credentials=true",
			"--controllers=*",
			"--configure-cloud-routes=false",
		}},
		{"kube-scheduler", nil},
	} {
		port, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		cert, err := pki.Client("system:"+comp.name, "system:masters")
		if err != nil {
			return err
		}
		kc := filepath.Join(c.Dir, comp.name+".kubeconfig")
		if err := os.WriteFile(kc, pki.Kubeconfig(c.Server, comp.name, cert), 0o600); err != nil {
			return err
		}
		args := append([]string{bin(comp.name),
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--leader-elect=false",
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--v=1",
		}, comp.args...)
		p, err := kubeproc.Start(filepath.Join(logs, comp.name+".log"), env, args...)
		if err != nil {
			return err
		}
		c.control = append(c.control, p)
	}
	return nil
}
