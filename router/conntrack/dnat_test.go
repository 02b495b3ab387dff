package conntrack_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	vip  = netip.MustParseAddr("10.96.0.10")
	vip6 = netip.MustParseAddr("fd00:96::10")
	gw   = netip.MustParseAddr("10.244.1.1")
)

// TestDNATFlow: a Service flow is tracked under its original tuple and
// its translated reply tuple (from the backend), with both translations
// in the Result; the untranslated reply tuple is not the flow; Delete by
// either key frees both.
func TestDNATFlow(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, vip, 40000, 80)
	backend := netip.AddrPortFrom(pod2, 8080)
	res, err := tb.TrackDNAT(k, syn, backend, netip.Addr{}, tb.Now())
	if err != nil || !res.IsNew() || res.Dir != conntrack.Original || !res.DNAT() || res.DNATAddr != pod2 || res.DNATPort != 8080 || res.NAT() {
		t.Fatalf("SYN: %+v, %v", res, err)
	}
	// A retransmitted SYN finds the flow; the dnat argument is not used again.
	res, err = tb.TrackDNAT(k, syn, netip.AddrPortFrom(remote, 1), netip.Addr{}, tb.Now())
	if err != nil || res.IsNew() || res.DNATAddr != pod2 || res.DNATPort != 8080 {
		t.Fatalf("retransmitted SYN: %+v, %v", res, err)
	}
	rep := tcp(pod2, pod1, 8080, 40000)
	res, err = tb.Track(rep, synack, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply || res.DNATAddr != vip || res.DNATPort != 80 || res.NAT() || res.State != conntrack.StateSynRecv {
		t.Fatalf("SYN/ACK: %+v, %v", res, err)
	}
	if r, ok := tb.Lookup(rep, tb.Now()); !ok || r.Dir != conntrack.Reply || r.DNATAddr != vip {
		t.Fatalf("Lookup(reply) = %+v, %v", r, ok)
	}
	if _, ok := tb.Lookup(k.Reply(), tb.Now()); ok {
		t.Fatal("the untranslated reply tuple (from the Service address) matched")
	}
	f, _, ok := tb.Get(k, tb.Now())
	if !ok || !f.DNAT || f.NAT || f.Reply != rep || f.Orig != k {
		t.Fatalf("flow %+v", f)
	}
	var seen int
	tb.RangeShards(tb.Now(), func(f conntrack.Flow) bool { seen++; return true })
	tb.Range(tb.Now(), func(f conntrack.Flow) bool { seen++; return f.Reply == rep })
	if seen != 2 {
		t.Fatalf("Range and RangeShards saw %d flows, want 1 each", seen)
	}
	if !tb.Delete(rep) {
		t.Fatal("Delete(reply) found nothing")
	}
	if _, _, ok := tb.Get(k, tb.Now()); ok || tb.Len() != 0 {
		t.Fatal("original key survived Delete")
	}
	// The family must match.
	if _, err := tb.TrackDNAT(udp(pod1, vip, 1, 53), 0, netip.AddrPortFrom(pod6, 53), netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrInvalid) {
		t.Fatalf("IPv4 flow to an IPv6 backend: %v", err)
	}
}

// TestDNATHairpin: a pod reaching itself through its Service is
// translated both ways, source to a SNAT address, so that it sees its
// own traffic come from elsewhere.
func TestDNATHairpin(t *testing.T) {
	tb := newTable(t, newClock(), func(cfg *conntrack.Config) {
		cfg.SNAT = []conntrack.SNATAddr{{Addr: gw, PortMin: 1024, PortMax: 15999}}
	})
	k := udp(pod1, vip, 5353, 53)
	res, err := tb.TrackDNAT(k, 0, netip.AddrPortFrom(pod1, 5353), gw, tb.Now())
	if err != nil || res.DNATAddr != pod1 || res.DNATPort != 5353 || res.NATAddr != gw || res.NATPort < 1024 || res.NATPort > 15999 {
		t.Fatalf("hairpin: %+v, %v", res, err)
	}
	rep := udp(pod1, gw, 5353, res.NATPort)
	r2, err := tb.Track(rep, 0, netip.Addr{}, tb.Now())
	if err != nil || r2.Dir != conntrack.Reply || r2.DNATAddr != vip || r2.DNATPort != 53 || r2.NATAddr != pod1 || r2.NATPort != 5353 {
		t.Fatalf("hairpin reply: %+v, %v", r2, err)
	}
}

// TestDNATClash: two flows whose translated replies would be the same
// (one client port, two Services, one backend) cannot both exist.
func TestDNATClash(t *testing.T) {
	tb := newTable(t, newClock(), nil)
	be := netip.AddrPortFrom(pod2, 53)
	if _, err := tb.TrackDNAT(udp(pod1, vip, 7000, 53), 0, be, netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	other := netip.MustParseAddr("10.96.0.11")
	if _, err := tb.TrackDNAT(udp(pod1, other, 7000, 53), 0, be, netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrClash) {
		t.Fatalf("clashing flow: %v, want ErrClash", err)
	}
	if tb.Stats().Drops[conntrack.DropClash] != 1 {
		t.Fatalf("stats %+v", tb.Stats())
	}
}

// TestRewriteDNATOracle: DNAT rewrites, both ways, checked against
// packets gVisor builds with the translated addresses.
func TestRewriteDNATOracle(t *testing.T) {
	payload := []byte("to a Service and back")
	cases := []struct {
		name     string
		out      spec
		backend  netip.AddrPort
		replyLen int
	}{
		{"tcp4", spec{proto: packet.ProtoTCP, src: ap(pod1, 40000), dst: ap(vip, 80), flags: header.TCPFlagSyn, payload: payload}, ap(pod2, 8080), 3},
		{"udp4", spec{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(vip, 53), payload: payload}, ap(pod2, 5353), 7},
		{"udp4 without checksum", spec{proto: packet.ProtoUDP, src: ap(pod1, 5353), dst: ap(vip, 53), noCsum: true}, ap(pod2, 53), 0},
		{"tcp6", spec{proto: packet.ProtoTCP, src: ap(pod6, 40000), dst: ap(vip6, 443), flags: header.TCPFlagSyn}, ap(netip.MustParseAddr("fd00:10:244:2::9"), 8443), 5},
		{"udp6", spec{proto: packet.ProtoUDP, src: ap(pod6, 5353), dst: ap(vip6, 53), payload: payload}, ap(netip.MustParseAddr("fd00:10:244:2::9"), 53), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, newClock(), nil)
			b := tc.out.build()
			pp := parse(t, b)
			k, _ := conntrack.FromParsed(pp)
			origK := k
			res, err := tb.TrackDNAT(k, uint8(tc.out.flags), tc.backend, netip.Addr{}, tb.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := conntrack.RewriteDNAT(b, pp, &res); err != nil {
				t.Fatal(err)
			}
			want := tc.out
			want.dst = tc.backend
			if w := want.build(); !bytes.Equal(b, w) {
				t.Fatalf("translated:\n%s\nwant (gVisor):\n%s", hex.Dump(b), hex.Dump(w))
			}
			checkValid(t, b)
			if pp.Dst != tc.backend.Addr() || pp.DstPort != tc.backend.Port() {
				t.Fatalf("Parsed not updated: %+v", pp)
			}
			// The backend answers; the client sees the Service.
			in := spec{proto: tc.out.proto, src: tc.backend, dst: tc.out.src, noCsum: tc.out.noCsum, payload: payload[:tc.replyLen]}
			if in.proto == packet.ProtoTCP {
				in.flags = header.TCPFlagSyn | header.TCPFlagAck
			}
			b = in.build()
			pp = parse(t, b)
			k, _ = conntrack.FromParsed(pp)
			res, err = tb.Track(k, uint8(in.flags), netip.Addr{}, tb.Now())
			if err != nil || res.Dir != conntrack.Reply {
				t.Fatalf("reply: %+v, %v", res, err)
			}
			if err := conntrack.RewriteDNAT(b, pp, &res); err != nil {
				t.Fatal(err)
			}
			want = in
			want.src = tc.out.dst
			if w := want.build(); !bytes.Equal(b, w) {
				t.Fatalf("translated reply:\n%s\nwant (gVisor):\n%s", hex.Dump(b), hex.Dump(w))
			}
			checkValid(t, b)

			// A port unreachable from the backend about a packet sent
			// to it reaches the client about the packet it sent.
			sent := tc.out.build()
			spp := parse(t, sent)
			r0, _ := tb.Lookup(origK, tb.Now())
			if err := conntrack.RewriteDNAT(sent, spp, &r0); err != nil {
				t.Fatal(err)
			}
			e := icmpError(tc.backend.Addr(), tc.out.src.Addr(), sent, 576)
			epp := parse(t, e)
			rel, ok := tb.TrackRelated(e, epp, tb.Now())
			if !ok || rel.Dir != conntrack.Reply || rel.DNATAddr != tc.out.dst.Addr() {
				t.Fatalf("TrackRelated = %+v, %v", rel, ok)
			}
			if err := conntrack.RewriteRelatedDNAT(e, epp, &rel); err != nil {
				t.Fatal(err)
			}
			if w := icmpError(tc.out.dst.Addr(), tc.out.src.Addr(), tc.out.build(), 576); !bytes.Equal(e, w) {
				t.Fatalf("translated error:\n%s\nwant (gVisor):\n%s", hex.Dump(e), hex.Dump(w))
			}
			checkValid(t, e)
		})
	}
}

func TestRewriteDNATAllocs(t *testing.T) {
	tb := newTable(t, newClock(), nil)
	b := spec{proto: packet.ProtoUDP, src: ap(pod1, 1000), dst: ap(vip, 53)}.build()
	pp := parse(t, b)
	k, _ := conntrack.FromParsed(pp)
	now := tb.Now()
	if _, err := tb.TrackDNAT(k, 0, ap(pod2, 53), netip.Addr{}, now); err != nil {
		t.Fatal(err)
	}
	rk := udp(pod2, pod1, 53, 1000)
	n := testing.AllocsPerRun(1000, func() {
		r, _ := tb.TrackDNAT(k, 0, ap(pod2, 53), netip.Addr{}, now)
		r2, _ := tb.Track(rk, 0, netip.Addr{}, now)
		if r.DNATAddr != pod2 || r2.DNATAddr != vip {
			t.Fatal("lost the flow")
		}
	})
	if n != 0 {
		t.Fatalf("%v allocs per tracked DNAT packet pair", n)
	}
}

// TestDNATOrigin: a flow labelled at its creation (TrackDNATFrom) returns
// the label in every Result, either way (Track, TrackExisting, Lookup,
// TrackRelated), beside an intact backend port; a later packet's label
// changes nothing; a flow made without one, in the same record after the
// first is gone, has none.
func TestDNATOrigin(t *testing.T) {
	tb := newTable(t, newClock(), nil)
	k := tcp(remote, vip, 40000, 30080)
	backend := netip.AddrPortFrom(pod2, 65535) // every bit of the port set
	const origin = 0xfffe
	res, err := tb.TrackDNATFrom(k, syn, backend, netip.Addr{}, origin, tb.Now())
	if err != nil || !res.IsNew() || res.Origin() != origin || res.DNATAddr != pod2 || res.DNATPort != 65535 {
		t.Fatalf("SYN: %+v (origin %#x), %v", res, res.Origin(), err)
	}
	res, err = tb.TrackDNATFrom(k, syn, backend, netip.Addr{}, 7, tb.Now())
	if err != nil || res.IsNew() || res.Origin() != origin {
		t.Fatalf("retransmitted SYN with another label: origin %#x, %v", res.Origin(), err)
	}
	rep := tcp(pod2, remote, 65535, 40000)
	res, err = tb.Track(rep, synack, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply || res.Origin() != origin || res.DNATAddr != vip || res.DNATPort != 30080 {
		t.Fatalf("SYN/ACK: %+v (origin %#x), %v", res, res.Origin(), err)
	}
	res, found, err := tb.TrackExisting(k, ack, tb.Now())
	if !found || err != nil || res.Dir != conntrack.Original || res.Origin() != origin || res.DNATPort != 65535 {
		t.Fatalf("ACK: %+v (origin %#x), %v, %v", res, res.Origin(), found, err)
	}
	if r, ok := tb.Lookup(rep, tb.Now()); !ok || r.Origin() != origin {
		t.Fatalf("Lookup(reply) = %+v (origin %#x), %v", r, r.Origin(), ok)
	}
	// An ICMP error from the backend about a packet sent to it.
	q := spec{proto: packet.ProtoTCP, src: ap(remote, 40000), dst: backend, flags: header.TCPFlagAck}.build()
	e := icmpError(pod2, remote, q, 576)
	if rel, ok := tb.TrackRelated(e, parse(t, e), tb.Now()); !ok || rel.Dir != conntrack.Reply || rel.Origin() != origin {
		t.Fatalf("TrackRelated = %+v (origin %#x), %v", rel, rel.Origin(), ok)
	}
	if !tb.Delete(k) {
		t.Fatal("Delete found nothing")
	}
	// The freed record is reused: a flow without a label has none.
	k2 := tcp(remote, vip, 40001, 30080)
	res, err = tb.TrackDNAT(k2, syn, backend, netip.Addr{}, tb.Now())
	if err != nil || res.Origin() != 0 {
		t.Fatalf("unlabelled flow: origin %#x, %v", res.Origin(), err)
	}
	res, err = tb.Track(tcp(pod2, remote, 65535, 40001), synack, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply || res.Origin() != 0 {
		t.Fatalf("unlabelled flow's reply: %+v (origin %#x), %v", res, res.Origin(), err)
	}
}
