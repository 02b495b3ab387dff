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
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/underlay"
)

// Node is one node of a running lab: a router/node node (its engine and,
// with several nodes, its underlay) and its pods.
type Node struct {
	NodeSpec
	Node     *node.Node
	Eng      *engine.Engine     // Node's
	Underlay *underlay.Underlay // Node's; nil in a one-node lab and on wireguard
	Pods     []Pod
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

// startNode builds one node (router/node: engine and, with several nodes,
// the underlay on loopback) and its pods, and adds it to l.Nodes as soon as
// it exists (so that Close tears down a half-built node too).
func (l *Lab) startNode(spec NodeSpec) error {
	cfg := l.cfg
	log := cfg.Logger
	if len(cfg.Topology) > 1 {
		log = log.With(zap.String("node", spec.Name))
	}
	nc := node.Config{PodCIDR: spec.PodCIDR, ClusterCIDRs: []netip.Prefix{cfg.ClusterCIDR}, MTU: cfg.MTU, Logger: log}
	if spec.PodCIDR6.IsValid() {
		nc.PodCIDR6 = spec.PodCIDR6
		nc.ClusterCIDRs = append(nc.ClusterCIDRs, cfg.ClusterCIDR6)
	}
	if len(cfg.Topology) > 1 {
		key, err := node.GenerateKey() // used by wireguard only
		if err != nil {
			return err
		}
		nc.Underlay = node.UnderlayConfig{
			Backend:    cfg.Backend,
			PrivateKey: key,
			Listen:     netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0),
			MTU:        cfg.UnderlayMTU,
		}
	}
	nd, err := node.New(nc)
	if err != nil {
		return err
	}
	n := &Node{NodeSpec: spec, Node: nd, Eng: nd.Engine(), Underlay: nd.Underlay()}
	l.Nodes = append(l.Nodes, n)
	if err := nd.Start(); err != nil {
		return err
	}
	eng := n.Eng
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

// joinPeers makes every other node a peer of n (node.SetPeers: the
// underlay's table, a peer port each and routes to their podCIDRs).
func (l *Lab) joinPeers(n *Node) error {
	var peers []node.Peer
	for _, m := range l.Nodes {
		if m == n {
			continue
		}
		ann := m.Node.Backend().Announce()
		peers = append(peers, node.Peer{Name: m.Name, Addr: ann.Endpoint, VTEPMAC: ann.VTEPMAC, PublicKey: ann.PublicKey, PodCIDRs: m.Node.Config().PodCIDRs()})
	}
	return n.Node.SetPeers(peers)
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
		errs = append(errs, n.Node.Close())
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
