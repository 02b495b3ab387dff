package api

// OpServices: the node's load balancer (Services without kube-proxy) as
// the engine sees it, for `podrouter services`: each Service's frontends
// (address:port/protocol) with their backends and counters, and the load
// balancer's totals.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// OpServices lists the Services: ServicesRequest -> Services.
const OpServices Op = "services"

// ServicesHandler is a Handler that also serves OpServices; a Server whose
// Handler is not one answers services requests with ErrBadRequest.
type ServicesHandler interface {
	Handler
	// Services lists the Services of the engine's table (those req
	// selects). req is normalized (ServicesRequest.Normalize). A filter
	// that selects nothing is ErrNotFound; a node without a load balancer
	// answers Services.Enabled false, whatever the filter.
	Services(ctx context.Context, req ServicesRequest) (Services, error)
}

// ServicesRequest asks for the node's Services, all of them unless a
// field selects some (both set: the Services both select).
type ServicesRequest struct {
	// Service, when set, is "namespace/name".
	Service string `json:"service,omitempty"`
	// Addr, when valid, selects the Services with a frontend at this
	// address: a ClusterIP, an externalIP, or a node address (every
	// Service with a nodePort).
	Addr netip.Addr `json:"addr,omitzero"`
}

// Normalize checks every field; errors wrap ErrBadRequest.
func (r *ServicesRequest) Normalize() error {
	if r.Service != "" {
		ns, name, ok := strings.Cut(r.Service, "/")
		bad := func(s string) bool {
			return s == "" || len(s) > 253 || strings.ContainsFunc(s, func(c rune) bool { return c < 0x21 || c == 0x7f || c == '/' })
		}
		if !ok || bad(ns) || bad(name) {
			return fmt.Errorf("%w: services: service %.40q: want namespace/name", ErrBadRequest, r.Service)
		}
	}
	if r.Addr.IsValid() && (r.Addr.Zone() != "" || r.Addr.Is4In6()) {
		return fmt.Errorf("%w: services: address %s: want a plain IPv4 or IPv6 address", ErrBadRequest, r.Addr)
	}
	return nil
}

// Services is the reply to OpServices.
type Services struct {
	// Enabled is false when the node has no load balancer (no Service
	// CIDR configured: kube-proxy, or nothing, handles Services); the
	// rest is then empty.
	Enabled bool `json:"enabled"`
	// Services are those selected, sorted by namespace and name. Only
	// Services with a frontend appear (not headless ones, nor ports of
	// another protocol than TCP and UDP).
	Services []Service `json:"services"`
	// TotalServices and TotalFrontends count the whole table, whatever
	// the request selected; LiveFlows are the Service flow table's
	// entries (established and pending Service flows).
	TotalServices  int `json:"totalServices"`
	TotalFrontends int `json:"totalFrontends"`
	LiveFlows      int `json:"liveFlows"`
	// Stats are the load balancer's counters since the daemon started.
	Stats ServiceStats `json:"stats"`
}

// Service is one Kubernetes Service as the engine's load balancer has it.
type Service struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Frontends []Frontend `json:"frontends"`
}

// String returns "namespace/name".
func (s *Service) String() string { return s.Namespace + "/" + s.Name }

// Frontend is one address:port/protocol where clients reach a Service.
type Frontend struct {
	Addr netip.AddrPort `json:"addr"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
	// PortName is the Service port's name (empty when unnamed).
	PortName string `json:"portName,omitempty"`
	// NodePort: a node address and the port's nodePort.
	NodePort bool `json:"nodePort,omitempty"`
	// Affinity is the ClientIP session affinity's timeout (0: none).
	Affinity time.Duration `json:"affinity,omitempty"`
	// Terminating: no backend is ready, so new flows go to the serving
	// terminating ones.
	Terminating bool `json:"terminating,omitempty"`
	// Flows counts the flows started through the frontend, Rejected the
	// new flows refused for want of a usable backend.
	Flows    uint64 `json:"flows"`
	Rejected uint64 `json:"rejected"`
	// Backends are the port's endpoints of the frontend's address family,
	// then those no longer an endpoint that took flows before (Gone).
	Backends []Backend `json:"backends"`
}

// Backend is one endpoint of a frontend.
type Backend struct {
	Addr netip.AddrPort `json:"addr"`
	// The EndpointSlice's conditions; Local: the endpoint is on this node.
	Ready       bool `json:"ready"`
	Serving     bool `json:"serving"`
	Terminating bool `json:"terminating"`
	Local       bool `json:"local"`
	// Usable: new flows through this frontend may go to it (ready, else
	// serving and terminating when no backend is ready, and local when the
	// traffic policy says so).
	Usable bool `json:"usable"`
	// Gone: no longer an endpoint (listed for its Flows).
	Gone bool `json:"gone,omitempty"`
	// Flows counts the flows started to it through this frontend.
	Flows uint64 `json:"flows"`
}

// ServiceStats are the load balancer's counters (engine.ServiceStats).
type ServiceStats struct {
	// Flows: Service flows created, Hairpins of them a pod reaching
	// itself through its Service.
	Flows    uint64 `json:"flows"`
	Hairpins uint64 `json:"hairpins"`
	// NoEndpoints: new flows refused (ICMP port unreachable) for want of
	// a backend. NoPort: packets to a Service address on no Service port.
	// Unsupported: packets to a Service address of another protocol than
	// TCP and UDP. Refused: flows the Service flow table refused (full,
	// clash). Flushed: UDP flows removed when their backend left.
	NoEndpoints uint64 `json:"noEndpoints"`
	NoPort      uint64 `json:"noPort"`
	Unsupported uint64 `json:"unsupported"`
	Refused     uint64 `json:"refused"`
	Flushed     uint64 `json:"flushed"`
}

// Services lists the node's Services.
func (c *Client) Services(ctx context.Context, req ServicesRequest) (Services, error) {
	if err := req.Normalize(); err != nil {
		return Services{}, err
	}
	rep, err := c.do(ctx, request{Op: OpServices, Services: &req}, nil)
	return answer(rep.Services, err, "services reply without the services")
}

// serveServices is dispatch's OpServices.
func (s *Server) serveServices(ctx context.Context, req request, rep *reply) error {
	if req.Services == nil {
		return fmt.Errorf("%w: services without its request", ErrBadRequest)
	}
	sh, ok := s.h.(ServicesHandler)
	if !ok {
		return fmt.Errorf("%w: this daemon does not list Services", ErrBadRequest)
	}
	if err := req.Services.Normalize(); err != nil {
		return err
	}
	sv, err := sh.Services(ctx, *req.Services)
	if err != nil {
		return err
	}
	if sv.Services == nil {
		sv.Services = []Service{}
	}
	rep.Services = &sv
	return nil
}
