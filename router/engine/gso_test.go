package engine

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/linktest"
	"github.com/podrouter/podrouter/router/packet"
)

// gsoDev is a link.GSODevice for tests: Inject queues frames (with their
// descriptors) for ReadGSO, and what the engine writes is recorded.
type gsoDev struct {
	offloads packet.Offloads
	in       chan gsoFrame
	mu       sync.Mutex
	out      []gsoFrame
	got      chan struct{}
	closed   chan struct{}
	once     sync.Once
}

type gsoFrame struct {
	b []byte
	g packet.GSO
}

func newGSODev(o packet.Offloads) *gsoDev {
	return &gsoDev{offloads: o, in: make(chan gsoFrame, 16), got: make(chan struct{}, 1024), closed: make(chan struct{})}
}

func (d *gsoDev) ReadGSO(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error) {
	select {
	case f := <-d.in:
		sizes[0] = copy(bufs[0][offset:], f.b)
		gso[0] = f.g
		return 1, nil
	case <-d.closed:
		return 0, link.ErrClosed
	}
}

func (d *gsoDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	panic("the engine must use ReadGSO")
}

func (d *gsoDev) WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, b := range bufs {
		if !d.offloads.Accepts(gso[i]) {
			panic("engine wrote an offload the device does not accept")
		}
		d.out = append(d.out, gsoFrame{b: append([]byte(nil), b[offset:]...), g: gso[i]})
		d.got <- struct{}{}
	}
	return len(bufs), nil
}

func (d *gsoDev) Write(bufs [][]byte, offset int) (int, error) {
	return d.WriteGSO(bufs, make([]packet.GSO, len(bufs)), offset)
}

func (d *gsoDev) BatchSize() int            { return 8 }
func (d *gsoDev) Offloads() packet.Offloads { return d.offloads }
func (d *gsoDev) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

func (d *gsoDev) wait(t *testing.T) gsoFrame {
	t.Helper()
	select {
	case <-d.got:
	case <-time.After(time.Second):
		t.Fatal("nothing written")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.out[0]
	d.out = d.out[1:]
	return f
}

// tsoFrame builds an Ethernet frame with a TCP/IPv4 super-packet of n
// payload bytes from a to b, its checksum partial (pseudo-header only) as a
// kernel hands it over with TSO, and its descriptor for segments of mss.
func tsoFrame(src, dst netip.Addr, n, mss int) ([]byte, packet.GSO) {
	const tcpLen = header.TCPMinimumSize
	ip := make([]byte, header.IPv4MinimumSize+tcpLen+n)
	h := header.IPv4(ip)
	h.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), Flags: header.IPv4FlagDontFragment,
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	h.SetChecksum(^h.CalculateChecksum())
	tcp := header.TCP(ip[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 5201, SeqNum: 1000, AckNum: 1, DataOffset: tcpLen, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 65535})
	for i := range n {
		ip[header.IPv4MinimumSize+tcpLen+i] = byte(i * 7)
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, h.SourceAddress(), h.DestinationAddress(), uint16(tcpLen+n)))
	g := packet.GSO{Type: packet.GSOTCPv4, NeedsCsum: true, HdrLen: uint16(header.IPv4MinimumSize + tcpLen), Size: uint16(mss),
		CsumStart: header.IPv4MinimumSize, CsumOffset: 16}
	return ip, g
}

func gsoRig(t *testing.T, dstOffloads packet.Offloads, dstMTU int) (*Engine, *gsoDev, *gsoDev, *linktest.End) {
	e, err := New(Config{PodCIDR: podCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	a, b := newGSODev(packet.OffloadCsum|packet.OffloadTSO4), newGSODev(dstOffloads)
	if _, err := e.AddPort(a, PortConfig{Name: "a", Kind: KindPod, L2: true, PeerMAC: macA, MTU: 1500, Addrs: []netip.Addr{addrA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPort(b, PortConfig{Name: "b", Kind: KindPod, L2: true, PeerMAC: macB, MTU: dstMTU, Addrs: []netip.Addr{addrB}}); err != nil {
		t.Fatal(err)
	}
	host, plain := linktest.Pipe(256, 9000, 64)
	if _, err := e.AddPort(plain, PortConfig{Name: "c", Kind: KindPod, L2: true, PeerMAC: macB, MTU: 1500, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.4")}}); err != nil {
		t.Fatal(err)
	}
	return e, a, b, host
}

func TestGSOPassedWhole(t *testing.T) {
	e, a, b, _ := gsoRig(t, packet.OffloadCsum|packet.OffloadTSO4, 1500)
	ip, g := tsoFrame(addrA, addrB, 20000, 1448)
	a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
	f := b.wait(t)
	if f.g != g {
		t.Fatalf("descriptor %+v, want %+v", f.g, g)
	}
	if !bytes.Equal(checkEth(t, e, f.b, macB), ip) {
		t.Fatal("super-packet changed")
	}
	if s := e.OffloadStats(); s.SuperPackets != 1 || s.Segmented != 0 {
		t.Fatalf("offload stats %+v", s)
	}
}

func TestGSOSegmentedForPlainPort(t *testing.T) {
	e, a, _, host := gsoRig(t, packet.OffloadCsum|packet.OffloadTSO4, 1500)
	const n, mss = 5000, 1448
	ip, g := tsoFrame(addrA, netip.MustParseAddr("10.244.1.4"), n, mss)
	a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
	var payload []byte
	for len(payload) < n {
		seg := header.IPv4(checkEth(t, e, recv(t, host), macB))
		if !seg.IsValid(len(seg)) || !seg.IsChecksumValid() || len(seg) > 1500 {
			t.Fatalf("bad segment of %d bytes", len(seg))
		}
		tcp := header.TCP(seg.Payload())
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, seg.SourceAddress(), seg.DestinationAddress(), uint16(len(tcp)))
		if checksum.Checksum(tcp, sum) != 0xffff {
			t.Fatal("bad TCP checksum")
		}
		if got, want := tcp.SequenceNumber(), uint32(1000+len(payload)); got != want {
			t.Fatalf("seq %d, want %d", got, want)
		}
		payload = append(payload, tcp.Payload()...)
	}
	if !bytes.Equal(payload, ip[40:]) {
		t.Fatal("segments do not add up to the super-packet")
	}
	if s := e.OffloadStats(); s.Segmented != 1 || s.Segments != 4 {
		t.Fatalf("offload stats %+v", s)
	}
}

func TestGSOSegmentTooBigForNextHop(t *testing.T) {
	e, a, b, _ := gsoRig(t, packet.OffloadCsum|packet.OffloadTSO4, 1400)
	ip, g := tsoFrame(addrA, addrB, 20000, 1448)
	a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
	// Segments of 1488 bytes exceed the next hop's 1400 with DF set: the
	// sender learns the MTU.
	f := a.wait(t)
	c := header.ICMPv4(header.IPv4(checkEth(t, e, f.b, macA)).Payload())
	if c.Type() != header.ICMPv4DstUnreachable || c.Code() != header.ICMPv4FragmentationNeeded || c.MTU() != 1400 {
		t.Fatalf("got ICMP %d/%d mtu %d", c.Type(), c.Code(), c.MTU())
	}
	select {
	case <-b.got:
		t.Fatal("forwarded")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestPartialChecksumFinished(t *testing.T) {
	e, a, _, host := gsoRig(t, packet.OffloadCsum|packet.OffloadTSO4, 1500)
	ip, g := tsoFrame(addrA, netip.MustParseAddr("10.244.1.4"), 1000, 1448)
	g.Type, g.Size = packet.GSONone, 0
	a.in <- gsoFrame{b: eth(e, macA, ip), g: g}
	seg := header.IPv4(checkEth(t, e, recv(t, host), macB))
	tcp := header.TCP(seg.Payload())
	if checksum.Checksum(tcp, header.PseudoHeaderChecksum(header.TCPProtocolNumber, seg.SourceAddress(), seg.DestinationAddress(), uint16(len(tcp)))) != 0xffff {
		t.Fatal("checksum not finished for a port without checksum offload")
	}
}
