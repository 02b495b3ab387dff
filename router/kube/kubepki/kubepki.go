// Package kubepki makes the key material of a throwaway Kubernetes control
// plane (router/kube/kubetest's API server, deploy/cluster's cluster): a
// CA, the API server's serving certificate, client certificates (admin,
// nodes, controllers) and the service-account token signing key pair.
// ECDSA P-256 throughout: quick to generate. Everything is valid for a day
// from an hour ago; nothing here is meant to outlive a test or a lab.
package kubepki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// validity is how long every certificate lasts (from an hour ago).
const validity = 24 * time.Hour

// PKI is the key material, with its files in Dir.
type PKI struct {
	Dir string
	// CAPEM is the CA certificate; CAFile holds it.
	CAPEM  []byte
	CAFile string
	// ServingCertFile and ServingKeyFile are the API server's.
	ServingCertFile, ServingKeyFile string
	// Admin is a client certificate in system:masters.
	Admin Cert
	// SAKeyFile and SAPubFile are the service-account token signing key
	// pair (PEM).
	SAKeyFile, SAPubFile string

	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	mu     sync.Mutex
	serial int64
}

// Cert is a certificate and its key, PEM.
type Cert struct {
	CertPEM, KeyPEM []byte
}

// TLS returns c as a tls.Certificate.
func (c Cert) TLS() (tls.Certificate, error) { return tls.X509KeyPair(c.CertPEM, c.KeyPEM) }

// New makes the key material and writes its files into dir (0600). The
// serving certificate names 127.0.0.1, ::1, 10.96.0.1 (the default
// "kubernetes" Service), localhost and the in-cluster names, plus ips.
func New(dir string, ips ...net.IP) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "podrouter-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("kubepki: ca: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p := &PKI{
		Dir:             dir,
		CAPEM:           pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CAFile:          filepath.Join(dir, "ca.crt"),
		ServingCertFile: filepath.Join(dir, "apiserver.crt"),
		ServingKeyFile:  filepath.Join(dir, "apiserver.key"),
		SAKeyFile:       filepath.Join(dir, "sa.key"),
		SAPubFile:       filepath.Join(dir, "sa.pub"),
		ca:              ca,
		caKey:           caKey,
		serial:          1,
	}
	serving, err := p.leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}, ips...),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, fmt.Errorf("kubepki: serving certificate: %w", err)
	}
	if p.Admin, err = p.Client("podrouter-test-admin", "system:masters"); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saKeyDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{p.CAFile, p.CAPEM},
		{p.ServingCertFile, serving.CertPEM},
		{p.ServingKeyFile, serving.KeyPEM},
		{p.SAKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saKeyDER})},
		{p.SAPubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})},
	} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Client returns a new client certificate for user cn in groups orgs
// (a node: "system:node:NAME", "system:nodes").
func (p *PKI) Client(cn string, orgs ...string) (Cert, error) {
	c, err := p.leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return Cert{}, fmt.Errorf("kubepki: client certificate %s: %w", cn, err)
	}
	return c, nil
}

// leaf signs tmpl with the CA and a fresh key.
func (p *PKI) leaf(tmpl *x509.Certificate) (Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Cert{}, err
	}
	p.mu.Lock()
	p.serial++
	tmpl.SerialNumber = big.NewInt(p.serial)
	p.mu.Unlock()
	now := time.Now()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return Cert{}, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Cert{}, err
	}
	return Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, nil
}

// Kubeconfig renders a kubeconfig for server (an https URL) and user,
// with the credentials inline so the file stands alone.
func (p *PKI) Kubeconfig(server, user string, c Cert) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: podrouter-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: podrouter-test
  context:
    cluster: podrouter-test
    user: %s
current-context: podrouter-test
`, server, b64(p.CAPEM), user, b64(c.CertPEM), b64(c.KeyPEM), user)
}
