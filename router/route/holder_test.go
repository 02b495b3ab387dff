package route

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// generationTable builds snapshot gen: every route in it carries gen, so a
// reader can tell which snapshot answered and that one snapshot answered
// consistently.
func generationTable(t testing.TB, gen int32) *Table {
	t.Helper()
	b := NewBuilder()
	for _, r := range []Route{
		{mustPrefix("0.0.0.0/0"), ToEgress(gen)},
		{mustPrefix("10.244.0.0/16"), ToPeer(gen)},
		{mustPrefix("10.244.0.9/32"), ToLocal(gen)},
		{mustPrefix("fd00::/64"), ToPeer(gen)},
	} {
		if err := b.Add(r.Prefix, r.NextHop); err != nil {
			t.Fatal(err)
		}
	}
	// A route only in odd generations, so lookups change shape too.
	if gen%2 == 1 {
		if err := b.Add(mustPrefix("10.244.1.0/24"), ToLocal(gen)); err != nil {
			t.Fatal(err)
		}
	}
	return b.Build()
}

// TestHolderConcurrent has readers look up while a writer publishes new
// snapshots. Run it under -race: readers never lock, and must always see one
// whole snapshot, in publication order.
func TestHolderConcurrent(t *testing.T) {
	const (
		readers     = 4
		generations = 2000
	)
	var h Holder
	if h.Load() != nil {
		t.Fatal("zero Holder: Load() != nil")
	}
	if _, ok := h.Load().Lookup(mustAddr("10.244.0.9")); ok {
		t.Fatal("zero Holder: lookup in nil snapshot found a route")
	}
	h.Store(generationTable(t, 0))

	var (
		done  atomic.Bool
		wg    sync.WaitGroup
		loads atomic.Int64
	)
	errs := make(chan string, readers)
	addrs := []netip.Addr{
		mustAddr("10.244.0.9"), mustAddr("10.244.1.1"), mustAddr("10.244.7.7"),
		mustAddr("8.8.8.8"), mustAddr("fd00::1"),
	}
	for range readers {
		wg.Go(func() {
			last := int32(-1)
			for !done.Load() {
				tbl := h.Load()
				loads.Add(1)
				local, _ := tbl.Lookup(addrs[0])
				gen := local.Port
				if gen < last {
					errs <- "snapshot went back in time"
					return
				}
				last = gen
				want := []NextHop{ToLocal(gen), ToPeer(gen), ToPeer(gen), ToEgress(gen), ToPeer(gen)}
				if gen%2 == 1 {
					want[1] = ToLocal(gen)
				}
				for i, a := range addrs {
					if nh, ok := tbl.Lookup(a); !ok || nh != want[i] {
						errs <- "torn snapshot: " + a.String() + " -> " + nh.String() + ", want " + want[i].String()
						return
					}
				}
			}
		})
	}

	for gen := int32(1); gen <= generations; gen++ {
		h.Store(generationTable(t, gen))
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if nh, _ := h.Load().Lookup(addrs[0]); nh != ToLocal(generations) {
		t.Errorf("final snapshot: %v; want %v", nh, ToLocal(generations))
	}
	t.Logf("%d snapshots, %d reader loads", generations, loads.Load())
}
