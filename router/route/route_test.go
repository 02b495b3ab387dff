package route

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

var (
	mustAddr   = netip.MustParseAddr
	mustPrefix = netip.MustParsePrefix
)

// clusterTable is the shape the control plane builds (DESIGN.md, "Routing"):
// local pods, peer podCIDRs, the cluster CIDR's remainder unreachable, and
// default routes to the uplink.
func clusterTable(t testing.TB) *Table {
	t.Helper()
	b := NewBuilder()
	for _, r := range []Route{
		{mustPrefix("0.0.0.0/0"), ToEgress(0)},
		{mustPrefix("::/0"), ToEgress(0)},
		{mustPrefix("10.244.0.0/16"), NextHop{Kind: Unreachable}},
		{mustPrefix("10.244.1.0/24"), ToPeer(1)},
		{mustPrefix("10.244.2.0/24"), ToPeer(2)},
		{mustPrefix("10.244.0.5/32"), ToLocal(5)},
		{mustPrefix("10.244.0.6/32"), ToLocal(6)},
		{mustPrefix("10.244.2.128/25"), NextHop{Kind: Blackhole}},
		{mustPrefix("192.0.2.0/24"), NextHop{Kind: Blackhole}},
		{mustPrefix("fd00:10:244::/48"), NextHop{Kind: Unreachable}},
		{mustPrefix("fd00:10:244:1::/64"), ToPeer(1)},
		{mustPrefix("fd00:10:244::5/128"), ToLocal(5)},
		{mustPrefix("2001:db8::/32"), NextHop{Kind: Blackhole}},
		{mustPrefix("::ffff:0:0/96"), NextHop{Kind: Blackhole}}, // IPv4-mapped on the wire: drop
	} {
		if err := b.Add(r.Prefix, r.NextHop); err != nil {
			t.Fatalf("Add(%v): %v", r, err)
		}
	}
	return b.Build()
}

func TestLookup(t *testing.T) {
	tbl := clusterTable(t)
	tests := []struct {
		name string
		addr string
		want NextHop
		ok   bool
	}{
		{"v4 default route", "8.8.8.8", ToEgress(0), true},
		{"v4 lowest address", "0.0.0.0", ToEgress(0), true},
		{"v4 highest address", "255.255.255.255", ToEgress(0), true},
		{"v4 cluster remainder", "10.244.200.1", NextHop{Kind: Unreachable}, true},
		{"v4 cluster first address", "10.244.0.0", NextHop{Kind: Unreachable}, true},
		{"v4 cluster last address", "10.244.255.255", NextHop{Kind: Unreachable}, true},
		{"v4 just outside cluster", "10.245.0.0", ToEgress(0), true},
		{"v4 just below cluster", "10.243.255.255", ToEgress(0), true},
		{"v4 peer podCIDR", "10.244.1.77", ToPeer(1), true},
		{"v4 peer podCIDR first", "10.244.1.0", ToPeer(1), true},
		{"v4 peer podCIDR last", "10.244.1.255", ToPeer(1), true},
		{"v4 second peer", "10.244.2.1", ToPeer(2), true},
		{"v4 /25 inside peer /24", "10.244.2.200", NextHop{Kind: Blackhole}, true},
		{"v4 /25 boundary", "10.244.2.127", ToPeer(2), true},
		{"v4 host route /32", "10.244.0.5", ToLocal(5), true},
		{"v4 host route neighbour", "10.244.0.7", NextHop{Kind: Unreachable}, true},
		{"v4 blackhole", "192.0.2.9", NextHop{Kind: Blackhole}, true},
		{"v4-mapped is v6, not the v4 host route", "::ffff:10.244.0.6", NextHop{Kind: Blackhole}, true},
		{"v4-mapped is v6, not the v4 default", "::ffff:1.1.1.1", NextHop{Kind: Blackhole}, true},
		{"just below v4-mapped space", "::fffe:ffff:ffff", ToEgress(0), true},
		{"just above v4-mapped space", "::1:0:0:0", ToEgress(0), true},
		{"v6 default route", "2606:4700::1111", ToEgress(0), true},
		{"v6 highest address", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ToEgress(0), true},
		{"v6 unspecified", "::", ToEgress(0), true},
		{"v6 cluster remainder", "fd00:10:244:9::1", NextHop{Kind: Unreachable}, true},
		{"v6 peer podCIDR", "fd00:10:244:1::42", ToPeer(1), true},
		{"v6 host route /128", "fd00:10:244::5", ToLocal(5), true},
		{"v6 host route neighbour", "fd00:10:244::4", NextHop{Kind: Unreachable}, true},
		{"v6 zone ignored", "fd00:10:244::5%eth0", ToLocal(5), true},
		{"v6 blackhole", "2001:db8:1::1", NextHop{Kind: Blackhole}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tbl.Lookup(mustAddr(tt.addr))
			if got != tt.want || ok != tt.ok {
				t.Errorf("Lookup(%s) = %v, %v; want %v, %v", tt.addr, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestLookupMiss(t *testing.T) {
	b := NewBuilder()
	for _, p := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "fd00::/8", "fd00::1/128"} {
		if err := b.Add(mustPrefix(p), ToPeer(1)); err != nil {
			t.Fatal(err)
		}
	}
	tbl := b.Build()
	empty := NewBuilder().Build()
	var nilTable *Table
	tests := []struct {
		name string
		tbl  *Table
		addr netip.Addr
	}{
		{"v4 outside every prefix", tbl, mustAddr("11.0.0.1")},
		{"v4 just below", tbl, mustAddr("9.255.255.255")},
		{"v6 outside every prefix", tbl, mustAddr("fe80::1")},
		{"v4-mapped outside", tbl, mustAddr("::ffff:11.0.0.1")},
		{"v4-mapped never matches v4 routes", tbl, mustAddr("::ffff:10.1.2.3")},
		{"v6 with v4 bits inside v4 route", tbl, mustAddr("::a01:203")}, // ::10.1.2.3, not mapped
		{"invalid address", tbl, netip.Addr{}},
		{"empty table", empty, mustAddr("10.1.2.3")},
		{"empty table v6", empty, mustAddr("fd00::1")},
		{"nil table", nilTable, mustAddr("10.1.2.3")},
		{"nil table invalid address", nilTable, netip.Addr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := tt.tbl.Lookup(tt.addr); ok || got != (NextHop{}) {
				t.Errorf("Lookup(%v) = %v, %v; want zero, false", tt.addr, got, ok)
			}
		})
	}
}

func TestAdd(t *testing.T) {
	tests := []struct {
		name    string
		prefix  netip.Prefix
		nh      NextHop
		wantErr error
	}{
		{"v4 network", mustPrefix("10.0.0.0/24"), ToPeer(0), nil},
		{"v4 host", mustPrefix("10.0.0.1/32"), ToLocal(3), nil},
		{"v4 default", mustPrefix("0.0.0.0/0"), ToEgress(1), nil},
		{"v6 network", mustPrefix("fd00::/64"), NextHop{Kind: Unreachable}, nil},
		{"v6 host", mustPrefix("fd00::1/128"), NextHop{Kind: Blackhole}, nil},
		{"v6 default", mustPrefix("::/0"), ToEgress(0), nil},
		{"v6 short prefix covering mapped space", mustPrefix("::/80"), ToEgress(0), nil},
		{"zero prefix", netip.Prefix{}, ToPeer(0), ErrInvalidPrefix},
		{"v4 length too long", netip.PrefixFrom(mustAddr("10.0.0.0"), 33), ToPeer(0), ErrInvalidPrefix},
		{"negative length", netip.PrefixFrom(mustAddr("10.0.0.0"), -1), ToPeer(0), ErrInvalidPrefix},
		{"v4-mapped v6 prefix is a v6 prefix", mustPrefix("::ffff:10.0.0.0/104"), ToPeer(0), nil},
		{"v4 host bits set", mustPrefix("10.0.0.1/24"), ToPeer(0), ErrNotMasked},
		{"v4 default host bits set", mustPrefix("1.2.3.4/0"), ToEgress(0), ErrNotMasked},
		{"v6 host bits set", mustPrefix("fd00::1/64"), ToPeer(0), ErrNotMasked},
		{"unknown kind", mustPrefix("10.0.0.0/8"), NextHop{Kind: 99}, ErrInvalidNextHop},
		{"negative port", mustPrefix("10.0.0.0/8"), ToLocal(-1), ErrInvalidNextHop},
		{"negative egress port", mustPrefix("10.0.0.0/8"), ToEgress(-2), ErrInvalidNextHop},
		{"negative peer", mustPrefix("10.0.0.0/8"), ToPeer(-1), ErrInvalidNextHop},
		{"peer with port", mustPrefix("10.0.0.0/8"), NextHop{Kind: Peer, Peer: 1, Port: 2}, ErrInvalidNextHop},
		{"local with peer", mustPrefix("10.0.0.0/8"), NextHop{Kind: Local, Port: 1, Peer: 2}, ErrInvalidNextHop},
		{"unreachable with port", mustPrefix("10.0.0.0/8"), NextHop{Kind: Unreachable, Port: 1}, ErrInvalidNextHop},
		{"blackhole with peer", mustPrefix("10.0.0.0/8"), NextHop{Kind: Blackhole, Peer: 1}, ErrInvalidNextHop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder()
			err := b.Add(tt.prefix, tt.nh)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Add(%v, %v) = %v; want %v", tt.prefix, tt.nh, err, tt.wantErr)
			}
			if err != nil {
				t.Logf("error text: %v", err)
				if b.Len() != 0 {
					t.Errorf("Builder.Len() = %d after failed Add; want 0", b.Len())
				}
				return
			}
			got, ok := b.Build().Get(tt.prefix)
			if !ok || got != tt.nh {
				t.Errorf("Get(%v) = %v, %v; want %v, true", tt.prefix, got, ok, tt.nh)
			}
		})
	}
}

func TestAddNotMaskedNamesPrefix(t *testing.T) {
	err := NewBuilder().Add(mustPrefix("10.0.0.1/24"), ToPeer(0))
	const want = "route: prefix has host bits set: 10.0.0.1/24 (did you mean 10.0.0.0/24?)"
	if err == nil || err.Error() != want {
		t.Errorf("Add(10.0.0.1/24) = %v; want %q", err, want)
	}
}

func TestAddDuplicate(t *testing.T) {
	tests := []struct {
		name        string
		first, then netip.Prefix
		dup         bool
	}{
		{"same v4 prefix", mustPrefix("10.0.0.0/8"), mustPrefix("10.0.0.0/8"), true},
		{"same v6 prefix", mustPrefix("fd00::/8"), mustPrefix("fd00::/8"), true},
		{"same host route", mustPrefix("10.0.0.1/32"), mustPrefix("10.0.0.1/32"), true},
		{"same address, other length", mustPrefix("10.0.0.0/8"), mustPrefix("10.0.0.0/16"), false},
		{"v4 and v6 defaults", mustPrefix("0.0.0.0/0"), mustPrefix("::/0"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder()
			if err := b.Add(tt.first, ToPeer(1)); err != nil {
				t.Fatal(err)
			}
			err := b.Add(tt.then, ToPeer(2)) // a different next hop: still a duplicate
			if got := errors.Is(err, ErrDuplicate); got != tt.dup {
				t.Fatalf("second Add(%v) = %v; want duplicate %v", tt.then, err, tt.dup)
			}
			if tt.dup {
				// The first route is kept.
				if nh, _ := b.Build().Get(tt.first); nh != ToPeer(1) {
					t.Errorf("after rejected duplicate, Get(%v) = %v; want %v", tt.first, nh, ToPeer(1))
				}
			}
		})
	}
}

func TestZeroBuilder(t *testing.T) {
	var b Builder
	if tbl := b.Build(); tbl.Len() != 0 {
		t.Fatalf("empty zero Builder built %d routes", tbl.Len())
	}
	if err := b.Add(mustPrefix("10.0.0.0/8"), ToPeer(1)); err != nil {
		t.Fatal(err)
	}
	if nh, ok := b.Build().Lookup(mustAddr("10.1.1.1")); !ok || nh != ToPeer(1) {
		t.Errorf("Lookup = %v, %v; want %v, true", nh, ok, ToPeer(1))
	}
}

func TestBuilderReuse(t *testing.T) {
	b := NewBuilder()
	if err := b.Add(mustPrefix("10.0.0.0/8"), ToPeer(1)); err != nil {
		t.Fatal(err)
	}
	first := b.Build()
	if err := b.Add(mustPrefix("10.1.0.0/16"), ToPeer(2)); err != nil {
		t.Fatal(err)
	}
	second := b.Build()
	if first.Len() != 1 || second.Len() != 2 {
		t.Fatalf("Len: first %d, second %d; want 1, 2", first.Len(), second.Len())
	}
	if nh, _ := first.Lookup(mustAddr("10.1.0.1")); nh != ToPeer(1) {
		t.Errorf("first snapshot changed by later Add: Lookup = %v", nh)
	}
	if nh, _ := second.Lookup(mustAddr("10.1.0.1")); nh != ToPeer(2) {
		t.Errorf("second snapshot: Lookup = %v; want %v", nh, ToPeer(2))
	}
}

// prefixCase is a case of a query by prefix (LookupPrefix, Get) that
// answers a T and whether it found one.
type prefixCase[T comparable] struct {
	name   string
	tbl    *Table
	prefix netip.Prefix
	want   T
	ok     bool
}

// runPrefixCases runs each case as a subtest: query(tbl, prefix) must
// answer want, ok. name is the query's, for the failures.
func runPrefixCases[T comparable](t *testing.T, name string, query func(*Table, netip.Prefix) (T, bool), tests []prefixCase[T]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := query(tt.tbl, tt.prefix)
			if got != tt.want || ok != tt.ok {
				t.Errorf("%s(%v) = %v, %v; want %v, %v", name, tt.prefix, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestLookupPrefix(t *testing.T) {
	tbl := clusterTable(t)
	var nilTable *Table
	runPrefixCases(t, "LookupPrefix", (*Table).LookupPrefix, []prefixCase[Route]{
		{"exact match", tbl, mustPrefix("10.244.1.0/24"), Route{mustPrefix("10.244.1.0/24"), ToPeer(1)}, true},
		{"inside peer", tbl, mustPrefix("10.244.1.64/26"), Route{mustPrefix("10.244.1.0/24"), ToPeer(1)}, true},
		{"unmasked input", tbl, mustPrefix("10.244.1.64/23"), Route{mustPrefix("10.244.0.0/16"), NextHop{Kind: Unreachable}}, true},
		{"spans two peers", tbl, mustPrefix("10.244.0.0/22"), Route{mustPrefix("10.244.0.0/16"), NextHop{Kind: Unreachable}}, true},
		{"host", tbl, mustPrefix("10.244.0.5/32"), Route{mustPrefix("10.244.0.5/32"), ToLocal(5)}, true},
		{"v4 default", tbl, mustPrefix("0.0.0.0/0"), Route{mustPrefix("0.0.0.0/0"), ToEgress(0)}, true},
		{"v4-mapped is v6", tbl, mustPrefix("::ffff:10.244.1.0/120"), Route{mustPrefix("::ffff:0:0/96"), NextHop{Kind: Blackhole}}, true},
		{"v6 inside peer", tbl, mustPrefix("fd00:10:244:1::/80"), Route{mustPrefix("fd00:10:244:1::/64"), ToPeer(1)}, true},
		{"v6 default", tbl, mustPrefix("::/0"), Route{mustPrefix("::/0"), ToEgress(0)}, true},
		{"invalid", tbl, netip.Prefix{}, Route{}, false},
		{"nil table", nilTable, mustPrefix("10.0.0.0/8"), Route{}, false},
	})
}

func TestGet(t *testing.T) {
	tbl := clusterTable(t)
	var nilTable *Table
	runPrefixCases(t, "Get", (*Table).Get, []prefixCase[NextHop]{
		{"present", tbl, mustPrefix("10.244.2.0/24"), ToPeer(2), true},
		{"present v6", tbl, mustPrefix("fd00:10:244::5/128"), ToLocal(5), true},
		{"unmasked input", tbl, mustPrefix("10.244.2.7/24"), ToPeer(2), true},
		{"v4-mapped is v6", tbl, mustPrefix("::ffff:10.244.2.0/120"), NextHop{}, false},
		{"v4-mapped space", tbl, mustPrefix("::ffff:0:0/96"), NextHop{Kind: Blackhole}, true},
		{"covered but absent", tbl, mustPrefix("10.244.2.0/26"), NextHop{}, false},
		{"invalid", tbl, netip.Prefix{}, NextHop{}, false},
		{"nil table", nilTable, mustPrefix("10.244.2.0/24"), NextHop{}, false},
	})
}

func TestAllSorted(t *testing.T) {
	b := NewBuilder()
	// Added in scrambled order.
	in := []string{
		"fd00::1/128", "10.244.1.0/24", "::/0", "10.244.0.0/16", "0.0.0.0/0",
		"10.244.0.5/32", "fd00::/8", "9.0.0.0/8", "10.244.0.0/24",
	}
	for i, p := range in {
		if err := b.Add(mustPrefix(p), ToPeer(int32(i))); err != nil {
			t.Fatal(err)
		}
	}
	tbl := b.Build()
	want := []string{
		"0.0.0.0/0", "9.0.0.0/8", "10.244.0.0/16", "10.244.0.0/24", "10.244.0.5/32",
		"10.244.1.0/24", "::/0", "fd00::/8", "fd00::1/128",
	}
	var got []string
	for r := range tbl.All() {
		got = append(got, r.Prefix.String())
		if want := ToPeer(int32(slices.Index(in, r.Prefix.String()))); r.NextHop != want {
			t.Errorf("%v: next hop %v; want %v", r.Prefix, r.NextHop, want)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("All() order = %v; want %v", got, want)
	}
	if tbl.Len() != len(want) {
		t.Errorf("Len() = %d; want %d", tbl.Len(), len(want))
	}

	routes := tbl.Routes()
	if len(routes) != len(want) {
		t.Fatalf("Routes() has %d; want %d", len(routes), len(want))
	}
	routes[0] = Route{} // a copy: must not change the table
	if r := tbl.Routes()[0]; r.Prefix != mustPrefix("0.0.0.0/0") {
		t.Errorf("Routes() aliases the table: first = %v", r)
	}

	// Early stop.
	n := 0
	for range tbl.All() {
		n++
		if n == 3 {
			break
		}
	}
	if n != 3 {
		t.Errorf("break after 3 routes: iterated %d", n)
	}

	var nilTable *Table
	if nilTable.Len() != 0 || nilTable.Routes() != nil {
		t.Error("nil table: Len or Routes not empty")
	}
	for r := range nilTable.All() {
		t.Errorf("nil table yielded %v", r)
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"kind unreachable", Unreachable.String(), "unreachable"},
		{"kind local", Local.String(), "local"},
		{"kind peer", Peer.String(), "peer"},
		{"kind egress", Egress.String(), "egress"},
		{"kind blackhole", Blackhole.String(), "blackhole"},
		{"kind unknown", Kind(42).String(), "Kind(42)"},
		{"zero next hop", NextHop{}.String(), "unreachable"},
		{"local", ToLocal(3).String(), "local port 3"},
		{"peer", ToPeer(2).String(), "peer 2"},
		{"egress", ToEgress(0).String(), "egress port 0"},
		{"blackhole", NextHop{Kind: Blackhole}.String(), "blackhole"},
		{"unknown next hop", NextHop{Kind: 9, Port: 1, Peer: 2}.String(), "Kind(9) port 1 peer 2"},
		{"route", Route{mustPrefix("10.244.1.0/24"), ToPeer(1)}.String(), "10.244.1.0/24 peer 1"},
		{"route v6", Route{mustPrefix("::/0"), ToEgress(0)}.String(), "::/0 egress port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q; want %q", tt.got, tt.want)
			}
		})
	}
}

func TestLookupAllocs(t *testing.T) {
	tbl := clusterTable(t)
	var nilTable *Table
	addrs := []netip.Addr{
		mustAddr("10.244.0.5"),          // host route
		mustAddr("10.244.1.7"),          // peer
		mustAddr("8.8.8.8"),             // default
		mustAddr("::ffff:10.244.0.6"),   // mapped
		mustAddr("fd00:10:244::5"),      // v6 host
		mustAddr("fd00:10:244::5%eth0"), // zone
		mustAddr("2606:4700::1"),        // v6 default
		{},                              // invalid
	}
	for _, a := range addrs {
		if n := testing.AllocsPerRun(1000, func() { tbl.Lookup(a) }); n != 0 {
			t.Errorf("Lookup(%v): %v allocs; want 0", a, n)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { nilTable.Lookup(addrs[0]) }); n != 0 {
		t.Errorf("nil Table Lookup: %v allocs; want 0", n)
	}
	var h Holder
	h.Store(tbl)
	if n := testing.AllocsPerRun(1000, func() { h.Load().Lookup(addrs[1]) }); n != 0 {
		t.Errorf("Holder.Load().Lookup: %v allocs; want 0", n)
	}
}
