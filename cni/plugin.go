package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
)

// daemonTimeout bounds each API request.
const daemonTimeout = 10 * time.Second

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status, GC: GC}
}

func client(conf *NetConf) *api.Client { return &api.Client{Path: conf.Socket, Timeout: daemonTimeout} }

// daemonError turns an API error into a CNI error: an absent or starting
// daemon is "try again later" (11).
func daemonError(op string, err error) *types.Error {
	if errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrNotReady) {
		return types.NewError(types.ErrTryAgainLater, "podrouter-cni: "+op+": podrouter daemon not ready", err.Error())
	}
	return types.NewError(types.ErrInternal, "podrouter-cni: "+op, err.Error())
}

// readyStatus returns the daemon's status, or an error when it does not
// answer or is not ready.
func readyStatus(ctx context.Context, conf *NetConf) (api.Status, error) {
	st, err := client(conf).Status(ctx)
	if err != nil {
		return st, err
	}
	if !st.Ready {
		return st, fmt.Errorf("%w: status says not ready", api.ErrNotReady)
	}
	return st, nil
}

// Add implements CNI ADD.
func Add(args *skel.CmdArgs) error {
	conf, ic, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "podrouter-cni: CNI_NETNS is empty", "")
	}
	if err := (api.AttachmentID{ContainerID: args.ContainerID, IfName: args.IfName}).Validate(); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "podrouter-cni: "+err.Error(), "")
	}
	pod, err := PodFromArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "podrouter-cni: CNI_ARGS: "+err.Error(), "")
	}
	ctx := context.Background()
	st, err := readyStatus(ctx, conf)
	if err != nil {
		return daemonError("ADD", err)
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "podrouter-cni: netns "+args.Netns, err.Error())
	}
	defer netns.Close()
	ipamIn, err := ipamStdin(args.StdinData, ic, st.PodCIDRs)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "podrouter-cni: ipam config", err.Error())
	}

	// Rollback: each step that creates something registers its undo
	// right after it succeeded, and only then; a failed ADD undoes what
	// it made and nothing else (an interface of the same name that was
	// there before, another pod's attachment).
	success := false
	var undo []func()
	defer func() {
		if !success {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	r, err := ipam.ExecAdd(ic.Type, ipamIn)
	if err != nil {
		return err
	}
	undo = append(undo, func() { _ = ipam.ExecDel(ic.Type, ipamIn) })
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "podrouter-cni: IPAM result", err.Error())
	}
	pi, addrs, err := plan(conf, args.IfName, res, st)
	if err != nil {
		return err
	}

	// setupPodIf leaves nothing behind when it fails, and fails without
	// touching an interface of that name that already exists.
	f, index, err := setupPodIf(netns, pi)
	if err != nil {
		return types.NewError(types.ErrInternal, "podrouter-cni: pod interface in "+args.Netns, err.Error())
	}
	undo = append(undo, func() { _ = deleteLinkIndex(netns, index) })
	req := api.AttachRequest{
		AttachmentID: api.AttachmentID{ContainerID: args.ContainerID, IfName: args.IfName},
		Netns:        args.Netns,
		MAC:          api.MAC(pi.mac),
		MTU:          pi.mtu,
		Addrs:        addrs,
		PortMappings: conf.portMappings,
		Pod:          pod,
	}
	_, err = client(conf).Attach(ctx, req, f)
	_ = f.Close()
	if err != nil {
		// A daemon that answered with an error attached nothing: its
		// state is not this ADD's to undo. Without an answer, it may
		// have attached before the reply was lost.
		if errors.Is(err, api.ErrUnavailable) {
			_ = client(conf).Detach(ctx, req.AttachmentID)
		}
		return daemonError("attach", err)
	}
	undo = append(undo, func() { _ = client(conf).Detach(ctx, req.AttachmentID) })

	out := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: args.IfName, Mac: pi.mac.String(), Mtu: pi.mtu, Sandbox: args.Netns}},
		DNS:        conf.DNS,
	}
	for _, ipc := range pi.ips {
		c := *ipc
		c.Interface = current.Int(0)
		out.IPs = append(out.IPs, &c)
	}
	for _, dst := range pi.routes {
		gw := pi.gw4
		if dst.Addr().Is6() {
			gw = pi.gw6
		}
		out.Routes = append(out.Routes, &types.Route{Dst: *route.IPNet(dst), GW: gw.AsSlice()})
	}
	if err := types.PrintResult(out, conf.CNIVersion); err != nil {
		return err
	}
	success = true
	return nil
}

// plan checks the IPAM result against the node (one address per family,
// inside the podCIDRs) and decides the interface's configuration: MAC, MTU,
// gateways and routes (IPAM's routes, or a default route per family).
func plan(conf *NetConf, ifName string, res *current.Result, st api.Status) (*podIf, []netip.Addr, error) {
	pi := &podIf{name: ifName, mac: conf.mac, mtu: conf.MTU, gw4: st.Gateway, gw6: st.Gateway6}
	if pi.mtu == 0 {
		pi.mtu = st.MTU
	}
	var addrs []netip.Addr
	var v4 netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, "podrouter-cni: IPAM gave an invalid address", ipc.Address.String())
		}
		a = a.Unmap()
		in := slices.ContainsFunc(st.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(a) })
		if !in {
			return nil, nil, configError("ipam", "address %s is outside the node's podCIDRs %v", a, st.PodCIDRs)
		}
		for _, b := range addrs {
			if b.Is4() == a.Is4() {
				return nil, nil, configError("ipam", "more than one %s address (%s, %s): the pod has one per family", family(a), b, a)
			}
		}
		gw := st.Gateway
		if a.Is6() {
			gw = st.Gateway6
			if !gw.IsValid() {
				return nil, nil, configError("ipam", "IPv6 address %s but the node has no IPv6 podCIDR", a)
			}
		}
		if ipc.Gateway != nil {
			if g, ok := netip.AddrFromSlice(ipc.Gateway); ok && g.Unmap() != gw {
				return nil, nil, configError("ipam", "gateway %s: the node's gateway is %s", g.Unmap(), gw)
			}
		}
		c := &current.IPConfig{Address: net.IPNet{IP: a.AsSlice(), Mask: ipc.Address.Mask}, Gateway: gw.AsSlice()}
		pi.ips = append(pi.ips, c)
		addrs = append(addrs, a)
		if a.Is4() {
			v4 = a
		}
	}
	if !v4.IsValid() {
		return nil, nil, configError("ipam", "no IPv4 address (got %d addresses); the node's podCIDRs are %v", len(res.IPs), st.PodCIDRs)
	}
	if pi.mac == (packet.MAC{}) {
		// As kubenet and OVN-Kubernetes: 0a:58 and the IPv4 address, so a
		// pod's MAC is unique on the node and readable.
		b := v4.As4()
		pi.mac = packet.MAC{0x0a, 0x58, b[0], b[1], b[2], b[3]}
	}
	have4, have6 := false, false
	for _, r := range res.Routes {
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		dst := netip.PrefixFrom(p.Unmap(), ones).Masked()
		if dst.Addr().Is6() && !slices.ContainsFunc(addrs, netip.Addr.Is6) {
			continue
		}
		pi.routes = append(pi.routes, dst)
		have4 = have4 || (dst.Addr().Is4() && dst.Bits() == 0)
		have6 = have6 || (dst.Addr().Is6() && dst.Bits() == 0)
	}
	if !have4 {
		pi.routes = append(pi.routes, netip.MustParsePrefix("0.0.0.0/0"))
	}
	if !have6 && slices.ContainsFunc(addrs, netip.Addr.Is6) {
		pi.routes = append(pi.routes, netip.MustParsePrefix("::/0"))
	}
	return pi, addrs, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// prevResult returns the runtime's previous result, nil when it passed
// none (a repeated DEL after the runtime dropped its cache) or one this
// version cannot read.
func prevResult(conf *NetConf) *current.Result {
	if conf.PrevResult == nil {
		return nil
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil
	}
	return res
}

// knownPodCIDRs returns the node's podCIDRs for an IPAM release: from the
// daemon when it answers, else from prev's addresses (prev may be nil).
func knownPodCIDRs(ctx context.Context, conf *NetConf, prev *current.Result) []netip.Prefix {
	if st, err := client(conf).Status(ctx); err == nil && len(st.PodCIDRs) > 0 {
		return st.PodCIDRs
	}
	if prev == nil {
		return nil
	}
	var out []netip.Prefix
	for _, ipc := range prev.IPs {
		if ipc == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		if ok && ones > 0 {
			out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
		}
	}
	return out
}

// delNetns returns the netns DEL cleans up in: CNI_NETNS, else (the
// runtime may pass none on DEL) the one the daemon recorded for id, else
// the sandbox of prev's interface ifName. "" when nothing names one.
func delNetns(ctx context.Context, conf *NetConf, args *skel.CmdArgs, id api.AttachmentID, prev *current.Result) string {
	if args.Netns != "" {
		return args.Netns
	}
	if as, err := client(conf).Attachments(ctx); err == nil {
		for _, a := range as {
			if a.AttachmentID == id && a.Netns != "" {
				return a.Netns
			}
		}
	}
	if prev != nil {
		for _, i := range prev.Interfaces {
			if i != nil && i.Name == args.IfName && i.Sandbox != "" {
				return i.Sandbox
			}
		}
	}
	return ""
}

// Del implements CNI DEL: detach, delete the TAP, release the addresses.
// It succeeds when the netns, the interface, the daemon or the previous
// result is gone; it fails only when something that is there could not be
// removed (the runtime retries then).
func Del(args *skel.CmdArgs) error {
	conf, ic, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx := context.Background()
	id := api.AttachmentID{ContainerID: args.ContainerID, IfName: args.IfName}
	prev := prevResult(conf)
	netns := delNetns(ctx, conf, args, id, prev)
	if err := client(conf).Detach(ctx, id); err != nil &&
		!errors.Is(err, api.ErrNotFound) && !errors.Is(err, api.ErrUnavailable) && !errors.Is(err, api.ErrBadRequest) {
		return daemonError("detach", err)
	}
	if err := deletePodIf(netns, args.IfName); err != nil {
		return types.NewError(types.ErrInternal, "podrouter-cni: delete pod interface", err.Error())
	}
	ipamIn, err := ipamStdin(args.StdinData, ic, knownPodCIDRs(ctx, conf, prev))
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "podrouter-cni: ipam config", err.Error())
	}
	return ipam.ExecDel(ic.Type, ipamIn)
}

// Check implements CNI CHECK: IPAM's own check, then the interface, its
// addresses and routes, then the daemon's attachment.
func Check(args *skel.CmdArgs) error {
	conf, ic, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "podrouter-cni: CHECK: field prevResult: missing", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "podrouter-cni: CHECK: prevResult", err.Error())
	}
	ctx := context.Background()
	st, err := readyStatus(ctx, conf)
	if err != nil {
		return daemonError("CHECK", err)
	}
	ipamIn, err := ipamStdin(args.StdinData, ic, st.PodCIDRs)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "podrouter-cni: ipam config", err.Error())
	}
	if err := ipam.ExecCheck(ic.Type, ipamIn); err != nil {
		return err
	}
	var want *current.Interface
	for _, i := range prev.Interfaces {
		if i.Name == args.IfName && i.Sandbox == args.Netns {
			want = i
		}
	}
	if want == nil {
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", fmt.Sprintf("prevResult has no interface %s in %s", args.IfName, args.Netns))
	}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return err
		}
		if tt, ok := l.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			return fmt.Errorf("%s is a %s, not a TAP", args.IfName, l.Type())
		}
		if !strings.EqualFold(l.Attrs().HardwareAddr.String(), want.Mac) {
			return fmt.Errorf("%s has MAC %s, want %s", args.IfName, l.Attrs().HardwareAddr, want.Mac)
		}
		if want.Mtu != 0 && l.Attrs().MTU != want.Mtu {
			return fmt.Errorf("%s has MTU %d, want %d", args.IfName, l.Attrs().MTU, want.Mtu)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s is down", args.IfName)
		}
		return checkAddrsRoutes(l, prev)
	})
	if err != nil {
		if netnsGone(err) {
			return types.NewError(types.ErrInvalidNetNS, "podrouter-cni: CHECK: netns "+args.Netns, err.Error())
		}
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK: pod interface", err.Error())
	}
	as, err := client(conf).Attachments(ctx)
	if err != nil {
		return daemonError("CHECK", err)
	}
	id := api.AttachmentID{ContainerID: args.ContainerID, IfName: args.IfName}
	i := slices.IndexFunc(as, func(a api.Attachment) bool { return a.AttachmentID == id })
	if i < 0 {
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", "the daemon has no attachment "+id.String())
	}
	a := as[i]
	var wantAddrs []netip.Addr
	for _, ipc := range prev.IPs {
		if x, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			wantAddrs = append(wantAddrs, x.Unmap())
		}
	}
	switch {
	case a.PortIndex < 0:
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", "attachment "+id.String()+" is recorded but not attached to the engine")
	case a.Netns != args.Netns:
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", fmt.Sprintf("attachment netns %s, want %s", a.Netns, args.Netns))
	case !strings.EqualFold(a.MAC.String(), want.Mac):
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", fmt.Sprintf("attachment MAC %s, want %s", a.MAC, want.Mac))
	case !sameAddrs(a.Addrs, wantAddrs):
		return types.NewError(types.ErrInternal, "podrouter-cni: CHECK", fmt.Sprintf("attachment addresses %v, want %v", a.Addrs, wantAddrs))
	}
	return nil
}

func sameAddrs(a, b []netip.Addr) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, netip.Addr.Compare)
	slices.SortFunc(b, netip.Addr.Compare)
	return slices.Equal(a, b)
}

// Status implements CNI STATUS (spec 1.1): code 50 while the daemon does not
// answer or is not ready.
func Status(args *skel.CmdArgs) error {
	conf, _, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := readyStatus(context.Background(), conf); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "podrouter-cni: podrouter daemon not ready", err.Error())
	}
	return nil
}

// GC implements CNI GC (spec 1.1): every attachment the daemon holds and
// every host-local reservation of this network that is not listed in
// cni.dev/valid-attachments is detached, its TAP deleted and its
// addresses released.
func GC(args *skel.CmdArgs) error {
	conf, ic, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx := context.Background()
	valid := map[api.AttachmentID]bool{}
	for _, a := range conf.ValidAttachments {
		valid[api.AttachmentID{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	stale := map[api.AttachmentID]bool{}
	var errs []error
	cl := client(conf)
	as, err := cl.Attachments(ctx)
	if err != nil && !errors.Is(err, api.ErrUnavailable) {
		errs = append(errs, err)
	}
	for _, a := range as {
		if valid[a.AttachmentID] {
			continue
		}
		stale[a.AttachmentID] = true
		if err := cl.Detach(ctx, a.AttachmentID); err != nil && !errors.Is(err, api.ErrNotFound) {
			errs = append(errs, err)
		}
		if err := deletePodIf(a.Netns, a.IfName); err != nil {
			errs = append(errs, err)
		}
	}
	if ic.Type == "host-local" {
		ids, err := hostLocalReservations(ic.DataDir, conf.Name)
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range ids {
			if !valid[id] {
				stale[id] = true
			}
		}
	}
	if len(stale) > 0 {
		ipamIn, err := ipamStdin(args.StdinData, ic, knownPodCIDRs(ctx, conf, prevResult(conf)))
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "podrouter-cni: ipam config", err.Error())
		}
		path, err := invoke.FindInPath(ic.Type, filepath.SplitList(args.Path))
		if err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, "podrouter-cni: GC: field ipam.type", err.Error())
		}
		for id := range stale {
			err := invoke.ExecPluginWithoutResult(ctx, path, ipamIn, &invoke.Args{
				Command: "DEL", ContainerID: id.ContainerID, IfName: id.IfName, Path: args.Path,
			}, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("release %s: %w", id, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "podrouter-cni: GC", err.Error())
	}
	return nil
}

// hostLocalReservations lists the owners of host-local's reservations for
// network name: one file per address under dataDir/name, holding the
// container ID and the interface name on two lines.
func hostLocalReservations(dataDir, name string) ([]api.AttachmentID, error) {
	if dataDir == "" {
		dataDir = "/var/lib/cni/networks"
	}
	dir := filepath.Join(dataDir, name)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []api.AttachmentID
	for _, e := range ents {
		if _, err := netip.ParseAddr(strings.ReplaceAll(e.Name(), "_", ":")); err != nil || !e.Type().IsRegular() {
			continue // lock, last_reserved_ip.N
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		lines := strings.Fields(strings.ReplaceAll(string(b), "\r", "\n"))
		if len(lines) >= 2 {
			out = append(out, api.AttachmentID{ContainerID: lines[0], IfName: lines[1]})
		}
	}
	return out, nil
}

// checkAddrsRoutes checks that l has every address of prev (with its
// prefix length) and that every route of prev is in l's netns, via its
// gateway, through l.
func checkAddrsRoutes(l netlink.Link, prev *current.Result) error {
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, ipc := range prev.IPs {
		if !slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == ipc.Address.String() }) {
			return fmt.Errorf("%s lacks address %s", l.Attrs().Name, ipc.Address.String())
		}
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, want := range prev.Routes {
		ok := slices.ContainsFunc(routes, func(r netlink.Route) bool {
			dst := "0.0.0.0/0"
			if want.Dst.IP.To4() == nil {
				dst = "::/0"
			}
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			return dst == want.Dst.String() && (want.GW == nil || r.Gw.Equal(want.GW))
		})
		if !ok {
			return fmt.Errorf("%s lacks route %s via %s", l.Attrs().Name, want.Dst.String(), want.GW)
		}
	}
	return nil
}

// PodFromArgs returns the pod that CNI_ARGS names: the kubelet's (and
// every CRI runtime's) K8S_POD_NAMESPACE and K8S_POD_NAME, checked as
// Kubernetes names. Without both, the zero PodRef (a runtime that is not
// Kubernetes'); other keys are ignored.
func PodFromArgs(cniArgs string) (api.PodRef, error) {
	var r api.PodRef
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			r.Namespace = v
		case "K8S_POD_NAME":
			r.Name = v
		}
	}
	if r.Namespace == "" || r.Name == "" {
		return api.PodRef{}, nil
	}
	if err := r.Validate(); err != nil {
		return api.PodRef{}, err
	}
	return r, nil
}
