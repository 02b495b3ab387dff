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

import (
	"cmp"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/netstackx/ingress"
	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
)

// hostPorts is the pods table's ingress forwarder.
type hostPorts struct {
	node *node.Node         // nil: hostPorts are not published (tests without a node)
	fwd  *ingress.Forwarder // nil until the first pod with a hostPort
}

// syncHostPortsLocked sets the forwarder's rules from the attached pods'
// mappings. The caller holds p.mu.
func (p *pods) syncHostPortsLocked() {
	rules := p.hostPortRulesLocked()
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
