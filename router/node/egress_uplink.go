package node

// Uplink egress: everything outside the cluster goes to the uplink TUN,
// and the host kernel routes it (and masquerades it, if the operator set
// iptables up for that). The node's addresses, when known, are all that
// is routed there; without them, the default routes are.

import (
	"errors"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/route"
)

func init() {
	RegisterEgress(EgressKind{Mode: EgressUplink, New: newUplinkEgress})
}

type uplinkEgress struct{ cfg *Config }

var _ Egress = (*uplinkEgress)(nil)

func newUplinkEgress(env *Env) (Egress, error) {
	if env.Uplink == nil {
		return nil, errors.New("needs an uplink")
	}
	env.Logger.Info("egress through the uplink (the host kernel routes and masquerades)", zap.String("uplink", env.Uplink.Name()))
	return &uplinkEgress{cfg: env.Config}, nil
}

func (e *uplinkEgress) UplinkPort(*engine.PortConfig) {}

func (e *uplinkEgress) Attach(*engine.Port) error { return nil }

// Routes sends the node's addresses (or, without them, everything
// outside the cluster) to the uplink.
func (e *uplinkEgress) Routes(up *engine.Port) []route.Route {
	if len(e.cfg.NodeIPs) == 0 {
		return DefaultRoutes(e.cfg, up.Index())
	}
	return HostRoutes(e.cfg.NodeIPs, up.Index())
}

func (e *uplinkEgress) Ready() error { return nil }

func (e *uplinkEgress) Stats() *api.Egress { return nil }

func (e *uplinkEgress) Flows([]netip.Addr, int) ([]api.Flow, bool) { return nil, false }

func (e *uplinkEgress) Collect(chan<- prometheus.Metric) {}

func (e *uplinkEgress) Close() error { return nil }

func (e *uplinkEgress) ResetSource(netip.Addr) int { return 0 }
