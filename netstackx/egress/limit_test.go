package egress

import (
	"net/netip"
	"testing"
)

func TestLimiter(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	var l limiter
	l.init(16, 10)
	take := func(src netip.Addr, n int) int {
		got := 0
		for range n {
			if l.acquire(src) {
				got++
			}
		}
		return got
	}
	if got := take(a, 100); got != 10 {
		t.Fatalf("a: %d, want its cap 10", got)
	}
	// b fills up to the reserve (14 = 16 - 16/8), then stays below the
	// fair share: 16/3 with a newcomer in view.
	if got := take(b, 100); got != 5 {
		t.Fatalf("b: %d, want 5 (4 to the reserve, one more below 16/3)", got)
	}
	if got := take(c, 100); got != 1 {
		t.Fatalf("c: %d, want the last one", got)
	}
	if l.inUse() != 16 {
		t.Fatalf("in use %d", l.inUse())
	}
	l.release(a)
	if take(a, 1) != 0 {
		t.Fatal("a over its fair share took a freed slot near the limit")
	}
	if take(c, 1) != 1 {
		t.Fatal("c below its fair share did not get the freed slot")
	}
	l.release(netip.MustParseAddr("10.9.9.9")) // unknown: no effect
	for range 10 {
		l.release(a)
		l.release(b)
		l.release(c)
	}
	if l.inUse() != 0 || len(l.by) != 0 {
		t.Fatalf("after releasing everything: %d in use, %d sources", l.inUse(), len(l.by))
	}
}

func TestAllowed(t *testing.T) {
	for a, want := range map[string]bool{
		"192.0.2.10": true, "169.254.169.254": true, "2001:db8::1": true, "10.0.0.1": true,
		"127.0.0.1": false, "127.8.9.10": false, "::1": false, "0.0.0.0": false, "::": false,
		"224.0.0.1": false, "ff02::1": false, "255.255.255.255": false, "::ffff:192.0.2.10": false,
	} {
		if got := allowed(netip.MustParseAddr(a)); got != want {
			t.Errorf("allowed(%s) = %v, want %v", a, got, want)
		}
	}
	if allowed(netip.Addr{}) {
		t.Error("the zero Addr is allowed")
	}
}
