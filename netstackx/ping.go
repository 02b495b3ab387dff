package netstackx

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ICMPError is an ICMP error message received in answer to a Ping.
type ICMPError struct {
	From netip.Addr // the router or host that sent the error
	IPv6 bool       // an ICMPv6 message
	Type uint8
	Code uint8
	MTU  int // next-hop MTU of fragmentation-needed / packet-too-big, else 0
}

func (e *ICMPError) Error() string {
	return fmt.Sprintf("netstackx: %s from %s", e.describe(), e.From)
}

func (e *ICMPError) describe() string {
	if e.IPv6 {
		switch header.ICMPv6Type(e.Type) {
		case header.ICMPv6DstUnreachable:
			return fmt.Sprintf("ICMPv6 destination unreachable (code %d)", e.Code)
		case header.ICMPv6PacketTooBig:
			return fmt.Sprintf("ICMPv6 packet too big (mtu %d)", e.MTU)
		case header.ICMPv6TimeExceeded:
			return fmt.Sprintf("ICMPv6 time exceeded (code %d)", e.Code)
		case header.ICMPv6ParamProblem:
			return fmt.Sprintf("ICMPv6 parameter problem (code %d)", e.Code)
		}
		return fmt.Sprintf("ICMPv6 type %d code %d", e.Type, e.Code)
	}
	switch header.ICMPv4Type(e.Type) {
	case header.ICMPv4DstUnreachable:
		if header.ICMPv4Code(e.Code) == header.ICMPv4FragmentationNeeded {
			return fmt.Sprintf("ICMP fragmentation needed (mtu %d)", e.MTU)
		}
		return fmt.Sprintf("ICMP destination unreachable (code %d)", e.Code)
	case header.ICMPv4TimeExceeded:
		return fmt.Sprintf("ICMP time exceeded (code %d)", e.Code)
	case header.ICMPv4ParamProblem:
		return fmt.Sprintf("ICMP parameter problem (code %d)", e.Code)
	}
	return fmt.Sprintf("ICMP type %d code %d", e.Type, e.Code)
}

// maxPingSize is the largest ICMP echo payload in an IPv4 packet.
const maxPingSize = 65535 - header.IPv4MinimumSize - header.ICMPv4MinimumSize

// Ping sends one ICMP echo request with size payload bytes to dst (ICMPv4
// or ICMPv6 by dst's family) from a ping socket of the pod, and waits for
// the reply. It returns the round-trip time; an *ICMPError when an ICMP
// error about the request arrives first; the context's error (wrapped) when
// ctx ends first. Ping waits as long as ctx lets it: give ctx a deadline.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr, size int) (time.Duration, error) {
	proto, err := p.netProto(dst)
	if err != nil {
		return 0, err
	}
	if size < 0 || size > maxPingSize {
		return 0, fmt.Errorf("netstackx: ping: size %d outside [0, %d]", size, maxPingSize)
	}
	v4 := proto == ipv4.ProtocolNumber
	transProto := icmp.ProtocolNumber6
	if v4 {
		transProto = icmp.ProtocolNumber4
	}
	var wq waiter.Queue
	ep, terr := p.s.NewEndpoint(transProto, proto, &wq)
	if terr != nil {
		return 0, fmt.Errorf("netstackx: ping %s: %w", dst, tcpipErr(terr))
	}
	defer ep.Close()
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	if terr := ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(dst)}); terr != nil {
		return 0, fmt.Errorf("netstackx: ping %s: %w", dst, tcpipErr(terr))
	}
	ident := ep.Info().(*stack.TransportEndpointInfo).ID.LocalPort
	seq := uint16(p.pingSeq.Add(1))

	msg := make([]byte, header.ICMPv4MinimumSize+size) // ICMPv6 echo header has the same size
	if v4 {
		h := header.ICMPv4(msg)
		h.SetType(header.ICMPv4Echo)
		h.SetIdent(ident)
		h.SetSequence(seq)
	} else {
		h := header.ICMPv6(msg)
		h.SetType(header.ICMPv6EchoRequest)
		h.SetIdent(ident)
		h.SetSequence(seq)
	}
	for i := header.ICMPv4MinimumSize; i < len(msg); i++ {
		msg[i] = byte(i)
	}

	errc := make(chan *ICMPError, 1)
	stop := p.Sniff(func(pkt []byte) {
		if e := matchEchoError(pkt, dst, ident, seq); e != nil {
			select {
			case errc <- e:
			default:
			}
		}
	})
	defer stop()

	start := time.Now()
	if _, terr := ep.Write(bytes.NewReader(msg), tcpip.WriteOptions{}); terr != nil {
		return 0, fmt.Errorf("netstackx: ping %s: %w", dst, tcpipErr(terr))
	}
	var reply bytes.Buffer
	for {
		reply.Reset()
		_, terr := ep.Read(&reply, tcpip.ReadOptions{})
		if terr == nil {
			if echoReplyMatches(reply.Bytes(), v4, seq) {
				return time.Since(start), nil
			}
			continue
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return 0, fmt.Errorf("netstackx: ping %s: %w", dst, tcpipErr(terr))
		}
		select {
		case <-notify:
		case e := <-errc:
			return 0, e
		case <-ctx.Done():
			return 0, fmt.Errorf("netstackx: ping %s: %w", dst, ctx.Err())
		}
	}
}

func echoReplyMatches(b []byte, v4 bool, seq uint16) bool {
	if v4 {
		h := header.ICMPv4(b)
		return len(b) >= header.ICMPv4MinimumSize && h.Type() == header.ICMPv4EchoReply && h.Sequence() == seq
	}
	h := header.ICMPv6(b)
	return len(b) >= header.ICMPv6EchoMinimumSize && h.Type() == header.ICMPv6EchoReply && h.Sequence() == seq
}

// matchEchoError returns the ICMP error in pkt (an IP packet) if it quotes
// our echo request to dst with ident and seq, else nil.
func matchEchoError(pkt []byte, dst netip.Addr, ident, seq uint16) *ICMPError {
	if len(pkt) == 0 {
		return nil
	}
	switch pkt[0] >> 4 {
	case 4:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber || ip.FragmentOffset() != 0 {
			return nil
		}
		icmpMsg := header.ICMPv4(ip.Payload())
		if len(icmpMsg) < header.ICMPv4MinimumSize {
			return nil
		}
		switch icmpMsg.Type() {
		case header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		default:
			return nil
		}
		inner := header.IPv4(icmpMsg.Payload())
		if len(inner) < header.IPv4MinimumSize || inner.HeaderLength() < header.IPv4MinimumSize ||
			int(inner.HeaderLength())+header.ICMPv4MinimumSize > len(inner) ||
			inner.TransportProtocol() != header.ICMPv4ProtocolNumber {
			return nil
		}
		if d := inner.DestinationAddress().As4(); netip.AddrFrom4(d) != dst.Unmap() {
			return nil
		}
		echo := header.ICMPv4(inner[inner.HeaderLength():])
		if echo.Type() != header.ICMPv4Echo || echo.Ident() != ident || echo.Sequence() != seq {
			return nil
		}
		e := &ICMPError{From: netip.AddrFrom4(ip.SourceAddress().As4()), Type: uint8(icmpMsg.Type()), Code: uint8(icmpMsg.Code())}
		if icmpMsg.Type() == header.ICMPv4DstUnreachable && icmpMsg.Code() == header.ICMPv4FragmentationNeeded {
			e.MTU = int(icmpMsg.MTU())
		}
		return e
	case 6:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
			return nil
		}
		icmpMsg := header.ICMPv6(ip.Payload())
		if len(icmpMsg) < header.ICMPv6ErrorHeaderSize {
			return nil
		}
		switch icmpMsg.Type() {
		case header.ICMPv6DstUnreachable, header.ICMPv6PacketTooBig, header.ICMPv6TimeExceeded, header.ICMPv6ParamProblem:
		default:
			return nil
		}
		inner := header.IPv6(icmpMsg[header.ICMPv6ErrorHeaderSize:])
		if len(inner) < header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize ||
			inner.TransportProtocol() != header.ICMPv6ProtocolNumber {
			return nil
		}
		if netip.AddrFrom16(inner.DestinationAddress().As16()) != dst {
			return nil
		}
		echo := header.ICMPv6(inner[header.IPv6MinimumSize:])
		if echo.Type() != header.ICMPv6EchoRequest || echo.Ident() != ident || echo.Sequence() != seq {
			return nil
		}
		e := &ICMPError{From: netip.AddrFrom16(ip.SourceAddress().As16()), IPv6: true, Type: uint8(icmpMsg.Type()), Code: uint8(icmpMsg.Code())}
		if icmpMsg.Type() == header.ICMPv6PacketTooBig {
			e.MTU = int(icmpMsg.MTU())
		}
		return e
	}
	return nil
}
