// Package netstackx holds everything that touches gVisor's netstack: the
// link endpoint that joins a netstack to an engine port, virtual pods (a
// whole gVisor stack behind one port, for tests, benchmarks and lab mode)
// and Wire, which joins two ports directly. No other package imports
// gvisor.dev.
//
// The Endpoint's pipeline, seen from the engine:
//
//	netstack ──WritePackets──▶ outbound ring (PacketBuffer refs, bounded)
//	                                │ Read: one copy into the caller's buffer
//	                                ▼
//	                        engine (link.Device)
//	                                │ Write: one copy into a pooled gVisor buffer
//	                                ▼
//	netstack ◀─DeliverNetworkPacket─ (sniffers, then the NIC)
//
// Design notes: gVisor's stack.LinkEndpoint and link.Device both have a
// Close method, with different signatures, so one type cannot be both. The
// Endpoint is the link.Device; Endpoint.LinkEndpoint returns the same object
// as the stack.LinkEndpoint (a named type conversion, no wrapper, no extra
// indirection). The Ethernet header is written and parsed here rather than
// through gVisor's link/ethernet wrapper: it is a dozen lines and saves a
// nested dispatcher hop per packet.
package netstackx

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/podrouter/podrouter/router/link"
)

// Framing is what one packet on an Endpoint's link looks like.
type Framing uint8

const (
	// L2 packets are Ethernet frames (no FCS, no VLAN tag). The netstack
	// resolves neighbours with ARP and NDP itself.
	L2 Framing = iota
	// L3 packets are raw IPv4 or IPv6 packets, told apart by the version
	// nibble. There is no link-layer addressing and no neighbour resolution.
	L3
)

// String returns "l2" or "l3".
func (f Framing) String() string {
	switch f {
	case L2:
		return "l2"
	case L3:
		return "l3"
	default:
		return fmt.Sprintf("Framing(%d)", uint8(f))
	}
}

const (
	// DefaultQueueLen is the default bound of an Endpoint's outbound queue.
	// A gVisor TCP sender bursts up to its congestion window at once and
	// drops here cost it a recovery; at 1024 a busy bidirectional transfer
	// on a loaded 2-core machine lost about one packet in 500, which drove
	// gVisor's sender into rare long stalls. 4096 frames (6 MB at MTU 1500,
	// held only while queued) makes such drops rare.
	DefaultQueueLen = 4096
	// DefaultBatchSize is the default largest batch of an Endpoint's Read.
	DefaultBatchSize = 128
	// DefaultMTU is the IP MTU used when a config leaves it zero.
	DefaultMTU = 1500

	minMTU = header.IPv4MinimumMTU // 68
	maxMTU = 65535
)

// EndpointConfig configures NewEndpoint.
type EndpointConfig struct {
	// Framing selects Ethernet frames (L2, the default) or raw IP (L3).
	Framing Framing
	// MTU is the IP MTU (the Ethernet header is not included). Zero means
	// DefaultMTU.
	MTU int
	// MAC is the endpoint's unicast Ethernet address. Required for L2,
	// must be nil for L3.
	MAC net.HardwareAddr
	// QueueLen bounds the outbound queue; zero means DefaultQueueLen.
	QueueLen int
	// BatchSize is the largest number of packets one Read returns and the
	// value of BatchSize(); zero means DefaultBatchSize.
	BatchSize int
}

// EndpointStats are an Endpoint's counters. "Outbound" is netstack to
// engine (Read), "inbound" is engine to netstack (Write).
type EndpointStats struct {
	OutboundPackets    uint64 // handed out by Read
	OutboundDropFull   uint64 // dropped: outbound queue full
	OutboundDropTooBig uint64 // dropped: larger than the Read buffer
	OutboundDropClosed uint64 // still queued when the endpoint closed
	InboundPackets     uint64 // delivered to the netstack by Write
	InboundDropInvalid uint64 // dropped: too short, bad version or EtherType
	InboundDropNoStack uint64 // dropped: no NIC attached yet
}

// Endpoint joins a gVisor netstack NIC (LinkEndpoint) to an engine port
// (the link.Device methods). Create it with NewEndpoint.
type Endpoint struct {
	framing   Framing
	batchSize int
	mtu       atomic.Uint32

	linkAddr atomic.Pointer[tcpip.LinkAddress]

	dispatcher atomic.Pointer[dispatcherRef]
	sniffers   atomic.Pointer[[]*sniffer] // nil when none: one load per packet
	snifferMu  sync.Mutex                 // serializes sniffer list updates

	mu      sync.Mutex
	ring    []*stack.PacketBuffer // guarded by mu
	head    int                   // guarded by mu
	qlen    int                   // guarded by mu
	closed  atomic.Bool           // written under mu
	notify  chan struct{}         // one token: queue went from empty to non-empty
	done    chan struct{}         // closed by Close
	onClose func()                // guarded by mu; set by the stack

	scratch []*stack.PacketBuffer // Read's batch; Read is single-caller

	stats struct {
		outPackets, outDropFull, outDropTooBig, outDropClosed atomic.Uint64
		inPackets, inDropInvalid, inDropNoStack               atomic.Uint64
	}
}

type dispatcherRef struct{ d stack.NetworkDispatcher }

type sniffer struct{ fn func(pkt []byte) }

var (
	_ link.Device        = (*Endpoint)(nil)
	_ stack.LinkEndpoint = (*nicEndpoint)(nil)
)

// NewEndpoint returns an open Endpoint, not yet attached to a stack: give
// LinkEndpoint() to stack.CreateNIC. Packets written before that are
// dropped and counted.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Framing != L2 && cfg.Framing != L3 {
		return nil, fmt.Errorf("netstackx: endpoint: Framing: unknown %v", cfg.Framing)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < minMTU || cfg.MTU > maxMTU {
		return nil, fmt.Errorf("netstackx: endpoint: MTU: %d outside [%d, %d]", cfg.MTU, minMTU, maxMTU)
	}
	switch cfg.Framing {
	case L2:
		if err := checkMAC(cfg.MAC); err != nil {
			return nil, fmt.Errorf("netstackx: endpoint: MAC: %w", err)
		}
	case L3:
		if cfg.MAC != nil {
			return nil, errors.New("netstackx: endpoint: MAC: must be nil for L3 framing")
		}
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.QueueLen < 1 {
		return nil, fmt.Errorf("netstackx: endpoint: QueueLen: %d is negative", cfg.QueueLen)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchSize < 1 {
		return nil, fmt.Errorf("netstackx: endpoint: BatchSize: %d is negative", cfg.BatchSize)
	}
	e := &Endpoint{
		framing:   cfg.Framing,
		batchSize: cfg.BatchSize,
		ring:      make([]*stack.PacketBuffer, cfg.QueueLen),
		notify:    make(chan struct{}, 1),
		done:      make(chan struct{}),
		scratch:   make([]*stack.PacketBuffer, 0, cfg.BatchSize),
	}
	e.mtu.Store(uint32(cfg.MTU))
	la := tcpip.LinkAddress(cfg.MAC)
	e.linkAddr.Store(&la)
	return e, nil
}

func checkMAC(mac net.HardwareAddr) error {
	if len(mac) != header.EthernetAddressSize {
		return fmt.Errorf("%q is not a 6-byte Ethernet address", mac.String())
	}
	if mac[0]&1 != 0 {
		return fmt.Errorf("%s is a multicast address", mac)
	}
	if tcpip.LinkAddress(mac) == header.UnspecifiedEthernetAddress {
		return errors.New("00:00:00:00:00:00 is unspecified")
	}
	return nil
}

// LinkEndpoint returns the netstack side of e, for stack.CreateNIC. It is
// e itself under another method set. Its Close (called when the NIC is
// removed) closes e.
func (e *Endpoint) LinkEndpoint() stack.LinkEndpoint { return (*nicEndpoint)(e) }

// Framing returns the framing e was created with.
func (e *Endpoint) Framing() Framing { return e.framing }

// MAC returns e's Ethernet address (nil for L3).
func (e *Endpoint) MAC() net.HardwareAddr {
	la := *e.linkAddr.Load()
	if la == "" {
		return nil
	}
	return net.HardwareAddr(la)
}

// MTU returns e's IP MTU.
func (e *Endpoint) MTU() int { return int(e.mtu.Load()) }

// Stats returns a snapshot of e's counters.
func (e *Endpoint) Stats() EndpointStats {
	return EndpointStats{
		OutboundPackets:    e.stats.outPackets.Load(),
		OutboundDropFull:   e.stats.outDropFull.Load(),
		OutboundDropTooBig: e.stats.outDropTooBig.Load(),
		OutboundDropClosed: e.stats.outDropClosed.Load(),
		InboundPackets:     e.stats.inPackets.Load(),
		InboundDropInvalid: e.stats.inDropInvalid.Load(),
		InboundDropNoStack: e.stats.inDropNoStack.Load(),
	}
}

// BatchSize implements link.Device.
func (e *Endpoint) BatchSize() int { return e.batchSize }

// Read implements link.Device: it blocks while the outbound queue is empty,
// then copies up to len(bufs) queued packets (whole frames for L2) to
// bufs[i][offset:]. A packet that does not fit its buffer is dropped and
// counted, never truncated.
func (e *Endpoint) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		batch, err := e.dequeue(len(bufs))
		if err != nil {
			return 0, err
		}
		n := 0
		for i, pkt := range batch {
			size := pkt.Size()
			if offset+size > len(bufs[n]) {
				e.stats.outDropTooBig.Add(1)
			} else {
				copyPacket(bufs[n][offset:offset+size], pkt)
				sizes[n] = size
				n++
			}
			pkt.DecRef()
			batch[i] = nil
		}
		e.stats.outPackets.Add(uint64(n))
		if n > 0 {
			return n, nil
		}
		// Every packet of the batch was too big: wait for more.
	}
}

// dequeue blocks until the queue holds a packet or e is closed, then takes
// up to max packets off it, into e.scratch.
func (e *Endpoint) dequeue(max int) ([]*stack.PacketBuffer, error) {
	for {
		e.mu.Lock()
		if e.closed.Load() {
			e.mu.Unlock()
			return nil, link.ErrClosed
		}
		if e.qlen > 0 {
			break
		}
		e.mu.Unlock()
		select {
		case <-e.notify:
		case <-e.done:
		}
	}
	k := min(max, e.qlen)
	batch := e.scratch[:0]
	for range k {
		batch = append(batch, e.ring[e.head])
		e.ring[e.head] = nil
		e.head++
		if e.head == len(e.ring) {
			e.head = 0
		}
	}
	e.qlen -= k
	e.mu.Unlock()
	e.scratch = batch
	return batch, nil
}

// copyPacket copies the whole of pkt (headers and data) to dst, which is
// exactly pkt.Size() long. It does not allocate.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) {
	vl, skip := pkt.AsViewList()
	for v := vl.Front(); v != nil && len(dst) > 0; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b = b[skip:]
		skip = 0
		dst = dst[copy(dst, b):]
	}
}

// Write implements link.Device: it hands each packet bufs[i][offset:] to
// the netstack, copying it once into a gVisor buffer. Malformed packets are
// dropped and counted. The headroom is not used.
func (e *Endpoint) Write(bufs [][]byte, offset int) (int, error) {
	if e.closed.Load() {
		return 0, link.ErrClosed
	}
	ref := e.dispatcher.Load()
	sniffers := e.sniffers.Load()
	for _, b := range bufs {
		if offset > len(b) {
			e.stats.inDropInvalid.Add(1)
			continue
		}
		e.deliver(ref, sniffers, b[offset:])
	}
	return len(bufs), nil
}

func (e *Endpoint) deliver(ref *dispatcherRef, sniffers *[]*sniffer, b []byte) {
	var proto tcpip.NetworkProtocolNumber
	var ipPkt []byte
	switch e.framing {
	case L2:
		if len(b) < header.EthernetMinimumSize {
			e.stats.inDropInvalid.Add(1)
			return
		}
		proto = header.Ethernet(b).Type()
		switch proto {
		case header.IPv4ProtocolNumber, header.IPv6ProtocolNumber:
			ipPkt = b[header.EthernetMinimumSize:]
		case header.ARPProtocolNumber:
		default:
			e.stats.inDropInvalid.Add(1)
			return
		}
	case L3:
		if len(b) == 0 {
			e.stats.inDropInvalid.Add(1)
			return
		}
		switch b[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			e.stats.inDropInvalid.Add(1)
			return
		}
		ipPkt = b
	}
	if sniffers != nil && ipPkt != nil {
		for _, s := range *sniffers {
			s.fn(ipPkt)
		}
	}
	if ref == nil || ref.d == nil {
		e.stats.inDropNoStack.Add(1)
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(b),
	})
	if e.framing == L2 {
		eth, _ := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
		dst := header.Ethernet(eth).DestinationAddress()
		switch {
		case dst == header.EthernetBroadcastAddress:
			pkt.PktType = tcpip.PacketBroadcast
		case header.IsMulticastEthernetAddress(dst):
			pkt.PktType = tcpip.PacketMulticast
		case dst == *e.linkAddr.Load():
			pkt.PktType = tcpip.PacketHost
		default:
			pkt.PktType = tcpip.PacketOtherHost
		}
	}
	e.stats.inPackets.Add(1)
	ref.d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// Close implements link.Device: a blocked Read returns link.ErrClosed, and
// so do later Reads and Writes; packets still queued are dropped. Close is
// idempotent and always returns nil.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return nil
	}
	e.closed.Store(true)
	close(e.done)
	var dropped uint64
	for e.qlen > 0 {
		e.ring[e.head].DecRef()
		e.ring[e.head] = nil
		e.head = (e.head + 1) % len(e.ring)
		e.qlen--
		dropped++
	}
	onClose := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	e.stats.outDropClosed.Add(dropped)
	if onClose != nil {
		onClose()
	}
	return nil
}

// addSniffer calls fn with every inbound IP packet (L3 bytes) before the
// netstack sees it; the slice is valid only during the call. It returns a
// function that removes fn.
func (e *Endpoint) addSniffer(fn func(pkt []byte)) (remove func()) {
	s := &sniffer{fn: fn}
	e.snifferMu.Lock()
	var list []*sniffer
	if old := e.sniffers.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, s)
	e.sniffers.Store(&list)
	e.snifferMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.snifferMu.Lock()
			defer e.snifferMu.Unlock()
			old := e.sniffers.Load()
			if old == nil {
				return
			}
			var list []*sniffer
			for _, x := range *old {
				if x != s {
					list = append(list, x)
				}
			}
			if len(list) == 0 {
				e.sniffers.Store(nil)
			} else {
				e.sniffers.Store(&list)
			}
		})
	}
}

// nicEndpoint is the netstack's view of an Endpoint.
type nicEndpoint Endpoint

func (n *nicEndpoint) ep() *Endpoint { return (*Endpoint)(n) }

// WritePackets queues the stack's outbound packets for Read, keeping a
// reference to each (no copy). When the queue is full the packet is dropped
// and counted, like a full NIC tx ring; the stack is never blocked.
func (n *nicEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e := n.ep()
	e.mu.Lock()
	if e.closed.Load() {
		e.mu.Unlock()
		return 0, &tcpip.ErrClosedForSend{}
	}
	wasEmpty := e.qlen == 0
	var dropped uint64
	for _, pkt := range pkts.AsSlice() {
		if e.qlen == len(e.ring) {
			dropped++
			continue
		}
		tail := e.head + e.qlen
		if tail >= len(e.ring) {
			tail -= len(e.ring)
		}
		e.ring[tail] = pkt.IncRef()
		e.qlen++
	}
	wake := wasEmpty && e.qlen > 0
	e.mu.Unlock()
	if dropped > 0 {
		e.stats.outDropFull.Add(dropped)
	}
	if wake {
		select {
		case e.notify <- struct{}{}:
		default:
		}
	}
	return pkts.Len(), nil
}

// MTU implements stack.LinkEndpoint.
func (n *nicEndpoint) MTU() uint32 { return n.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (n *nicEndpoint) SetMTU(mtu uint32) { n.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (n *nicEndpoint) MaxHeaderLength() uint16 {
	if n.framing == L2 {
		return header.EthernetMinimumSize
	}
	return 0
}

// LinkAddress implements stack.LinkEndpoint.
func (n *nicEndpoint) LinkAddress() tcpip.LinkAddress { return *n.linkAddr.Load() }

// SetLinkAddress implements stack.LinkEndpoint.
func (n *nicEndpoint) SetLinkAddress(addr tcpip.LinkAddress) {
	n.linkAddr.Store(&addr)
}

// Capabilities implements stack.LinkEndpoint.
func (n *nicEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	if n.framing == L2 {
		return stack.CapabilityResolutionRequired
	}
	return 0
}

// Attach implements stack.LinkEndpoint.
func (n *nicEndpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		n.dispatcher.Store(nil)
		return
	}
	n.dispatcher.Store(&dispatcherRef{d: d})
}

// IsAttached implements stack.LinkEndpoint.
func (n *nicEndpoint) IsAttached() bool { return n.dispatcher.Load() != nil }

// Wait implements stack.LinkEndpoint: the endpoint owns no goroutines.
func (*nicEndpoint) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (n *nicEndpoint) ARPHardwareType() header.ARPHardwareType {
	if n.framing == L2 {
		return header.ARPHardwareEther
	}
	return header.ARPHardwareNone
}

// AddHeader implements stack.LinkEndpoint: for L2 it pushes the Ethernet
// header.
func (n *nicEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	if n.framing != L2 {
		return
	}
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = *n.linkAddr.Load()
	}
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: src,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (n *nicEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	if n.framing != L2 {
		return true
	}
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// Close implements stack.LinkEndpoint: removing the NIC closes the port.
func (n *nicEndpoint) Close() { _ = n.ep().Close() }

// SetOnCloseAction implements stack.LinkEndpoint.
func (n *nicEndpoint) SetOnCloseAction(fn func()) {
	n.mu.Lock()
	n.onClose = fn
	n.mu.Unlock()
}
