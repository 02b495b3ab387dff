// Package service is podrouter's model of Kubernetes Services for the
// engine's load balancer: what the Service/EndpointSlice watcher produces
// (Service, Port, Backend) and the immutable lookup table the engine reads
// per packet (Table, built by NewTable and swapped atomically).
//
//	watcher (router/kube): Services + EndpointSlices ─► []Service
//	   ─► NewTable: validate, skip and count bad ones ─► *Table
//	   ─► engine: atomic swap; per packet Frontend(dst, port, proto)
//	      ─► first packet of a flow: Pick (affinity, ready > terminating,
//	         internalTrafficPolicy) ─► conntrack DNAT
//
// A Service here is already resolved: its ports carry their backends
// (EndpointSlice ports matched by name and protocol), so the engine never
// sees names.
package service

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

// Service is one Kubernetes Service as the engine needs it.
type Service struct {
	Namespace, Name string
	// ClusterIPs are the Service's virtual addresses (one per family);
	// empty for a headless Service (which the engine ignores).
	ClusterIPs []netip.Addr
	// ExternalIPs are answered like ClusterIPs (spec.externalIPs).
	ExternalIPs []netip.Addr
	// Affinity is sessionAffinity ClientIP's timeout; 0: no affinity.
	Affinity time.Duration
	// InternalLocal is internalTrafficPolicy: Local (ClusterIP traffic
	// goes to this node's backends only, or nowhere).
	InternalLocal bool
	// ExternalLocal is externalTrafficPolicy: Local (NodePort traffic goes
	// to this node's backends only and keeps the client's address).
	ExternalLocal bool
	Ports         []Port
}

// Port is one port of a Service, with its backends.
type Port struct {
	Name string
	// Proto is packet.ProtoTCP or packet.ProtoUDP.
	Proto    uint8
	Port     uint16
	NodePort uint16 // 0: none
	Backends []Backend
}

// Backend is one endpoint address and port of a Service port.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Local: the endpoint's nodeName is this node.
	Local bool
	// EndpointSlice conditions. Ready backends take new flows; when a port
	// has none, serving and terminating ones do (kube-proxy's
	// ProxyTerminatingEndpoints). Others take none.
	Ready, Serving, Terminating bool
}

// String returns "namespace/name".
func (s *Service) String() string { return s.Namespace + "/" + s.Name }

// ProtoName returns "TCP", "UDP" or the protocol number.
func ProtoName(p uint8) string {
	switch p {
	case packet.ProtoTCP:
		return "TCP"
	case packet.ProtoUDP:
		return "UDP"
	}
	return fmt.Sprint(p)
}
