package daemon

// Published hostPorts: the pods' CNI portMappings as the rules of the
// node's ingress forwarder (netstackx/ingress), kept in step with the pods
// table.
//
//	attach / detach / re-attach (under pods.mu) ─► rules from every
//	attached pod's mappings ─► [first rule: forwarder built and attached
//	to the node, node.AttachIngress] ─► Forwarder.SetRules (sockets of
//	unchanged rules and their flows stay)
//
// A mapping with a host IP listens there; without one, on every host
// address of each family the pod has an address of (0.0.0.0, ::). When two
// pods map the same socket, the older attachment keeps it.
//
// NodePorts ride on the same forwarder: the Service watcher's snapshots
// (setNodePorts) add a rule per Service port with a nodePort, listening
// on every address (0.0.0.0, ::) and dialing this node's address at that
// nodePort, which the engine's load balancer catches as a nodePort
// frontend (with its externalTrafficPolicy; for Local the rule keeps
// the client's address, ingress.Rule.KeepSource, and the engine sends the
// replies back to the forwarder). A pod's hostPort keeps a socket a nodePort also wants (the API server keeps nodePorts in their
// own range, so this is an operator's conflict), and it is logged.

import (
	"cmp"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/netstackx/ingress"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/service"
)

// hostPorts is the pods table's ingress forwarder.
type hostPorts struct {
	node      *node.Node         // nil: hostPorts are not published (tests without a node)
	fwd       *ingress.Forwarder // nil until the first pod with a hostPort
	nodePorts []ingress.Rule     // the Services' (setNodePorts)
}

// syncHostPortsLocked sets the forwarder's rules from the attached pods'
// mappings. The caller holds p.mu.
func (p *pods) syncHostPortsLocked() {
	rules := p.hostPortRulesLocked()
	taken := map[[2]any]bool{}
	for _, r := range rules {
		taken[[2]any{r.Proto, r.Listen}] = true
	}
	for _, r := range p.hp.nodePorts {
		if taken[[2]any{r.Proto, r.Listen}] {
			p.log.Warn("nodePort socket held by a pod's hostPort; nodePort not published there", zap.Stringer("rule", r))
			continue
		}
		rules = append(rules, r)
	}
	hp := &p.hp
	if hp.fwd == nil {
		if len(rules) == 0 {
			return
		}
		if hp.node == nil {
			p.log.Warn("hostPorts requested but this daemon has no ingress; not published", zap.Int("rules", len(rules)))
			return
		}
		eng := hp.node.Engine()
		fwd, err := ingress.New(ingress.Config{Gateway: eng.Gateway(), Gateway6: eng.Gateway6(), MTU: hp.node.MTU(), Logger: p.log})
		if err != nil {
			p.log.Error("ingress forwarder; hostPorts not published", zap.Error(err))
			return
		}
		if _, err := hp.node.AttachIngress(fwd); err != nil { // closes fwd on error
			p.log.Error("ingress forwarder; hostPorts not published", zap.Error(err))
			return
		}
		hp.fwd = fwd
	}
	if err := hp.fwd.SetRules(rules); err != nil {
		p.log.Error("hostPorts not published", zap.Error(err))
	}
}

// hostPortRulesLocked returns the rules of the attached pods' mappings,
// the older attachment first where two claim the same socket.
func (p *pods) hostPortRulesLocked() []ingress.Rule {
	pds := make([]*pod, 0, len(p.byID))
	for _, pd := range p.byID {
		if pd.port != nil && len(pd.rec.PortMappings) > 0 {
			pds = append(pds, pd)
		}
	}
	slices.SortFunc(pds, func(a, b *pod) int {
		return cmp.Or(cmp.Compare(a.rec.Created, b.rec.Created), cmp.Compare(a.rec.String(), b.rec.String()))
	})
	type sock struct {
		proto  uint8
		listen netip.AddrPort
	}
	owner := map[sock]api.AttachmentID{}
	var rules []ingress.Rule
	for _, pd := range pds {
		for _, r := range mappingRules(pd.rec.PortMappings, pd.rec.Addrs) {
			k := sock{r.Proto, r.Listen}
			if o, taken := owner[k]; taken {
				if o != pd.rec.AttachmentID {
					p.log.Warn("hostPort already published for another pod; skipped", zap.Stringer("pod", pd.rec.AttachmentID),
						zap.Stringer("owner", o), zap.Stringer("rule", r))
				}
				continue
			}
			owner[k] = pd.rec.AttachmentID
			rules = append(rules, r)
		}
	}
	return rules
}

// mappingRules turns a pod's mappings into rules toward its addresses.
func mappingRules(ms []api.PortMapping, addrs []netip.Addr) []ingress.Rule {
	var out []ingress.Rule
	for _, m := range ms {
		proto := uint8(packet.ProtoTCP)
		if m.Protocol == "udp" {
			proto = packet.ProtoUDP
		}
		for _, a := range addrs {
			listen := m.HostIP
			switch {
			case !listen.IsValid() && a.Is4():
				listen = netip.IPv4Unspecified()
			case !listen.IsValid():
				listen = netip.IPv6Unspecified()
			case listen.Is4() != a.Is4():
				continue // the pod has no address of the host IP's family here
			}
			out = append(out, ingress.Rule{Proto: proto, Listen: netip.AddrPortFrom(listen, m.HostPort), Target: netip.AddrPortFrom(a, m.ContainerPort)})
		}
	}
	return out
}

// setNodePorts publishes the nodePorts of svcs (the Service watcher's
// snapshot) on the ingress forwarder.
func (d *Daemon) setNodePorts(svcs []service.Service) {
	rules := nodePortRules(svcs, d.cfg.NodeIPs)
	p := &d.pods
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(rules) == 0 && len(p.hp.nodePorts) == 0 {
		return
	}
	p.hp.nodePorts = rules
	p.syncHostPortsLocked()
}

// nodePortRules returns a rule per Service port with a nodePort and per
// family of its ClusterIPs: listen on every address at the nodePort,
// dial this node's address of that family at the nodePort (the engine's
// nodePort frontend), or the ClusterIP:port when the node has none. The
// rules of externalTrafficPolicy Local Services keep their clients'
// addresses (KeepSource), when they dial the nodePort frontend: only that
// frontend sends the replies of such flows back to the forwarder.
func nodePortRules(svcs []service.Service, nodeIPs []netip.Addr) []ingress.Rule {
	var out []ingress.Rule
	seen := map[[2]any]bool{}
	for _, s := range svcs {
		for _, port := range s.Ports {
			if port.NodePort == 0 {
				continue
			}
			for _, vip := range s.ClusterIPs {
				listen := netip.AddrPortFrom(netip.IPv4Unspecified(), port.NodePort)
				if vip.Is6() {
					listen = netip.AddrPortFrom(netip.IPv6Unspecified(), port.NodePort)
				}
				k := [2]any{port.Proto, listen}
				if seen[k] {
					continue // the API server keeps nodePorts unique; be safe
				}
				seen[k] = true
				r := ingress.Rule{Proto: port.Proto, Listen: listen, Target: netip.AddrPortFrom(vip, port.Port)}
				for _, a := range nodeIPs {
					if a.Is4() == vip.Is4() {
						r.Target, r.KeepSource = netip.AddrPortFrom(a, port.NodePort), s.ExternalLocal
						break
					}
				}
				out = append(out, r)
			}
		}
	}
	return out
}
