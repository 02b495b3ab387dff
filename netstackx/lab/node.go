package lab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

// Node is one node of a running lab: an engine, its underlay (nil in a
// one-node lab) and its pods.
type Node struct {
	NodeSpec
	Eng      *engine.Engine
	Underlay *underlay.Underlay
	Pods     []Pod
	rx       *engine.Port
	peers    map[string]*engine.Port // by peer node name
}

// Lab is a running lab.
type Lab struct {
	cfg   Config
	Nodes []*Node
	pods  []Pod
	node  map[Pod]*Node
	wg    sync.WaitGroup
	lns   []io.Closer
	env   *netnsEnv // netns pods' shared state; nil for virtual pods
}

// Pods returns every pod, node by node.
func (l *Lab) Pods() []Pod { return l.pods }

// NodeOf returns the node a pod runs on.
func (l *Lab) NodeOf(p Pod) *Node { return l.node[p] }

// Config returns the validated configuration.
func (l *Lab) Config() Config { return l.cfg }

// Start builds the nodes, their underlays and pods, joins every node to
// every other (peer ports and routes to their podCIDRs) and starts the
// pods' servers. Close undoes it; on error Start undoes what it did.
func Start(cfg Config) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Lab{cfg: cfg, node: map[Pod]*Node{}}
	success := false
	defer func() {
		if !success {
			l.Close()
		}
	}()
	if cfg.PodMode == Netns {
		env, err := newNetnsEnv(cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("lab: netns pods: %w", err)
		}
		l.env = env
	}
	for _, spec := range cfg.Topology {
		if err := l.startNode(spec); err != nil {
			return nil, fmt.Errorf("lab: node %s: %w", spec.Name, err)
		}
	}
	if len(l.Nodes) > 1 {
		for _, n := range l.Nodes {
			if err := l.joinPeers(n); err != nil {
				return nil, fmt.Errorf("lab: node %s: %w", n.Name, err)
			}
		}
	}
	for _, p := range l.pods {
		if err := l.serve(p); err != nil {
			return nil, fmt.Errorf("lab: %s: %w", p.Name(), err)
		}
	}
	success = true
	return l, nil
}

// startNode builds one node's engine, underlay (with several nodes) and
// pods, and adds it to l.Nodes as soon as it has an engine (so that Close
// tears down a half-built node too).
func (l *Lab) startNode(spec NodeSpec) error {
	cfg := l.cfg
	log := cfg.Logger
	if len(cfg.Topology) > 1 {
		log = log.With(zap.String("node", spec.Name))
	}
	ecfg := engine.Config{PodCIDR: spec.PodCIDR, ClusterCIDRs: []netip.Prefix{cfg.ClusterCIDR}, Logger: log}
	if spec.PodCIDR6.IsValid() {
		ecfg.PodCIDR6 = spec.PodCIDR6
		ecfg.ClusterCIDRs = append(ecfg.ClusterCIDRs, cfg.ClusterCIDR6)
	}
	eng, err := engine.New(ecfg)
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	n := &Node{NodeSpec: spec, Eng: eng, peers: map[string]*engine.Port{}}
	l.Nodes = append(l.Nodes, n)
	if len(cfg.Topology) > 1 {
		u, err := underlay.New(underlay.Config{
			Encap:  cfg.Backend,
			Listen: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0),
			MTU:    cfg.UnderlayMTU,
			Logger: log,
		})
		if err != nil {
			return err
		}
		n.Underlay = u
		if n.rx, err = eng.AddPort(u.RxDevice(), engine.PortConfig{Name: "underlay", Kind: engine.KindPeer, MTU: u.MTU()}); err != nil {
			return fmt.Errorf("attach the underlay: %w", err)
		}
	}
	a4, a6 := eng.Gateway(), eng.Gateway6()
	for i := range spec.Pods {
		a4 = a4.Next()
		name := fmt.Sprintf("pod-%d", i)
		if len(cfg.Topology) > 1 {
			name = spec.Name + "-" + name
		}
		ps := podSpec{
			Name: name, Addr: netip.PrefixFrom(a4, spec.PodCIDR.Bits()), Gateway: eng.Gateway(), MTU: cfg.MTU,
		}
		if spec.PodCIDR6.IsValid() {
			a6 = a6.Next()
			ps.Addr6, ps.Gateway6 = netip.PrefixFrom(a6, spec.PodCIDR6.Bits()), eng.Gateway6()
		}
		p, err := l.newPod(n, ps)
		if err != nil {
			return err
		}
		n.Pods = append(n.Pods, p)
		l.pods = append(l.pods, p)
		l.node[p] = n
	}
	return nil
}

// joinPeers makes every other node a peer of n: in n's underlay table, a
// peer port on n's engine, and routes of its podCIDRs to that port.
func (l *Lab) joinPeers(n *Node) error {
	var routes []route.Route
	for _, m := range l.Nodes {
		if m == n {
			continue
		}
		cidrs := []netip.Prefix{m.PodCIDR}
		if m.PodCIDR6.IsValid() {
			cidrs = append(cidrs, m.PodCIDR6)
		}
		if err := n.Underlay.UpsertPeer(underlay.Peer{
			Name: m.Name, Addr: m.Underlay.LocalAddr(), VTEPMAC: m.Underlay.VTEPMAC(), PodCIDRs: cidrs,
		}); err != nil {
			return err
		}
		p, err := n.Eng.AddPort(n.Underlay.PeerDevice(m.Name), engine.PortConfig{
			Name: "peer-" + m.Name, Kind: engine.KindPeer, MTU: n.Underlay.MTU(),
		})
		if err != nil {
			return fmt.Errorf("attach peer %s: %w", m.Name, err)
		}
		n.peers[m.Name] = p
		for _, c := range cidrs {
			routes = append(routes, route.Route{Prefix: c, NextHop: route.ToPeer(p.Index())})
		}
	}
	return n.Eng.SetRoutes(routes)
}

// serve starts the pod's TCP echo, UDP echo and TCP discard servers.
func (l *Lab) serve(pod Pod) error {
	echo, err := pod.ListenTCP(echoPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, echo)
	sink, err := pod.ListenTCP(sinkPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, sink)
	uecho, err := pod.ListenUDP(echoPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, uecho)
	accept := func(ln net.Listener, handle func(net.Conn)) {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}
	l.wg.Add(3)
	go accept(echo, func(c net.Conn) { _, _ = io.Copy(c, c) })
	go accept(sink, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := uecho.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = uecho.WriteTo(buf[:n], from)
		}
	}()
	return nil
}

// Close stops everything the lab started: servers, engines, underlays,
// pods (netns pods' namespaces are deleted). Idempotent.
func (l *Lab) Close() {
	for _, c := range l.lns {
		_ = c.Close()
	}
	l.lns = nil
	var errs []error
	for _, n := range l.Nodes {
		errs = append(errs, n.Eng.Close())
		if n.Underlay != nil {
			errs = append(errs, n.Underlay.Close())
		}
	}
	for _, p := range l.pods {
		errs = append(errs, p.Close())
	}
	l.wg.Wait()
	if l.env != nil {
		errs = append(errs, l.env.close())
	}
	if err := errors.Join(errs...); err != nil {
		l.cfg.Logger.Warn("lab teardown", zap.Error(err))
	}
	l.Nodes, l.pods = nil, nil
}
