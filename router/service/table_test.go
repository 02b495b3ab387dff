package service

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

var (
	vip   = netip.MustParseAddr("10.96.0.10")
	vip6  = netip.MustParseAddr("fd00:96::10")
	ext   = netip.MustParseAddr("192.0.2.80")
	node  = netip.MustParseAddr("172.29.0.1")
	node6 = netip.MustParseAddr("fd00:29::1")
	b1    = netip.MustParseAddr("10.244.1.2")
	b2    = netip.MustParseAddr("10.244.2.2")
	b6    = netip.MustParseAddr("fd00:10:244:1::2")
)

func ap(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }

func TestNewTable(t *testing.T) {
	svcs := []Service{{
		Namespace: "ns", Name: "web", ClusterIPs: []netip.Addr{vip, vip6}, ExternalIPs: []netip.Addr{ext},
		InternalLocal: false, ExternalLocal: true,
		Ports: []Port{
			{Name: "http", Proto: packet.ProtoTCP, Port: 80, NodePort: 30080, Backends: []Backend{
				{Addr: b1, Port: 8080, Ready: true, Serving: true, Local: true},
				{Addr: b2, Port: 8080, Ready: true, Serving: true},
				{Addr: b6, Port: 8080, Ready: true, Serving: true, Local: true},
				{Addr: netip.MustParseAddr("10.244.1.3"), Port: 8080}, // not ready, not serving
			}},
			{Name: "zero", Proto: packet.ProtoUDP, Port: 0},
			{Name: "sctp", Proto: 132, Port: 90},
		},
	}}
	tab := NewTable(svcs, Options{NodeAddrs: []netip.Addr{node, node6}})
	if s, f := tab.Len(); s != 1 || f != 5 {
		t.Fatalf("Len = %d services, %d frontends; want 1, 5 (2 ClusterIPs, 1 externalIP, 2 nodePorts)", s, f)
	}
	cases := []struct {
		name  string
		k     Key
		want  []netip.AddrPort
		local bool // Frontend.ExternalLocal
	}{
		{"clusterIP v4: every ready v4 backend", Key{vip, 80, packet.ProtoTCP}, []netip.AddrPort{ap(b1, 8080), ap(b2, 8080)}, false},
		{"clusterIP v6", Key{vip6, 80, packet.ProtoTCP}, []netip.AddrPort{ap(b6, 8080)}, false},
		{"externalIP", Key{ext, 80, packet.ProtoTCP}, []netip.AddrPort{ap(b1, 8080), ap(b2, 8080)}, false},
		{"nodePort, externalTrafficPolicy Local: this node's only", Key{node, 30080, packet.ProtoTCP}, []netip.AddrPort{ap(b1, 8080)}, true},
		{"nodePort v6", Key{node6, 30080, packet.ProtoTCP}, []netip.AddrPort{ap(b6, 8080)}, true},
	}
	for _, tc := range cases {
		f := tab.Frontend(tc.k.Addr, tc.k.Port, tc.k.Proto)
		if f == nil {
			t.Fatalf("%s: no frontend", tc.name)
		}
		if !slices.Equal(f.Backends, tc.want) {
			t.Errorf("%s: backends %v, want %v", tc.name, f.Backends, tc.want)
		}
		if f.ExternalLocal != tc.local {
			t.Errorf("%s: ExternalLocal %v, want %v", tc.name, f.ExternalLocal, tc.local)
		}
	}
	svcs[0].ExternalLocal = false
	if f := NewTable(svcs, Options{NodeAddrs: []netip.Addr{node}}).Frontend(node, 30080, packet.ProtoTCP); f == nil || f.ExternalLocal || len(f.Backends) != 2 {
		t.Fatalf("externalTrafficPolicy Cluster: nodePort frontend %+v", f)
	}
	if tab.Frontend(vip, 80, packet.ProtoUDP) != nil || tab.Frontend(vip, 0, packet.ProtoUDP) != nil || tab.Frontend(vip, 90, 132) != nil {
		t.Fatal("a frontend for a protocol, or a port, the Service does not carry")
	}
	if !tab.IsExternal(ext) || tab.IsExternal(vip) {
		t.Fatal("IsExternal")
	}
}

// TestUsable: ready backends take new flows; with none ready, serving
// terminating ones do; internalTrafficPolicy Local keeps this node's.
func TestUsable(t *testing.T) {
	term := Backend{Addr: b2, Port: 80, Serving: true, Terminating: true}
	notServing := Backend{Addr: netip.MustParseAddr("10.244.2.3"), Port: 80, Terminating: true}
	cases := []struct {
		name  string
		bs    []Backend
		local bool
		want  []netip.AddrPort
		term  bool
	}{
		{"ready wins over terminating", []Backend{{Addr: b1, Port: 80, Ready: true, Serving: true}, term}, false, []netip.AddrPort{ap(b1, 80)}, false},
		{"terminating when none is ready", []Backend{term, notServing}, false, []netip.AddrPort{ap(b2, 80)}, true},
		{"none", []Backend{notServing}, false, nil, false},
		{"local only", []Backend{{Addr: b1, Port: 80, Ready: true, Local: true}, {Addr: b2, Port: 80, Ready: true}}, true, []netip.AddrPort{ap(b1, 80)}, false},
		{"local, none here", []Backend{{Addr: b2, Port: 80, Ready: true}}, true, nil, false},
	}
	for _, tc := range cases {
		svcs := []Service{{Namespace: "ns", Name: "s", ClusterIPs: []netip.Addr{vip}, InternalLocal: tc.local,
			Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Backends: tc.bs}}}}
		f := NewTable(svcs, Options{}).Frontend(vip, 80, packet.ProtoTCP)
		if !slices.Equal(f.Backends, tc.want) || f.Terminating != tc.term {
			t.Errorf("%s: backends %v terminating %v, want %v %v", tc.name, f.Backends, f.Terminating, tc.want, tc.term)
		}
		if _, ok := f.Pick(b1, time.Now()); ok != (len(tc.want) > 0) {
			t.Errorf("%s: Pick ok = %v", tc.name, ok)
		}
	}
}

// TestCarryOver: a frontend that stays keeps its counters and affinity
// across a swap; UDP backends that stopped taking flows are listed in
// Gone.
func TestCarryOver(t *testing.T) {
	mk := func(bs ...Backend) []Service {
		return []Service{{Namespace: "ns", Name: "dns", ClusterIPs: []netip.Addr{vip}, Affinity: time.Hour,
			Ports: []Port{{Name: "dns", Proto: packet.ProtoUDP, Port: 53, Backends: bs}, {Name: "dns-tcp", Proto: packet.ProtoTCP, Port: 53, Backends: bs}}}}
	}
	r1, r2 := Backend{Addr: b1, Port: 53, Ready: true}, Backend{Addr: b2, Port: 53, Ready: true}
	t1 := NewTable(mk(r1, r2), Options{})
	f1 := t1.Frontend(vip, 53, packet.ProtoUDP)
	now := time.Now()
	first, _ := f1.Pick(b6, now)
	t2 := NewTable(mk(r1, r2), Options{Prev: t1})
	if len(t2.Gone) != 0 {
		t.Fatalf("nothing left, yet Gone = %v", t2.Gone)
	}
	f2 := t2.Frontend(vip, 53, packet.ProtoUDP)
	if c := f2.Counters(); c.Flows != 1 || c.PerBackend[first] != 1 {
		t.Fatalf("counters not carried over: %+v", c)
	}
	if b, _ := f2.Pick(b6, now.Add(time.Minute)); b != first {
		t.Fatalf("affinity lost across the swap: %v then %v", first, b)
	}
	gone := r1
	if first.Addr() == b1 {
		gone = r2
	}
	var keep Backend
	if gone == r1 {
		keep = r2
	} else {
		keep = r1
	}
	t3 := NewTable(mk(keep), Options{Prev: t2})
	want := []Gone{{Frontend: Key{vip, 53, packet.ProtoUDP}, Backend: ap(gone.Addr, 53)}}
	if !slices.Equal(t3.Gone, want) {
		t.Fatalf("Gone = %v, want %v (UDP only)", t3.Gone, want)
	}
	// Affinity to a backend that left is not kept.
	t4 := NewTable(mk(Backend{Addr: netip.MustParseAddr("10.244.3.3"), Port: 53, Ready: true}), Options{Prev: t3})
	if b, _ := t4.Frontend(vip, 53, packet.ProtoUDP).Pick(b6, now.Add(2*time.Minute)); b.Addr() != netip.MustParseAddr("10.244.3.3") {
		t.Fatalf("picked %v", b)
	}
}

// TestAffinityExpires: after the timeout a client may land elsewhere; the
// map stays bounded.
func TestAffinityExpires(t *testing.T) {
	svcs := []Service{{Namespace: "ns", Name: "s", ClusterIPs: []netip.Addr{vip}, Affinity: 10 * time.Second,
		Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Backends: []Backend{{Addr: b1, Port: 80, Ready: true}, {Addr: b2, Port: 80, Ready: true}}}}}}
	f := NewTable(svcs, Options{}).Frontend(vip, 80, packet.ProtoTCP)
	now := time.Now()
	seen := map[netip.AddrPort]bool{}
	for i := range 64 {
		b, _ := f.Pick(b6, now.Add(time.Duration(i)*11*time.Second))
		seen[b] = true
	}
	if len(seen) != 2 {
		t.Fatalf("after each expiry a new pick: saw %v", seen)
	}
	for i := range maxAffinity + 10 {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		if i >= 1<<16 {
			a = netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		}
		f.Pick(a, now)
	}
	if n := len(f.st.aff); n > maxAffinity {
		t.Fatalf("affinity map holds %d clients, bound %d", n, maxAffinity)
	}
}
