package conntrack_test

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	"github.com/podrouter/podrouter/router/conntrack"
)

// flows returns n distinct TCP tuples from 256 pods to random outside
// addresses, in random order.
func flows(n int, seed uint64) []conntrack.Tuple {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]conntrack.Tuple, n)
	for i := range out {
		src := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8 & 0xff), byte(i & 0xff)})
		dst := netip.AddrFrom4([4]byte{byte(1 + r.IntN(200)), byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))})
		out[i] = tcp(src, dst, uint16(1024+i>>16), 443)
	}
	return out
}

func benchTable(tb testing.TB, max int) *conntrack.Table {
	t, err := conntrack.New(conntrack.Config{
		MaxEntries: max, MaxPerSource: max,
		SNAT: []conntrack.SNATAddr{{Addr: node, PortMin: 1024, PortMax: 65535}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

func fill(tb testing.TB, t *conntrack.Table, ks []conntrack.Tuple, nat bool) {
	var snat netip.Addr
	if nat {
		snat = node
	}
	now := t.Now()
	for _, k := range ks {
		if _, err := t.Track(k, syn, snat, now); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkLookup looks up existing flows in random order in a table of
// 100k and 1M flows: the original direction, the reply direction of a NAT
// flow, and a miss.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		ks := flows(n, 1)
		t := benchTable(b, n)
		fill(b, t, ks[:n/2], false)
		fill(b, t, ks[n/2:], true)
		now := t.Now()
		replies := make([]conntrack.Tuple, n/2)
		for i, k := range ks[n/2:] {
			f, _, _ := t.Get(k, now)
			replies[i] = f.Reply
		}
		misses := flows(n, 2)
		for _, c := range []struct {
			name string
			ks   []conntrack.Tuple
			hit  bool
		}{
			// hot: 1024 active flows, their records and slots in cache
			// (a batch of packets from a few busy flows); the others walk
			// the whole table in random order, a cache miss or two per
			// lookup on a table this size.
			{"hot", ks[:1024], true},
			{"hot-nat-reply", replies[:1024], true},
			{"original", ks, true}, {"nat-reply", replies, true}, {"miss", misses, false},
		} {
			b.Run(c.name+"/"+itoa(n), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, ok := t.Lookup(c.ks[i], now); ok != c.hit {
						b.Fatalf("lookup %v: %v", c.ks[i], ok)
					}
					if i++; i == len(c.ks) {
						i = 0
					}
				}
			})
		}
		b.Run("parallel/"+itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(ks))
				for pb.Next() {
					t.Lookup(ks[i], now)
					if i++; i == len(ks) {
						i = 0
					}
				}
			})
		})
	}
}

// BenchmarkTrack is the data path's call for a packet of a known,
// established flow: lookup, state machine, timeout check, over 1024 busy
// flows (hot) or all 100k in turn (cold).
func BenchmarkTrack(b *testing.B) {
	const n = 100_000
	ks := flows(n, 1)
	t := benchTable(b, n)
	fill(b, t, ks, false)
	for _, k := range ks { // SYN/ACK, ACK: established
		t.Track(k.Reply(), synack, netip.Addr{}, t.Now())
		t.Track(k, ack, netip.Addr{}, t.Now())
	}
	now := t.Now()
	for _, c := range []struct {
		name string
		ks   []conntrack.Tuple
	}{{"hot", ks[:1024]}, {"cold", ks}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := t.Track(c.ks[i], ack, netip.Addr{}, now); err != nil {
					b.Fatal(err)
				}
				if i++; i == len(c.ks) {
					i = 0
				}
			}
		})
	}
}

// BenchmarkInsert creates flows (a SYN each), with and without source NAT,
// into a table that holds up to 1M.
func BenchmarkInsert(b *testing.B) {
	const n = 1 << 20
	ks := flows(n, 3)
	for _, nat := range []bool{false, true} {
		name := "plain"
		var snat netip.Addr
		if nat {
			name, snat = "snat", node
		}
		b.Run(name, func(b *testing.B) {
			t := benchTable(b, n)
			now := t.Now()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i == n {
					b.StopTimer()
					t, i = benchTable(b, n), 0
					b.StartTimer()
				}
				if _, err := t.Track(ks[i], syn, snat, now); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkBytesPerEntry measures the heap a table of 1M flows takes
// (runtime.MemStats after GC), per flow, without and with source NAT.
func BenchmarkBytesPerEntry(b *testing.B) {
	const n = 1_000_000
	ks := flows(n, 4)
	for _, nat := range []bool{false, true} {
		name := "plain"
		if nat {
			name = "snat"
		}
		b.Run(name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				per = bytesPerEntry(b, ks, nat)
			}
			b.ReportMetric(per, "B/entry")
		})
	}
}

func bytesPerEntry(tb testing.TB, ks []conntrack.Tuple, nat bool) float64 {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	t := benchTable(tb, len(ks))
	fill(tb, t, ks, nat)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if t.Len() != len(ks) {
		tb.Fatalf("%d flows, want %d", t.Len(), len(ks))
	}
	runtime.KeepAlive(t)
	return float64(m1.HeapAlloc-m0.HeapAlloc) / float64(len(ks))
}

func TestLookupAllocs(t *testing.T) {
	ks := flows(1000, 5)
	tb := benchTable(t, 1000)
	fill(t, tb, ks, true)
	now := tb.Now()
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		tb.Lookup(ks[i%len(ks)], now)
		tb.Track(ks[i%len(ks)], syn, node, now)
		i++
	})
	if allocs != 0 {
		t.Fatalf("Lookup + Track: %v allocs, want 0", allocs)
	}
}

func itoa(n int) string {
	if n%1_000_000 == 0 {
		return strconv.Itoa(n/1_000_000) + "M"
	}
	return strconv.Itoa(n/1000) + "k"
}
