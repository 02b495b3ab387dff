package daemon

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
// added here, which goes away with the TUN when the daemon stops. The
// node's own addresses count as in-cluster for the masquerade policy, so
// pods reach the node from their own address, as in uplink mode. The
// conntrack table is reaped every second by one goroutine; the engine
// reads its clock once per batch.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// snatReapInterval is how often expired flows are removed.
const snatReapInterval = time.Second

// Files that say whether the host forwards (sysctls); variables for tests.
var (
	ipv4ForwardSysctl = "/proc/sys/net/ipv4/ip_forward"
	ipv6ForwardSysctl = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// validateSNAT checks the snat-addr flags against the mode and the cluster.
func (c *EgressConfig) validateSNAT(cluster []netip.Prefix, bad func(string, ...any) error) error {
	if c.Mode != EgressSNAT {
		if c.SNATAddr.IsValid() || c.SNATAddr6.IsValid() {
			return bad("snat-addr: only with --egress snat (egress is %s)", c.Mode)
		}
		return nil
	}
	if a := c.SNATAddr; !a.IsValid() || !a.Is4() || !a.IsGlobalUnicast() {
		return bad("snat-addr %q: --egress snat needs a unicast IPv4 address", a)
	}
	if a := c.SNATAddr6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.Zone() != "" || !a.IsGlobalUnicast()) {
		return bad("snat-addr6 %q: want a global unicast IPv6 address", a)
	}
	for _, a := range []netip.Addr{c.SNATAddr, c.SNATAddr6} {
		for _, cc := range cluster {
			if a.IsValid() && cc.Contains(a) {
				return bad("snat-addr %s: inside cluster-cidr %s", a, cc)
			}
		}
	}
	return nil
}

// snatEgress is the running snat egress: the conntrack table the uplink
// port's engine.SNAT uses, and its reaper.
type snatEgress struct {
	table *conntrack.Table
	cfg   engine.SNAT
	t0    time.Time // the table's epoch (conntrack.Time 0), to print times
	stop  chan struct{}
	done  chan struct{}
}

// checkForwarding fails unless the host forwards the families SNAT uses:
// translated packets leave through the host's routing.
func checkForwarding(v6 bool) error {
	check := func(path, name string) error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("daemon: egress snat: read %s: %w", path, err)
		}
		if string(bytes.TrimSpace(b)) != "1" {
			return fmt.Errorf("daemon: egress snat: %s is off: the host must forward the pods' translated packets (sysctl -w %s=1)", name, name)
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

// startSNAT prepares snat egress (nil, nil in the other modes): it checks
// forwarding, that the host does not own the SNAT addresses, routes them to
// the uplink TUN, and builds the conntrack table and policy. The returned
// engine.SNAT goes into the uplink port's config. On error nothing is left
// running (the routes go with the TUN).
func (d *Daemon) startSNAT() (*snatEgress, error) {
	cfg := d.cfg
	ec := cfg.Egress
	if ec.Mode != EgressSNAT {
		return nil, nil
	}
	if err := checkForwarding(ec.SNATAddr6.IsValid()); err != nil {
		return nil, err
	}
	addrs := []conntrack.SNATAddr{{Addr: ec.SNATAddr}}
	if ec.SNATAddr6.IsValid() {
		addrs = append(addrs, conntrack.SNATAddr{Addr: ec.SNATAddr6})
	}
	for _, a := range addrs {
		if err := d.routeSNATAddr(a.Addr); err != nil {
			return nil, err
		}
	}
	cluster := slices.Clone(cfg.ClusterCIDRs)
	for _, a := range cfg.NodeIPs {
		cluster = append(cluster, netip.PrefixFrom(a, a.BitLen()))
	}
	pol, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: cluster, NodeAddr: ec.SNATAddr, NodeAddr6: ec.SNATAddr6})
	if err != nil {
		return nil, fmt.Errorf("daemon: egress snat: %w", err)
	}
	t0 := time.Now()
	tab, err := conntrack.New(conntrack.Config{SNAT: addrs, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("daemon: egress snat: %w", err)
	}
	s := &snatEgress{table: tab, t0: t0, stop: make(chan struct{}), done: make(chan struct{}),
		cfg: engine.SNAT{Table: tab, Policy: pol, Addr: ec.SNATAddr, Addr6: ec.SNATAddr6}}
	go s.reap()
	return s, nil
}

// routeSNATAddr routes a to the uplink TUN on the host, after checking
// that no interface of the host has it.
func (d *Daemon) routeSNATAddr(a netip.Addr) error {
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	have, err := d.up.nl.AddrList(nil, fam)
	if err != nil {
		return fmt.Errorf("daemon: egress snat: list addresses: %w", err)
	}
	for _, h := range have {
		if ha, ok := netip.AddrFromSlice(h.IP); ok && ha.Unmap() == a {
			return fmt.Errorf("daemon: egress snat: snat-addr %s is assigned to this host (interface index %d); want an address routed to the node but not owned by it", a, h.LinkIndex)
		}
	}
	r := &netlink.Route{LinkIndex: d.up.index, Dst: prefixNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
	if err := d.up.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("daemon: egress snat: route %s dev %s: %w", a, d.up.name, err)
	}
	return nil
}

// reap removes expired flows until close.
func (s *snatEgress) reap() {
	defer close(s.done)
	t := time.NewTicker(snatReapInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			const max = 65536
			for s.table.Reap(s.table.Now(), max) == max {
			}
		}
	}
}

// close stops the reaper; the table is garbage once the engine is closed.
func (s *snatEgress) close() {
	close(s.stop)
	<-s.done
}

// closeSNAT stops snat egress (nothing in the other modes).
func (d *Daemon) closeSNAT() {
	if d.snat != nil {
		d.snat.close()
	}
}

// snatConfig is the uplink port's SNAT config (nil in the other modes).
func (d *Daemon) snatConfig() *engine.SNAT {
	if d.snat == nil {
		return nil
	}
	return &d.snat.cfg
}

// routes are the engine's routes beyond the podCIDRs in snat mode:
// everything to the uplink (the IPv6 default only with an IPv6 podCIDR).
// The engine translates what the policy says leaves the cluster.
func (s *snatEgress) routes(cfg Config, up int32) []route.Route {
	rs := []route.Route{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: route.ToEgress(up)}}
	if cfg.PodCIDR6.IsValid() {
		rs = append(rs, route.Route{Prefix: netip.MustParsePrefix("::/0"), NextHop: route.ToEgress(up)})
	}
	return rs
}

// wall converts a table time to wall-clock time.
func (s *snatEgress) wall(t conntrack.Time) time.Time {
	return s.t0.Add(time.Duration(t) * time.Second).UTC()
}

// conntrack fills out with the table's flows (of the source addresses
// srcs only, when not nil), at most max of them, and its counters.
func (s *snatEgress) conntrack(out api.Conntrack, srcs []netip.Addr, max int, names map[netip.Addr]string) api.Conntrack {
	st := s.stats()
	out.Stats = &st
	s.table.RangeShards(s.table.Now(), func(f conntrack.Flow) bool {
		src := f.Orig.Src()
		if srcs != nil && !slices.Contains(srcs, src.Addr()) {
			return true
		}
		if len(out.Flows) >= max {
			out.Truncated = true
			return false
		}
		state := f.State.String()
		switch {
		case f.Orig.Proto() == packet.ProtoTCP: // its state machine
		case f.Assured:
			state = "assured"
		case f.SeenReply:
			state = "replied"
		default:
			state = "unreplied"
		}
		out.Flows = append(out.Flows, api.Flow{
			Proto: conntrack.ProtoName(f.Orig.Proto()), Src: src, Dst: f.Orig.Dst(),
			ReplySrc: f.Reply.Src(), ReplyDst: f.Reply.Dst(),
			State: state, Expires: s.wall(f.Expires), Pod: names[src.Addr()],
		})
		return true
	})
	return out
}

// snatEvents and snatDrops name the table's counters (fixed sets: the
// metrics' labels stay bounded).
func snatEvents(st conntrack.Stats) []egressCount {
	return []egressCount{{"inserts", st.Inserts}, {"deletes", st.Deletes}, {"expired", st.Expired}, {"early-drops", st.EarlyDrops}}
}

func snatDrops(st conntrack.Stats) []egressCount {
	var cs []egressCount
	for _, r := range []conntrack.DropReason{conntrack.DropTableFull, conntrack.DropSourceLimit, conntrack.DropPortsExhausted,
		conntrack.DropInvalid, conntrack.DropNoSNATAddr} {
		cs = append(cs, egressCount{r.String(), st.Drops[r]})
	}
	return cs
}

// stats is the API's view of the table's counters: Flows the entries,
// Inserts the flows created, Events deletes/expired/early-drops, Drops the
// packets conntrack refused by reason. (The engine counts the packets it
// dropped, no-conntrack and snat, on the ports.)
func (s *snatEgress) stats() api.Egress {
	st := s.table.Stats()
	e := api.Egress{Flows: st.Entries, Inserts: st.Inserts, Events: map[string]uint64{}, Drops: map[string]uint64{}}
	for _, c := range snatEvents(st) {
		e.Events[c.name] = c.v
	}
	for _, c := range snatDrops(st) {
		e.Drops[c.name] = c.v
	}
	return e
}

// collect is collectEgress in snat mode: the same metrics, from the table.
func (s *snatEgress) collect(ch chan<- prometheus.Metric) {
	st := s.table.Stats()
	ch <- prometheus.MustNewConstMetric(descEgressFlows, prometheus.GaugeValue, float64(st.Entries))
	for _, c := range snatEvents(st) {
		ch <- prometheus.MustNewConstMetric(descEgressEvents, prometheus.CounterValue, float64(c.v), c.name)
	}
	for _, c := range snatDrops(st) {
		ch <- prometheus.MustNewConstMetric(descEgressDrops, prometheus.CounterValue, float64(c.v), c.name)
	}
}
