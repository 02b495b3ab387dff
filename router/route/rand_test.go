package route

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The randomized test checks Table against the simplest possible LPM: a
// linear scan over every route keeping the longest one that contains the
// address (after wireguard-go's allowedips_rand_test.go).

// naiveLookup is the reference LPM.
func naiveLookup(routes []Route, a netip.Addr) (NextHop, bool) {
	a = a.WithZone("")
	best := -1
	var nh NextHop
	for _, r := range routes {
		if r.Prefix.Bits() > best && r.Prefix.Contains(a) {
			best, nh = r.Prefix.Bits(), r.NextHop
		}
	}
	return nh, best >= 0
}

func randAddr(rng *rand.Rand, v6 bool) netip.Addr {
	var b [16]byte
	for i := 0; i < len(b); i += 8 {
		u := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(u >> (8 * j))
		}
	}
	if !v6 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// randAddrIn returns a random address inside p.
func randAddrIn(rng *rand.Rand, p netip.Prefix) netip.Addr {
	r := randAddr(rng, p.Addr().Is6()).AsSlice()
	base := p.Addr().AsSlice()
	for i := range p.Bits() {
		mask := byte(0x80 >> (i % 8))
		r[i/8] = r[i/8]&^mask | base[i/8]&mask
	}
	a, _ := netip.AddrFromSlice(r)
	return a
}

func randNextHop(rng *rand.Rand) NextHop {
	switch k := Kind(rng.IntN(numKinds)); k {
	case Local, Egress:
		return NextHop{Kind: k, Port: rng.Int32N(1 << 16)}
	case Peer:
		return NextHop{Kind: k, Peer: rng.Int32N(1 << 16)}
	default:
		return NextHop{Kind: k}
	}
}

// randRoutes returns n distinct masked routes, v4 and v6, of lengths 4..32
// and 8..128 (so some addresses match nothing), plus the default routes
// 0.0.0.0/0 and ::/0 if defaults is set. Half of them nest inside an earlier route (a longer prefix of a random
// address inside it), so the table has deep chains of covering prefixes and
// lookups that must backtrack.
func randRoutes(rng *rand.Rand, n int, defaults bool) []Route {
	seen := make(map[netip.Prefix]bool, n)
	routes := make([]Route, 0, n)
	if defaults {
		for _, p := range []netip.Prefix{mustPrefix("0.0.0.0/0"), mustPrefix("::/0")} {
			seen[p] = true
			routes = append(routes, Route{Prefix: p, NextHop: randNextHop(rng)})
		}
	}
	for len(routes) < n {
		var p netip.Prefix
		if len(routes) > 0 && rng.IntN(2) == 0 {
			parent := routes[rng.IntN(len(routes))].Prefix
			maxBits := parent.Addr().BitLen()
			bits := parent.Bits() + rng.IntN(maxBits-parent.Bits()+1)
			p = netip.PrefixFrom(randAddrIn(rng, parent), bits).Masked()
		} else {
			v6 := rng.IntN(3) == 0
			a := randAddr(rng, v6)
			minBits := a.BitLen() / 8
			p = netip.PrefixFrom(a, minBits+rng.IntN(a.BitLen()-minBits+1)).Masked()
		}
		if rng.IntN(50) == 0 { // IPv4-mapped space: must not capture IPv4 lookups
			v4 := randAddr(rng, false)
			p = netip.PrefixFrom(netip.AddrFrom16(v4.As16()), 96+rng.IntN(33)).Masked()
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		routes = append(routes, Route{Prefix: p, NextHop: randNextHop(rng)})
	}
	return routes
}

func TestLookupRandom(t *testing.T) {
	tests := []struct {
		name     string
		seed     uint64
		routes   int
		defaults bool
		lookups  int
	}{
		{"few routes", 1, 8, false, 20000},
		{"few routes with defaults", 1, 8, true, 20000},
		{"hundreds", 2, 300, false, 20000},
		{"thousands", 3, 2500, false, 30000},
		{"thousands with defaults", 4, 2500, true, 30000},
		{"other seed", 0xc0ffee, 2500, false, 30000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, lookups := tt.routes, tt.lookups
			if testing.Short() {
				n, lookups = min(n, 500), min(lookups, 5000)
			}
			rng := rand.New(rand.NewPCG(tt.seed, tt.seed^0x9e3779b97f4a7c15))
			routes := randRoutes(rng, n, tt.defaults)
			b := NewBuilder()
			for _, r := range routes {
				if err := b.Add(r.Prefix, r.NextHop); err != nil {
					t.Fatalf("Add(%v): %v", r, err)
				}
			}
			tbl := b.Build()
			if tbl.Len() != len(routes) {
				t.Fatalf("Len() = %d; want %d", tbl.Len(), len(routes))
			}

			var hits int
			for i := range lookups {
				var a netip.Addr
				switch i % 4 {
				case 0, 1: // inside a route: exercises every depth
					a = randAddrIn(rng, routes[rng.IntN(len(routes))].Prefix)
				case 2:
					a = randAddr(rng, false)
				case 3:
					a = randAddr(rng, true)
				}
				if i%16 == 0 && a.Is4() {
					a = netip.AddrFrom16(a.As16()) // IPv4-mapped: looked up as IPv6
				}
				want, wantOK := naiveLookup(routes, a)
				got, ok := tbl.Lookup(a)
				if got != want || ok != wantOK {
					t.Fatalf("Lookup(%v) = %v, %v; reference says %v, %v", a, got, ok, want, wantOK)
				}
				if ok {
					hits++
				}
			}
			t.Logf("%d routes, %d lookups, %d hits", len(routes), lookups, hits)

			// Every route is found again exactly, by Get, LookupPrefix and All.
			for _, r := range routes {
				if nh, ok := tbl.Get(r.Prefix); !ok || nh != r.NextHop {
					t.Fatalf("Get(%v) = %v, %v; want %v, true", r.Prefix, nh, ok, r.NextHop)
				}
				if got, ok := tbl.LookupPrefix(r.Prefix); !ok || got != r {
					t.Fatalf("LookupPrefix(%v) = %v, %v; want %v, true", r.Prefix, got, ok, r)
				}
			}
			var prev netip.Prefix
			n = 0
			for r := range tbl.All() {
				if n > 0 && comparePrefix(prev, r.Prefix) >= 0 {
					t.Fatalf("All() out of order: %v before %v", prev, r.Prefix)
				}
				prev = r.Prefix
				n++
			}
			if n != len(routes) {
				t.Fatalf("All() yielded %d routes; want %d", n, len(routes))
			}
		})
	}
}

// TestAddRandomUnmasked checks that Add rejects every prefix with host bits
// set and accepts its masked form.
func TestAddRandomUnmasked(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	b := NewBuilder()
	for range 2000 {
		a := randAddr(rng, rng.IntN(2) == 0)
		p := netip.PrefixFrom(a, rng.IntN(a.BitLen()+1))
		err := b.Add(p, ToPeer(1))
		switch {
		case p != p.Masked() && !errors.Is(err, ErrNotMasked):
			t.Fatalf("Add(%v) = %v; want ErrNotMasked", p, err)
		case p == p.Masked() && err != nil && !errors.Is(err, ErrDuplicate):
			t.Fatalf("Add(%v) = %v; want nil", p, err)
		}
	}
}
