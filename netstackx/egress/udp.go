package egress

// UDP: the first datagram of a (pod address:port, destination) pair makes
// gVisor's UDP forwarder call handleUDP, which creates an endpoint bound to
// the destination and connected to the pod (so replies leave from the
// destination's address), then a host UDP socket connected to the
// destination; two goroutines relay datagrams until the flow has been idle
// for its timeout.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/podrouter/podrouter/netstackx/internal/relaybuf"
	"github.com/podrouter/podrouter/router/packet"
)

// handleUDP runs on the stack's delivery path (the engine's worker, in
// Write), so it must not block: the host socket is opened by the flow's
// goroutine, and datagrams wait in the endpoint meanwhile.
func (f *Forwarder) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	src := fromTCPIP(id.RemoteAddress)
	if !allowed(fromTCPIP(id.LocalAddress)) {
		f.c.denied.Add(1)
		return true // dropped
	}
	if !f.conns.acquire(src) {
		f.c.udpFlowLimited.Add(1)
		return true // dropped
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		f.conns.release(src)
		return true
	}
	fl := &udpFlow{
		f: f, src: netip.AddrPortFrom(src, id.RemotePort),
		dst: netip.AddrPortFrom(fromTCPIP(id.LocalAddress), id.LocalPort),
		ep:  ep, wq: &wq, done: make(chan struct{}), started: time.Now(),
	}
	fl.idle = f.cfg.UDPIdle
	if fl.dst.Port() == 53 {
		fl.idle = f.cfg.DNSIdle
	}
	if !f.track(fl, src) {
		ep.Close()
		f.conns.release(src)
		return true
	}
	go fl.run()
	return true
}

type udpFlow struct {
	f        *Forwarder
	src, dst netip.AddrPort
	ep       tcpip.Endpoint
	wq       *waiter.Queue
	idle     time.Duration
	started  time.Time
	last     atomic.Int64 // unix nanos of the last datagram either way

	mu   sync.Mutex
	host net.Conn
	once sync.Once
	done chan struct{}
}

func (fl *udpFlow) touch() { fl.last.Store(time.Now().UnixNano()) }

func (fl *udpFlow) run() {
	defer fl.f.untrack(fl)
	defer fl.ep.Close()
	f := fl.f
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
	c, err := f.cfg.Dialer.DialContext(ctx, "udp", fl.dst.String())
	cancel()
	if err != nil {
		f.c.udpDialErrors.Add(1)
		if errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) {
			f.sendUnreachable(synthQuote(packet.ProtoUDP, fl.src, fl.dst), fl.src.Addr(), fl.dst.Addr(), unreachNet)
		}
		return
	}
	fl.mu.Lock()
	fl.host = c
	aborted := false
	select {
	case <-fl.done:
		aborted = true
	default:
	}
	fl.mu.Unlock()
	if aborted {
		_ = c.Close()
		return
	}
	f.c.udpFlows.Add(1)
	fl.touch()
	// The idle check runs on a timer, not a goroutine of its own.
	var t *time.Timer
	t = time.AfterFunc(fl.idle, func() {
		if left := fl.idle - time.Since(time.Unix(0, fl.last.Load())); left > 0 {
			t.Reset(left)
			return
		}
		if fl.closeIdle() {
			f.c.udpIdleClosed.Add(1)
		}
	})
	done := make(chan struct{})
	go func() { defer close(done); fl.hostToPod() }()
	fl.podToHost()
	<-done
	t.Stop()
	fl.abort()
}

// closeIdle aborts the flow for idleness; false if it was already ending.
func (fl *udpFlow) closeIdle() bool {
	select {
	case <-fl.done:
		return false
	default:
	}
	fl.abort()
	return true
}

// abort ends the flow: both relays return.
func (fl *udpFlow) abort() {
	fl.once.Do(func() {
		fl.mu.Lock()
		close(fl.done)
		if fl.host != nil {
			_ = fl.host.Close()
		}
		fl.mu.Unlock()
		fl.ep.Close() // wakes podToHost
	})
}

func (fl *udpFlow) podToHost() {
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
			if _, ok := err.(*tcpip.ErrWouldBlock); ok {
				continue
			}
			fl.abort()
			return
		}
		fl.touch()
		if _, werr := fl.host.Write((*bp)[:res.Count]); werr == nil {
			fl.f.c.bytesToRemote.Add(uint64(res.Count))
		}
		relaybuf.Put(bp)
	}
}

func (fl *udpFlow) hostToPod() {
	var r bytes.Reader
	for {
		bp, n, err := relaybuf.Read(fl.host)
		if err != nil {
			if bp != nil {
				relaybuf.Put(bp)
			}
			// ICMP errors about our datagrams, reported once each: pass
			// them on to the pod.
			kind, ok := unreach(0), true
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				kind = unreachPort
			case errors.Is(err, syscall.EHOSTUNREACH):
				kind = unreachHost
			case errors.Is(err, syscall.ENETUNREACH):
				kind = unreachNet
			default:
				ok = false
			}
			if ok {
				fl.f.sendUnreachable(synthQuote(packet.ProtoUDP, fl.src, fl.dst), fl.src.Addr(), fl.dst.Addr(), kind)
				continue
			}
			fl.abort()
			return
		}
		fl.touch()
		r.Reset((*bp)[:n])
		if _, terr := fl.ep.Write(&r, tcpip.WriteOptions{}); terr == nil {
			fl.f.c.bytesToPod.Add(uint64(n))
		}
		relaybuf.Put(bp)
	}
}
