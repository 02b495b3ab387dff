package cluster_test

// Cluster DNS: the CoreDNS addon (addons/coredns.yaml) that Up applies.
// Without Services in the engine its kubernetes plugin cannot reach the
// API server (the `kubernetes` ClusterIP), so what is checked is what
// needs no API: the pods are scheduled and their containers start, and
// each pod answers DNS over UDP and TCP, its health endpoint and its
// metrics at its own address, from another node's network namespace
// through podrouter.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/podrouter/podrouter/deploy/cluster"
)

// dnsQuery sends one query for name and type from node's network
// namespace to server (ip:port) over network (udp or tcp) and returns the
// parsed answer.
func dnsQuery(ctx context.Context, node *cluster.Node, network, server, name string, typ dnsmessage.Type) (*dnsmessage.Message, error) {
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: uint16(rand.Uint32()), RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}},
	}
	msg, err := q.Pack()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := node.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	var reply []byte
	if network == "tcp" {
		// RFC 1035 4.2.2: a two-byte length before each message.
		if _, err := conn.Write(binary.BigEndian.AppendUint16(nil, uint16(len(msg)))); err != nil {
			return nil, err
		}
		if _, err := conn.Write(msg); err != nil {
			return nil, err
		}
		var n [2]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return nil, err
		}
		reply = make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, reply); err != nil {
			return nil, err
		}
	} else {
		if _, err := conn.Write(msg); err != nil {
			return nil, err
		}
		buf := make([]byte, 1232)
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		reply = buf[:n]
	}
	var m dnsmessage.Message
	if err := m.Unpack(reply); err != nil {
		return nil, fmt.Errorf("%s %s: unpack: %w", network, server, err)
	}
	if m.ID != q.ID || !m.Response {
		return nil, fmt.Errorf("%s %s: reply id %d response %v to query id %d", network, server, m.ID, m.Response, q.ID)
	}
	return &m, nil
}

// schemaVersion queries dns-version.cluster.local TXT, which the
// kubernetes plugin answers with its schema version without the API
// (the Kubernetes DNS specification's dns-version record).
func schemaVersion(ctx context.Context, node *cluster.Node, network, server string) (string, error) {
	m, err := dnsQuery(ctx, node, network, server, "dns-version.cluster.local.", dnsmessage.TypeTXT)
	if err != nil {
		return "", err
	}
	if m.RCode != dnsmessage.RCodeSuccess || !m.Authoritative || len(m.Answers) != 1 {
		return "", fmt.Errorf("%s %s: rcode %v, authoritative %v, %d answers", network, server, m.RCode, m.Authoritative, len(m.Answers))
	}
	txt, ok := m.Answers[0].Body.(*dnsmessage.TXTResource)
	if !ok {
		return "", fmt.Errorf("%s %s: answer %v, want TXT", network, server, m.Answers[0].Body)
	}
	return strings.Join(txt.TXT, ""), nil
}

// nodeGet fetches url from node's network namespace and returns the
// status code and body.
func nodeGet(node *cluster.Node, url string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: node.DialContext}}
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// coreDNSPods waits until CoreDNS's Deployment has its two pods scheduled
// with addresses and their containers started, and returns them.
func coreDNSPods(t *testing.T, c *cluster.Cluster) []corev1.Pod {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := c.Client.CoreV1().Pods(cluster.CoreDNSNamespace).List(ctx, metav1.ListOptions{LabelSelector: cluster.CoreDNSSelector})
		started := 0
		if err == nil {
			for _, p := range pods.Items {
				if p.Spec.NodeName != "" && p.Status.PodIP != "" && len(p.Status.ContainerStatuses) == 1 &&
					p.Status.ContainerStatuses[0].State.Running != nil && p.Status.ContainerStatuses[0].Started != nil && *p.Status.ContainerStatuses[0].Started {
					started++
				}
			}
			if started == 2 && len(pods.Items) == 2 {
				return pods.Items
			}
		}
		if time.Now().After(deadline) {
			desc, _ := c.Kubectl(ctx, "-n", cluster.CoreDNSNamespace, "describe", "pods", "-l", cluster.CoreDNSSelector)
			logs, _ := c.Kubectl(ctx, "-n", cluster.CoreDNSNamespace, "logs", "-l", cluster.CoreDNSSelector, "--tail=30", "--prefix")
			t.Fatalf("CoreDNS: %d of 2 pods started after 2m (%v):\n%s\nlogs:\n%s", started, err, desc, logs)
		}
		time.Sleep(time.Second)
	}
}

// testCoreDNS checks the CoreDNS addon; pod (in namespace ns) is an
// agnhost pod, from which the Service address is tried (and the result
// only logged: it needs Services in the engine).
func testCoreDNS(t *testing.T, c *cluster.Cluster, ns, pod string) {
	ctx := context.Background()
	began := time.Now()
	pods := coreDNSPods(t, c)
	st, err := c.CoreDNSState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CoreDNS started within %v of this subtest: %s", time.Since(began).Round(time.Millisecond), st)
	nodes := map[string]bool{}
	for _, p := range pods {
		nodes[p.Spec.NodeName] = true
	}
	if len(nodes) != 2 {
		t.Errorf("CoreDNS pods on %v: want one on each node (anti-affinity, two nodes)", nodes)
	}
	svc, err := c.Client.CoreV1().Services(cluster.CoreDNSNamespace).Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != cluster.ClusterDNS {
		t.Errorf("Service kube-dns at %s, want %s", svc.Spec.ClusterIP, cluster.ClusterDNS)
	}

	// From node-1's network namespace to each pod's own address (one on
	// node-1, one across the underlay on node-2).
	from := c.Nodes[0]
	for _, p := range pods {
		t.Run(p.Spec.NodeName, func(t *testing.T) {
			ip := p.Status.PodIP
			for _, network := range []string{"udp", "tcp"} {
				var got string
				if err := retry(func() error {
					var err error
					got, err = schemaVersion(ctx, from, network, net.JoinHostPort(ip, "53"))
					return err
				}); err != nil {
					t.Errorf("%s: dns-version.cluster.local TXT over %s: %v", p.Name, network, err)
				} else if got != "1.1.0" {
					t.Errorf("%s: dns-version.cluster.local TXT over %s: %q, want 1.1.0", p.Name, network, got)
				}
			}
			code, body, err := nodeGet(from, "http://"+net.JoinHostPort(ip, "8080")+"/health")
			if err != nil || code != http.StatusOK || strings.TrimSpace(body) != "OK" {
				t.Errorf("%s: GET /health: %d %q %v, want 200 OK", p.Name, code, body, err)
			}
			// /ready names the plugins not ready yet; kubernetes until it
			// has synced with the API (through the kubernetes Service).
			code, body, err = nodeGet(from, "http://"+net.JoinHostPort(ip, "8181")+"/ready")
			if err != nil || (code != http.StatusOK && code != http.StatusServiceUnavailable) {
				t.Errorf("%s: GET /ready: %d %q %v, want 200 or 503", p.Name, code, body, err)
			} else {
				t.Logf("%s: /ready: %d %s", p.Name, code, strings.TrimSpace(body))
			}
			// The metrics count the queries above, and name the version.
			code, body, err = nodeGet(from, "http://"+net.JoinHostPort(ip, "9153")+"/metrics")
			if err != nil || code != http.StatusOK {
				t.Fatalf("%s: GET /metrics: %d %v", p.Name, code, err)
			}
			version := strings.TrimPrefix(cluster.CoreDNSImage[strings.LastIndex(cluster.CoreDNSImage, ":")+1:], "v")
			for _, want := range []string{`coredns_build_info{goversion=`, `version="` + version + `"`, `coredns_dns_requests_total{`} {
				if !strings.Contains(body, want) {
					t.Errorf("%s: /metrics lacks %s", p.Name, want)
				}
			}
		})
	}

	// Through the kube-dns Service (the pods' resolv.conf), which the
	// engines load-balance: a Service name resolves once CoreDNS has
	// synced with the API server (through the kubernetes Service).
	if err := retryFor(2*time.Minute, func() error {
		out, err := exec(c, ns, pod, "nslookup", "kubernetes.default.svc.cluster.local")
		if err != nil || !strings.Contains(out, "10.96.0.1") {
			return fmt.Errorf("from pod %s through %s: nslookup kubernetes.default: %v\n%s", pod, cluster.ClusterDNS, err, strings.TrimSpace(out))
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// The pods' state as Up logs it, and the reason they are not Ready.
	if st, err := c.CoreDNSState(ctx); err == nil {
		t.Logf("CoreDNS now: %s", st)
	}
	logs, err := c.Kubectl(ctx, "-n", cluster.CoreDNSNamespace, "logs", "-l", cluster.CoreDNSSelector, "--tail=6", "--prefix")
	t.Logf("CoreDNS logs (%v):\n%s", err, logs)
}

// retryFor runs fn until it succeeds or d passes.
func retryFor(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(2 * time.Second)
	}
}
