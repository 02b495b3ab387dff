package netstackx

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/podrouter/podrouter/router/link"
)

var testMAC = net.HardwareAddr{0x02, 0x50, 1, 2, 3, 4}

func newTestEndpoint(t *testing.T, cfg EndpointConfig) *Endpoint {
	t.Helper()
	e, err := NewEndpoint(cfg)
	if err != nil {
		t.Fatalf("NewEndpoint: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// queuePackets pushes packets with the given payloads through the
// netstack side of e, as the stack would.
func queuePackets(t *testing.T, e *Endpoint, payloads ...[]byte) {
	t.Helper()
	var list stack.PacketBufferList
	for _, p := range payloads {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		list.PushBack(pkt)
	}
	n, err := e.LinkEndpoint().WritePackets(list)
	list.DecRef()
	if err != nil || n != len(payloads) {
		t.Fatalf("WritePackets = %d, %v; want %d, nil", n, err, len(payloads))
	}
}

func payload(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

func TestNewEndpointValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  EndpointConfig
		want string
	}{
		{"l2 without MAC", EndpointConfig{Framing: L2}, "MAC"},
		{"l2 multicast MAC", EndpointConfig{Framing: L2, MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}, "MAC"},
		{"l3 with MAC", EndpointConfig{Framing: L3, MAC: testMAC}, "MAC"},
		{"tiny MTU", EndpointConfig{Framing: L3, MTU: 40}, "MTU"},
		{"bad framing", EndpointConfig{Framing: 7}, "Framing"},
		{"negative queue", EndpointConfig{Framing: L3, QueueLen: -1}, "QueueLen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewEndpoint(tt.cfg)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("NewEndpoint(%+v) = %v; want an error naming %s", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestEndpointReadOffsetAndBatch(t *testing.T) {
	checkGoroutines(t)
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	const offset = 10
	queuePackets(t, e, payload(100, 1), payload(200, 2), payload(300, 3))

	bufs, sizes := makeBufs(2, 512)
	for _, b := range bufs {
		for i := range offset {
			b[i] = 0xee
		}
	}
	n, err := e.Read(bufs, sizes, offset)
	if err != nil || n != 2 {
		t.Fatalf("Read = %d, %v; want 2, nil", n, err)
	}
	for i, want := range [][]byte{payload(100, 1), payload(200, 2)} {
		if sizes[i] != len(want) || !bytes.Equal(bufs[i][offset:offset+sizes[i]], want) {
			t.Errorf("packet %d: size %d, want %d bytes of %d", i, sizes[i], len(want), want[0])
		}
		if !bytes.Equal(bufs[i][:offset], payload(offset, 0xee)) {
			t.Errorf("packet %d: headroom overwritten: % x", i, bufs[i][:offset])
		}
		if bufs[i][offset+sizes[i]] != 0 {
			t.Errorf("packet %d: wrote past the packet", i)
		}
	}
	n, err = e.Read(bufs, sizes, offset)
	if err != nil || n != 1 || sizes[0] != 300 {
		t.Fatalf("second Read = %d, %v (size %d); want 1 packet of 300", n, err, sizes[0])
	}
	if got := e.Stats().OutboundPackets; got != 3 {
		t.Errorf("OutboundPackets = %d, want 3", got)
	}
}

func TestEndpointReadDropsOversize(t *testing.T) {
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	// 100 bytes fit a 128-byte buffer at offset 16; 120 bytes do not.
	queuePackets(t, e, payload(120, 1), payload(100, 2))
	bufs, sizes := makeBufs(2, 128)
	n, err := e.Read(bufs, sizes, 16)
	if err != nil || n != 1 || sizes[0] != 100 || bufs[0][16] != 2 {
		t.Fatalf("Read = %d, %v (size %d); want just the 100-byte packet", n, err, sizes[0])
	}
	if got := e.Stats().OutboundDropTooBig; got != 1 {
		t.Errorf("OutboundDropTooBig = %d, want 1", got)
	}
}

func TestEndpointQueueFullDrops(t *testing.T) {
	e := newTestEndpoint(t, EndpointConfig{Framing: L3, QueueLen: 4})
	for i := range 6 {
		queuePackets(t, e, payload(10, byte(i)))
	}
	if got := e.Stats().OutboundDropFull; got != 2 {
		t.Errorf("OutboundDropFull = %d, want 2", got)
	}
	bufs, sizes := makeBufs(8, 64)
	n, err := e.Read(bufs, sizes, 0)
	if err != nil || n != 4 {
		t.Fatalf("Read = %d, %v; want the 4 queued packets", n, err)
	}
	for i := range n {
		if bufs[i][0] != byte(i) {
			t.Errorf("packet %d is %d; want FIFO order", i, bufs[i][0])
		}
	}
}

func TestEndpointCloseUnblocksRead(t *testing.T) {
	checkGoroutines(t)
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	errc := make(chan error, 1)
	go func() {
		bufs, sizes := makeBufs(1, 64)
		_, err := e.Read(bufs, sizes, 0)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read block
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, link.ErrClosed) {
			t.Fatalf("Read after Close = %v, want link.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := e.Write([][]byte{payload(20, 0x45)}, 0); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Write after Close = %v, want link.ErrClosed", err)
	}
	bufs, sizes := makeBufs(1, 64)
	if _, err := e.Read(bufs, sizes, 0); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Read after Close = %v, want link.ErrClosed", err)
	}
}

func TestEndpointCloseDropsQueued(t *testing.T) {
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	queuePackets(t, e, payload(10, 1), payload(10, 2))
	_ = e.Close()
	if got := e.Stats().OutboundDropClosed; got != 2 {
		t.Errorf("OutboundDropClosed = %d, want 2", got)
	}
	var list stack.PacketBufferList
	list.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(payload(10, 3))}))
	defer list.DecRef()
	if _, err := e.LinkEndpoint().WritePackets(list); err == nil {
		t.Error("WritePackets after Close succeeded")
	}
}

// recordingDispatcher is a stack.NetworkDispatcher that keeps copies.
type recordingDispatcher struct {
	protos []tcpip.NetworkProtocolNumber
	pkts   [][]byte
	types  []tcpip.PacketType
}

func (d *recordingDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.protos = append(d.protos, proto)
	d.pkts = append(d.pkts, pkt.Data().AsRange().ToSlice())
	d.types = append(d.types, pkt.PktType)
}

func (*recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func TestEndpointWrite(t *testing.T) {
	ipv4Pkt := append([]byte{0x45}, payload(19, 0)...)
	ipv6Pkt := append([]byte{0x60}, payload(39, 0)...)
	frame := func(dst net.HardwareAddr, typ tcpip.NetworkProtocolNumber, p []byte) []byte {
		f := make([]byte, header.EthernetMinimumSize+len(p))
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x09", DstAddr: tcpip.LinkAddress(dst), Type: typ})
		copy(f[header.EthernetMinimumSize:], p)
		return f
	}
	tests := []struct {
		name        string
		framing     Framing
		in          []byte
		wantProto   tcpip.NetworkProtocolNumber // 0: dropped
		wantPayload []byte
		wantType    tcpip.PacketType
	}{
		{"l3 ipv4", L3, ipv4Pkt, header.IPv4ProtocolNumber, ipv4Pkt, tcpip.PacketHost},
		{"l3 ipv6", L3, ipv6Pkt, header.IPv6ProtocolNumber, ipv6Pkt, tcpip.PacketHost},
		{"l3 bad version", L3, []byte{0x55, 0, 0}, 0, nil, 0},
		{"l3 empty", L3, nil, 0, nil, 0},
		{"l2 ipv4 to us", L2, frame(testMAC, header.IPv4ProtocolNumber, ipv4Pkt), header.IPv4ProtocolNumber, ipv4Pkt, tcpip.PacketHost},
		{"l2 arp broadcast", L2, frame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, header.ARPProtocolNumber, payload(28, 0)), header.ARPProtocolNumber, payload(28, 0), tcpip.PacketBroadcast},
		{"l2 ipv6 other host", L2, frame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, header.IPv6ProtocolNumber, ipv6Pkt), header.IPv6ProtocolNumber, ipv6Pkt, tcpip.PacketOtherHost},
		{"l2 short", L2, payload(10, 0), 0, nil, 0},
		{"l2 unknown ethertype", L2, frame(testMAC, 0x88cc, payload(10, 0)), 0, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := EndpointConfig{Framing: tt.framing}
			if tt.framing == L2 {
				cfg.MAC = testMAC
			}
			e := newTestEndpoint(t, cfg)
			var d recordingDispatcher
			e.LinkEndpoint().Attach(&d)
			const offset = link.Headroom
			buf := make([]byte, offset+len(tt.in))
			copy(buf[offset:], tt.in)
			if n, err := e.Write([][]byte{buf}, offset); n != 1 || err != nil {
				t.Fatalf("Write = %d, %v; want 1, nil", n, err)
			}
			if tt.wantProto == 0 {
				if len(d.pkts) != 0 {
					t.Fatalf("delivered %d packets, want a drop", len(d.pkts))
				}
				if got := e.Stats().InboundDropInvalid; got != 1 {
					t.Fatalf("InboundDropInvalid = %d, want 1", got)
				}
				return
			}
			if len(d.pkts) != 1 || d.protos[0] != tt.wantProto || !bytes.Equal(d.pkts[0], tt.wantPayload) || d.types[0] != tt.wantType {
				t.Fatalf("delivered %v %x %v; want proto %v payload %x type %v", d.protos, d.pkts, d.types, tt.wantProto, tt.wantPayload, tt.wantType)
			}
			// The caller's buffer may be reused at once: the packet was copied.
			clear(buf)
			if !bytes.Equal(d.pkts[0], tt.wantPayload) {
				t.Fatal("delivered packet aliases the caller's buffer")
			}
		})
	}
}

func TestEndpointWriteNotAttached(t *testing.T) {
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	if _, err := e.Write([][]byte{{0x45, 0, 0, 20}}, 0); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if got := e.Stats().InboundDropNoStack; got != 1 {
		t.Fatalf("InboundDropNoStack = %d, want 1", got)
	}
}

func TestEndpointReadAllocs(t *testing.T) {
	e := newTestEndpoint(t, EndpointConfig{Framing: L3})
	bufs, sizes := makeBufs(4, 2048)
	pkts := make([]*stack.PacketBuffer, 4)
	for i := range pkts {
		pkts[i] = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(payload(1400, byte(i)))})
	}
	defer func() {
		for _, p := range pkts {
			p.DecRef()
		}
	}()
	var list stack.PacketBufferList
	for _, p := range pkts {
		list.PushBack(p)
	}
	allocs := testing.AllocsPerRun(100, func() {
		_, _ = e.LinkEndpoint().WritePackets(list)
		_, _ = e.Read(bufs, sizes, 0)
	})
	if allocs != 0 {
		t.Errorf("WritePackets+Read allocate %.1f times per batch, want 0", allocs)
	}
}
