package main

// The daemon's egress flags (registered by runDaemon): how pods reach the
// outside, and the egress forwarder's limits.

import (
	"flag"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/daemon"
)

// egressModeFlag holds --egress.
type egressModeFlag struct{ m *daemon.EgressMode }

func (f egressModeFlag) String() string {
	if f.m == nil {
		return daemon.EgressNetstack.String()
	}
	return f.m.String()
}

func (f egressModeFlag) Set(s string) error {
	m, err := daemon.ParseEgressMode(s)
	if err != nil {
		return err
	}
	*f.m = m
	return nil
}

// snatAddrFlag holds --snat-addr or --snat-addr6: one address, checked
// for its family when parsed (the daemon's config checks the rest).
type snatAddrFlag struct {
	a  *netip.Addr
	v6 bool
}

func (f snatAddrFlag) String() string { return flagText(f.a, "") }

func (f snatAddrFlag) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q: want an IP address", s)
	}
	if a.Is4() == f.v6 || a.Is4In6() {
		fam := "IPv4"
		if f.v6 {
			fam = "IPv6"
		}
		return fmt.Errorf("%q: want an %s address", s, fam)
	}
	*f.a = a
	return nil
}

// ipMasqFlag holds --ip-masq (flannel's name) as e.NoMasquerade's
// negation.
type ipMasqFlag struct{ e *daemon.EgressConfig }

func (f ipMasqFlag) String() string   { return strconv.FormatBool(f.e == nil || !f.e.NoMasquerade) }
func (f ipMasqFlag) IsBoolFlag() bool { return true }
func (f ipMasqFlag) Set(s string) error {
	on, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q: want true or false", s)
	}
	f.e.NoMasquerade = !on
	return nil
}

// registerEgressFlags adds the egress flags to fs, filling e.
func registerEgressFlags(fs *flag.FlagSet, e *daemon.EgressConfig) {
	fs.Var(ipMasqFlag{e}, "ip-masq", "flannel's --ip-masq: translate pods' traffic to the outside (--egress decides how); false: it leaves through the uplink with the pods' own addresses and the host forwards it (--kube: overrides net-conf's masquerade); default true")
	fs.Var(egressModeFlag{&e.Mode}, "egress", "how pods reach addresses outside the cluster: netstack (flows re-originated from the daemon's own sockets, no iptables) uplink (routed to the uplink TUN; the host kernel masquerades) or snat (source NAT in the engine to --snat-addr, routed to the uplink TUN; the host forwards); default netstack")
	fs.Var(snatAddrFlag{a: &e.SNATAddr}, "snat-addr", "snat egress: the IPv4 address pods' flows leave with; routed to this node but not assigned to it (the daemon routes it to the uplink TUN); required with --egress snat")
	fs.Var(snatAddrFlag{a: &e.SNATAddr6, v6: true}, "snat-addr6", "snat egress: the IPv6 address pods' IPv6 flows leave with (optional; without it they leave untranslated)")
	fs.IntVar(&e.MaxFlows, "egress-max-flows", 0, "netstack egress: most live flows in total (0: 65536)")
	fs.IntVar(&e.MaxFlowsPerPod, "egress-max-flows-per-pod", 0, "netstack egress: most live flows of one pod address (0: 4096)")
	fs.IntVar(&e.MaxDials, "egress-max-dials", 0, "netstack egress: most TCP dials in flight in total (0: 4096)")
	fs.IntVar(&e.MaxDialsPerPod, "egress-max-dials-per-pod", 0, "netstack egress: most TCP dials in flight of one pod address (0: 256)")
	fs.DurationVar(&e.DialTimeout, "egress-dial-timeout", 0, "netstack egress: how long a TCP dial may wait for the remote's answer (0: 30s)")
	fs.Var(prefixListFlag(&e.UplinkRoutes), "uplink-route", "netstack egress: a prefix outside the cluster that pods reach through the uplink (the host kernel) instead, repeatable; the node's addresses always are")
}
