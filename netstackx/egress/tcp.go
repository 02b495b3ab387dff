package egress

// TCP: a pod's SYN to any address ─► tcpSYN (limits, remember the SYN) ─►
// gVisor's forwarder spawns handleTCP ─► dial the destination from a host
// socket ─► on success complete the handshake and splice; on failure a RST
// (refused) or an ICMP unreachable (no route) to the pod, or nothing
// (timeout).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/podrouter/podrouter/netstackx/internal/relaybuf"
)

// synInfo is what the forwarder keeps about a SYN while its dial runs:
// the start of the packet, to quote in an ICMP error.
type synInfo struct {
	quote []byte // IP header + the first 8 bytes of TCP
	// Set when the dial starts (under Forwarder.mu), for Flows.
	src, dst netip.AddrPort
	started  time.Time
}

// tcpSYN is the stack's TCP handler for segments no endpoint claims. SYNs
// within the limits go to gVisor's forwarder (which starts handleTCP);
// anything else is left to the stack, which answers with a RST.
func (f *Forwarder) tcpSYN(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize || th.Flags()&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) != header.TCPFlagSyn {
		return false
	}
	src := fromTCPIP(id.RemoteAddress)
	if !allowed(fromTCPIP(id.LocalAddress)) {
		f.c.denied.Add(1)
		return false // a RST
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return true
	}
	if _, ok := f.pending[id]; ok {
		f.mu.Unlock()
		return true // a retransmitted SYN while we dial
	}
	if !f.dials.acquire(src) {
		f.mu.Unlock()
		f.c.tcpDialLimited.Add(1)
		return true // dropped: the pod retransmits, by then a slot may be free
	}
	if !f.conns.acquire(src) {
		f.dials.release(src)
		f.mu.Unlock()
		f.c.tcpFlowLimited.Add(1)
		return false // the stack answers with a RST: connection refused
	}
	nh := pkt.NetworkHeader().Slice()
	q := make([]byte, 0, len(nh)+8)
	q = append(append(q, nh...), th[:8]...)
	f.pending[id] = &synInfo{quote: q}
	f.mu.Unlock()
	if !f.tcp.HandlePacket(id, pkt) {
		f.mu.Lock()
		delete(f.pending, id)
		f.mu.Unlock()
		f.dials.release(src)
		f.conns.release(src)
		return false
	}
	return true
}

// handleTCP runs on its own goroutine per SYN (gVisor's forwarder starts
// it): dial, then accept or refuse.
func (f *Forwarder) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	src := fromTCPIP(id.RemoteAddress)
	dst := netip.AddrPortFrom(fromTCPIP(id.LocalAddress), id.LocalPort)
	f.mu.Lock()
	syn := f.pending[id]
	delete(f.pending, id)
	closed := f.closed
	if !closed {
		f.wg.Add(1)
		if syn != nil {
			syn.src, syn.dst, syn.started = netip.AddrPortFrom(src, id.RemotePort), dst, time.Now()
			f.dialing[syn] = struct{}{}
		}
	}
	f.mu.Unlock()
	if syn == nil || closed {
		r.Complete(true)
		if syn != nil {
			f.dials.release(src)
			f.conns.release(src)
		}
		return
	}
	defer f.wg.Done()
	f.c.tcpDials.Add(1)
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
	c, err := f.cfg.Dialer.DialContext(ctx, "tcp", dst.String())
	cancel()
	f.mu.Lock()
	delete(f.dialing, syn)
	f.mu.Unlock()
	f.dials.release(src)
	if err != nil {
		f.dialFailed(r, syn, src, dst, err)
		f.conns.release(src)
		return
	}
	host, ok := c.(halfCloser)
	if !ok {
		// A Dialer must return connections that half-close (*net.TCPConn).
		f.log.Error("dialer returned a connection without CloseWrite", zap.String("type", fmt.Sprintf("%T", c)))
		_ = c.Close()
		r.Complete(true)
		f.c.tcpDialErrors.Add(1)
		f.conns.release(src)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The pod gave up meanwhile (or the handshake failed).
		r.Complete(true)
		_ = c.Close()
		f.c.tcpDialErrors.Add(1)
		f.conns.release(src)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	fl := &tcpFlow{f: f, src: src, srcPort: id.RemotePort, dst: dst, started: syn.started, pod: newPodConn(ep, &wq), host: host}
	if !f.track(fl, src) {
		fl.pod.abort()
		_ = host.Close()
		f.conns.release(src)
		return
	}
	f.c.tcpConnected.Add(1)
	fl.run()
}

// dialFailed answers the pod's SYN after a failed dial, as the destination
// (or a router on the way) would have.
func (f *Forwarder) dialFailed(r *tcp.ForwarderRequest, syn *synInfo, src netip.Addr, dst netip.AddrPort, err error) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		f.c.tcpRefused.Add(1)
		r.Complete(true)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		f.c.tcpUnreachable.Add(1)
		r.Complete(false)
		kind := unreachHost
		if errors.Is(err, syscall.ENETUNREACH) {
			kind = unreachNet
		}
		f.sendUnreachable(syn.quote, src, dst.Addr(), kind)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		f.c.tcpDialTimeouts.Add(1)
		r.Complete(false)
	case errors.Is(err, context.Canceled):
		r.Complete(true) // closing
	default:
		f.c.tcpDialErrors.Add(1)
		r.Complete(true)
		f.log.Debug("dial failed", zap.Stringer("dst", dst), zap.Error(err))
	}
}

// halfCloser is the host side of a TCP flow.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// lingerer is a host connection that can be closed with a RST.
type lingerer interface{ SetLinger(sec int) error }

// tcpFlow splices a pod's connection (a gVisor endpoint) and a host
// socket, one goroutine per direction.
type tcpFlow struct {
	f       *Forwarder
	src     netip.Addr
	srcPort uint16
	dst     netip.AddrPort
	started time.Time
	pod     *podConn
	host    halfCloser
	// podFin and hostFin record each side's FIN (for Flows' state).
	podFin, hostFin atomic.Bool

	once sync.Once // the first reset wins
}

func (fl *tcpFlow) run() {
	defer fl.f.untrack(fl)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fl.podToHost()
	}()
	fl.hostToPod()
	<-done
	fl.pod.close()
	_ = fl.host.Close()
}

// podToHost copies what the pod sends to the remote.
func (fl *tcpFlow) podToHost() {
	for {
		fl.pod.waitData()
		bp := relaybuf.Get()
		n, err := fl.pod.Read(*bp)
		if n > 0 {
			_, werr := fl.host.Write((*bp)[:n])
			relaybuf.Put(bp)
			if werr != nil {
				fl.resetPod() // the remote is gone
				return
			}
			fl.f.c.bytesToRemote.Add(uint64(n))
		} else {
			relaybuf.Put(bp)
		}
		switch {
		case err == nil:
		case err == io.EOF:
			fl.podFin.Store(true)
			_ = fl.host.CloseWrite() // the pod's FIN
			return
		case errors.Is(err, errReset):
			fl.resetHost()
			return
		default:
			return // torn down by the other direction or Close
		}
	}
}

// hostToPod copies what the remote sends to the pod.
func (fl *tcpFlow) hostToPod() {
	for {
		bp, n, err := relaybuf.Read(fl.host)
		if n > 0 {
			werr := fl.pod.Write((*bp)[:n])
			relaybuf.Put(bp)
			if werr != nil {
				if errors.Is(werr, errReset) {
					fl.resetHost() // the pod reset
				} else {
					fl.abort()
				}
				return
			}
			fl.f.c.bytesToPod.Add(uint64(n))
		} else if bp != nil {
			relaybuf.Put(bp)
		}
		switch {
		case err == nil:
		case err == io.EOF:
			fl.hostFin.Store(true)
			fl.pod.closeWrite() // the remote's FIN
			return
		case errors.Is(err, syscall.ECONNRESET):
			fl.resetPod()
			return
		default:
			fl.abort()
			return
		}
	}
}

// resetPod sends a RST to the pod and closes the host socket.
func (fl *tcpFlow) resetPod() {
	fl.once.Do(func() {
		fl.f.c.tcpResetsToPod.Add(1)
		fl.pod.abort()
		_ = fl.host.Close()
	})
}

// resetHost sends a RST to the remote (SO_LINGER 0) and closes the pod's
// endpoint, already reset.
func (fl *tcpFlow) resetHost() {
	fl.once.Do(func() {
		fl.f.c.tcpResetsToHost.Add(1)
		if l, ok := fl.host.(lingerer); ok {
			_ = l.SetLinger(0)
		}
		_ = fl.host.Close()
		fl.pod.abort()
	})
}

// abort resets both sides (Close, ResetSource, a broken side).
func (fl *tcpFlow) abort() {
	fl.once.Do(func() {
		fl.f.c.tcpResetsToPod.Add(1)
		fl.pod.abort()
		if l, ok := fl.host.(lingerer); ok {
			_ = l.SetLinger(0)
		}
		_ = fl.host.Close()
	})
}

// errReset is a connection reset by the pod.
var errReset = errors.New("egress: connection reset by pod")

// podConn is the pod's side of a TCP flow: a gVisor endpoint with
// blocking Read and Write that tell a FIN (io.EOF) from a RST (errReset),
// which gonet does not.
type podConn struct {
	ep             tcpip.Endpoint
	wq             *waiter.Queue
	rEntry, wEntry waiter.Entry
	rCh, wCh       chan struct{}
	wr             bytes.Reader // Write's payloader, reused
	closeOnce      sync.Once
	closed         atomic.Bool
}

const (
	readEvents  = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	writeEvents = waiter.WritableEvents | waiter.EventHUp | waiter.EventErr
)

func newPodConn(ep tcpip.Endpoint, wq *waiter.Queue) *podConn {
	c := &podConn{ep: ep, wq: wq}
	var rCh, wCh chan struct{}
	c.rEntry, rCh = waiter.NewChannelEntry(readEvents)
	c.wEntry, wCh = waiter.NewChannelEntry(writeEvents)
	c.rCh, c.wCh = rCh, wCh
	wq.EventRegister(&c.rEntry)
	wq.EventRegister(&c.wEntry)
	return c
}

func podErr(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrClosedForReceive:
		return io.EOF
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted:
		return errReset
	}
	return errors.New("netstack: " + err.String())
}

// waitData blocks until Read would not block (or c is closed).
func (c *podConn) waitData() {
	for c.ep.Readiness(readEvents) == 0 && !c.closed.Load() {
		<-c.rCh
	}
}

// Read reads what the pod sent; io.EOF after its FIN, errReset after its
// RST.
func (c *podConn) Read(b []byte) (int, error) {
	for {
		w := tcpip.SliceWriter(b)
		res, err := c.ep.Read(&w, tcpip.ReadOptions{})
		if err == nil {
			if res.Count > 0 {
				c.ep.ModerateRecvBuf(res.Count)
			}
			return res.Count, nil
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			return 0, podErr(err)
		}
		<-c.rCh
	}
}

// Write sends all of b to the pod.
func (c *podConn) Write(b []byte) error {
	for len(b) > 0 {
		c.wr.Reset(b)
		n, err := c.ep.Write(&c.wr, tcpip.WriteOptions{})
		b = b[n:]
		if err == nil {
			continue
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			return podErr(err)
		}
		<-c.wCh
	}
	return nil
}

// closeWrite sends a FIN to the pod.
func (c *podConn) closeWrite() { _ = c.ep.Shutdown(tcpip.ShutdownWrite) }

// abort sends a RST to the pod and releases the endpoint; blocked Read and
// Write return.
func (c *podConn) abort() {
	c.ep.Abort()
	c.close()
}

// close releases the endpoint (a FIN if not yet sent).
func (c *podConn) close() {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.ep.Close()
		c.wq.EventUnregister(&c.rEntry)
		c.wq.EventUnregister(&c.wEntry)
		// Wake a Read or Write still waiting: the endpoint is gone.
		close(c.rCh)
		close(c.wCh)
	})
}
