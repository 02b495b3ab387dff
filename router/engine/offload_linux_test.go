package engine

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/link/tap/taptest"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/packet"
)

// TestForgedChecksumOffsetFromPod plays a hostile pod: in its own netns, on
// the kernel side of a TAP the engine holds, it sends frames through an
// AF_PACKET socket with PACKET_VNET_HDR, so that it chooses the virtio-net
// header's csum_start/csum_offset itself. A frame whose partial checksum
// points into its IPv6 source address must reach no one and be counted as
// DropBadOffload; the same packet with an honest header is forwarded, its
// checksum finished. Root only (netns, TAP).
func TestForgedChecksumOffsetFromPod(t *testing.T) {
	ns := nstest.New(t)
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	const dev = "pod0"
	var td *tap.Device
	if err := ns.Do(func() (err error) {
		td, err = tap.Create(dev, tap.Config{Logger: zaptest.NewLogger(t)})
		return err
	}); err != nil {
		t.Fatalf("tap.Create in %s: %v", ns.Name, err)
	}
	if td.Offloads()&packet.OffloadCsum == 0 {
		td.Close()
		t.Skip("skipped: the kernel refused TUN_F_CSUM, so it finishes partial checksums itself")
	}
	ns.Run(t, "ip", "link", "set", dev, "up")

	e, err := New(Config{PodCIDR: podCIDR, PodCIDR6: podCIDR6, Logger: zaptest.NewLogger(t)})
	if err != nil {
		td.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	pod, err := e.AddPort(td, PortConfig{Name: "pod", Kind: KindPod, L2: true, MTU: 1500, Addrs: []netip.Addr{addrA, addrA6}})
	if err != nil {
		td.Close()
		t.Fatal(err)
	}
	other, port := linktest.Pipe(64, 9000, 64)
	if _, err := e.AddPort(port, PortConfig{Name: "other", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{addrB, addrB6}}); err != nil {
		t.Fatal(err)
	}

	// The pod's raw socket, made inside its netns and bound to its side of
	// the TAP.
	var snd *taptest.Sender
	if err := ns.Do(func() (err error) {
		snd, err = taptest.NewSender(dev)
		return err
	}); err != nil {
		t.Fatalf("AF_PACKET socket in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { snd.Close() })
	sendVnet := func(start, off uint16, frame []byte) {
		t.Helper()
		if err := snd.Write(nil, taptest.Partial(start, off), frame); err != nil {
			t.Fatalf("AF_PACKET write: %v", err)
		}
	}
	podMAC := packet.MAC{0x02, 0, 0, 0, 0, 0xa}
	udp := func() ([]byte, packet.GSO) {
		ip := ipPacket(addrA6, addrB6, header.UDPProtocolNumber, udpSeg(4000, 53, 64))
		g := partial(ip)
		return eth(e, podMAC, ip), g
	}

	// An honest partial checksum crosses and is finished on the way.
	frame, g := udp()
	sendVnet(header.EthernetMinimumSize+g.CsumStart, g.CsumOffset, frame)
	got := checkEth(t, e, recv(t, other), macB)
	if _, src, _, _ := l4Of(got); src != addrA6 {
		t.Fatalf("forwarded from %s, want %s", src, addrA6)
	}
	checkSums(t, got)

	// The forged one: "finish" the checksum over the last two bytes of the
	// IPv6 source address (IP offset 22), after the source check.
	before := pod.Stats().Drops[DropBadOffload]
	frame, _ = udp()
	sendVnet(header.EthernetMinimumSize+8, 14, frame)
	if b, ok := tryRecv(other, 300*time.Millisecond); ok {
		_, src, _, _ := l4Of(checkEth(t, e, b, macB))
		t.Fatalf("a forged checksum offset was forwarded, from %s", src)
	}
	deadline := time.Now().Add(time.Second)
	for pod.Stats().Drops[DropBadOffload] != before+1 {
		if time.Now().After(deadline) {
			t.Fatalf("drops %v: want one more %v", pod.Stats().Drops, DropBadOffload)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
