package main

// Case cross-node-service: the cross-node topology with podrouter's load
// balancer on both nodes, pod A reaching pod B two ways in one run:
//
//	podrouter-vxlan:           pod A ─► 10.251.2.2:5201 (pod B) directly
//	podrouter-vxlan-clusterip: pod A ─► 10.96.0.100:5201, a ClusterIP whose
//	                           one backend is pod B: DNAT on node A,
//	                           translated back on node A
//
// The ratio is the price of a Service hop over a direct one (issue 12's
// target: at least 0.9x for TCP).

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

func init() {
	register(Case{Name: "cross-node-service", Baselines: []string{"podrouter-vxlan"}, Run: runCrossNodeService})
}

var (
	xnServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	xnVIP         = netip.MustParseAddr("10.96.0.100")
)

func runCrossNodeService(ctx context.Context, opt Options) ([]Result, error) {
	var res []Result
	var errs []error
	for _, impl := range []struct {
		name   string
		target netip.Addr
	}{{"podrouter-vxlan", xnPodAddr(1)}, {"podrouter-vxlan-clusterip", xnVIP}} {
		if ctx.Err() != nil {
			break
		}
		r, err := serviceOnce(ctx, opt, impl.name, impl.target)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case=cross-node-service impl=%s error: %v\n", impl.name, err)
			errs = append(errs, fmt.Errorf("%s: %w", impl.name, err))
			continue
		}
		res = append(res, r)
	}
	if len(res) == 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

func serviceOnce(ctx context.Context, opt Options, impl string, target netip.Addr) (Result, error) {
	t, err := newXNTopo()
	if err != nil {
		return Result{}, err
	}
	defer t.close()
	t.services = []netip.Prefix{xnServiceCIDR}
	stop, err := t.podrouter("vxlan")
	if err != nil {
		return Result{}, err
	}
	defer stop()
	backends := []service.Backend{{Addr: xnPodAddr(1), Port: 5201, Ready: true, Serving: true}}
	svc := []service.Service{{Namespace: "bench", Name: "iperf", ClusterIPs: []netip.Addr{xnVIP}, Ports: []service.Port{
		{Name: "tcp", Proto: packet.ProtoTCP, Port: 5201, Backends: backends},
		{Name: "udp", Proto: packet.ProtoUDP, Port: 5201, Backends: backends}}}}
	for _, n := range t.built {
		if err := n.SetServices(svc); err != nil {
			return Result{}, err
		}
	}
	if err := t.pods[0].run("ping", "-c", "1", "-W", "5", xnPodAddr(1).String()); err != nil {
		return Result{}, fmt.Errorf("no connectivity: %w", err)
	}
	r, err := measureVia(ctx, opt, t.pods[1], t.pods[0], xnPodAddr(1).String(), target.String(), t.procs...)
	r.Impl = impl
	if err != nil {
		for i, n := range t.built {
			fmt.Fprintf(os.Stderr, "node%d service stats %+v; pod drops %v\n", i, n.Engine().ServiceStats(), portDrops(n))
		}
	}
	if st := t.built[0].Engine().ServiceStats(); target == xnVIP && st.Flows == 0 {
		return r, fmt.Errorf("no Service flow was made (stats %+v)", st)
	}
	return r, err
}

// portDrops sums a node's engine drops by reason.
func portDrops(n *node.Node) map[string]uint64 {
	m := map[string]uint64{}
	for _, p := range n.Engine().Ports() {
		for r, v := range p.Stats().Drops {
			m[r.String()] += v
		}
	}
	return m
}
