package route

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"

	"github.com/gaissmai/bart"
)

// benchRoutes returns n distinct routes: random IPv4 prefixes of length 8..32
// plus about 1% IPv6 prefixes of length 16..128, and 1024 lookup addresses,
// three quarters inside a route (so lookups descend the trie) and the rest
// uniformly random (mostly misses or short matches).
func benchRoutes(n int) ([]Route, []netip.Addr) {
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	seen := make(map[netip.Prefix]bool, n)
	routes := make([]Route, 0, n)
	for len(routes) < n {
		var p netip.Prefix
		if rng.IntN(100) == 0 {
			p = netip.PrefixFrom(randAddr(rng, true), 16+rng.IntN(113)).Masked()
		} else {
			p = netip.PrefixFrom(randAddr(rng, false), 8+rng.IntN(25)).Masked()
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		routes = append(routes, Route{Prefix: p, NextHop: randNextHop(rng)})
	}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		if i%4 == 3 {
			addrs[i] = randAddr(rng, rng.IntN(100) == 0)
		} else {
			addrs[i] = randAddrIn(rng, routes[rng.IntN(len(routes))].Prefix)
		}
	}
	return routes, addrs
}

var benchSizes = []int{1_000, 10_000, 100_000}

func sizeName(n int) string {
	if n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// BenchmarkLookup measures Table.Lookup alone: the addresses are made before
// the timer starts. One op is one lookup.
func BenchmarkLookup(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			routes, addrs := benchRoutes(n)
			bld := NewBuilder()
			for _, r := range routes {
				if err := bld.Add(r.Prefix, r.NextHop); err != nil {
					b.Fatal(err)
				}
			}
			tbl := bld.Build()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tbl.Lookup(addrs[i&(len(addrs)-1)])
				i++
			}
		})
	}
}

// BenchmarkBartLookup compares the two payload-carrying bart tables on the
// same routes and addresses as BenchmarkLookup; it is why Table uses
// bart.Fast.
func BenchmarkBartLookup(b *testing.B) {
	for _, n := range benchSizes {
		routes, addrs := benchRoutes(n)
		b.Run("Table/"+sizeName(n), func(b *testing.B) {
			var t bart.Table[NextHop]
			for _, r := range routes {
				t.Insert(r.Prefix, r.NextHop)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				t.Lookup(addrs[i&(len(addrs)-1)])
				i++
			}
		})
		b.Run("Fast/"+sizeName(n), func(b *testing.B) {
			var t bart.Fast[NextHop]
			for _, r := range routes {
				t.Insert(r.Prefix, r.NextHop)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				t.Lookup(addrs[i&(len(addrs)-1)])
				i++
			}
		})
	}
}

// BenchmarkBuild measures a full snapshot rebuild, what the control plane
// pays per change.
func BenchmarkBuild(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			routes, _ := benchRoutes(n)
			b.ReportAllocs()
			for b.Loop() {
				bld := NewBuilder()
				for _, r := range routes {
					if err := bld.Add(r.Prefix, r.NextHop); err != nil {
						b.Fatal(err)
					}
				}
				bld.Build()
			}
		})
	}
}
