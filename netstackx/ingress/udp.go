package ingress

// UDP: the listener's goroutine reads datagrams from the host socket ─►
// flow of the client's addr:port (new: limits, a stack UDP endpoint
// connected to Target) ─► written to the endpoint. Each flow has one
// goroutine that reads the target's replies and sends them to the client
// from the listening socket, so the client sees replies from the address
// it sent to; a timer closes the flow once nothing has crossed it for
// UDPIdle.

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/podrouter/podrouter/netstackx/internal/relaybuf"
)

// readLoop relays the clients' datagrams until the socket is closed.
func (l *listener) readLoop() {
	f := l.f
	buf := make([]byte, relaybuf.Size)
	var r bytes.Reader
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error about an earlier reply: nothing to do
		}
		client := clientAddr(from)
		fl := l.flow(client)
		if fl == nil {
			continue
		}
		fl.touch()
		r.Reset(buf[:n])
		if _, terr := fl.ep.Write(&r, tcpip.WriteOptions{}); terr == nil {
			f.c.bytesToTarget.Add(uint64(n))
		}
	}
}

// flow returns client's flow, opening it if needed; nil when the datagram
// is to be dropped.
func (l *listener) flow(client netip.AddrPort) *udpFlow {
	f := l.f
	l.mu.Lock()
	fl := l.udp[client]
	l.mu.Unlock()
	if fl != nil {
		return fl
	}
	if !f.lim.acquire(client.Addr()) {
		f.c.udpFlowLimited.Add(1)
		return nil
	}
	t := l.target()
	src := keptSource(t, client)
	proto, ok := f.netProto(t.addr.Addr())
	var wq waiter.Queue
	var ep tcpip.Endpoint
	var terr tcpip.Error
	if ok {
		ep, terr = f.s.NewEndpoint(udp.ProtocolNumber, proto, &wq)
		if terr == nil {
			if terr = f.bindSource(ep, src, t.addr); terr == nil {
				terr = ep.Connect(fullAddr(t.addr))
			}
			if terr != nil {
				ep.Close()
			}
		}
	}
	if !ok || terr != nil {
		f.c.udpErrors.Add(1)
		f.lim.release(client.Addr())
		return nil
	}
	fl = &udpFlow{l: l, client: client, to: net.UDPAddrFromAddrPort(client), ep: ep, wq: &wq, done: make(chan struct{})}
	fl.touch()
	if !f.track(fl, l) {
		ep.Close()
		f.lim.release(client.Addr())
		return nil
	}
	l.mu.Lock()
	l.udp[client] = fl
	l.mu.Unlock()
	f.c.udpFlows.Add(1)
	if src.IsValid() {
		f.c.sourceKept.Add(1)
	}
	go fl.run()
	return fl
}

// udpFlow is one client's flow through a UDP listener.
type udpFlow struct {
	l      *listener
	client netip.AddrPort
	to     *net.UDPAddr
	ep     tcpip.Endpoint
	wq     *waiter.Queue
	last   atomic.Int64 // unix nanos of the last datagram either way
	once   sync.Once
	done   chan struct{}
}

func (fl *udpFlow) touch() { fl.last.Store(time.Now().UnixNano()) }

func (fl *udpFlow) run() {
	f := fl.l.f
	defer f.untrack(fl, fl.client.Addr())
	idle := f.cfg.UDPIdle
	var t *time.Timer
	t = time.AfterFunc(idle, func() {
		if left := idle - time.Since(time.Unix(0, fl.last.Load())); left > 0 {
			t.Reset(left)
			return
		}
		select {
		case <-fl.done:
		default:
			f.c.udpIdleClosed.Add(1)
			fl.abort()
		}
	})
	fl.targetToClient()
	t.Stop()
	fl.abort()
}

// abort ends the flow: its relay returns and the next datagram from the
// client opens a new one.
func (fl *udpFlow) abort() {
	fl.once.Do(func() {
		close(fl.done)
		fl.ep.Close()
		l := fl.l
		l.mu.Lock()
		if l.udp[fl.client] == fl {
			delete(l.udp, fl.client)
		}
		l.mu.Unlock()
	})
}

// targetToClient sends the target's replies to the client.
func (fl *udpFlow) targetToClient() {
	f := fl.l.f
	entry, ch := waiter.NewChannelEntry(readEvents)
	fl.wq.EventRegister(&entry)
	defer fl.wq.EventUnregister(&entry)
	for {
		for fl.ep.Readiness(readEvents) == 0 {
			select {
			case <-ch:
			case <-fl.done:
				return
			}
		}
		bp := relaybuf.Get()
		w := tcpip.SliceWriter(*bp)
		res, err := fl.ep.Read(&w, tcpip.ReadOptions{})
		if err != nil {
			relaybuf.Put(bp)
			switch err.(type) {
			case *tcpip.ErrWouldBlock:
				continue
			case *tcpip.ErrConnectionRefused:
				f.c.udpErrors.Add(1) // the target's port unreachable
				continue
			}
			return
		}
		fl.touch()
		if _, werr := fl.l.pc.WriteTo((*bp)[:res.Count], fl.to); werr == nil {
			f.c.bytesToClient.Add(uint64(res.Count))
		}
		relaybuf.Put(bp)
	}
}
