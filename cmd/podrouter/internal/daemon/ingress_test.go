package daemon

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/netstackx/ingress"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

func TestMappingRules(t *testing.T) {
	a4, a6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")
	h4, h6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	ap := netip.AddrPortFrom
	for _, tc := range []struct {
		name  string
		m     api.PortMapping
		addrs []netip.Addr
		want  []ingress.Rule
	}{
		{"all addresses, dual stack", api.PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, []netip.Addr{a4, a6}, []ingress.Rule{
			{Proto: packet.ProtoTCP, Listen: ap(netip.IPv4Unspecified(), 8080), Target: ap(a4, 80)},
			{Proto: packet.ProtoTCP, Listen: ap(netip.IPv6Unspecified(), 8080), Target: ap(a6, 80)},
		}},
		{"host IP", api.PortMapping{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: h4}, []netip.Addr{a4, a6}, []ingress.Rule{
			{Proto: packet.ProtoUDP, Listen: ap(h4, 53), Target: ap(a4, 5353)},
		}},
		{"IPv6 host IP, IPv4 pod", api.PortMapping{HostPort: 53, ContainerPort: 53, Protocol: "udp", HostIP: h6}, []netip.Addr{a4}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mappingRules([]api.PortMapping{tc.m}, tc.addrs)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("rules %v, want %v", got, tc.want)
			}
		})
	}
}

// TestHostPorts: a pod attached with a hostPort is reachable from a host
// client on it (from the gateway address) until it is detached; a second
// pod claiming the same socket gets nothing.
func TestHostPorts(t *testing.T) {
	log := zaptest.NewLogger(t)
	n, err := node.New(node.Config{PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p := &pods{eng: n.Engine(), store: st, log: log, byID: map[api.AttachmentID]*pod{}, hp: hostPorts{node: n}}

	vp, err := netstackx.NewPod(netstackx.PodConfig{Name: "web", Addr: netip.MustParsePrefix("10.244.1.5/24"), Gateway: n.Engine().Gateway()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vp.Close() })
	ln, err := vp.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello %s", c.RemoteAddr())
			_ = c.Close()
		}
	}()

	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostPort := netip.MustParseAddrPort(probe.Addr().String()).Port()
	_ = probe.Close()
	mapping := []api.PortMapping{{HostPort: hostPort, ContainerPort: 80, Protocol: "tcp", HostIP: netip.MustParseAddr("127.0.0.1")}}
	req := api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: "web", IfName: "eth0"}, Netns: "/run/netns/web", MTU: 1500,
		MAC: api.MAC(vp.MAC()), Addrs: []netip.Addr{vp.Addr()}, PortMappings: mapping}
	pd, err := p.attach(req, vp.Device())
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", hostPort)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	_ = c.Close()
	if err != nil || len(b) < 6 || string(b[:6]) != "hello " || netip.MustParseAddrPort(string(b[6:])).Addr() != n.Engine().Gateway() {
		t.Fatalf("answer %q, %v", b, err)
	}

	// Another pod with the same mapping: the first keeps the socket.
	_, dev := linktest.Pipe(16, 2048, 8)
	other := req
	other.AttachmentID.ContainerID, other.MAC, other.Addrs = "other", api.MAC{2, 0, 0, 0, 0, 9}, []netip.Addr{netip.MustParseAddr("10.244.1.9")}
	if _, err := p.attach(other, dev); err != nil {
		t.Fatal(err)
	}
	if rs := p.hp.fwd.Rules(); len(rs) != 1 || rs[0].Target.Addr() != vp.Addr() {
		t.Fatalf("rules %v", rs)
	}

	p.mu.Lock()
	p.detachLocked(pd)
	p.mu.Unlock()
	if rs := p.hp.fwd.Rules(); len(rs) != 1 || rs[0].Target.Addr() != other.Addrs[0] {
		t.Fatalf("after detach: rules %v, want the other pod's", rs)
	}
	p.mu.Lock()
	p.detachLocked(p.byID[other.AttachmentID])
	p.mu.Unlock()
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("hostPort still published after both pods were detached")
	}
}

func TestNodePortRules(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00:96::20")
	node4 := netip.MustParseAddr("172.29.0.2")
	svcs := []service.Service{
		{Namespace: "ns", Name: "np", ClusterIPs: []netip.Addr{v4, v6}, Ports: []service.Port{
			{Name: "http", Proto: packet.ProtoTCP, Port: 80, NodePort: 30080},
			{Name: "dns", Proto: packet.ProtoUDP, Port: 53, NodePort: 30053},
			{Name: "plain", Proto: packet.ProtoTCP, Port: 81},
		}},
	}
	got := nodePortRules(svcs, []netip.Addr{node4})
	want := []ingress.Rule{
		{Proto: packet.ProtoTCP, Listen: netip.MustParseAddrPort("0.0.0.0:30080"), Target: netip.MustParseAddrPort("172.29.0.2:30080")},
		{Proto: packet.ProtoTCP, Listen: netip.MustParseAddrPort("[::]:30080"), Target: netip.MustParseAddrPort("[fd00:96::20]:80")},
		{Proto: packet.ProtoUDP, Listen: netip.MustParseAddrPort("0.0.0.0:30053"), Target: netip.MustParseAddrPort("172.29.0.2:30053")},
		{Proto: packet.ProtoUDP, Listen: netip.MustParseAddrPort("[::]:30053"), Target: netip.MustParseAddrPort("[fd00:96::20]:53")},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("rules\n%v\nwant\n%v", got, want)
	}
	// externalTrafficPolicy Local: the rules that dial the node's nodePort
	// frontend keep their clients' addresses; the ones that fall back to
	// the ClusterIP (no node address of their family) cannot.
	svcs[0].ExternalLocal = true
	got = nodePortRules(svcs, []netip.Addr{node4})
	for i := range want {
		want[i].KeepSource = want[i].Target.Addr() == node4
	}
	if !slices.Equal(got, want) || !got[0].KeepSource || got[1].KeepSource {
		t.Fatalf("Local rules\n%v\nwant\n%v", got, want)
	}
}
