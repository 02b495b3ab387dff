package node

// Uplink egress: everything outside the cluster goes to the uplink TUN,
// and the host kernel routes it (and masquerades it, if the operator set
// iptables up for that). The node's addresses, when known, are all that
// is routed there; without them, the default routes are.
//
// With masquerade off (EgressConfig.NoMasquerade, flannel's
// --ip-masq=false) every mode becomes this one with the default routes
// always: the pods' packets reach the host with their own source address
// and the host forwards them as they are. The host must forward
// (checkForwarding), and must not masquerade them either.

import (
	"errors"
	"fmt"
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

type uplinkEgress struct {
	cfg *Config
	all bool // default routes even with NodeIPs (masquerade off)
}

var _ Egress = (*uplinkEgress)(nil)

func newUplinkEgress(env *Env) (Egress, error) {
	if env.Uplink == nil {
		return nil, errors.New("needs an uplink")
	}
	env.Logger.Info("egress through the uplink (the host kernel routes and masquerades)", zap.String("uplink", env.Uplink.Name()))
	return &uplinkEgress{cfg: env.Config}, nil
}

// newUnmasqueradedEgress is the egress of every mode with masquerade off.
func newUnmasqueradedEgress(env *Env) (Egress, error) {
	cfg := env.Config
	if env.Uplink == nil {
		return nil, errors.New("masquerade off: needs an uplink (pods leave through the host)")
	}
	if err := checkForwarding(cfg.PodCIDR6.IsValid()); err != nil {
		return nil, fmt.Errorf("masquerade off: %w", err)
	}
	env.Logger.Info("masquerade off: pods reach the outside with their own addresses, through the uplink (the host forwards)",
		zap.String("uplink", env.Uplink.Name()), zap.Stringer("egress", cfg.Egress.Mode))
	if cfg.Egress.Mode == EgressSNAT {
		env.Logger.Warn("masquerade off: --snat-addr is not used", zap.Stringer("snatAddr", cfg.Egress.SNATAddr))
	}
	return &uplinkEgress{cfg: cfg, all: true}, nil
}

func (e *uplinkEgress) UplinkPort(*engine.PortConfig) {}

func (e *uplinkEgress) Attach(*engine.Port) error { return nil }

// Routes sends the node's addresses (or, without them, everything
// outside the cluster) to the uplink.
func (e *uplinkEgress) Routes(up *engine.Port) []route.Route {
	if e.all || len(e.cfg.NodeIPs) == 0 {
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
