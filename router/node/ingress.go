package node

// Ingress: published ports (NodePort, hostPort) without iptables. The
// forwarder (netstackx/ingress; router/ imports no gVisor) listens on host
// sockets and re-originates each flow from the pods' gateway address
// through its own engine port, which receives the replies addressed to the
// gateway (engine.PortConfig.Gateway):
//
//	client ─► host socket ─► ingress port (netstack) ─► engine ─► Target
//	          (ClusterIP: service stage; pod IP: its port or a peer)
//	replies to the gateway address ─► engine ─► ingress port ─► client

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link"
)

// IngressPortName is the name of the ingress forwarder's port.
const IngressPortName = "ingress"

// AttachIngress attaches dev, an ingress forwarder (L3, built with the
// node's gateway addresses as its sources and the node's MTU, MTU), as the
// node's gateway port. The engine owns dev from now on and closes it when
// the node closes. A node has at most one.
func (n *Node) AttachIngress(dev link.Device) (*engine.Port, error) {
	if n.closed.Load() {
		_ = dev.Close()
		return nil, ErrClosed
	}
	p, err := n.eng.AddPort(dev, engine.PortConfig{Name: IngressPortName, Kind: engine.KindNetstack, MTU: n.cfg.MTU, Gateway: true})
	if err != nil {
		_ = dev.Close()
		return nil, fmt.Errorf("node: ingress port: %w", err)
	}
	n.log.Info("ingress attached", zap.String("port", p.Name()), zap.Stringer("gateway", n.eng.Gateway()),
		zap.Stringer("gateway6", n.eng.Gateway6()))
	return p, nil
}
