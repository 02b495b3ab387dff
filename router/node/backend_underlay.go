package node

// The udp and vxlan backends: router/underlay's one UDP socket per node,
// batched with sendmmsg/recvmmsg and UDP GSO/GRO.

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/underlay"
)

func init() {
	for _, e := range []underlay.Encap{underlay.EncapUDP, underlay.EncapVXLAN} {
		RegisterBackend(BackendKind{
			Name: e.String(), Overhead: e.Overhead, DefaultPort: e.DefaultPort(),
			New: func(cfg UnderlayConfig, log *zap.Logger) (Backend, error) {
				u, err := underlay.New(underlay.Config{
					Encap: e, Listen: cfg.Listen, VNI: cfg.VNI, VTEPMAC: cfg.VTEPMAC,
					MTU: cfg.MTU, Interface: cfg.Interface, Logger: log,
				})
				if err != nil {
					return nil, err
				}
				if !cfg.DirectRouting {
					return underlayBackend{u}, nil
				}
				if e != underlay.EncapVXLAN {
					_ = u.Close()
					return nil, fmt.Errorf("direct routing: only with vxlan (backend is %s)", e)
				}
				h, err := openHostRoutes(cfg.Interface, u.LocalAddr().Addr(), log.Named("direct-routing"))
				if err != nil {
					_ = u.Close()
					return nil, fmt.Errorf("direct routing: %w", err)
				}
				log.Info("vxlan with direct routing: peers on the underlay's subnets through host routes, the others encapsulated",
					zap.String("interface", h.name), zap.Stringers("subnets", h.nets))
				return directBackend{underlayBackend{u}, h}, nil
			},
		})
	}
}

// underlayBackend is an underlay.Underlay as a Backend.
type underlayBackend struct{ *underlay.Underlay }

var _ Backend = underlayBackend{}

// Announce returns the endpoint and, for vxlan, the VNI and VTEP MAC.
func (u underlayBackend) Announce() Announcement {
	a := Announcement{Backend: u.Encap().String(), Endpoint: u.LocalAddr()}
	if u.Encap() == underlay.EncapVXLAN {
		a.VNI, a.VTEPMAC = u.VNI(), u.VTEPMAC()
	}
	return a
}
