package engine

// Packets to the pods' gateway address: the engine answers ICMP echo
// requests itself (answerEcho); the rest go to the port attached with
// PortConfig.Gateway, when there is one, through the ordinary route lookup
// (publishLocked gives that port host routes for the gateway addresses),
// so they get the TTL, MTU and offload handling of any routed packet.
// Without such a port they are dropped as DropToGateway.

import "github.com/podrouter/podrouter/router/packet"

// toGatewayPort reports whether the packet w.pp, addressed to a gateway
// address, goes to the gateway port: there is one, it did not send the
// packet itself (no loop), and the packet is not an echo request.
func (w *worker) toGatewayPort() bool {
	gw := w.snap.gateway
	if gw == nil || gw == w.in {
		return false
	}
	echo := packet.ICMPv4Echo
	if w.pp.Version == 6 {
		echo = packet.ICMPv6EchoRequest
	}
	return w.pp.ICMPType() != echo
}
