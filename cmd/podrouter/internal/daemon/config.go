package daemon

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/node"
)

// Defaults.
const (
	DefaultStateDir = "/var/lib/podrouter"
	DefaultUplink   = "podr0"
	DefaultMTU      = node.DefaultMTU
)

// DefaultMetricsAddr is where the command's --metrics-addr points by
// default: the node's loopback, port 9602.
var DefaultMetricsAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 9602)

// ErrConfig is wrapped by every Config.Validate error (the node's too).
var ErrConfig = node.ErrConfig

// The node's egress and underlay configuration, as the daemon's flags set
// them (router/node).
type (
	EgressConfig   = node.EgressConfig
	EgressMode     = node.EgressMode
	UnderlayConfig = node.UnderlayConfig
)

// Egress modes (node.RegisterEgress has the list; these ship).
const (
	EgressNetstack = node.EgressNetstack
	EgressUplink   = node.EgressUplink
	EgressSNAT     = node.EgressSNAT
)

// ParseEgressMode parses a --egress value.
func ParseEgressMode(s string) (EgressMode, error) { return node.ParseEgressMode(s) }

// Config is the node daemon's configuration, validated by Validate (New
// calls it). The zero value of an optional field means its default.
type Config struct {
	// PodCIDR is the node's IPv4 podCIDR (required); its first address is
	// the pods' gateway. PodCIDR6 is the optional IPv6 podCIDR.
	PodCIDR, PodCIDR6 netip.Prefix
	// ClusterCIDRs is the in-cluster address space (default: the
	// podCIDRs). In-cluster destinations with no route are unreachable.
	ClusterCIDRs []netip.Prefix
	// NodeIPs are the node's own addresses. When given, the engine routes
	// only them to the uplink and the host's podCIDR routes use the first
	// of each family as their source; when empty in uplink egress mode,
	// the engine's default routes (0.0.0.0/0, ::/0) go to the uplink.
	NodeIPs []netip.Addr
	// StateDir keeps the attachment records (default DefaultStateDir).
	StateDir string
	// Socket is the local API socket (default api.DefaultSocket).
	Socket string
	// Uplink is the name of the host-side TUN (default DefaultUplink).
	Uplink string
	// MTU is the pods' default MTU and the uplink's MTU (default: the
	// underlay's inner MTU with an underlay, else 1500: node.PodMTU).
	MTU int
	// ShutdownTimeout bounds Close's wait for requests in progress
	// (default 5s).
	ShutdownTimeout time.Duration
	// APIAllowUID overrides the only peer uid the API serves (default 0).
	APIAllowUID *uint32
	// MetricsAddr is where /metrics, /healthz and /readyz are served over
	// HTTP (port 0: a free port, see Daemon.MetricsAddr). The zero value
	// serves none; the command's flag defaults to DefaultMetricsAddr. An
	// unspecified address (0.0.0.0, ::) listens on every address.
	MetricsAddr netip.AddrPort
	// MetricsPerPeer gives every peer node its own port and underlay drop
	// series. The default sums the peers, so that a node's series do not
	// grow with the cluster (router/metrics Options.PerPeer).
	MetricsPerPeer bool
	// Egress is how pods reach the outside (router/node); the zero value
	// is netstack egress with the default limits.
	Egress EgressConfig
	// Underlay carries traffic to the other nodes (router/node); the zero
	// value is none (a single node).
	Underlay UnderlayConfig
	// Services turns the engine's load balancer on (router/node): the
	// Kubernetes mode feeds it the cluster's Services. The zero value is
	// off (Services, if any, are kube-proxy's).
	Services node.ServicesConfig
	// Policy turns NetworkPolicy enforcement on (router/node): the
	// Kubernetes mode feeds it the cluster's policies. The zero value is
	// off.
	Policy node.PolicyConfig
	// Logger (default zap.NewNop()).
	Logger *zap.Logger

	// hookBeforeRoutes, when set (tests), runs in New after the metrics
	// server started and before the node's routes are set.
	hookBeforeRoutes func(*Daemon)
}

// nodeConfig is the node's part of c.
func (c *Config) nodeConfig() node.Config {
	return node.Config{
		PodCIDR: c.PodCIDR, PodCIDR6: c.PodCIDR6, ClusterCIDRs: c.ClusterCIDRs, NodeIPs: c.NodeIPs, MTU: c.MTU,
		Uplink: node.UplinkConfig{Name: c.Uplink}, Egress: c.Egress, Underlay: c.Underlay, Services: c.Services, Policy: c.Policy, Logger: c.Logger,
	}
}

// Validate fills in defaults and checks every field, naming the bad one.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	if c.Egress.Mode == "" {
		c.Egress.Mode = EgressNetstack
	}
	if c.Uplink == "" {
		c.Uplink = DefaultUplink
	}
	if c.MTU == 0 && c.Underlay.Backend == "" {
		c.MTU = DefaultMTU // with an underlay, the node derives it
	}
	nc := c.nodeConfig()
	if err := nc.Validate(); err != nil {
		return err
	}
	c.ClusterCIDRs, c.Logger = nc.ClusterCIDRs, nc.Logger
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(c.StateDir) {
		return bad("state-dir %q: want an absolute path", c.StateDir)
	}
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return bad("socket %q: want an absolute path", c.Socket)
	}
	if c.MetricsAddr.IsValid() {
		if a := c.MetricsAddr.Addr(); a.Zone() != "" || a.Is4In6() {
			return bad("metrics-addr %s: want a plain IPv4 or IPv6 address and a port", c.MetricsAddr)
		}
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	return nil
}

// PodCIDRs returns the configured podCIDRs, IPv4 first.
func (c *Config) PodCIDRs() []netip.Prefix {
	nc := c.nodeConfig()
	return nc.PodCIDRs()
}
