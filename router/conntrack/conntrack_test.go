package conntrack_test

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/conntrack"
	"github.com/podrouter/podrouter/router/packet"
)

// clock is a manual clock for Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var (
	pod1    = netip.MustParseAddr("10.244.1.5")
	pod2    = netip.MustParseAddr("10.244.1.6")
	pod6    = netip.MustParseAddr("fd00:10:244:1::5")
	remote  = netip.MustParseAddr("192.0.2.10")
	remote6 = netip.MustParseAddr("2001:db8::10")
	node    = netip.MustParseAddr("198.51.100.1")
	node6   = netip.MustParseAddr("2001:db8:1::1")
)

const (
	syn    = packet.TCPFlagSYN
	synack = packet.TCPFlagSYN | packet.TCPFlagACK
	ack    = packet.TCPFlagACK
	fin    = packet.TCPFlagFIN | packet.TCPFlagACK
	rst    = packet.TCPFlagRST
)

func newTable(t testing.TB, c *clock, mod func(*conntrack.Config)) *conntrack.Table {
	t.Helper()
	cfg := conntrack.Config{Now: c.Now, SNAT: []conntrack.SNATAddr{{Addr: node}, {Addr: node6}}}
	if tt, ok := t.(*testing.T); ok {
		cfg.Logger = zaptest.NewLogger(tt)
	}
	if mod != nil {
		mod(&cfg)
	}
	tb, err := conntrack.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func tcp(src, dst netip.Addr, sp, dp uint16) conntrack.Tuple {
	return conntrack.MakeTuple(packet.ProtoTCP, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
}

func udp(src, dst netip.Addr, sp, dp uint16) conntrack.Tuple {
	return conntrack.MakeTuple(packet.ProtoUDP, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
}

// echo returns an ICMPv4 echo request's tuple (the identifier as source
// port, as FromParsed makes it).
func echo(src, dst netip.Addr, id uint16) conntrack.Tuple {
	return conntrack.MakeTuple(packet.ProtoICMPv4, netip.AddrPortFrom(src, id), netip.AddrPortFrom(dst, 0))
}

type step struct {
	name    string
	reply   bool // sent by the responder
	flags   uint8
	want    conntrack.State
	wantErr error
	ignored bool
}

// run feeds steps to the flow k (original direction) and checks each
// result.
func run(t *testing.T, tb *conntrack.Table, k conntrack.Tuple, steps []step) {
	t.Helper()
	for _, s := range steps {
		tu, dir := k, conntrack.Original
		if s.reply {
			tu, dir = k.Reply(), conntrack.Reply
		}
		res, err := tb.Track(tu, s.flags, netip.Addr{}, tb.Now())
		if !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: err = %v, want %v", s.name, err, s.wantErr)
		}
		if err != nil {
			continue
		}
		if res.Dir != dir || res.State != s.want || res.Ignored() != s.ignored {
			t.Fatalf("%s: result %+v, want dir %v state %v ignored %v", s.name, res, dir, s.want, s.ignored)
		}
	}
}

// expectExpiry checks that the flow of k lives exactly d more: present at
// d-1s, gone at d, and removed by Reap.
func expectExpiry(t *testing.T, tb *conntrack.Table, c *clock, k conntrack.Tuple, d time.Duration, state conntrack.State) {
	t.Helper()
	c.Advance(d - time.Second)
	f, _, ok := tb.Get(k, tb.Now())
	if !ok || f.State != state {
		t.Fatalf("after %v: flow %+v present %v, want present in %v", d-time.Second, f, ok, state)
	}
	before := tb.Stats().Expired
	c.Advance(time.Second)
	if _, _, ok := tb.Get(k, tb.Now()); ok {
		t.Fatalf("after %v: flow still present, want expired", d)
	}
	if n := tb.Reap(tb.Now(), 1<<20); n != 1 {
		t.Fatalf("Reap removed %d flows, want 1", n)
	}
	if tb.Len() != 0 || tb.Stats().Expired != before+1 {
		t.Fatalf("after Reap: %d flows, stats %+v", tb.Len(), tb.Stats())
	}
}

func TestTCPLifecycle(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, remote, 40000, 80)
	run(t, tb, k, []step{
		{name: "syn", flags: syn, want: conntrack.StateSynSent},
		{name: "syn retransmit", flags: syn, want: conntrack.StateSynSent},
		{name: "syn/ack", reply: true, flags: synack, want: conntrack.StateSynRecv},
		{name: "ack", flags: ack, want: conntrack.StateEstablished},
		{name: "data", flags: ack | packet.TCPFlagPSH, want: conntrack.StateEstablished},
		{name: "data back", reply: true, flags: ack, want: conntrack.StateEstablished},
		{name: "late syn/ack", reply: true, flags: synack, want: conntrack.StateEstablished, ignored: true},
		{name: "fin", flags: fin, want: conntrack.StateFinWait},
		{name: "ack of fin", reply: true, flags: ack, want: conntrack.StateCloseWait},
		{name: "fin back", reply: true, flags: fin, want: conntrack.StateLastAck},
		{name: "last ack", flags: ack, want: conntrack.StateTimeWait},
	})
	f, dir, ok := tb.Get(k.Reply(), tb.Now())
	if !ok || dir != conntrack.Reply || !f.Assured || !f.SeenReply || f.NAT || f.Orig != k || f.Reply != k.Reply() {
		t.Fatalf("Lookup(reply) = %+v, %v, %v", f, dir, ok)
	}
	expectExpiry(t, tb, c, k, 120*time.Second, conntrack.StateTimeWait)
	st := tb.Stats()
	if st.Inserts != 1 || st.Deletes != 1 || st.Entries != 0 || st.Sources != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTCPTimeouts drives a flow into every state and checks that it lives
// exactly that state's timeout, with netfilter's defaults and with
// configured ones.
func TestTCPTimeouts(t *testing.T) {
	toSynRecv := []step{{flags: syn}, {reply: true, flags: synack}}
	toEst := append(toSynRecv[:2:2], step{flags: ack})
	toFinWait := append(toEst[:3:3], step{flags: fin})
	toCloseWait := append(toFinWait[:4:4], step{reply: true, flags: ack})
	toLastAck := append(toCloseWait[:5:5], step{reply: true, flags: fin})
	toTimeWait := append(toLastAck[:6:6], step{flags: ack})
	toClose := append(toEst[:3:3], step{reply: true, flags: rst})
	custom := conntrack.Timeouts{
		TCPSynSent: 11 * time.Second, TCPSynRecv: 12 * time.Second, TCPEstablished: time.Hour,
		TCPFinWait: 13 * time.Second, TCPCloseWait: 14 * time.Second, TCPLastAck: 15 * time.Second,
		TCPTimeWait: 16 * time.Second, TCPClose: 1500 * time.Millisecond, // rounds up to 2s
	}
	cases := []struct {
		state           conntrack.State
		steps           []step
		def, configured time.Duration
	}{
		{conntrack.StateSynSent, []step{{flags: syn}}, 120 * time.Second, 11 * time.Second},
		{conntrack.StateSynRecv, toSynRecv, 60 * time.Second, 12 * time.Second},
		{conntrack.StateEstablished, toEst, 432000 * time.Second, time.Hour},
		{conntrack.StateFinWait, toFinWait, 120 * time.Second, 13 * time.Second},
		{conntrack.StateCloseWait, toCloseWait, 60 * time.Second, 14 * time.Second},
		{conntrack.StateLastAck, toLastAck, 30 * time.Second, 15 * time.Second},
		{conntrack.StateTimeWait, toTimeWait, 120 * time.Second, 16 * time.Second},
		{conntrack.StateClose, toClose, 10 * time.Second, 2 * time.Second},
	}
	for _, tc := range cases {
		for _, configured := range []bool{false, true} {
			name, want := tc.state.String()+"/default", tc.def
			if configured {
				name, want = tc.state.String()+"/configured", tc.configured
			}
			t.Run(name, func(t *testing.T) {
				c := newClock()
				tb := newTable(t, c, func(cfg *conntrack.Config) {
					if configured {
						cfg.Timeouts = custom
					}
				})
				k := tcp(pod1, remote, 40000, 443)
				for i, s := range tc.steps {
					if i > 0 {
						c.Advance(time.Second) // time between packets must not count
					}
					tu := k
					if s.reply {
						tu = k.Reply()
					}
					res, err := tb.Track(tu, s.flags, netip.Addr{}, tb.Now())
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					if i == len(tc.steps)-1 && res.State != tc.state {
						t.Fatalf("reached %v, want %v", res.State, tc.state)
					}
				}
				expectExpiry(t, tb, c, k, want, tc.state)
			})
		}
	}
}

func TestTCPInvalid(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, remote, 40000, 80)
	for _, f := range []uint8{ack, synack, fin, rst, 0} {
		if _, err := tb.Track(k, f, netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrInvalid) {
			t.Fatalf("flags %#x without a flow: err = %v, want ErrInvalid", f, err)
		}
	}
	if tb.Len() != 0 {
		t.Fatalf("invalid packets created %d flows", tb.Len())
	}
	run(t, tb, k, []step{
		{name: "syn", flags: syn, want: conntrack.StateSynSent},
		{name: "syn/ack from the originator", flags: synack, wantErr: conntrack.ErrInvalid},
		{name: "ack before syn/ack", flags: ack, wantErr: conntrack.ErrInvalid},
		{name: "fin before syn/ack", flags: fin, wantErr: conntrack.ErrInvalid},
		{name: "syn from the responder", reply: true, flags: syn, wantErr: conntrack.ErrInvalid},
		{name: "ack from the responder", reply: true, flags: ack, want: conntrack.StateSynSent, ignored: true},
		{name: "syn/ack", reply: true, flags: synack, want: conntrack.StateSynRecv},
		{name: "rst", reply: true, flags: rst, want: conntrack.StateClose},
	})
	if got := tb.Stats().Drops[conntrack.DropInvalid]; got != 9 {
		t.Fatalf("invalid drops = %d, want 9", got)
	}
	// An ignored packet does not refresh the timeout.
	c2 := newClock()
	tb2 := newTable(t, c2, nil)
	run(t, tb2, k, []step{{name: "syn", flags: syn, want: conntrack.StateSynSent}})
	c2.Advance(100 * time.Second)
	run(t, tb2, k, []step{{name: "ack from the responder", reply: true, flags: ack, want: conntrack.StateSynSent, ignored: true}})
	expectExpiry(t, tb2, c2, k, 20*time.Second, conntrack.StateSynSent)
}

func TestTCPReopen(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, remote, 40000, 80)
	run(t, tb, k, []step{
		{name: "syn", flags: syn, want: conntrack.StateSynSent},
		{name: "syn/ack", reply: true, flags: synack, want: conntrack.StateSynRecv},
		{name: "ack", flags: ack, want: conntrack.StateEstablished},
		{name: "rst", flags: rst, want: conntrack.StateClose},
		{name: "new syn", flags: syn, want: conntrack.StateSynSent},
	})
	f, _, _ := tb.Get(k, tb.Now())
	if f.Assured || f.SeenReply {
		t.Fatalf("reopened flow kept its flags: %+v", f)
	}
	if tb.Stats().Inserts != 1 {
		t.Fatalf("reopen inserted a second flow")
	}
	// After expiry, a SYN starts a fresh flow.
	c.Advance(121 * time.Second)
	run(t, tb, k, []step{{name: "syn after expiry", flags: syn, want: conntrack.StateSynSent}})
	if st := tb.Stats(); st.Inserts != 2 || st.Expired != 1 || st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestUDPTimeouts(t *testing.T) {
	t.Run("unreplied", func(t *testing.T) {
		c := newClock()
		tb := newTable(t, c, nil)
		k := udp(pod1, remote, 5353, 53)
		if res, err := tb.Track(k, 0, netip.Addr{}, tb.Now()); err != nil || !res.IsNew() {
			t.Fatalf("Track = %+v, %v", res, err)
		}
		c.Advance(20 * time.Second)
		tb.Track(k, 0, netip.Addr{}, tb.Now()) // refreshes
		expectExpiry(t, tb, c, k, 30*time.Second, conntrack.StateNone)
	})
	t.Run("replied at once", func(t *testing.T) {
		c := newClock()
		tb := newTable(t, c, nil)
		k := udp(pod1, remote, 5353, 53)
		tb.Track(k, 0, netip.Addr{}, tb.Now())
		res, err := tb.Track(k.Reply(), 0, netip.Addr{}, tb.Now())
		if err != nil || res.Dir != conntrack.Reply || res.IsNew() {
			t.Fatalf("reply: %+v, %v", res, err)
		}
		f, _, _ := tb.Get(k, tb.Now())
		if !f.SeenReply || f.Assured {
			t.Fatalf("one request and its reply: %+v, want seen-reply, not assured", f)
		}
		expectExpiry(t, tb, c, k, 30*time.Second, conntrack.StateNone)
	})
	t.Run("stream", func(t *testing.T) {
		c := newClock()
		tb := newTable(t, c, nil)
		k := udp(pod1, remote, 4000, 4001)
		tb.Track(k, 0, netip.Addr{}, tb.Now())
		tb.Track(k.Reply(), 0, netip.Addr{}, tb.Now())
		c.Advance(2 * time.Second)
		tb.Track(k, 0, netip.Addr{}, tb.Now())
		f, _, _ := tb.Get(k, tb.Now())
		if !f.Assured {
			t.Fatalf("traffic both ways for 2s: %+v, want assured", f)
		}
		expectExpiry(t, tb, c, k, 120*time.Second, conntrack.StateNone)
	})
}

func TestICMPEcho(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := echo(pod1, remote, 77)
	if _, err := tb.Track(k.Reply(), 0, netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrInvalid) {
		t.Fatalf("echo reply without request: %v, want ErrInvalid", err)
	}
	if res, err := tb.Track(k, 0, netip.Addr{}, tb.Now()); err != nil || !res.IsNew() {
		t.Fatalf("echo request: %+v, %v", res, err)
	}
	// Another identifier is another flow.
	if res, err := tb.Track(echo(pod1, remote, 78), 0, netip.Addr{}, tb.Now()); err != nil || !res.IsNew() {
		t.Fatalf("echo request, id 78: %+v, %v", res, err)
	}
	res, err := tb.Track(k.Reply(), 0, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply {
		t.Fatalf("echo reply: %+v, %v", res, err)
	}
	tb.Delete(echo(pod1, remote, 78))
	expectExpiry(t, tb, c, k, 30*time.Second, conntrack.StateNone)
}

func TestEarlyDrop(t *testing.T) {
	c := newClock()
	const max = 64
	tb := newTable(t, c, func(cfg *conntrack.Config) { cfg.MaxEntries = max; cfg.MaxPerSource = max; cfg.Shards = 4 })
	// Fill the table with assured flows but one, unreplied.
	for i := range max {
		k := tcp(pod1, remote, uint16(1000+i), 80)
		steps := []step{{flags: syn}, {reply: true, flags: synack}, {flags: ack}}
		if i == 17 {
			steps = steps[:1]
		}
		for _, s := range steps {
			tu := k
			if s.reply {
				tu = k.Reply()
			}
			if _, err := tb.Track(tu, s.flags, netip.Addr{}, tb.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A new flow evicts the unreplied one, wherever it hashes.
	if _, err := tb.Track(tcp(pod2, remote, 9, 80), syn, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("insert into a full table with an unreplied flow: %v", err)
	}
	if _, _, ok := tb.Get(tcp(pod1, remote, 1017, 80), tb.Now()); ok {
		t.Fatal("the unreplied flow was not dropped")
	}
	if st := tb.Stats(); st.EarlyDrops != 1 || st.Entries != max {
		t.Fatalf("stats %+v, want 1 early drop, %d entries", st, max)
	}
	// The newcomer is unreplied too: the next one evicts it...
	if _, err := tb.Track(tcp(pod2, remote, 10, 80), syn, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("second insert: %v", err)
	}
	// ...but once every flow is assured, the table is full.
	k := tcp(pod2, remote, 10, 80)
	tb.Track(k.Reply(), synack, netip.Addr{}, tb.Now())
	tb.Track(k, ack, netip.Addr{}, tb.Now())
	if _, err := tb.Track(tcp(pod2, remote, 11, 80), syn, netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrTableFull) {
		t.Fatalf("insert into a table of assured flows: %v, want ErrTableFull", err)
	}
	if st := tb.Stats(); st.Drops[conntrack.DropTableFull] != 1 || st.Entries != max {
		t.Fatalf("stats %+v", st)
	}
	// Expired flows make room without counting as early drops.
	c.Advance(432001 * time.Second)
	if _, err := tb.Track(tcp(pod2, remote, 12, 80), syn, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("insert with expired flows: %v", err)
	}
	if st := tb.Stats(); st.EarlyDrops != 2 || st.Expired == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPerSourceLimit(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, func(cfg *conntrack.Config) { cfg.MaxEntries = 1000; cfg.MaxPerSource = 10 })
	for i := range 10 {
		if _, err := tb.Track(udp(pod1, remote, uint16(i+1), 53), 0, netip.Addr{}, tb.Now()); err != nil {
			t.Fatal(err)
		}
	}
	// 10x the limit: all refused, and the table does not fill.
	for i := range 100 {
		if _, err := tb.Track(udp(pod1, remote, uint16(100+i), 53), 0, netip.Addr{}, tb.Now()); !errors.Is(err, conntrack.ErrSourceLimit) {
			t.Fatalf("flow %d over the limit: %v, want ErrSourceLimit", i, err)
		}
	}
	// Existing flows still pass; another pod is not affected.
	if _, err := tb.Track(udp(pod1, remote, 1, 53), 0, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("existing flow: %v", err)
	}
	if _, err := tb.Track(udp(pod2, remote, 1, 53), 0, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("other pod: %v", err)
	}
	if tb.SourceLen(pod1) != 10 || tb.SourceLen(pod2) != 1 || tb.Stats().Drops[conntrack.DropSourceLimit] != 100 {
		t.Fatalf("per-source %d/%d, stats %+v", tb.SourceLen(pod1), tb.SourceLen(pod2), tb.Stats())
	}
	// A freed slot can be used again.
	if !tb.Delete(udp(pod1, remote, 3, 53).Reply()) {
		t.Fatal("Delete by reply tuple found nothing")
	}
	if _, err := tb.Track(udp(pod1, remote, 100, 53), 0, netip.Addr{}, tb.Now()); err != nil {
		t.Fatalf("after delete: %v", err)
	}
	if n := tb.DeleteSource(pod1); n != 10 || tb.Len() != 1 {
		t.Fatalf("DeleteSource removed %d, %d left", n, tb.Len())
	}
}

func TestSNATReplyMatching(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, nil)
	k := tcp(pod1, remote, 40000, 80)
	res, err := tb.Track(k, syn, node, tb.Now())
	if err != nil || !res.NAT() || res.NATAddr != node || res.NATPort != 40000 || res.Dir != conntrack.Original {
		t.Fatalf("SYN: %+v, %v (want translation to %v keeping port 40000)", res, err, node)
	}
	// The reply arrives at the node address.
	rep := tcp(remote, node, 80, 40000)
	res, err = tb.Track(rep, synack, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply || !res.NAT() || res.NATAddr != pod1 || res.NATPort != 40000 || res.State != conntrack.StateSynRecv {
		t.Fatalf("SYN/ACK: %+v, %v", res, err)
	}
	// The untranslated reply tuple is not this flow.
	if _, _, ok := tb.Get(k.Reply(), tb.Now()); ok {
		t.Fatal("untranslated reply tuple matched a NAT flow")
	}
	f, _, ok := tb.Get(k, tb.Now())
	if !ok || !f.NAT || f.Reply != rep {
		t.Fatalf("flow %+v", f)
	}
	// A second pod using the same source port gets another port.
	res2, err := tb.Track(tcp(pod2, remote, 40000, 80), syn, node, tb.Now())
	if err != nil || res2.NATPort == 40000 || res2.NATPort < conntrack.DefaultPortMin || res2.NATPort > conntrack.DefaultPortMax {
		t.Fatalf("second pod: %+v, %v", res2, err)
	}
	res3, err := tb.Track(tcp(remote, node, 80, res2.NATPort), synack, netip.Addr{}, tb.Now())
	if err != nil || res3.NATAddr != pod2 || res3.NATPort != 40000 {
		t.Fatalf("second pod's reply: %+v, %v", res3, err)
	}
	// IPv6 and ICMP echo.
	res, err = tb.Track(conntrack.MakeTuple(packet.ProtoICMPv6, netip.AddrPortFrom(pod6, 9), netip.AddrPortFrom(remote6, 0)), 0, node6, tb.Now())
	if err != nil || res.NATAddr != node6 {
		t.Fatalf("ICMPv6 echo: %+v, %v", res, err)
	}
	res, err = tb.Track(conntrack.MakeTuple(packet.ProtoICMPv6, netip.AddrPortFrom(remote6, 0), netip.AddrPortFrom(node6, res.NATPort)), 0, netip.Addr{}, tb.Now())
	if err != nil || res.Dir != conntrack.Reply || res.NATAddr != pod6 || res.NATPort != 9 {
		t.Fatalf("ICMPv6 echo reply: %+v, %v", res, err)
	}
	if _, err := tb.Track(udp(pod1, remote, 1, 1), 0, node6, tb.Now()); !errors.Is(err, conntrack.ErrNoSNATAddr) {
		t.Fatalf("IPv4 flow to an IPv6 SNAT address: %v", err)
	}
	// Deleting the flow frees both keys.
	if !tb.Delete(rep) {
		t.Fatal("Delete(reply) found nothing")
	}
	if _, _, ok := tb.Get(k, tb.Now()); ok {
		t.Fatal("original key survived Delete")
	}
}

func TestPortExhaustion(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, func(cfg *conntrack.Config) {
		cfg.SNAT = []conntrack.SNATAddr{{Addr: node, PortMin: 5000, PortMax: 5009}}
	})
	used := map[uint16]bool{}
	for i := range 10 {
		res, err := tb.Track(udp(netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}), remote, 53, 53), 0, node, tb.Now())
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		if res.NATPort < 5000 || res.NATPort > 5009 || used[res.NATPort] {
			t.Fatalf("flow %d: port %d reused or out of range", i, res.NATPort)
		}
		used[res.NATPort] = true
	}
	_, err := tb.Track(udp(pod1, remote, 53, 53), 0, node, tb.Now())
	if !errors.Is(err, conntrack.ErrPortsExhausted) {
		t.Fatalf("11th flow: %v, want ErrPortsExhausted", err)
	}
	if tb.Stats().Drops[conntrack.DropPortsExhausted] != 1 || tb.Len() != 10 {
		t.Fatalf("stats %+v", tb.Stats())
	}
	// Ports are per destination: another destination has the whole range.
	if _, err := tb.Track(udp(pod1, remote, 53, 54), 0, node, tb.Now()); err != nil {
		t.Fatalf("other destination port: %v", err)
	}
	// Expired flows give their ports back, even before Reap.
	c.Advance(31 * time.Second)
	if _, err := tb.Track(udp(pod1, remote, 53, 53), 0, node, tb.Now()); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	bad := []conntrack.Config{
		{MaxEntries: -1},
		{MaxEntries: 10, MaxPerSource: 11},
		{Shards: 3},
		{Timeouts: conntrack.Timeouts{UDP: -time.Second}},
		{SNAT: []conntrack.SNATAddr{{Addr: netip.IPv4Unspecified()}}},
		{SNAT: []conntrack.SNATAddr{{Addr: node, PortMin: 10, PortMax: 9}}},
		{SNAT: []conntrack.SNATAddr{{Addr: node}, {Addr: node}}},
	}
	for i, cfg := range bad {
		if _, err := conntrack.New(cfg); err == nil {
			t.Errorf("config %d (%+v): no error", i, cfg)
		}
	}
	tb, err := conntrack.New(conntrack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if tb.Timeouts() != conntrack.DefaultTimeouts() {
		t.Fatalf("Timeouts() = %+v, want the defaults", tb.Timeouts())
	}
}

func TestPolicy(t *testing.T) {
	p, err := conntrack.NewPolicy(conntrack.PolicyConfig{
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")},
		NodeAddr:     node, NodeAddr6: node6,
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		src, dst string
		want     netip.Addr
	}{
		{"pod to pod, same node", "10.244.1.5", "10.244.1.6", netip.Addr{}},
		{"pod to pod, other node", "10.244.1.5", "10.244.7.9", netip.Addr{}},
		{"pod to outside", "10.244.1.5", "192.0.2.10", node},
		{"pod to multicast", "10.244.1.5", "239.1.1.1", netip.Addr{}},
		{"pod to the node", "10.244.1.5", "198.51.100.1", netip.Addr{}},
		{"node to pod", "198.51.100.1", "10.244.1.5", netip.Addr{}},
		{"outside to pod", "192.0.2.10", "10.244.1.5", netip.Addr{}},
		{"outside to outside", "192.0.2.10", "192.0.2.11", netip.Addr{}},
		{"pod6 to outside", "fd00:10:244:1::5", "2001:db8::10", node6},
		{"pod6 to pod6", "fd00:10:244:1::5", "fd00:10:244:2::5", netip.Addr{}},
	}
	for _, tc := range cases {
		got, ok := p.Masquerade(netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst))
		if ok != tc.want.IsValid() || got != tc.want {
			t.Errorf("%s: Masquerade = %v, %v; want %v", tc.name, got, ok, tc.want)
		}
	}
	v4only, err := conntrack.NewPolicy(conntrack.PolicyConfig{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}, NodeAddr: node})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v4only.Masquerade(pod6, remote6); ok {
		t.Error("IPv6 translated without a node IPv6 address")
	}
	for _, cfg := range []conntrack.PolicyConfig{
		{NodeAddr: node},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.1/16")}, NodeAddr: node},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, NodeAddr: node6},
	} {
		if _, err := conntrack.NewPolicy(cfg); err == nil {
			t.Errorf("NewPolicy(%+v): no error", cfg)
		}
	}
}

// TestConcurrent runs lookups, updates, inserts, reaps and deletes from
// several goroutines (meaningful under -race) and checks the counts add up.
func TestConcurrent(t *testing.T) {
	c := newClock()
	tb := newTable(t, c, func(cfg *conntrack.Config) { cfg.MaxEntries = 4096; cfg.MaxPerSource = 4096; cfg.Shards = 8 })
	const workers, flows = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + w)})
			for round := range 3 {
				for i := range flows {
					k := tcp(src, remote, uint16(1000+i), 80)
					if round == 0 {
						if _, err := tb.Track(k, syn, node, tb.Now()); err != nil {
							t.Error(err)
							return
						}
						continue
					}
					f, _, ok := tb.Get(k, tb.Now())
					if !ok {
						t.Errorf("flow %v lost", k)
						return
					}
					if _, err := tb.Track(f.Reply, synack, netip.Addr{}, tb.Now()); err != nil && round == 1 {
						t.Error(err)
						return
					}
				}
			}
			if w%2 == 0 {
				tb.DeleteSource(src)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			tb.Reap(tb.Now(), 100)
			tb.Range(tb.Now(), func(conntrack.Flow) bool { return true })
		}
	}()
	wg.Wait()
	if got, want := tb.Len(), workers/2*flows; got != want {
		t.Fatalf("%d flows left, want %d", got, want)
	}
	n := 0
	tb.Range(tb.Now(), func(f conntrack.Flow) bool {
		if f.State != conntrack.StateSynRecv || !f.NAT {
			t.Errorf("flow %+v", f)
		}
		n++
		return true
	})
	if n != workers/2*flows {
		t.Fatalf("Range saw %d flows", n)
	}
}

// TestWall: a flow's expiry, a table time, reads as the wall-clock time of
// the table's clock.
func TestWall(t *testing.T) {
	c := newClock()
	t0 := c.Now()
	tb := newTable(t, c, nil)
	c.Advance(7*time.Second + 300*time.Millisecond)
	k := udp(pod1, remote, 5353, 53)
	if _, err := tb.Track(k, 0, netip.Addr{}, tb.Now()); err != nil {
		t.Fatal(err)
	}
	f, _, ok := tb.Get(k, tb.Now())
	if !ok {
		t.Fatal("flow not found")
	}
	// Table times are whole seconds: 7s in, plus UDP's 30s.
	if got, want := tb.Wall(f.Expires), t0.Add(37*time.Second); !got.Equal(want) {
		t.Errorf("Wall(expiry) = %v, want %v", got, want)
	}
	if got := tb.Wall(0); !got.Equal(t0) {
		t.Errorf("Wall(0) = %v, want the table's creation %v", got, t0)
	}
}
