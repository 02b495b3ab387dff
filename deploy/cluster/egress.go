package cluster

// The API server's way into the pod network. A real control plane runs on
// a node (or reaches the nodes through konnectivity); here it runs on the
// machine, on the nodes' bridge, with no route to the pods, so the API
// server's proxy subresources (pods/proxy, services/proxy), and with them
// the upstream Proxy conformance specs, could not reach a pod. The API
// server's egress selector sends its "cluster" traffic (kubelets, pods,
// Services) over HTTP CONNECT on a unix socket to this proxy, in the
// process that ran Up, which dials from the first node's network
// namespace: the node routes the pod network to podrouter, as a
// konnectivity agent on a node would.
//
//	kube-apiserver ─CONNECT host:port─► <dir>/egress.sock ─► node-1 netns dial ─► splice

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// egressProxy serves the API server's HTTP CONNECT requests.
type egressProxy struct {
	l    net.Listener
	via  atomic.Pointer[Node] // the node whose namespace dials; nil until it exists
	wg   sync.WaitGroup
	done chan struct{}
}

// egressConfig returns the EgressSelectorConfiguration for socket.
func egressConfig(socket string) string {
	return fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, socket)
}

// startEgressProxy listens on <dir>/egress.sock and writes the API
// server's egress selector configuration; it returns the file's path.
func (c *Cluster) startEgressProxy() (string, error) {
	sock := filepath.Join(c.Dir, "egress.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return "", fmt.Errorf("cluster: egress proxy: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return "", err
	}
	conf := filepath.Join(c.Dir, "egress-selector.yaml")
	if err := os.WriteFile(conf, []byte(egressConfig(sock)), 0o600); err != nil {
		l.Close()
		return "", err
	}
	p := &egressProxy{l: l, done: make(chan struct{})}
	c.egress = p
	p.wg.Add(1)
	go p.serve()
	return conf, nil
}

func (p *egressProxy) serve() {
	defer p.wg.Done()
	for {
		conn, err := p.l.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(conn)
		}()
	}
}

// handle answers one CONNECT and splices until either side ends.
func (p *egressProxy) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	n := p.via.Load()
	if req.Method != http.MethodConnect || n == nil {
		fmt.Fprintf(conn, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := n.DialContext(ctx, "tcp", req.Host)
	cancel()
	if err != nil {
		msg := err.Error()
		fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
		return
	}
	defer up.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	stop := make(chan struct{}, 2)
	go func() {
		// What the API server sent after its request, then the rest.
		_, _ = io.Copy(up, br)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		stop <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, up)
		if uc, ok := conn.(*net.UnixConn); ok {
			_ = uc.CloseWrite()
		}
		stop <- struct{}{}
	}()
	select {
	case <-stop:
		<-stop
	case <-p.done:
	}
}

// close stops the proxy: the listener and every spliced connection.
func (p *egressProxy) close() {
	close(p.done)
	_ = p.l.Close()
	p.wg.Wait()
}
