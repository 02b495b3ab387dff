package engine

import (
	"net/netip"
	"slices"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// Same-node pods see an L2 segment: the engine answers ARP and NDP for the
// gateway and, as a proxy, for every other address of the podCIDR, always
// with its own MAC; frames then reach it and it forwards at L3.

// handleARP answers an ARP request for an address of the podCIDR other than
// the asker's own (an ARP probe or gratuitous ARP is not answered, so a
// pod's duplicate address detection never fails).
func (w *worker) handleARP(frame []byte) {
	in := w.in
	if !in.cfg.L2 {
		w.drop(DropEtherType)
		return
	}
	a := packet.ARP(frame[packet.EthernetLen:])
	sender, target := a.SenderIP(), a.TargetIP()
	if m := a.SenderMAC(); in.peerMAC.Load() == nil && !m.IsMulticast() {
		in.peerMAC.Store(&m)
	}
	if a.Op() != packet.ARPRequest || !sender.IsValid() || sender.IsUnspecified() || sender == target ||
		!w.e.cfg.PodCIDR.Contains(target) || w.isOwn(target) {
		w.drop(DropNeighbor)
		return
	}
	if in.cfg.Kind == KindPod && !w.sourceOK(sender) {
		w.drop(DropSpoofed)
		return
	}
	buf := w.scratchBuf()
	n := packet.BuildARPReply(buf[readOffset:], a, w.e.cfg.GatewayMAC, target)
	w.stageFrame(in, buf[readOffset-link.Headroom:readOffset+n], packet.GSO{})
}

// handleNS answers a neighbour solicitation for an address of the IPv6
// podCIDR other than the asker's own (DAD probes, from ::, are not
// answered).
func (w *worker) handleNS(frame []byte) {
	pp := &w.pp
	in := w.in
	ns, ok := packet.ParseNeighborSolicit(frame[pp.L4Off:pp.IPEnd], pp.TTL)
	if !ok || !in.cfg.L2 || pp.Src.IsUnspecified() || !w.e.cfg.PodCIDR6.IsValid() ||
		!w.e.cfg.PodCIDR6.Contains(ns.Target) || w.isOwn(ns.Target) {
		w.drop(DropNeighbor)
		return
	}
	dstMAC := packet.Ethernet(frame).Src()
	if ns.HasLL {
		dstMAC = ns.SrcLL
	}
	buf := w.scratchBuf()
	n := packet.BuildNeighborAdvert(buf[readOffset:], dstMAC, w.e.cfg.GatewayMAC, ns.Target, pp.Src, ns.Target == w.e.gw6)
	w.stageFrame(in, buf[readOffset-link.Headroom:readOffset+n], packet.GSO{})
}

// isOwn reports whether a is one of the input port's own addresses.
func (w *worker) isOwn(a netip.Addr) bool { return slices.Contains(w.in.addrs, a) }
