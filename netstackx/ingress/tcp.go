package ingress

// TCP: accept on the host socket ─► limits ─► dial Target from the stack
// (bounded by DialTimeout) ─► on failure reset the client ─► else splice,
// one goroutine per direction, a FIN becoming a half-close on the other
// side and a RST a RST (SO_LINGER 0 toward the client, an aborted gVisor
// endpoint toward the target). The splice is egress's (netstackx/egress
// tcp.go) with the sides swapped.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/podrouter/podrouter/netstackx/internal/relaybuf"
)

// acceptLoop accepts clients until the socket is closed.
func (l *listener) acceptLoop() {
	f := l.f
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off rather than spin.
			f.log.Warn("accept failed", zap.Stringer("listen", l.addr), zap.Error(err))
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		f.c.tcpAccepted.Add(1)
		host, ok := c.(*net.TCPConn)
		if !ok {
			_ = c.Close()
			continue
		}
		client := clientAddr(host.RemoteAddr())
		if !f.lim.acquire(client.Addr()) {
			f.c.tcpFlowLimited.Add(1)
			_ = host.SetLinger(0)
			_ = host.Close()
			continue
		}
		fl := &tcpFlow{f: f, client: client, host: host}
		if !f.track(fl, l) {
			f.lim.release(client.Addr())
			_ = host.SetLinger(0)
			_ = host.Close()
			return
		}
		go fl.run(l.target())
	}
}

// tcpFlow splices a client's host connection and the stack's connection
// to the target.
type tcpFlow struct {
	f      *Forwarder
	client netip.AddrPort
	host   *net.TCPConn

	mu         sync.Mutex
	target     *stackConn // nil while dialling
	cancelDial context.CancelFunc
	aborted    bool
	once       sync.Once // the first reset wins
}

func (fl *tcpFlow) run(t target) {
	f := fl.f
	defer f.untrack(fl, fl.client.Addr())
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.DialTimeout)
	fl.mu.Lock()
	fl.cancelDial = cancel
	if fl.aborted {
		cancel()
	}
	fl.mu.Unlock()
	src := keptSource(t, fl.client)
	sc, err := f.dialTCP(ctx, src, t.addr)
	cancel()
	fl.mu.Lock()
	aborted := fl.aborted
	if err == nil && !aborted {
		fl.target = sc
	}
	fl.mu.Unlock()
	if err != nil || aborted {
		switch {
		case err == nil:
			sc.abort()
		case !aborted:
			f.c.tcpDialFailed.Add(1)
			f.log.Debug("dial target failed", zap.Stringer("client", fl.client), zap.Stringer("target", t.addr), zap.Error(err))
		}
		fl.resetClient()
		return
	}
	f.c.tcpConnected.Add(1)
	if src.IsValid() {
		f.c.sourceKept.Add(1)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fl.targetToClient()
	}()
	fl.clientToTarget()
	<-done
	sc.close()
	_ = fl.host.Close()
}

// dialTCP connects to dst from the stack, from src when it is valid (else
// from the gateway).
func (f *Forwarder) dialTCP(ctx context.Context, src, dst netip.AddrPort) (*stackConn, error) {
	proto, ok := f.netProto(dst.Addr())
	if !ok {
		return nil, syscall.ENETUNREACH
	}
	var wq waiter.Queue
	ep, terr := f.s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, errors.New("netstack: " + terr.String())
	}
	if terr := f.bindSource(ep, src, dst); terr != nil {
		ep.Close()
		return nil, errors.New("netstack: bind " + src.String() + ": " + terr.String())
	}
	_ = ep.SetSockOptInt(tcpip.MTUDiscoverOption, int(tcpip.PMTUDiscoveryDo))
	ep.SocketOptions().SetKeepAlive(true)
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	terr = ep.Connect(fullAddr(dst))
	if _, started := terr.(*tcpip.ErrConnectStarted); started {
		select {
		case <-ctx.Done():
			wq.EventUnregister(&entry)
			ep.Abort()
			ep.Close()
			return nil, ctx.Err()
		case <-notify:
		}
		terr = ep.LastError()
	}
	wq.EventUnregister(&entry)
	if terr != nil {
		ep.Close()
		return nil, errors.New("netstack: " + terr.String())
	}
	return newStackConn(ep, &wq), nil
}

// clientToTarget copies what the client sends to the target.
func (fl *tcpFlow) clientToTarget() {
	for {
		bp, n, err := relaybuf.Read(fl.host)
		if n > 0 {
			werr := fl.target.Write((*bp)[:n])
			relaybuf.Put(bp)
			if werr != nil {
				if errors.Is(werr, errReset) {
					fl.resetClient() // the target reset
				} else {
					fl.abort()
				}
				return
			}
			fl.f.c.bytesToTarget.Add(uint64(n))
		} else if bp != nil {
			relaybuf.Put(bp)
		}
		switch {
		case err == nil:
		case err == io.EOF:
			fl.target.closeWrite() // the client's FIN
			return
		case errors.Is(err, syscall.ECONNRESET):
			fl.resetTarget()
			return
		default:
			fl.abort()
			return
		}
	}
}

// targetToClient copies what the target sends to the client.
func (fl *tcpFlow) targetToClient() {
	for {
		fl.target.waitData()
		bp := relaybuf.Get()
		n, err := fl.target.Read(*bp)
		if n > 0 {
			_, werr := fl.host.Write((*bp)[:n])
			relaybuf.Put(bp)
			if werr != nil {
				fl.resetTarget() // the client is gone
				return
			}
			fl.f.c.bytesToClient.Add(uint64(n))
		} else {
			relaybuf.Put(bp)
		}
		switch {
		case err == nil:
		case err == io.EOF:
			_ = fl.host.CloseWrite() // the target's FIN
			return
		case errors.Is(err, errReset):
			fl.resetClient()
			return
		default:
			return // torn down by the other direction or Close
		}
	}
}

// resetClient sends a RST to the client and aborts the target side (if
// already reset, it stays so).
func (fl *tcpFlow) resetClient() {
	fl.once.Do(func() {
		fl.f.c.tcpResetsClient.Add(1)
		_ = fl.host.SetLinger(0)
		_ = fl.host.Close()
		if fl.target != nil {
			fl.target.abort()
		}
	})
}

// resetTarget sends a RST to the target and closes the client's
// connection.
func (fl *tcpFlow) resetTarget() {
	fl.once.Do(func() {
		fl.f.c.tcpResetsTarget.Add(1)
		fl.target.abort()
		_ = fl.host.SetLinger(0)
		_ = fl.host.Close()
	})
}

// abort resets both sides (Close, a removed rule, a broken side). While
// the flow dials, it marks it: run then resets the client.
func (fl *tcpFlow) abort() {
	fl.mu.Lock()
	fl.aborted = true
	sc, cancel := fl.target, fl.cancelDial
	fl.mu.Unlock()
	if sc == nil {
		// Dialling (or about to): the dial gives up now, and run resets
		// the client.
		if cancel != nil {
			cancel()
		}
		return
	}
	fl.once.Do(func() {
		fl.f.c.tcpResetsClient.Add(1)
		sc.abort()
		_ = fl.host.SetLinger(0)
		_ = fl.host.Close()
	})
}

// errReset is a connection reset by the target.
var errReset = errors.New("ingress: connection reset by target")

// stackConn is the target's side of a TCP flow: a gVisor endpoint with
// blocking Read and Write that tell a FIN (io.EOF) from a RST (errReset).
type stackConn struct {
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

func newStackConn(ep tcpip.Endpoint, wq *waiter.Queue) *stackConn {
	c := &stackConn{ep: ep, wq: wq}
	var rCh, wCh chan struct{}
	c.rEntry, rCh = waiter.NewChannelEntry(readEvents)
	c.wEntry, wCh = waiter.NewChannelEntry(writeEvents)
	c.rCh, c.wCh = rCh, wCh
	wq.EventRegister(&c.rEntry)
	wq.EventRegister(&c.wEntry)
	return c
}

func stackErr(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrClosedForReceive:
		return io.EOF
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted:
		return errReset
	}
	return errors.New("netstack: " + err.String())
}

// waitData blocks until Read would not block (or c is closed).
func (c *stackConn) waitData() {
	for c.ep.Readiness(readEvents) == 0 && !c.closed.Load() {
		<-c.rCh
	}
}

// Read reads what the target sent; io.EOF after its FIN, errReset after
// its RST.
func (c *stackConn) Read(b []byte) (int, error) {
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
			return 0, stackErr(err)
		}
		<-c.rCh
	}
}

// Write sends all of b to the target.
func (c *stackConn) Write(b []byte) error {
	for len(b) > 0 {
		c.wr.Reset(b)
		n, err := c.ep.Write(&c.wr, tcpip.WriteOptions{})
		b = b[n:]
		if err == nil {
			continue
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			return stackErr(err)
		}
		<-c.wCh
	}
	return nil
}

// closeWrite sends a FIN to the target.
func (c *stackConn) closeWrite() { _ = c.ep.Shutdown(tcpip.ShutdownWrite) }

// abort sends a RST to the target and releases the endpoint; blocked Read
// and Write return.
func (c *stackConn) abort() {
	c.ep.Abort()
	c.close()
}

// close releases the endpoint (a FIN if not yet sent).
func (c *stackConn) close() {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.ep.Close()
		c.wq.EventUnregister(&c.rEntry)
		c.wq.EventUnregister(&c.wEntry)
		close(c.rCh)
		close(c.wCh)
	})
}
