package conntrack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

func TestRangeShards(t *testing.T) {
	c := newClock()
	tab := newTable(t, c, func(cfg *conntrack.Config) { cfg.Shards = 4 })
	now := tab.Now()
	want := map[conntrack.Tuple]bool{}
	for i := range 300 {
		k := conntrack.MakeTuple(packet.ProtoUDP, netip.AddrPortFrom(pod1, uint16(1000+i)), netip.AddrPortFrom(remote, 53))
		snat := node
		if i%3 == 0 {
			snat = netip.Addr{} // untranslated flows have one slot
		}
		if _, err := tab.Track(k, 0, snat, now); err != nil {
			t.Fatal(err)
		}
		want[k] = snat.IsValid()
	}
	seen := map[conntrack.Tuple]int{}
	tab.RangeShards(now, func(f conntrack.Flow) bool {
		seen[f.Orig]++
		if nat, ok := want[f.Orig]; !ok || nat != f.NAT {
			t.Errorf("flow %v NAT %v: not one of ours", f.Orig, f.NAT)
		}
		if f.NAT && f.Reply.Dst().Addr() != node {
			t.Errorf("flow %v: reply %v, want to %s", f.Orig, f.Reply, node)
		}
		return true
	})
	if len(seen) != len(want) {
		t.Fatalf("saw %d flows, want %d", len(seen), len(want))
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("flow %v reported %d times", k, n)
		}
	}
	n := 0
	tab.RangeShards(now, func(conntrack.Flow) bool { n++; return n < 10 })
	if n != 10 {
		t.Fatalf("fn called %d times after returning false, want 10", n)
	}
	// Expired flows are left out.
	c.Advance(time.Hour)
	tab.RangeShards(tab.Now(), func(f conntrack.Flow) bool {
		t.Fatalf("expired flow %v reported", f.Orig)
		return false
	})
}
