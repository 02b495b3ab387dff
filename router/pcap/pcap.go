// Package pcap writes packet captures in the classic libpcap file format
// (readable by tcpdump, tshark and Wireshark) and captures an engine port's
// traffic into one.
//
//	port tap (worker goroutine): copy frame into a pooled slot ─► bounded queue
//	   (full: count a drop, never block the data path)
//	writer goroutine: queue ─► pcap record ─► io.Writer, until count/duration/ctx
package pcap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podrouter/podrouter/router/engine"
)

// LinkType is the pcap link-layer header type.
type LinkType uint32

// Link types.
const (
	LinkEthernet LinkType = 1   // LINKTYPE_ETHERNET
	LinkRaw      LinkType = 101 // LINKTYPE_RAW: bare IPv4/IPv6
)

// DefaultSnaplen is the most bytes kept of a packet (tcpdump's default),
// enough for a whole 64 KiB super-packet.
const DefaultSnaplen = 262144

// ErrBusy is returned when a capture already runs on the port.
var ErrBusy = errors.New("pcap: a capture is already running on this port")

// Writer writes a pcap stream. It is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	snaplen int
	hdr     [16]byte
}

// NewWriter writes the file header to w and returns a Writer.
func NewWriter(w io.Writer, lt LinkType, snaplen int) (*Writer, error) {
	if snaplen <= 0 {
		snaplen = DefaultSnaplen
	}
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], 0xa1b2c3d4) // microsecond timestamps
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(h[20:], uint32(lt))
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap: write header: %w", err)
	}
	return &Writer{w: w, snaplen: snaplen}, nil
}

// WritePacket writes one record: ts, the packet's original length, and at
// most snaplen bytes of it.
func (w *Writer) WritePacket(ts time.Time, data []byte, origLen int) error {
	incl := min(len(data), w.snaplen)
	binary.LittleEndian.PutUint32(w.hdr[0:], uint32(ts.Unix()))
	binary.LittleEndian.PutUint32(w.hdr[4:], uint32(ts.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(w.hdr[8:], uint32(incl))
	binary.LittleEndian.PutUint32(w.hdr[12:], uint32(origLen))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return fmt.Errorf("pcap: write record: %w", err)
	}
	if _, err := w.w.Write(data[:incl]); err != nil {
		return fmt.Errorf("pcap: write record: %w", err)
	}
	return nil
}

// Options bound a capture. A zero Count or Duration means no bound of that
// kind; at least one bound or a cancellable context is expected.
type Options struct {
	Count    int           // stop after this many packets
	Duration time.Duration // stop after this long
	Snaplen  int           // bytes kept per packet (default DefaultSnaplen)
	Queue    int           // packets buffered between the port and the writer (default 1024)
}

// Stats reports a finished capture.
type Stats struct {
	Captured int    // packets written
	Dropped  uint64 // packets the writer could not keep up with
}

type record struct {
	ts   time.Time
	b    []byte
	orig int
}

// Flusher is a buffered writer (bufio.Writer). Capture flushes one passed as
// its io.Writer whenever it has written every queued packet, and at the end,
// so that a reader of a live pipe sees packets as they come while a busy
// port's records still leave in large writes.
type Flusher interface {
	io.Writer
	Flush() error
}

// Capture installs a tap on port and writes both directions of its traffic
// to w as pcap until opt's count or duration is reached or ctx ends, then
// removes the tap. The data path never blocks on the capture: when the
// queue is full a packet is counted as dropped. A w that is a Flusher is
// flushed whenever the queue is drained and before Capture returns.
func Capture(ctx context.Context, port *engine.Port, w io.Writer, opt Options) (Stats, error) {
	if opt.Snaplen <= 0 {
		opt.Snaplen = DefaultSnaplen
	}
	if opt.Queue <= 0 {
		opt.Queue = 1024
	}
	lt := LinkRaw
	if port.Config().L2 {
		lt = LinkEthernet
	}
	q := make(chan record, opt.Queue)
	var dropped atomic.Uint64
	var closed atomic.Bool
	var mu sync.RWMutex // held by Fn while sending; taken to close q
	pool := sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}
	tap := &engine.Tap{Fn: func(_ engine.Direction, frame []byte) {
		mu.RLock()
		defer mu.RUnlock()
		if closed.Load() {
			return
		}
		bp := pool.Get().(*[]byte)
		b := append((*bp)[:0], frame[:min(len(frame), opt.Snaplen)]...)
		select {
		case q <- record{ts: time.Now(), b: b, orig: len(frame)}:
		default:
			*bp = b
			pool.Put(bp)
			dropped.Add(1)
		}
	}}
	if !port.SwapTap(nil, tap) {
		return Stats{}, ErrBusy
	}
	stop := func() {
		port.SwapTap(tap, nil)
		mu.Lock()
		closed.Store(true)
		close(q)
		mu.Unlock()
		for r := range q { // queued past the bound: not part of the capture
			b := r.b
			pool.Put(&b)
		}
	}
	// The header goes out once the port is ours: a busy port's capture
	// writes nothing.
	pw, err := NewWriter(w, lt, opt.Snaplen)
	fl, _ := w.(Flusher)
	if err == nil && fl != nil {
		if ferr := fl.Flush(); ferr != nil {
			err = fmt.Errorf("pcap: write header: %w", ferr)
		}
	}
	if err != nil {
		stop()
		return Stats{}, err
	}
	if opt.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opt.Duration)
		defer cancel()
	}
	var st Stats
	var werr error
	for done := false; !done; {
		select {
		case r := <-q:
			if werr == nil {
				if werr = pw.WritePacket(r.ts, r.b, r.orig); werr == nil {
					st.Captured++
				}
			}
			b := r.b
			pool.Put(&b)
			done = werr != nil || (opt.Count > 0 && st.Captured >= opt.Count)
			if !done && fl != nil && len(q) == 0 {
				werr = fl.Flush()
				done = werr != nil
			}
		case <-ctx.Done():
			done = true
		}
	}
	stop()
	if fl != nil && werr == nil {
		werr = fl.Flush()
	}
	st.Dropped = dropped.Load()
	if werr != nil {
		return st, werr
	}
	return st, nil
}
