package daemon

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

var (
	svcNodeIP = netip.MustParseAddr("192.168.1.10")
	webVIP    = netip.MustParseAddr("10.96.0.10")
	dnsVIP    = netip.MustParseAddr("10.96.0.53")
	webReady  = netip.MustParseAddrPort("10.244.1.5:8080")
	webTerm   = netip.MustParseAddrPort("10.244.2.7:8080")
)

// newServicesDaemon is newEgressDaemon (uplink egress) with the node's
// load balancer on (Service CIDR 10.96.0.0/12); it returns the host's end
// of the uplink, a pipe.
func newServicesDaemon(t *testing.T) (*Daemon, *linktest.End) {
	t.Helper()
	pfx := netip.MustParsePrefix
	cfg := Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		NodeIPs: []netip.Addr{svcNodeIP}, Egress: EgressConfig{Mode: EgressUplink}, Logger: zaptest.NewLogger(t)}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc := cfg.nodeConfig()
	up, host := linktest.Pipe(64, 2048, 8)
	nc.Uplink = node.UplinkConfig{Name: "podr0", Device: up}
	nc.Services = node.ServicesConfig{CIDRs: []netip.Prefix{pfx("10.96.0.0/12")}}
	n, err := node.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	return &Daemon{cfg: cfg, log: cfg.Logger, node: n, eng: n.Engine()}, host
}

// testServices are default/web (TCP 80 "http", nodePort 30080, ClientIP
// affinity; one ready local backend, one serving terminating, one IPv6)
// and kube-system/dns (UDP 53, no backend).
func testServices(webBackends ...service.Backend) []service.Service {
	return []service.Service{
		{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{webVIP}, Affinity: 3 * time.Hour,
			Ports: []service.Port{{Name: "http", Proto: packet.ProtoTCP, Port: 80, NodePort: 30080, Backends: webBackends}}},
		{Namespace: "kube-system", Name: "dns", ClusterIPs: []netip.Addr{dnsVIP},
			Ports: []service.Port{{Name: "dns", Proto: packet.ProtoUDP, Port: 53}}},
	}
}

var (
	readyLocal = service.Backend{Addr: webReady.Addr(), Port: webReady.Port(), Local: true, Ready: true, Serving: true}
	terminated = service.Backend{Addr: webTerm.Addr(), Port: webTerm.Port(), Serving: true, Terminating: true}
	readyV6    = service.Backend{Addr: netip.MustParseAddr("fd00:10:244:1::5"), Port: 8080, Ready: true, Serving: true}
)

// hostPacket is an IPv4 packet from the host (the uplink's side) with its
// checksums.
func hostPacket(src, dst netip.AddrPort, proto tcpip.TransportProtocolNumber) []byte {
	var l4 []byte
	if proto == header.TCPProtocolNumber {
		l4 = make([]byte, header.TCPMinimumSize)
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1,
			DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	} else {
		l4 = make([]byte, header.UDPMinimumSize+4)
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(l4))})
	}
	b := make([]byte, header.IPv4MinimumSize+len(l4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto), ID: 7,
		SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], l4)
	s, d := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	sum := header.PseudoHeaderChecksum(proto, s, d, uint16(len(l4)))
	if proto == header.TCPProtocolNumber {
		t := header.TCP(b[header.IPv4MinimumSize:])
		t.SetChecksum(^t.CalculateChecksum(sum))
	} else {
		u := header.UDP(b[header.IPv4MinimumSize:])
		u.SetChecksum(^u.CalculateChecksum(checksumOf(u[header.UDPMinimumSize:], sum)))
	}
	return b
}

// checksumOf folds b into the partial checksum sum.
func checksumOf(b []byte, sum uint16) uint16 {
	s := uint32(sum)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// waitStats waits until the engine's Service counters satisfy ok.
func waitStats(t *testing.T, d *Daemon, ok func(api.ServiceStats) bool) api.ServiceStats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := serviceStats(d.eng.ServiceStats())
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("load balancer counters %+v: never got there", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestServicesOff: without a Service CIDR the API says so, whatever the
// filter, lists no Service flows and exports no podrouter_service_* series.
func TestServicesOff(t *testing.T) {
	pfx := netip.MustParsePrefix
	d := newEgressDaemon(t, Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")},
		Egress: EgressConfig{Mode: EgressUplink}})
	for _, req := range []api.ServicesRequest{{}, {Service: "default/web"}, {Addr: webVIP}} {
		sv, err := (handler{d}).Services(context.Background(), req)
		if err != nil || sv.Enabled || sv.Services == nil || len(sv.Services) != 0 || sv.TotalServices != 0 {
			t.Errorf("%+v: %+v, %v", req, sv, err)
		}
	}
	ct, err := (handler{d}).Conntrack(context.Background(), api.ConntrackRequest{})
	if err != nil || ct.ServiceTable != nil || len(ct.Flows) != 0 {
		t.Errorf("Conntrack: %+v, %v", ct, err)
	}
	for name := range gatherDaemon(t, d) {
		if strings.HasPrefix(name, "podrouter_service") {
			t.Errorf("series %s with the load balancer off", name)
		}
	}
	if err := d.node.SetServices(testServices(readyLocal)); !errors.Is(err, node.ErrConfig) {
		t.Errorf("SetServices with the load balancer off: %v", err)
	}
}

// TestServicesView drives a node's load balancer with packets from the
// host (a flow to a ClusterIP, one to a Service without backends) and
// checks what the operator sees: OpServices, the Service flows in
// OpConntrack, and the metrics.
func TestServicesView(t *testing.T) {
	d, host := newServicesDaemon(t)
	h := handler{d}
	ctx := context.Background()
	if err := d.node.SetServices(testServices(readyLocal, terminated, readyV6)); err != nil {
		t.Fatal(err)
	}
	client := netip.AddrPortFrom(svcNodeIP, 40000)
	pkts := [][]byte{
		hostPacket(client, netip.AddrPortFrom(webVIP, 80), header.TCPProtocolNumber),
		hostPacket(netip.AddrPortFrom(svcNodeIP, 5353), netip.AddrPortFrom(dnsVIP, 53), header.UDPProtocolNumber),
	}
	if _, err := host.Write(pkts, 0); err != nil {
		t.Fatal(err)
	}
	waitStats(t, d, func(s api.ServiceStats) bool { return s.Flows == 1 && s.NoEndpoints == 1 })

	sv, err := h.Services(ctx, api.ServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !sv.Enabled || sv.TotalServices != 2 || sv.TotalFrontends != 3 || sv.LiveFlows != 1 ||
		sv.Stats != (api.ServiceStats{Flows: 1, NoEndpoints: 1}) || len(sv.Services) != 2 {
		t.Fatalf("Services: %+v", sv)
	}
	web, dns := sv.Services[0], sv.Services[1]
	if web.String() != "default/web" || dns.String() != "kube-system/dns" || len(web.Frontends) != 2 || len(dns.Frontends) != 1 {
		t.Fatalf("services %+v", sv.Services)
	}
	// Frontends by address: the ClusterIP, then the node's nodePort.
	vip, np := web.Frontends[0], web.Frontends[1]
	if vip.Addr != netip.AddrPortFrom(webVIP, 80) || vip.Proto != "tcp" || vip.PortName != "http" || vip.NodePort ||
		vip.Affinity != 3*time.Hour || vip.Terminating || vip.Flows != 1 || vip.Rejected != 0 {
		t.Errorf("ClusterIP frontend %+v", vip)
	}
	// The IPv6 backend is no backend of an IPv4 frontend.
	wantBackends := []api.Backend{
		{Addr: webReady, Ready: true, Serving: true, Local: true, Usable: true, Flows: 1},
		{Addr: webTerm, Serving: true, Terminating: true},
	}
	if !equalBackends(vip.Backends, wantBackends) {
		t.Errorf("ClusterIP backends %+v, want %+v", vip.Backends, wantBackends)
	}
	if np.Addr != netip.AddrPortFrom(svcNodeIP, 30080) || !np.NodePort || np.Flows != 0 || len(np.Backends) != 2 || !np.Backends[0].Usable {
		t.Errorf("nodePort frontend %+v", np)
	}
	if f := dns.Frontends[0]; f.Addr != netip.AddrPortFrom(dnsVIP, 53) || f.Proto != "udp" || f.Rejected != 1 || f.Flows != 0 || len(f.Backends) != 0 {
		t.Errorf("dns frontend %+v", f)
	}

	// Filters: by name, by ClusterIP, by node address (the nodePorts), both.
	for _, c := range []struct {
		req  api.ServicesRequest
		want string // the Service listed, "" for not found
	}{
		{api.ServicesRequest{Service: "default/web"}, "default/web"},
		{api.ServicesRequest{Addr: dnsVIP}, "kube-system/dns"},
		{api.ServicesRequest{Addr: svcNodeIP}, "default/web"},
		{api.ServicesRequest{Service: "default/web", Addr: webVIP}, "default/web"},
		{api.ServicesRequest{Service: "kube-system/dns", Addr: webVIP}, ""},
		{api.ServicesRequest{Service: "default/nope"}, ""},
		{api.ServicesRequest{Addr: netip.MustParseAddr("10.96.9.9")}, ""},
	} {
		sv, err := h.Services(ctx, c.req)
		if c.want == "" {
			if !errors.Is(err, api.ErrNotFound) {
				t.Errorf("%+v: %v, want ErrNotFound", c.req, err)
			}
			continue
		}
		if err != nil || len(sv.Services) != 1 || sv.Services[0].String() != c.want || sv.TotalServices != 2 {
			t.Errorf("%+v: %+v, %v; want %s alone", c.req, sv, err, c.want)
		}
	}
	if _, err := h.Services(ctx, api.ServicesRequest{Service: "web"}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad filter: %v", err)
	}

	// The Service flow in conntrack: client -> ClusterIP, backend -> the
	// pod gateway (the client is outside the cluster CIDRs: translated, as
	// kube-proxy masquerades it).
	ct, err := h.Conntrack(ctx, api.ConntrackRequest{})
	if err != nil || ct.Egress != "uplink" || ct.Stats != nil || ct.ServiceTable == nil || ct.ServiceTable.Flows != 1 ||
		ct.ServiceTable.Inserts != 1 || len(ct.ServiceTable.Drops) == 0 || len(ct.Flows) != 1 || ct.Truncated {
		t.Fatalf("Conntrack: %+v, %v", ct, err)
	}
	f := ct.Flows[0]
	if f.Table != "service" || f.Service != "default/web" || f.Proto != "tcp" || f.Src != client || f.Dst != netip.AddrPortFrom(webVIP, 80) ||
		f.ReplySrc != webReady || f.ReplyDst.Addr() != d.eng.Gateway() || f.ReplyDst.Port() < engine.HairpinPortMin || f.ReplyDst.Port() > engine.HairpinPortMax || f.State != "syn-sent" || f.Expires.Before(time.Now()) || f.Pod != "" {
		t.Errorf("Service flow %+v", f)
	}
	if ct, err := h.Conntrack(ctx, api.ConntrackRequest{Pod: svcNodeIP.String(), Max: 1}); err != nil || len(ct.Flows) != 1 || ct.Truncated {
		t.Errorf("by client address: %+v, %v", ct, err)
	}
	if ct, err := h.Conntrack(ctx, api.ConntrackRequest{Pod: "10.244.1.9"}); err != nil || len(ct.Flows) != 0 {
		t.Errorf("another client: %+v, %v", ct, err)
	}

	// Metrics: the totals, no per-Service label.
	fams := gatherDaemon(t, d)
	events := map[string]float64{}
	for _, m := range fams["podrouter_service_events_total"].GetMetric() {
		if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetName() != "event" {
			t.Errorf("labels %v", m.GetLabel())
		}
		events[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	wantEvents := map[string]float64{"flows": 1, "hairpins": 0, "no-endpoints": 1, "no-port": 0, "unsupported": 0, "refused": 0, "flushed": 0}
	if len(events) != len(wantEvents) {
		t.Errorf("events %v, want %v", events, wantEvents)
	}
	for k, v := range wantEvents {
		if got, ok := events[k]; !ok || got != v {
			t.Errorf("podrouter_service_events_total{event=%q} = %v, want %v", k, got, v)
		}
	}
	for name, want := range map[string]float64{"podrouter_service_services": 2, "podrouter_service_frontends": 3, "podrouter_service_flows": 1} {
		if got := gauge(fams, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
		if l := fams[name].GetMetric()[0].GetLabel(); len(l) != 0 {
			t.Errorf("%s has labels %v", name, l)
		}
	}

	// The ready backend leaves: the terminating one takes new flows, and
	// the gone one stays listed for its flow (which lives on).
	if err := d.node.SetServices(testServices(terminated)); err != nil {
		t.Fatal(err)
	}
	sv, err = h.Services(ctx, api.ServicesRequest{Addr: webVIP})
	if err != nil || len(sv.Services) != 1 {
		t.Fatalf("after the swap: %+v, %v", sv, err)
	}
	vip = sv.Services[0].Frontends[0]
	wantBackends = []api.Backend{
		{Addr: webTerm, Serving: true, Terminating: true, Usable: true},
		{Addr: webReady, Gone: true, Flows: 1},
	}
	if !vip.Terminating || vip.Flows != 1 || !equalBackends(vip.Backends, wantBackends) {
		t.Errorf("after the swap: %+v, want backends %+v", vip, wantBackends)
	}
	if sv.LiveFlows != 1 {
		t.Errorf("the TCP flow of a gone backend was flushed: %+v", sv)
	}
}

func equalBackends(a, b []api.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// gatherDaemon gathers the daemon's own collector.
func gatherDaemon(t *testing.T, d *Daemon) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{d})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}
