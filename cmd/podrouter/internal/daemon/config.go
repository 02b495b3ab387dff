package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
)

// Defaults.
const (
	DefaultStateDir = "/var/lib/podrouter"
	DefaultUplink   = "podr0"
	DefaultMTU      = 1500
)

// DefaultMetricsAddr is where the command's --metrics-addr points by
// default: the node's loopback, port 9602.
var DefaultMetricsAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 9602)

// ErrConfig is wrapped by every Config.Validate error.
var ErrConfig = errors.New("daemon: invalid config")

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
	// MTU is the pods' default MTU and the uplink's MTU (default 1500).
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
	// Egress is how pods reach the outside (egress.go); the zero value is
	// netstack egress with the default limits.
	Egress EgressConfig
	// Underlay carries traffic to the other nodes (peers.go); the zero
	// value is none (a single node).
	Underlay UnderlayConfig
	// Logger (default zap.NewNop()).
	Logger *zap.Logger

	// hookBeforeRoutes, when set (tests), runs in New after the metrics
	// server started and before the engine's routes are set.
	hookBeforeRoutes func(*Daemon)
}

// Validate fills in defaults and checks every field, naming the bad one.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	if !c.PodCIDR.IsValid() || !c.PodCIDR.Addr().Is4() || c.PodCIDR != c.PodCIDR.Masked() || c.PodCIDR.Bits() > 30 {
		return bad("pod-cidr %q: want a masked IPv4 prefix of at most /30", c.PodCIDR)
	}
	if c.PodCIDR6.IsValid() && (!c.PodCIDR6.Addr().Is6() || c.PodCIDR6 != c.PodCIDR6.Masked() || c.PodCIDR6.Bits() > 126) {
		return bad("pod-cidr6 %q: want a masked IPv6 prefix of at most /126", c.PodCIDR6)
	}
	pods := c.PodCIDRs()
	if len(c.ClusterCIDRs) == 0 {
		c.ClusterCIDRs = pods
	}
	for _, cc := range c.ClusterCIDRs {
		if !cc.IsValid() || cc != cc.Masked() {
			return bad("cluster-cidr %q: want a masked prefix", cc)
		}
	}
	for _, p := range pods {
		inside := false
		for _, cc := range c.ClusterCIDRs {
			if cc.Addr().BitLen() == p.Addr().BitLen() && cc.Bits() <= p.Bits() && cc.Contains(p.Addr()) {
				inside = true
			}
		}
		if !inside {
			return bad("pod-cidr %s: not inside any cluster-cidr %v", p, c.ClusterCIDRs)
		}
	}
	for _, a := range c.NodeIPs {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			return bad("node-ip %q: want a plain IPv4 or IPv6 address", a)
		}
		for _, cc := range c.ClusterCIDRs {
			if cc.Contains(a) {
				return bad("node-ip %s: inside cluster-cidr %s", a, cc)
			}
		}
	}
	if err := c.Egress.validate(c.ClusterCIDRs, bad); err != nil {
		return err
	}
	if err := c.Underlay.validate(bad); err != nil {
		return err
	}
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
	if c.Uplink == "" {
		c.Uplink = DefaultUplink
	}
	if err := api.ValidIfName(c.Uplink); err != nil {
		return bad("uplink: %v", err)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return bad("mtu %d: out of range 1280..65535", c.MTU)
	}
	if c.MetricsAddr.IsValid() {
		if a := c.MetricsAddr.Addr(); a.Zone() != "" || a.Is4In6() {
			return bad("metrics-addr %s: want a plain IPv4 or IPv6 address and a port", c.MetricsAddr)
		}
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// PodCIDRs returns the configured podCIDRs, IPv4 first.
func (c *Config) PodCIDRs() []netip.Prefix {
	out := []netip.Prefix{c.PodCIDR}
	if c.PodCIDR6.IsValid() {
		out = append(out, c.PodCIDR6)
	}
	return out
}
