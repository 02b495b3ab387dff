package conntrack_test

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/conntrack"
)

// TestHint: TrackExistingHint names a flow whose packet left it as it was,
// and Still holds exactly while the flow would take the next packet the
// same way: not across a timeout refresh, a state change, a delete, or
// any other insert or delete in the flow's shard.
func TestHint(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, func(cfg *conntrack.Config) { cfg.Shards = 1 }) // every change is in the flow's shard
	k := udp(pod1, vip, 40000, 53)
	backend := netip.AddrPortFrom(pod2, 5353)
	if _, err := tb.TrackDNAT(k, 0, backend, netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	var h conntrack.Hint
	if h.Valid() || tb.Still(&h, 0, tb.Now()) {
		t.Fatal("the zero Hint names a flow")
	}
	res, found, err := tb.TrackExistingHint(k, 0, tb.Now(), &h)
	if !found || err != nil || res.Dir != conntrack.Original || res.DNATAddr != pod2 || res.DNATPort != 5353 || !h.Valid() {
		t.Fatalf("second packet: %+v found %v err %v hint %v", res, found, err, h.Valid())
	}
	if !tb.Still(&h, 0, tb.Now()) {
		t.Fatal("Still false for an unchanged flow")
	}

	// A refresh is due a second later: Still fails, the full path refreshes
	// (no hint), the packet after that gets one again.
	c.Advance(time.Second)
	if tb.Still(&h, 0, tb.Now()) {
		t.Fatal("Still true with a refresh due")
	}
	if _, found, _ := tb.TrackExistingHint(k, 0, tb.Now(), &h); !found || h.Valid() {
		t.Fatalf("refreshing packet: found %v, hint %v", found, h.Valid())
	}
	if _, _, _ = tb.TrackExistingHint(k, 0, tb.Now(), &h); !h.Valid() {
		t.Fatal("no hint after the refresh")
	}

	// The reply way: its first packet changes the flow (seen reply), the
	// second does not.
	rep := udp(pod2, pod1, 5353, 40000)
	var hr conntrack.Hint
	if res, found, _ := tb.TrackExistingHint(rep, 0, tb.Now(), &hr); !found || res.Dir != conntrack.Reply || hr.Valid() {
		t.Fatalf("first reply: %+v found %v hint %v", res, found, hr.Valid())
	}
	if tb.Still(&h, 0, tb.Now()) {
		t.Fatal("Still true for the original after the reply changed the flow")
	}
	res, found, _ = tb.TrackExistingHint(rep, 0, tb.Now(), &hr)
	if !found || res.Dir != conntrack.Reply || res.DNATAddr != vip || res.DNATPort != 53 || !hr.Valid() || !tb.Still(&hr, 0, tb.Now()) {
		t.Fatalf("second reply: %+v found %v hint %v", res, found, hr.Valid())
	}

	// Another flow in the shard: every hint of the shard lapses.
	if _, err := tb.Track(udp(pod1, remote, 1, 2), 0, netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	if tb.Still(&hr, 0, tb.Now()) {
		t.Fatal("Still true after an insert in the shard")
	}

	// Deleted and made again to another backend: the old hint is dead and
	// the new lookup gives the new backend.
	tb.TrackExistingHint(k, 0, tb.Now(), &h)
	if !h.Valid() {
		t.Fatal("no hint")
	}
	if !tb.Delete(k) {
		t.Fatal("Delete found nothing")
	}
	if tb.Still(&h, 0, tb.Now()) {
		t.Fatal("Still true for a deleted flow")
	}
	if _, found, _ := tb.TrackExistingHint(k, 0, tb.Now(), &h); found || h.Valid() {
		t.Fatal("a deleted flow was found")
	}
	if _, err := tb.TrackDNAT(k, 0, netip.AddrPortFrom(remote, 53), netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	if res, _, _ := tb.TrackExistingHint(k, 0, tb.Now(), &h); res.DNATAddr != remote || !h.Valid() {
		t.Fatalf("new flow: %+v hint %v", res, h.Valid())
	}

	// Expiry: Still fails once the flow's timeout passed.
	c.Advance(time.Hour)
	if tb.Still(&h, 0, tb.Now()) {
		t.Fatal("Still true for an expired flow")
	}
}

// TestHintTCP: an established flow's ACKs keep a hint; a FIN, a RST or a
// SYN (each a state change or invalid) do not pass Still.
func TestHintTCP(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, vip, 40000, 80)
	rep := tcp(pod2, pod1, 8080, 40000)
	if _, err := tb.TrackDNAT(k, syn, netip.AddrPortFrom(pod2, 8080), netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		k     conntrack.Tuple
		flags uint8
	}{{rep, synack}, {k, ack}, {rep, ack}} {
		if _, err := tb.Track(p.k, p.flags, netip.Addr{}, tb.Now()); err != nil {
			t.Fatal(err)
		}
	}
	var h conntrack.Hint
	if res, found, err := tb.TrackExistingHint(k, ack, tb.Now(), &h); !found || err != nil || res.State != conntrack.StateEstablished || !h.Valid() {
		t.Fatalf("ACK: %+v found %v err %v hint %v", res, found, err, h.Valid())
	}
	if !tb.Still(&h, ack, tb.Now()) {
		t.Fatal("Still false for an ACK of an established flow")
	}
	for _, f := range []uint8{fin, rst, syn, synack} {
		if tb.Still(&h, f, tb.Now()) {
			t.Errorf("Still true for flags %#x", f)
		}
	}
	// A FIN goes the full way and changes the flow.
	if res, _, _ := tb.TrackExistingHint(k, fin, tb.Now(), &h); res.State != conntrack.StateFinWait || h.Valid() {
		t.Fatalf("FIN: %+v hint %v", res, h.Valid())
	}
}

// TestHintConcurrent: while another goroutine inserts and deletes flows
// (in the one shard), a hint that passes Still always describes the live
// flow: its Result is the one a fresh lookup gives.
func TestHintConcurrent(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, func(cfg *conntrack.Config) { cfg.Shards = 1 })
	k := udp(pod1, vip, 40000, 53)
	backends := []netip.AddrPort{netip.AddrPortFrom(pod2, 1), netip.AddrPortFrom(remote, 2)}
	if _, err := tb.TrackDNAT(k, 0, backends[0], netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // replaces the flow, alternating backends, and churns others
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			tb.Delete(k)
			if _, err := tb.TrackDNAT(k, 0, backends[i%2], netip.Addr{}, tb.Now()); err != nil {
				t.Error(err)
				return
			}
			other := udp(pod1, remote, uint16(i), 9)
			tb.Track(other, 0, netip.Addr{}, tb.Now())
			tb.Delete(other)
		}
	}()
	var h conntrack.Hint
	var res conntrack.Result
	var checked int
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if !tb.Still(&h, 0, tb.Now()) {
			res, _, _ = tb.TrackExistingHint(k, 0, tb.Now(), &h)
			continue
		}
		// The flow is as h saw it: the Result that came with h holds.
		now, ok := tb.Lookup(k, tb.Now())
		if tb.Still(&h, 0, tb.Now()) && ok && (now.DNATAddr != res.DNATAddr || now.DNATPort != res.DNATPort) {
			t.Fatalf("Still true with a stale backend: cached %v:%d, table %v:%d", res.DNATAddr, res.DNATPort, now.DNATAddr, now.DNATPort)
		}
		checked++
	}
	stop.Store(true)
	wg.Wait()
	if checked == 0 {
		t.Fatal("no hint held long enough to be checked")
	}
}
