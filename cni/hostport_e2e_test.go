package cni_test

// hostPorts end to end (root): the real daemon in a throwaway node netns,
// a pod netns set up by cnitool with the portMappings capability, and a
// client in the node netns connecting to the node's address. Nothing
// leaves the test's namespaces.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/nstest"
)

// TestHostPort: a pod's TCP and UDP hostPorts answer on the node's address
// (the pod sees the gateway address as the client) until CNI DEL.
func TestHostPort(t *testing.T) {
	n := newNode(t)
	conf := bytes.Replace(n.confList, []byte(`"type":"podrouter-cni",`), []byte(`"type":"podrouter-cni","capabilities":{"portMappings":true},`), 1)
	if bytes.Equal(conf, n.confList) {
		t.Fatal("conflist not amended")
	}
	if err := os.WriteFile(filepath.Join(n.netDir, "10-podr.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	n.startDaemon()
	hostPort := 30000 + rand.IntN(2000)
	capArgs := fmt.Sprintf(`{"portMappings":[{"hostPort":%d,"containerPort":8080,"protocol":"tcp"},{"hostPort":%d,"containerPort":5353,"protocol":"udp"}]}`,
		hostPort, hostPort)
	pns := nstest.New(t)
	cnitool := func(cmd string) ([]byte, error) {
		c := exec.Command(filepath.Join(toolDir, "cnitool"), cmd, netName, "/run/netns/"+pns.Name)
		c.Env = append(os.Environ(), "CNI_PATH="+n.cniPath, "NETCONFPATH="+n.netDir, "CAP_ARGS="+capArgs)
		return c.CombinedOutput()
	}
	t.Cleanup(func() { _, _ = cnitool("del") })
	out, err := cnitool("add")
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s\ndaemon:\n%s", err, out, n.logText())
	}
	var res struct{ IPs []struct{ Address string } }
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD result %s: %v", out, err)
	}
	podIP := netip.MustParsePrefix(res.IPs[0].Address).Addr()
	as, err := n.client().Attachments(context.Background())
	if err != nil || len(as) != 1 || len(as[0].PortMappings) != 2 {
		t.Fatalf("attachments %+v, %v", as, err)
	}

	// Servers in the pod: TCP answers "hello <client>", UDP echoes with
	// the client's address.
	var ln net.Listener
	var pc net.PacketConn
	if err := pns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp4", netip.AddrPortFrom(podIP, 8080).String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(podIP, 5353).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	nstest.Serve(t, ln, func(c net.Conn) {
		fmt.Fprintf(c, "hello %s", c.RemoteAddr())
		_ = c.Close()
	})
	udpDone := make(chan struct{})
	t.Cleanup(func() { _ = pc.Close(); <-udpDone })
	go func() {
		defer close(udpDone)
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s from %s", buf[:k], from), from)
		}
	}()

	gw := n.podCIDR.Addr().Next()
	target := netip.AddrPortFrom(n.nodeIP, uint16(hostPort)).String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	askTCP := func() {
		t.Helper()
		c, err := n.ns.DialContext(ctx, "tcp", target)
		if err != nil {
			t.Fatalf("dial hostPort: %v\ndaemon:\n%s", err, n.logText())
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || !strings.HasPrefix(string(b), "hello "+gw.String()+":") {
			t.Fatalf("TCP answer %q, %v; want hello from the gateway %s", b, err, gw)
		}
	}
	askTCP()
	u, err := n.ns.DialContext(ctx, "udp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_ = u.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := u.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	k, err := u.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:k]), "ping from "+gw.String()+":") {
		t.Fatalf("UDP answer %q, %v", buf[:k], err)
	}

	// A restarted daemon publishes the re-attached pod's hostPorts again.
	n.stopDaemon(syscall.SIGTERM)
	n.startDaemon()
	askTCP()

	if out, err := cnitool("del"); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer dcancel()
	if c, err := n.ns.DialContext(dctx, "tcp", target); err == nil {
		_ = c.Close()
		t.Fatal("hostPort still published after DEL")
	}
}
