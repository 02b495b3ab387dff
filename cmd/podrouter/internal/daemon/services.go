package daemon

// The operator's view of the node's load balancer (Services without
// kube-proxy): the local API's OpServices, the Service flows OpConntrack
// lists after the egress's, and the podrouter_service_* metrics.
//
//	OpServices: node.Services() (the engine's table) ─► frontends grouped
//	    by Service, filtered ─► backends with their conditions, usable or
//	    not, flows per backend ─► + table sizes, live Service flows,
//	    engine.ServiceStats
//	metrics: the same totals, never per Service or per backend (a cluster's
//	    Services and endpoints are unbounded label values)

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/service"
)

var _ api.ServicesHandler = handler{}

// Services implements api.ServicesHandler.
func (d handler) Services(_ context.Context, req api.ServicesRequest) (api.Services, error) {
	if err := req.Normalize(); err != nil {
		return api.Services{}, err
	}
	out := api.Services{Services: []api.Service{}}
	t := d.node.Services()
	if t == nil {
		return out, nil
	}
	out.Enabled = true
	out.TotalServices, out.TotalFrontends = t.Len()
	if ft := d.node.ServiceFlows(); ft != nil {
		out.LiveFlows = ft.Len()
	}
	out.Stats = serviceStats(d.eng.ServiceStats())
	fronts := t.Frontends()
	selected := map[string]bool{}
	for _, f := range fronts {
		if (req.Service == "" || f.Service == req.Service) && (!req.Addr.IsValid() || f.Addr == req.Addr) {
			selected[f.Service] = true
		}
	}
	if len(selected) == 0 && (req.Service != "" || req.Addr.IsValid()) {
		what := req.Service
		if req.Addr.IsValid() {
			what = strings.TrimSpace(what + " at " + req.Addr.String())
		}
		return api.Services{}, fmt.Errorf("%w: no Service %s in the load balancer's table", api.ErrNotFound, what)
	}
	byName := map[string]int{} // index in out.Services
	for _, f := range fronts {
		if !selected[f.Service] {
			continue
		}
		i, ok := byName[f.Service]
		if !ok {
			ns, name, _ := strings.Cut(f.Service, "/")
			i = len(out.Services)
			byName[f.Service] = i
			out.Services = append(out.Services, api.Service{Namespace: ns, Name: name})
		}
		out.Services[i].Frontends = append(out.Services[i].Frontends, frontendView(f))
	}
	slices.SortFunc(out.Services, func(a, b api.Service) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// frontendView is the API's view of f: its backends of f's family in the
// Service port's order, then those that took flows and are no endpoint any
// more (Gone), by address.
func frontendView(f *service.Frontend) api.Frontend {
	c := f.Counters()
	out := api.Frontend{
		Addr: netip.AddrPortFrom(f.Addr, f.Port), Proto: conntrack.ProtoName(f.Proto), PortName: f.PortName,
		NodePort: f.NodePort, Affinity: f.Affinity, Terminating: f.Terminating, Flows: c.Flows, Rejected: c.Rejected,
		Backends: []api.Backend{},
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range f.All {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		if b.Addr.Is4() != f.Addr.Is4() || seen[ap] {
			continue
		}
		seen[ap] = true
		out.Backends = append(out.Backends, api.Backend{
			Addr: ap, Ready: b.Ready, Serving: b.Serving, Terminating: b.Terminating, Local: b.Local,
			Usable: slices.Contains(f.Backends, ap), Flows: c.PerBackend[ap],
		})
	}
	var gone []netip.AddrPort
	for ap := range c.PerBackend {
		if !seen[ap] {
			gone = append(gone, ap)
		}
	}
	slices.SortFunc(gone, netip.AddrPort.Compare)
	for _, ap := range gone {
		out.Backends = append(out.Backends, api.Backend{Addr: ap, Gone: true, Flows: c.PerBackend[ap]})
	}
	return out
}

// serviceFlows adds the Service flows of the clients in srcs (all when
// nil) to out, within req.Max with the flows already there, and the
// Service flow table's counters.
func (d handler) serviceFlows(out *api.Conntrack, srcs []netip.Addr, req api.ConntrackRequest, names map[netip.Addr]string) {
	out.ServiceTable = d.node.ServiceFlowStats()
	if out.ServiceTable == nil {
		return
	}
	flows, truncated := d.node.ServiceFlowList(srcs, req.Max-len(out.Flows))
	for _, f := range flows {
		f.Pod = names[f.Src.Addr()]
		out.Flows = append(out.Flows, f)
	}
	out.Truncated = out.Truncated || truncated
}

// serviceStats converts the engine's counters.
func serviceStats(s engine.ServiceStats) api.ServiceStats {
	return api.ServiceStats{Flows: s.Flows, Hairpins: s.Hairpins, NoEndpoints: s.NoEndpoints, NoPort: s.NoPort,
		Unsupported: s.Unsupported, Refused: s.Refused, Flushed: s.Flushed}
}

var (
	descServiceEvents = prometheus.NewDesc("podrouter_service_events_total",
		"What the load balancer did, by event: flows (Service flows created), hairpins (of which a pod reached itself), "+
			"no-endpoints (new flows refused: no backend), no-port (packets to a Service address on no Service port), "+
			"unsupported (packets to a Service address, neither TCP nor UDP), refused (flows the Service flow table refused), "+
			"flushed (UDP flows removed when their backend left).", []string{"event"}, nil)
	descServices = prometheus.NewDesc("podrouter_service_services",
		"Services in the load balancer's table.", nil, nil)
	descServiceFrontends = prometheus.NewDesc("podrouter_service_frontends",
		"Frontends (address:port/protocol: ClusterIPs, externalIPs, node addresses with a nodePort) in the load balancer's table.", nil, nil)
	descServiceFlows = prometheus.NewDesc("podrouter_service_flows",
		"Live Service flows (the Service flow table's entries).", nil, nil)
)

// describeServices sends the load balancer's metric descriptions.
func describeServices(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descServiceEvents, descServices, descServiceFrontends, descServiceFlows} {
		ch <- d
	}
}

// collectServices sends the load balancer's metrics; none when it is off.
func (d *Daemon) collectServices(ch chan<- prometheus.Metric) {
	t := d.node.Services()
	if t == nil {
		return
	}
	s := d.eng.ServiceStats()
	for _, e := range []struct {
		name string
		v    uint64
	}{{"flows", s.Flows}, {"hairpins", s.Hairpins}, {"no-endpoints", s.NoEndpoints}, {"no-port", s.NoPort},
		{"unsupported", s.Unsupported}, {"refused", s.Refused}, {"flushed", s.Flushed}} {
		ch <- prometheus.MustNewConstMetric(descServiceEvents, prometheus.CounterValue, float64(e.v), e.name)
	}
	svcs, fronts := t.Len()
	ch <- prometheus.MustNewConstMetric(descServices, prometheus.GaugeValue, float64(svcs))
	ch <- prometheus.MustNewConstMetric(descServiceFrontends, prometheus.GaugeValue, float64(fronts))
	if ft := d.node.ServiceFlows(); ft != nil {
		ch <- prometheus.MustNewConstMetric(descServiceFlows, prometheus.GaugeValue, float64(ft.Len()))
	}
}
