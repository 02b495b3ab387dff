package node

// snat egress: source NAT in the engine, on the uplink port.
//
//	pod ─► engine: route 0.0.0.0/0 (::/0) ─► uplink port with engine.SNAT:
//	    conntrack + rewrite to <snat-addr>:<port> ─► podr0 ─► host kernel
//	    forwards (net.ipv4.ip_forward=1) ─► out
//	outside ─► host kernel: route <snat-addr>/32 dev podr0 ─► engine reads
//	    it on the uplink port ─► reply of a tracked flow? rewrite back to
//	    the pod ─► pod; else dropped (engine drop reason no-conntrack)
//
// Design notes. The SNAT address must be routed to the node (a cloud
// secondary address, or a route on the upstream router) but not assigned
// to any of its interfaces: the host forwards the translated packets as
// routed traffic and routes the replies to podr0 through the /32 route
// added here, which goes away with the TUN when the node stops. The
// node's own addresses count as in-cluster for the masquerade policy, so
// pods reach the node from their own address, as in uplink mode. The
// conntrack table is reaped every second by one goroutine; the engine
// reads its clock once per batch.

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

func init() {
	RegisterEgress(EgressKind{Mode: EgressSNAT, Validate: validateSNAT, New: newSNATEgress})
}

// snatReapInterval is how often expired flows are removed.
const snatReapInterval = time.Second

// Files that say whether the host forwards (sysctls); variables for tests.
var (
	ipv4ForwardSysctl = "/proc/sys/net/ipv4/ip_forward"
	ipv6ForwardSysctl = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// validateSNAT checks the snat-addr flags against the cluster.
func validateSNAT(c *EgressConfig, cluster []netip.Prefix) error {
	if !c.SNATAddr.IsValid() {
		if c.NoMasquerade && !c.SNATAddr6.IsValid() {
			return nil // nothing is translated: the address would go unused
		}
		return errors.New("snat-addr: required with --egress snat (the unicast IPv4 address pods' flows leave with)")
	}
	if a := c.SNATAddr; !a.Is4() || !a.IsGlobalUnicast() {
		return fmt.Errorf("snat-addr %s: --egress snat needs a unicast IPv4 address", a)
	}
	if a := c.SNATAddr6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.Zone() != "" || !a.IsGlobalUnicast()) {
		return fmt.Errorf("snat-addr6 %s: want a global unicast IPv6 address", a)
	}
	for _, a := range []netip.Addr{c.SNATAddr, c.SNATAddr6} {
		for _, cc := range cluster {
			if a.IsValid() && cc.Contains(a) {
				return fmt.Errorf("snat-addr %s: inside cluster-cidr %s", a, cc)
			}
		}
	}
	return nil
}

// snatEgress is the running snat egress: the conntrack table the uplink
// port's engine.SNAT uses, and its reaper.
type snatEgress struct {
	cfg  *Config
	snat engine.SNAT
	t0   time.Time // the table's epoch (conntrack.Time 0), to print times
	stop chan struct{}
	done chan struct{}
}

var _ Egress = (*snatEgress)(nil)

// checkForwarding fails unless the host forwards the families SNAT uses:
// translated packets leave through the host's routing.
func checkForwarding(v6 bool) error {
	check := func(path, name string) error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if string(bytes.TrimSpace(b)) != "1" {
			return fmt.Errorf("%s is off: the host must forward the pods' packets (sysctl -w %s=1)", name, name)
		}
		return nil
	}
	if err := check(ipv4ForwardSysctl, "net.ipv4.ip_forward"); err != nil {
		return err
	}
	if v6 {
		return check(ipv6ForwardSysctl, "net.ipv6.conf.all.forwarding")
	}
	return nil
}

// newSNATEgress checks forwarding and that the host does not own the SNAT
// addresses, routes them to the uplink TUN, and builds the conntrack table
// and policy; UplinkPort hands them to the uplink port. On error nothing
// is left running (the routes go with the TUN).
func newSNATEgress(env *Env) (Egress, error) {
	cfg := env.Config
	ec := cfg.Egress
	if env.Uplink == nil {
		return nil, errors.New("needs an uplink")
	}
	if err := checkForwarding(ec.SNATAddr6.IsValid()); err != nil {
		return nil, err
	}
	addrs := []conntrack.SNATAddr{{Addr: ec.SNATAddr}}
	if ec.SNATAddr6.IsValid() {
		addrs = append(addrs, conntrack.SNATAddr{Addr: ec.SNATAddr6})
	}
	for _, a := range addrs {
		if err := env.Uplink.routeForeignAddr(a.Addr); err != nil {
			return nil, err
		}
	}
	cluster := slices.Clone(cfg.ClusterCIDRs)
	for _, a := range cfg.NodeIPs {
		cluster = append(cluster, netip.PrefixFrom(a, a.BitLen()))
	}
	pol, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: cluster, NodeAddr: ec.SNATAddr, NodeAddr6: ec.SNATAddr6})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	tab, err := conntrack.New(conntrack.Config{SNAT: addrs, Logger: env.Logger})
	if err != nil {
		return nil, err
	}
	s := &snatEgress{cfg: cfg, t0: t0, stop: make(chan struct{}), done: make(chan struct{}),
		snat: engine.SNAT{Table: tab, Policy: pol, Addr: ec.SNATAddr, Addr6: ec.SNATAddr6}}
	go s.reap()
	env.Logger.Info("egress through the uplink with source NAT in the engine", zap.String("uplink", env.Uplink.Name()),
		zap.Stringer("snatAddr", ec.SNATAddr), zap.Stringer("snatAddr6", ec.SNATAddr6))
	return s, nil
}

// reap removes expired flows until Close.
func (s *snatEgress) reap() {
	defer close(s.done)
	t := time.NewTicker(snatReapInterval)
	defer t.Stop()
	table := s.snat.Table
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			const max = 65536
			for table.Reap(table.Now(), max) == max {
			}
		}
	}
}

// UplinkPort gives the uplink port the SNAT.
func (s *snatEgress) UplinkPort(pc *engine.PortConfig) { pc.SNAT = &s.snat }

func (s *snatEgress) Attach(*engine.Port) error { return nil }

// Routes sends everything to the uplink (the IPv6 default only with an
// IPv6 podCIDR); the engine translates what the policy says leaves the
// cluster.
func (s *snatEgress) Routes(up *engine.Port) []route.Route { return DefaultRoutes(s.cfg, up.Index()) }

func (s *snatEgress) Ready() error { return nil }

// Close stops the reaper; the table is garbage once the engine is closed.
func (s *snatEgress) Close() error {
	close(s.stop)
	<-s.done
	return nil
}

// wall converts a table time to wall-clock time.
func (s *snatEgress) wall(t conntrack.Time) time.Time {
	return s.t0.Add(time.Duration(t) * time.Second).UTC()
}

// Flows lists the table's flows.
func (s *snatEgress) Flows(srcs []netip.Addr, max int) (flows []api.Flow, truncated bool) {
	table := s.snat.Table
	flows = []api.Flow{}
	table.RangeShards(table.Now(), func(f conntrack.Flow) bool {
		src := f.Orig.Src()
		if srcs != nil && !slices.Contains(srcs, src.Addr()) {
			return true
		}
		if len(flows) >= max {
			truncated = true
			return false
		}
		flows = append(flows, api.Flow{
			Proto: conntrack.ProtoName(f.Orig.Proto()), Src: src, Dst: f.Orig.Dst(),
			ReplySrc: f.Reply.Src(), ReplyDst: f.Reply.Dst(), State: flowState(f), Expires: s.wall(f.Expires),
		})
		return true
	})
	return flows, truncated
}

// flowState names a conntrack flow's state for the API: TCP's, or
// unreplied/replied/assured.
func flowState(f conntrack.Flow) string {
	switch {
	case f.Orig.Proto() == packet.ProtoTCP: // its state machine
		return f.State.String()
	case f.Assured:
		return "assured"
	case f.SeenReply:
		return "replied"
	}
	return "unreplied"
}

// Stats is the API's view of the table's counters: Flows the entries,
// Inserts the flows created, Events deletes/expired/early-drops, Drops the
// packets conntrack refused by reason. (The engine counts the packets it
// dropped, no-conntrack and snat, on the ports.)
func (s *snatEgress) Stats() *api.Egress {
	return tableStats(s.snat.Table, conntrack.DropTableFull, conntrack.DropSourceLimit, conntrack.DropPortsExhausted,
		conntrack.DropInvalid, conntrack.DropNoSNATAddr)
}

// tableStats is the API's view of a conntrack table's counters, with the
// drop reasons listed (each, zero or not).
func tableStats(t *conntrack.Table, reasons ...conntrack.DropReason) *api.Egress {
	st := t.Stats()
	events := map[string]uint64{"inserts": st.Inserts, "deletes": st.Deletes, "expired": st.Expired, "early-drops": st.EarlyDrops}
	drops := map[string]uint64{}
	for _, r := range reasons {
		drops[r.String()] = st.Drops[r]
	}
	return &api.Egress{Flows: st.Entries, Inserts: st.Inserts, Events: events, Drops: drops}
}

// Collect sends the table's counters as the egress metrics.
func (s *snatEgress) Collect(ch chan<- prometheus.Metric) { SendEgressMetrics(ch, *s.Stats(), false) }

// ResetSource ends nothing: the table's entries of a gone pod expire.
func (s *snatEgress) ResetSource(netip.Addr) int { return 0 }
