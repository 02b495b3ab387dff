package daemon

// Packet capture through the local API: the CLI passes the descriptor of
// its output file (-w FILE, or its stdout), the daemon taps the pod's port
// and writes the pcap stream straight into that descriptor.
//
//	request ─► find the port (name, address, container ID prefix)
//	   ─► own non-blocking copy of the fd, write deadline ─► bufio
//	   ─► pcap.Capture (tap on the port; Count / Duration / client stop)
//	   ─► flush ─► fd restored, closed ─► stats
//
// Design notes. The output may be a pipe whose reader stalls (tcpdump -r -
// suspended); a blocking write would then hold the capture, its tap and
// the API connection forever and hang the daemon's shutdown. So the daemon
// writes through a non-blocking duplicate of the descriptor registered with
// Go's poller, under a write deadline at the request's own bound, and puts
// the file status flags back (they are shared with the client's
// descriptor) when it is done.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/pcap"
)

// captureFlushGrace bounds the last flush of a capture stopped early.
const captureFlushGrace = 2 * time.Second

// Capture implements api.CaptureHandler.
func (d handler) Capture(ctx context.Context, req api.CaptureRequest, out *os.File) (api.CaptureStats, error) {
	defer out.Close()
	if err := req.Normalize(); err != nil {
		return api.CaptureStats{}, err
	}
	port, err := d.findPort(req.Pod)
	if err != nil {
		return api.CaptureStats{}, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(req.Duration + captureFlushGrace)
	}
	w, release, err := captureOutput(out, deadline)
	if err != nil {
		return api.CaptureStats{}, fmt.Errorf("%w: capture output: %w", api.ErrBadRequest, err)
	}
	defer release()
	// A capture stopped early (the client left, the daemon stops) still
	// flushes what it has, for a moment.
	stop := context.AfterFunc(ctx, func() {
		if g := time.Now().Add(captureFlushGrace); g.Before(deadline) {
			_ = w.SetWriteDeadline(g)
		}
	})
	defer stop()
	t0 := time.Now()
	d.log.Info("capture started", zap.String("port", port.Name()), zap.Int("count", req.Count), zap.Duration("duration", req.Duration))
	bw := bufio.NewWriterSize(w, 64<<10)
	st, err := pcap.Capture(ctx, port, bw, pcap.Options{Count: req.Count, Duration: req.Duration, Snaplen: req.Snaplen})
	if errors.Is(err, pcap.ErrBusy) {
		return api.CaptureStats{}, fmt.Errorf("%w: port %s: %w", api.ErrConflict, port.Name(), err)
	}
	res := api.CaptureStats{Port: port.Name(), Captured: st.Captured, Dropped: st.Dropped}
	if err != nil {
		d.log.Warn("capture failed", zap.String("port", port.Name()), zap.Int("captured", st.Captured), zap.Error(err))
		return res, fmt.Errorf("%w: capture on %s after %d packets: %w", api.ErrInternal, port.Name(), st.Captured, err)
	}
	d.log.Info("capture done", zap.String("port", port.Name()), zap.Int("captured", st.Captured),
		zap.Uint64("dropped", st.Dropped), zap.Duration("took", time.Since(t0)))
	return res, nil
}

// findPort resolves a capture's pod: an exact port name, a pod address, or
// a container ID or a unique prefix of one.
func (d handler) findPort(name string) (*engine.Port, error) {
	ports := d.eng.Ports()
	for _, p := range ports {
		if p.Name() == name {
			return p, nil
		}
	}
	if a, err := netip.ParseAddr(name); err == nil {
		for _, p := range ports {
			if slices.Contains(p.Config().Addrs, a) {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%w: no port has address %s", api.ErrNotFound, a)
	}
	d.pods.mu.Lock()
	defer d.pods.mu.Unlock()
	var exact, prefixed []*pod
	for id, pd := range d.pods.byID {
		switch {
		case id.ContainerID == name:
			exact = append(exact, pd)
		case strings.HasPrefix(id.ContainerID, name):
			prefixed = append(prefixed, pd)
		}
	}
	match := exact
	if len(match) == 0 {
		match = prefixed
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("%w: no pod or port %q", api.ErrNotFound, name)
	case 1:
		if match[0].port == nil {
			return nil, fmt.Errorf("%w: pod %s is recorded but not attached", api.ErrNotFound, match[0].rec.AttachmentID)
		}
		return match[0].port, nil
	}
	names := make([]string, len(match))
	for i, pd := range match {
		names[i] = pd.rec.String()
	}
	slices.Sort(names)
	return nil, fmt.Errorf("%w: %q matches %d attachments (%s): name one", api.ErrBadRequest, name, len(match), strings.Join(names, ", "))
}

// captureOutput returns a non-blocking duplicate of out's descriptor, with
// a write deadline where the file type supports one (pipes, sockets), and a
// release func that restores the shared file status flags and closes the
// duplicate.
func captureOutput(out *os.File, deadline time.Time) (*os.File, func(), error) {
	rc, err := out.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, nil, err
	}
	if derr != nil {
		return nil, nil, fmt.Errorf("dup: %w", derr)
	}
	flags, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0)
	if err == nil && flags&unix.O_ACCMODE == unix.O_RDONLY {
		err = errors.New("the file is open read-only")
	}
	if err == nil {
		err = unix.SetNonblock(nfd, true)
	}
	if err != nil {
		_ = unix.Close(nfd)
		return nil, nil, err
	}
	f := os.NewFile(uintptr(nfd), "capture-output") // pollable where the file type allows
	_ = f.SetWriteDeadline(deadline)                // os.ErrNoDeadline for regular files: they do not block
	release := func() {
		if flags&unix.O_NONBLOCK == 0 {
			if rc, err := f.SyscallConn(); err == nil {
				_ = rc.Control(func(fd uintptr) { _ = unix.SetNonblock(int(fd), false) })
			}
		}
		_ = f.Close()
	}
	return f, release, nil
}
