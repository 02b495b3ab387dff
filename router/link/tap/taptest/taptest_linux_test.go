package taptest_test

import (
	"encoding/binary"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/link/tap/taptest"
	"github.com/podrouter/podrouter/router/nstest"
)

// frame4 is a broadcast Ethernet frame holding an IPv4 packet of protocol
// proto, fragment field frag, whose transport header starts with l4.
func frame4(ether uint16, proto uint8, frag uint16, l4 []byte) []byte {
	f := make([]byte, 14+20+len(l4))
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], ether)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[6:], frag)
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	copy(ip[20:], l4)
	return f
}

// udp is a UDP header (and a little payload) to port.
func udp(port uint16) []byte {
	u := make([]byte, 16)
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], port)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	return u
}

// TestCounter writes frames into a TAP from the engine's side (they arrive
// on the interface) and checks what the counters count: only their kind,
// not other ports, types, protocols, non-first fragments or non-IPv4, and
// not what a Sender on the same interface sends out. Root only.
func TestCounter(t *testing.T) {
	ns := nstest.New(t)
	const dev = "pod0"
	var td *tap.Device
	var udpC, icmpC *taptest.Counter
	var snd *taptest.Sender
	if err := ns.Do(func() (err error) {
		if td, err = tap.Create(dev, tap.Config{Logger: zaptest.NewLogger(t)}); err != nil {
			return err
		}
		if udpC, err = taptest.CountUDP(dev, 9001); err != nil {
			return err
		}
		if icmpC, err = taptest.CountICMP(dev, 11); err != nil {
			return err
		}
		snd, err = taptest.NewSender(dev)
		return err
	}); err != nil {
		t.Fatalf("in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{snd, icmpC, udpC, td} {
			if c != nil {
				c.Close()
			}
		}
	})
	ns.Run(t, "ip", "link", "set", dev, "up")

	icmp := func(typ uint8) []byte { return []byte{typ, 0, 0, 0, 0, 0, 0, 0} }
	in := []struct {
		frame []byte
		n     int
	}{
		{frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 0, udp(9001)), 3},           // counted by udpC
		{frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 0x2000, udp(9001)), 1},      // first fragment (MF): counted
		{frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 0, udp(9002)), 2},           // another port
		{frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 5, udp(9001)), 1},           // not a first fragment
		{frame4(unix.ETH_P_IP, unix.IPPROTO_TCP, 0, udp(9001)), 1},           // not UDP
		{frame4(unix.ETH_P_IPV6, unix.IPPROTO_UDP, 0, udp(9001)), 1},         // not IPv4
		{frame4(unix.ETH_P_IP, unix.IPPROTO_ICMP, 0, icmp(11)), 2},           // counted by icmpC
		{frame4(unix.ETH_P_IP, unix.IPPROTO_ICMP, 0, icmp(8)), 1},            // another type
		{frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 0, []byte{11, 0, 0, 0}), 1}, // type 11's byte, in UDP
	}
	for _, f := range in {
		for range f.n {
			buf := append(make([]byte, tap.VnetHdrLen), f.frame...)
			if _, err := td.Write([][]byte{buf}, tap.VnetHdrLen); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Sent out by the pod: not counted.
	if err := snd.Write(nil, taptest.Hdr{}, frame4(unix.ETH_P_IP, unix.IPPROTO_UDP, 0, udp(9001))); err != nil {
		t.Fatal(err)
	}
	if err := snd.Write(nil, taptest.Hdr{}, frame4(unix.ETH_P_IP, unix.IPPROTO_ICMP, 0, icmp(11))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if st := td.Stats(); st.TxDropped != 0 {
		t.Fatalf("the kernel refused %d frames", st.TxDropped)
	}
	for _, c := range []struct {
		name string
		c    *taptest.Counter
		want uint64
	}{{"udp 9001", udpC, 4}, {"icmp 11", icmpC, 2}} {
		got, err := c.c.Count()
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s: counted %d, want %d", c.name, got, c.want)
		}
		// PACKET_STATISTICS resets on read.
		if got, err := c.c.Count(); err != nil || got != 0 {
			t.Errorf("%s: counted %d (%v) after a read, want 0", c.name, got, err)
		}
	}
}
