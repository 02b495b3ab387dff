package egress

// ICMP: echo requests never reach the stack (it would answer for any
// address). Each (pod, destination, identifier) gets a ping socket; its
// replies are rebuilt as echo replies from the destination to the pod,
// with the pod's identifier. The forwarder also originates ICMP errors
// toward pods when a dial finds no route or a datagram a closed port.

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/netstackx/internal/relaybuf"
	"github.com/podrouter/podrouter/router/packet"
)

// isEchoRequest reports cheaply whether the IP packet b is an unfragmented
// ICMPv4 echo request or an ICMPv6 echo request without extension headers.
func isEchoRequest(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < packet.IPv4MinLen || b[9] != packet.ProtoICMPv4 {
			return false
		}
		hl := int(b[0]&0xf) * 4
		return len(b) > hl && binary.BigEndian.Uint16(b[6:8])&(packet.IPv4FlagMF|packet.IPv4FragOffMask) == 0 && b[hl] == packet.ICMPv4Echo
	case 6:
		return len(b) > packet.IPv6Len && b[6] == packet.ProtoICMPv6 && b[packet.IPv6Len] == packet.ICMPv6EchoRequest
	}
	return false
}

type pingKey struct {
	src, dst netip.Addr
	id       uint16
}

// pingFlow is one (pod, destination, identifier) echo flow and its ping
// socket.
type pingFlow struct {
	f       *Forwarder
	key     pingKey
	started time.Time
	out     chan []byte // echo messages to send
	last    atomic.Int64
	done    chan struct{}
	once    sync.Once
}

const pingQueue = 16

// handleEcho takes an echo request (a whole IP packet) from a pod. It runs
// on the engine's worker and never blocks.
func (f *Forwarder) handleEcho(pkt []byte) {
	var pp packet.Parsed
	if packet.Parse(pkt, false, &pp) != packet.OK || pp.Frag || pp.L4Off+packet.ICMPLen > pp.IPEnd {
		f.c.echoDropped.Add(1)
		return
	}
	if !allowed(pp.Dst) {
		f.c.denied.Add(1)
		return
	}
	key := pingKey{src: pp.Src, dst: pp.Dst, id: pp.SrcPort}
	msg := append([]byte(nil), pkt[pp.L4Off:pp.IPEnd]...)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	pf := f.pings[key]
	if pf == nil {
		if !f.conns.acquire(key.src) {
			f.c.echoDropped.Add(1)
			return
		}
		pf = &pingFlow{f: f, key: key, started: time.Now(), out: make(chan []byte, pingQueue), done: make(chan struct{})}
		pf.last.Store(time.Now().UnixNano())
		f.pings[key] = pf
		f.flows[pf] = key.src
		f.wg.Add(1)
		go pf.run()
	}
	// Under f.mu: once run has taken the flow out of f.pings, nothing more
	// is queued, so it can count what it leaves behind.
	select {
	case pf.out <- msg:
	default:
		f.c.echoDropped.Add(1)
	}
}

func (pf *pingFlow) abort() { pf.once.Do(func() { close(pf.done) }) }

func (pf *pingFlow) run() {
	f := pf.f
	// leave takes the flow out of the table and returns how many requests
	// it leaves unsent.
	left := -1
	leave := func() int {
		if left < 0 {
			f.mu.Lock()
			if f.pings[pf.key] == pf {
				delete(f.pings, pf.key)
			}
			left = len(pf.out)
			f.mu.Unlock()
		}
		return left
	}
	defer func() {
		f.c.echoDropped.Add(uint64(leave()))
		f.untrack(pf)
	}()
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
	conn, err := f.cfg.Ping(ctx, pf.key.dst)
	cancel()
	if err != nil {
		n := uint64(leave())
		left = 0
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EPROTONOSUPPORT) {
			f.c.pingUnsupported.Add(n)
			f.pingWarn.Do(func() {
				f.log.Warn("ICMP echo to the outside is dropped: ping sockets are not permitted "+
					"(allow the node's group in sysctl net.ipv4.ping_group_range)", zap.Error(err))
			})
		} else {
			f.c.echoDropped.Add(n)
			f.log.Debug("ping socket failed", zap.Stringer("dst", pf.key.dst), zap.Error(err))
		}
		return
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		pf.readReplies(conn)
	}()
	t := time.NewTimer(f.cfg.ICMPIdle)
loop:
	for {
		select {
		case m := <-pf.out:
			pf.last.Store(time.Now().UnixNano())
			if _, err := conn.Write(m); err != nil {
				f.c.echoDropped.Add(1)
				continue
			}
			f.c.echoRequests.Add(1)
		case <-t.C:
			if left := f.cfg.ICMPIdle - time.Since(time.Unix(0, pf.last.Load())); left > 0 {
				t.Reset(left)
				continue
			}
			break loop
		case <-pf.done:
			break loop
		case <-readerDone:
			break loop
		}
	}
	t.Stop()
	_ = conn.Close()
	<-readerDone
}

// readReplies turns what the ping socket receives into echo replies to
// the pod, from the original destination, with the pod's identifier.
func (pf *pingFlow) readReplies(conn net.Conn) {
	for {
		if err := relaybuf.WaitData(conn); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error about an echo: one-shot, consumed
		}
		bp := relaybuf.Get()
		n, err := conn.Read(*bp)
		if err != nil {
			relaybuf.Put(bp)
			return
		}
		pf.reply((*bp)[:n])
		relaybuf.Put(bp)
	}
}

// reply hands the echo reply msg to the pod.
func (pf *pingFlow) reply(msg []byte) {
	v6 := pf.key.dst.Is6()
	if len(msg) < packet.ICMPLen || (!v6 && msg[0] != packet.ICMPv4EchoReply) || (v6 && msg[0] != packet.ICMPv6EchoReply) {
		return
	}
	pf.last.Store(time.Now().UnixNano())
	out := make([]byte, packet.IPv6Len+len(msg))
	pkt := buildEchoReply(out, pf.key, msg)
	if pkt == nil {
		return
	}
	pf.f.inject(pkt)
	pf.f.c.echoReplies.Add(1)
}

// buildEchoReply writes into out an IP packet from key.dst to key.src
// carrying the echo reply msg with the identifier key.id, and returns it.
func buildEchoReply(out []byte, key pingKey, msg []byte) []byte {
	if key.dst.Is4() {
		n := packet.IPv4MinLen + len(msg)
		if n > 65535 || n > len(out) {
			return nil
		}
		packet.IPv4(out).Encode(packet.IPv4Fields{TotalLen: uint16(n), TTL: 64, Protocol: packet.ProtoICMPv4, Src: key.dst, Dst: key.src})
		c := out[packet.IPv4MinLen:n]
		copy(c, msg)
		c[1] = 0
		binary.BigEndian.PutUint16(c[4:6], key.id)
		c[2], c[3] = 0, 0
		binary.BigEndian.PutUint16(c[2:4], ^packet.Checksum(c, 0))
		return out[:n]
	}
	n := packet.IPv6Len + len(msg)
	if len(msg) > 65535 || n > len(out) {
		return nil
	}
	packet.IPv6(out).Encode(uint16(len(msg)), packet.ProtoICMPv6, 64, key.dst, key.src)
	c := out[packet.IPv6Len:n]
	copy(c, msg)
	c[1] = 0
	binary.BigEndian.PutUint16(c[4:6], key.id)
	c[2], c[3] = 0, 0
	binary.BigEndian.PutUint16(c[2:4], ^packet.Checksum(c, packet.PseudoHeaderSum(key.dst, key.src, packet.ProtoICMPv6, len(c))))
	return out[:n]
}

// Unreachable kinds, mapped to ICMPv4 or ICMPv6 codes.
type unreach uint8

const (
	unreachNet unreach = iota
	unreachHost
	unreachPort
)

// sendUnreachable sends to pod an ICMP destination unreachable from
// "from" (the original destination: on a pod's path there is no other
// router to name) quoting quote (the offending packet's IP header and
// first 8 transport bytes).
func (f *Forwarder) sendUnreachable(quote []byte, pod, from netip.Addr, kind unreach) {
	pp := packet.Parsed{Version: 4, Src: pod, Dst: from}
	typ := uint8(packet.ICMPv4DstUnreachable)
	code := [...]uint8{unreachNet: packet.ICMPv4NetUnreachable, unreachHost: packet.ICMPv4HostUnreachable, unreachPort: 3}[kind]
	if pod.Is6() {
		pp.Version = 6
		typ = packet.ICMPv6DstUnreachable
		code = [...]uint8{unreachNet: packet.ICMPv6NoRoute, unreachHost: packet.ICMPv6AddrUnreachable, unreachPort: 4}[kind]
	}
	buf := make([]byte, 1280)
	n := packet.BuildICMPError(buf, quote, &pp, from, typ, code, 0)
	if n == 0 {
		return
	}
	f.inject(buf[:n])
	f.c.icmpErrorsSent.Add(1)
}

// synthQuote builds the start of a packet of a flow from src to dst (IP
// header and 8 bytes of UDP or TCP header, no payload), to quote in an
// ICMP error when the original packet is gone.
func synthQuote(proto uint8, src, dst netip.AddrPort) []byte {
	var b []byte
	if src.Addr().Is4() {
		b = make([]byte, packet.IPv4MinLen+8)
		packet.IPv4(b).Encode(packet.IPv4Fields{TotalLen: uint16(len(b)), TTL: 64, Protocol: proto, Src: src.Addr(), Dst: dst.Addr()})
	} else {
		b = make([]byte, packet.IPv6Len+8)
		packet.IPv6(b).Encode(8, proto, 64, src.Addr(), dst.Addr())
	}
	l4 := b[len(b)-8:]
	binary.BigEndian.PutUint16(l4[0:2], src.Port())
	binary.BigEndian.PutUint16(l4[2:4], dst.Port())
	if proto == packet.ProtoUDP {
		binary.BigEndian.PutUint16(l4[4:6], 8)
	}
	return b
}
