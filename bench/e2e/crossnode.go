package main

// Case cross-node: two nodes, one pod on each, built four ways in one run.
// The nodes are network namespaces joined by a veth (the underlay,
// 192.168.251.0/24, MTU 1500); pod A (10.251.1.2, node A) sends to pod B
// (10.251.2.2, node B).
//
//	host-gw:         pod ═veth═ cni0 ─ route 10.251.2.0/24 via 192.168.251.2 ─ ul0 ═══ ul0 ─ cni0 ═veth═ pod
//	                 (no encapsulation: flannel's host-gw, a VPC router's job)
//	kernel-vxlan:    pod ═veth═ cni0 ─ flannel.1 (vxlan id 1, 8472, static FDB/neigh) ─ ul0 ═══ ...
//	                 (flannel's vxlan backend, the baseline)
//	podrouter-udp:   pod eth0 (TAP) ─ engine ─ underlay udp 192.168.251.1:8285 ─ ul0 ═══ ul0 ─ underlay ─ engine ─ TAP
//	podrouter-vxlan: the same with vxlan (8472)
//	podrouter-host-gw: pod eth0 (TAP) ─ engine ─ podr0 (TUN uplink) ─ host route 10.251.2.0/24 via
//	                 192.168.251.2 ─ ul0 ═══ ul0 ─ route 10.251.2.0/24 dev podr0 ─ engine ─ TAP
//	                 (no encapsulation; the host-gw baseline above is the kernel's)
//
// podrouter's nodes are built in this process by router/node, as the
// daemon builds its node (the underlay socket opened inside the node's
// namespace), with TAP pods. Each variant is measured with iperf3: one TCP stream
// (Gbit/s at the receiver) and UDP with 64-byte payloads (packets/s
// received). Every namespace is the case's own and removed when the variant
// ends; traffic stays inside them.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"

	"github.com/vishvananda/netlink"

	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/packet"
)

func init() {
	register(Case{Name: "cross-node", Baselines: []string{"kernel-vxlan"}, Run: runCrossNode})
	register(Case{Name: "cross-node-host-gw", Baselines: []string{"host-gw"}, Run: runCrossNodeHostGW})
}

// The case's addresses: node i (0, 1) has underlay address xnUnder[i] and
// podCIDR 10.251.(i+1).0/24; its pod is .2.
var (
	xnUnder   = [2]netip.Addr{netip.MustParseAddr("192.168.251.1"), netip.MustParseAddr("192.168.251.2")}
	xnCluster = netip.MustParsePrefix("10.251.0.0/16")
)

func xnPodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, byte(i + 1), 0}), 24)
}

func xnPodAddr(i int) netip.Addr { return xnPodCIDR(i).Addr().Next().Next() }

func xnGateway(i int) netip.Addr { return xnPodCIDR(i).Addr().Next() }

// xnImpl is one way of building the cross-node topology.
type xnImpl struct {
	name  string
	build func(*xnTopo) (func(), error)
}

// runCrossNodeHostGW is case cross-node-host-gw: podrouter's host-gw
// backend against the kernel's host-gw (issue 16's target: at least
// 0.8x for TCP), same run.
func runCrossNodeHostGW(ctx context.Context, opt Options) ([]Result, error) {
	return runXN(ctx, opt, "cross-node-host-gw", []xnImpl{
		{"host-gw", (*xnTopo).hostGW},
		{"podrouter-host-gw", func(t *xnTopo) (func(), error) { return t.podrouter(node.BackendHostGW) }},
	})
}

func runCrossNode(ctx context.Context, opt Options) ([]Result, error) {
	return runXN(ctx, opt, "cross-node", []xnImpl{
		{"host-gw", (*xnTopo).hostGW},
		{"kernel-vxlan", (*xnTopo).kernelVXLAN},
		{"podrouter-udp", func(t *xnTopo) (func(), error) { return t.podrouter("udp") }},
		{"podrouter-vxlan", func(t *xnTopo) (func(), error) { return t.podrouter("vxlan") }},
	})
}

// runXN measures each of impls on a fresh topology.
func runXN(ctx context.Context, opt Options, name string, impls []xnImpl) ([]Result, error) {
	for _, c := range []string{"iperf3", "ip", "bridge", "ethtool"} {
		if _, err := exec.LookPath(c); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps)", c)
		}
	}
	var res []Result
	var errs []error
	for _, impl := range impls {
		if ctx.Err() != nil {
			break
		}
		r, err := crossNodeOnce(ctx, opt, impl.name, impl.build)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case=%s impl=%s error: %v\n", name, impl.name, err)
			errs = append(errs, fmt.Errorf("%s: %w", impl.name, err))
			continue
		}
		res = append(res, r)
	}
	if len(res) == 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

// crossNodeOnce builds the topology, lets build add an implementation,
// measures pod 0 -> pod 1 and tears it all down.
func crossNodeOnce(ctx context.Context, opt Options, impl string, build func(*xnTopo) (func(), error)) (Result, error) {
	t, err := newXNTopo()
	if err != nil {
		return Result{}, err
	}
	defer t.close()
	stop, err := build(t)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	// The path works before it is measured.
	if err := t.pods[0].run("ping", "-c", "1", "-W", "5", xnPodAddr(1).String()); err != nil {
		return Result{}, fmt.Errorf("no connectivity: %w", err)
	}
	r, err := measure(ctx, opt, t.pods[1], t.pods[0], xnPodAddr(1).String(), t.procs...)
	r.Impl = impl
	return r, err
}

// xnTopo is the part every variant shares: two node namespaces joined by
// the underlay veth (ul0, MTU 1500), and a pod namespace per node.
type xnTopo struct {
	nodes, pods [2]*netns
	procs       []int // the variant's processes (wireguard-go), for measure
	// services, when set, turns podrouter's load balancer on with these
	// Service CIDRs; built are podrouter's nodes once made.
	services []netip.Prefix
	built    []*node.Node
}

func newXNTopo() (t *xnTopo, err error) {
	t = &xnTopo{}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	for i := range 2 {
		if t.nodes[i], err = newNetns("xn"); err != nil {
			return nil, err
		}
		if t.pods[i], err = newNetns("xn"); err != nil {
			return nil, err
		}
	}
	if err := t.nodes[0].run("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", t.nodes[1].name); err != nil {
		return nil, fmt.Errorf("(veth needed) %w", err)
	}
	for i, n := range t.nodes {
		for _, c := range [][]string{
			{"ip", "addr", "add", xnUnder[i].String() + "/24", "dev", "ul0"},
			{"ip", "link", "set", "ul0", "up"},
			{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		} {
			if err := n.run(c[0], c[1:]...); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

func (t *xnTopo) close() {
	for _, n := range append(t.pods[:], t.nodes[:]...) {
		if n != nil {
			n.del()
		}
	}
}

// kernelPod joins node i's pod to a cni0 bridge through a veth, as the
// bridge CNI plugin does.
func (t *xnTopo) kernelPod(i, mtu int) error {
	n, p := t.nodes[i], t.pods[i]
	m := strconv.Itoa(mtu)
	gw := netip.PrefixFrom(xnGateway(i), 24).String()
	for _, c := range [][]string{
		{"ip", "link", "add", "cni0", "mtu", m, "type", "bridge"},
		{"ip", "addr", "add", gw, "dev", "cni0"},
		{"ip", "link", "set", "cni0", "up"},
		{"ip", "link", "add", "vpod", "mtu", m, "type", "veth", "peer", "name", "eth0", "netns", p.name},
		{"ip", "link", "set", "vpod", "master", "cni0", "up"},
	} {
		if err := n.run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", netip.PrefixFrom(xnPodAddr(i), 24).String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "mtu", m, "up"},
		{"ip", "route", "add", "default", "via", xnGateway(i).String()},
	} {
		if err := p.run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// hostGW routes each podCIDR to its node's underlay address: no
// encapsulation, the VPC-router setup.
func (t *xnTopo) hostGW() (func(), error) {
	for i, n := range t.nodes {
		if err := t.kernelPod(i, 1500); err != nil {
			return nil, err
		}
		if err := n.run("ip", "route", "add", xnPodCIDR(1-i).String(), "via", xnUnder[1-i].String()); err != nil {
			return nil, err
		}
	}
	return func() {}, nil
}

// kernelVXLAN configures flannel's vxlan backend on both nodes.
func (t *xnTopo) kernelVXLAN() (func(), error) {
	mac := func(i int) string { return fmt.Sprintf("0e:00:00:00:00:%02x", i+1) }
	for i, n := range t.nodes {
		if err := t.kernelPod(i, 1450); err != nil {
			return nil, err
		}
		peer := xnPodCIDR(1 - i)
		for _, c := range [][]string{
			{"ip", "link", "add", "flannel.1", "address", mac(i), "type", "vxlan", "id", "1", "local", xnUnder[i].String(), "dstport", "8472", "nolearning", "dev", "ul0"},
			{"ip", "link", "set", "flannel.1", "mtu", "1450", "up"},
			{"ip", "addr", "add", xnPodCIDR(i).Addr().String() + "/32", "dev", "flannel.1"},
			{"bridge", "fdb", "append", mac(1 - i), "dev", "flannel.1", "dst", xnUnder[1-i].String()},
			{"ip", "neigh", "replace", peer.Addr().String(), "lladdr", mac(1 - i), "dev", "flannel.1", "nud", "permanent"},
			{"ip", "route", "add", peer.String(), "via", peer.Addr().String(), "dev", "flannel.1", "onlink"},
		} {
			if err := n.run(c[0], c[1:]...); err != nil {
				return nil, err
			}
		}
	}
	return func() {}, nil
}

// podrouter builds a podrouter node in each node namespace with
// router/node, as the daemon does (the underlay's socket opened there, the
// engine, the pod MTU rule), and the pod's eth0 a TAP the engine holds.
func (t *xnTopo) podrouter(backend string) (stop func(), err error) {
	var nodes [2]*node.Node
	stop = func() {
		for i, n := range nodes {
			if n == nil {
				continue
			}
			if u := n.Underlay(); u != nil {
				// Context for the numbers, on stderr: how much went whole.
				us, es := u.Stats(), n.Engine().OffloadStats()
				fmt.Fprintf(os.Stderr, "cross-node podrouter-%s node%d: underlay tx %d pkts in %d sendmmsg (%d GSO), rx %d pkts in %d recvmmsg (%d GRO), drops %d; engine super-packets whole %d, cut %d\n",
					backend, i, us.TxPackets, us.TxCalls, us.TxGSO, us.RxPackets, us.RxCalls, us.RxGRO, us.TotalDrops(), es.SuperPackets, es.Segmented)
			}
		}
		for _, n := range nodes {
			if n != nil {
				_ = n.Close()
			}
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	kind, err := node.LookupBackend(backend)
	if err != nil {
		return nil, err
	}
	for i := range 2 {
		var key node.Key // wireguard's
		if backend == node.BackendWireGuard {
			if key, err = node.GenerateKey(); err != nil {
				return nil, err
			}
		}
		if err := t.nodes[i].do(func() (err error) {
			cfg := node.Config{
				PodCIDR: xnPodCIDR(i), ClusterCIDRs: []netip.Prefix{xnCluster},
				Underlay: node.UnderlayConfig{Backend: backend, Listen: netip.AddrPortFrom(xnUnder[i], kind.DefaultPort), Interface: "ul0", PrivateKey: key},
				Services: node.ServicesConfig{CIDRs: t.services},
			}
			if backend == node.BackendHostGW {
				// The host carries the pods' packets: the node's uplink
				// (its podCIDR routed there) and the backend's host route.
				cfg.Uplink = node.UplinkConfig{Name: "podr0"}
				cfg.NodeIPs = []netip.Addr{xnUnder[i]}
			}
			nodes[i], err = node.New(cfg)
			return err
		}); err != nil {
			return nil, err
		}
		if err := t.tapPod(i, nodes[i]); err != nil {
			return nil, err
		}
	}
	for i, n := range nodes {
		m := nodes[1-i]
		ann := m.Backend().Announce()
		peer := node.Peer{Name: fmt.Sprintf("node%d", 1-i), Addr: ann.Endpoint, VTEPMAC: ann.VTEPMAC, PublicKey: ann.PublicKey,
			PodCIDRs: []netip.Prefix{xnPodCIDR(1 - i)}}
		if err := n.SetPeers([]node.Peer{peer}); err != nil {
			return nil, err
		}
	}
	t.built = nodes[:]
	return stop, nil
}

// tapPod makes node i's pod eth0 a TAP attached to n's engine, configured
// as a CNI plugin would.
func (t *xnTopo) tapPod(i int, n *node.Node) error {
	var dev *tap.Device
	var mac net.HardwareAddr
	mtu := n.MTU()
	err := t.pods[i].do(func() (err error) {
		if dev, err = tap.Create("eth0", tap.Config{MTU: mtu}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		a := xnPodAddr(i)
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: xnGateway(i).AsSlice()})
	})
	if err != nil {
		if dev != nil {
			_ = dev.Close()
		}
		return fmt.Errorf("pod %d: %w", i, err)
	}
	if _, err := n.Engine().AddPort(dev, engine.PortConfig{
		Name: "pod", Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(mac), MTU: mtu, Addrs: []netip.Addr{xnPodAddr(i)},
	}); err != nil {
		_ = dev.Close()
		return err
	}
	return nil
}
