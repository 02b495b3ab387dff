package engine

// Packet-level source NAT on a port (PortConfig.SNAT), flannel's --ip-masq
// without iptables:
//
//	pod ─► forward: next port q has SNAT, Policy.Translates(src, dst)?
//	   ─► TTL/MTU checks (errors quote the packet as the pod sent it)
//	   ─► Track (new flow: allocate a port on the SNAT address) ─► Rewrite
//	   ─► q
//	q ─► handle: destination is the SNAT address?
//	   ─► Lookup: a reply of a tracked flow? no: drop (no-conntrack)
//	   ─► Track (advance TCP state) ─► Rewrite back to the pod ─► route
//	   ICMP errors quoting a translated packet: TrackRelated ─► RewriteRelated
//
// Design notes: ports without SNAT pay one nil check per forwarded packet
// (the next port's) and one per read packet (the input port's). The
// conntrack clock is read at most once per batch and table. Checksums are
// updated incrementally; for a packet with a partial checksum (a virtio
// NEEDS_CSUM packet or a super-packet) the checksum field holds the
// pseudo-header sum, which is adjusted for the new address only (the port
// is covered by the sum the device or software segmentation computes
// later).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

// ErrSNATConfig is wrapped by AddPort's error for an invalid PortConfig.SNAT.
var ErrSNATConfig = errors.New("engine: invalid SNAT config")

// SNAT configures source NAT on a port (typically the node's uplink): a
// packet routed to the port whose flow Policy.Translates leaves with the
// source Addr (IPv4) or Addr6 (IPv6) and a port (ICMP echo identifier)
// that Table allocates; packets read from the port and addressed to Addr
// or Addr6 are replies, translated back and routed to the pod, or dropped
// under DropNoConntrack when they belong to no tracked flow. That includes
// ICMP echo requests from outside to the SNAT address: they are dropped,
// not answered (the address stands for the pods, not for a host).
// Fragments other than the first carry no port and cannot be translated
// either way: outbound they are dropped under DropSNAT, inbound under
// DropNoConntrack (the engine does not reassemble).
//
// A packet of a family without an address (Addr6 unset) is forwarded
// untranslated. The SNAT value must not change after AddPort; Table and
// Policy are shared with whoever else uses them (the daemon lists flows).
type SNAT struct {
	// Table tracks the flows; Addr and Addr6 must be in its Config.SNAT.
	Table *conntrack.Table
	// Policy decides which flows are translated (Translates): pod to
	// outside, never pod to pod or to the cluster CIDRs.
	Policy *conntrack.Policy
	// Addr and Addr6 are the translated source addresses; at least one.
	Addr, Addr6 netip.Addr
}

func (s *SNAT) validate() error {
	if s.Table == nil || s.Policy == nil {
		return fmt.Errorf("%w: Table and Policy are required", ErrSNATConfig)
	}
	if !s.Addr.IsValid() && !s.Addr6.IsValid() {
		return fmt.Errorf("%w: Addr or Addr6 is required", ErrSNATConfig)
	}
	if s.Addr.IsValid() && !s.Addr.Is4() {
		return fmt.Errorf("%w: Addr %s: want an IPv4 address", ErrSNATConfig, s.Addr)
	}
	if s.Addr6.IsValid() && (!s.Addr6.Is6() || s.Addr6.Is4In6()) {
		return fmt.Errorf("%w: Addr6 %s: want an IPv6 address", ErrSNATConfig, s.Addr6)
	}
	return nil
}

// addrFor returns the translated address for an IP version, or the zero
// Addr.
func (s *SNAT) addrFor(v uint8) netip.Addr {
	if v == 4 {
		return s.Addr
	}
	return s.Addr6
}

// ctNow returns t's clock, read once per batch.
func (w *worker) ctNow(t *conntrack.Table) conntrack.Time {
	switch t {
	case w.ctTab:
		return w.ctTime
	case w.ctTab2:
		return w.ctTime2
	}
	// A batch may use two tables (Services', and SNAT's or policy's):
	// keep both clocks; a third replaces the older.
	w.ctTab2, w.ctTime2 = w.ctTab, w.ctTime
	w.ctTab, w.ctTime = t, t.Now()
	return w.ctTime
}

// tcpFlags returns the TCP flag byte of the parsed packet in frame, or 0.
func tcpFlags(frame []byte, pp *packet.Parsed) uint8 {
	if pp.Proto != packet.ProtoTCP || pp.L4Off+packet.TCPMinLen > pp.IPEnd {
		return 0
	}
	return frame[pp.L4Off+13]
}

// snatOut translates the packet in frame (w.pp describes it, g its offload
// state) on its way to q, whose SNAT is s, when s's policy says so. It
// reports false when the packet was dropped (and counted).
func (w *worker) snatOut(s *SNAT, frame []byte, g packet.GSO) bool {
	pp := &w.pp
	addr := s.addrFor(pp.Version)
	if !addr.IsValid() || !s.Policy.Translates(pp.Src, pp.Dst) {
		return true
	}
	now := w.ctNow(s.Table)
	if k, ok := conntrack.FromParsed(pp); ok {
		r, err := s.Table.Track(k, tcpFlags(frame, pp), addr, now)
		if err != nil && !(errors.Is(err, conntrack.ErrInvalid) && r.NAT()) {
			// ErrInvalid on a known flow (a segment that does not fit
			// its TCP state): forward it translated, as netfilter
			// forwards INVALID packets without a rule dropping them;
			// every other error drops the packet.
			w.drop(DropSNAT)
			return false
		}
		if !r.NAT() {
			// A flow the table tracks untranslated (another user of
			// the table made it): it must not leak the pod's address.
			w.drop(DropSNAT)
			return false
		}
		if rewrite(frame, pp, &r, g) != nil {
			w.drop(DropSNAT)
			return false
		}
		return true
	}
	// An ICMP error about a flow of ours (a pod's port unreachable, or
	// the engine's own error about a reply): translate it with its quote.
	if r, ok := s.Table.TrackRelated(frame, pp, now); ok && r.NAT() {
		if conntrack.RewriteRelated(frame, pp, &r) == nil {
			return true
		}
	}
	w.drop(DropSNAT)
	return false
}

// snatIn translates a packet read from the SNAT port back to its pod when
// it is addressed to the SNAT address. It reports false when the packet
// was dropped (and counted).
func (w *worker) snatIn(s *SNAT, frame []byte, g packet.GSO) bool {
	pp := &w.pp
	if pp.Dst != s.Addr && pp.Dst != s.Addr6 {
		return true // host or routed traffic to a pod: not ours
	}
	now := w.ctNow(s.Table)
	if k, ok := conntrack.FromParsed(pp); ok {
		if r, ok := s.Table.Lookup(k, now); !ok || r.Dir != conntrack.Reply || !r.NAT() {
			w.drop(DropNoConntrack)
			return false
		}
		r, err := s.Table.Track(k, tcpFlags(frame, pp), netip.Addr{}, now)
		if (err != nil && !errors.Is(err, conntrack.ErrInvalid)) || r.Dir != conntrack.Reply || !r.NAT() {
			w.drop(DropNoConntrack)
			return false
		}
		if rewrite(frame, pp, &r, g) != nil {
			w.drop(DropSNAT)
			return false
		}
		return true
	}
	if r, ok := s.Table.TrackRelated(frame, pp, now); ok && r.NAT() && r.Dir == conntrack.Reply {
		if conntrack.RewriteRelated(frame, pp, &r) == nil {
			return true
		}
		w.drop(DropSNAT)
		return false
	}
	w.drop(DropNoConntrack)
	return false
}

// rewrite is conntrack.Rewrite for a packet in any offload state.
func rewrite(frame []byte, pp *packet.Parsed, r *conntrack.Result, g packet.GSO) error {
	if !r.NAT() {
		return nil
	}
	if !g.NeedsCsum {
		return conntrack.Rewrite(frame, pp, r)
	}
	return rewritePartial(frame, pp, g, r.Dir == conntrack.Original, func() error { return conntrack.Rewrite(frame, pp, r) })
}

// rewritePartial runs do, a rewrite of the packet's source (src) or
// destination address and port, on a packet with a partial checksum
// (g.NeedsCsum): its checksum field holds the pseudo-header sum, so only
// the address change is folded into it.
func rewritePartial(frame []byte, pp *packet.Parsed, g packet.GSO, src bool, do func() error) error {
	if !g.NeedsCsum {
		return do()
	}
	at := pp.IPOff + int(g.CsumStart) + int(g.CsumOffset)
	if int(g.CsumStart) < pp.L4Off-pp.IPOff || at+2 > pp.IPEnd {
		return conntrack.ErrRewrite
	}
	partial := binary.BigEndian.Uint16(frame[at:])
	var old [16]byte
	addrOff, n := 12, 4 // IPv4 source
	if pp.Version == 6 {
		addrOff, n = 8, 16
	}
	if !src {
		addrOff += n // destination
	}
	ip := frame[pp.IPOff:pp.IPEnd]
	copy(old[:n], ip[addrOff:addrOff+n])
	if err := do(); err != nil {
		return err
	}
	if pp.Proto == packet.ProtoICMPv4 { // no pseudo-header
		binary.BigEndian.PutUint16(frame[at:], partial)
		return nil
	}
	// partial is an uncomplemented sum; UpdateChecksum works on complemented ones.
	binary.BigEndian.PutUint16(frame[at:], ^packet.UpdateChecksumBytes(^partial, old[:n], ip[addrOff:addrOff+n]))
	return nil
}
