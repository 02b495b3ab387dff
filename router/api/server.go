package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Handler carries out the requests a Server receives. Its methods are
// called concurrently, one goroutine per connection. Returned errors pick
// the wire code by errors.Is against this package's sentinels (anything
// else is ErrInternal); their text is the message the client sees.
type Handler interface {
	// Attach attaches the pod interface whose TAP is tap. Attach owns tap:
	// it closes it (or hands it on) whatever it returns.
	Attach(ctx context.Context, req AttachRequest, tap *os.File) (Attachment, error)
	// Detach detaches the attachment; ErrNotFound when there is none.
	Detach(ctx context.Context, id AttachmentID) error
	Status(ctx context.Context) (Status, error)
	Routes(ctx context.Context) ([]Route, error)
	Ports(ctx context.Context) ([]Port, error)
	Attachments(ctx context.Context) ([]Attachment, error)
}

// CaptureHandler is a Handler that also serves OpCapture; a Server whose
// Handler is not one answers capture requests with ErrBadRequest.
type CaptureHandler interface {
	Handler
	// Capture writes a pcap stream of req.Pod's traffic to out until req's
	// Count or Duration is reached or ctx ends (the client stopped the
	// capture early, or the server is closing), and returns what it wrote.
	// req is normalized (CaptureRequest.Normalize). Capture owns out: it
	// closes it whatever it returns. An unknown pod is ErrNotFound.
	Capture(ctx context.Context, req CaptureRequest, out *os.File) (CaptureStats, error)
}

// ErrDaemonRunning is returned by Listen when another process answers on
// the socket.
var ErrDaemonRunning = errors.New("api: another daemon is listening on the socket")

// ServerConfig configures a Server.
type ServerConfig struct {
	// Path is the socket path (default DefaultSocket). Its directory is
	// created with mode 0700 when missing; an existing one keeps its mode
	// (--socket /run/podrouter.sock must not chmod /run: the socket's own
	// 0600 keeps others out) and must be owned by this process's
	// effective uid.
	Path string
	// AllowUID is the only peer uid served (SO_PEERCRED); default 0.
	// Tests running unprivileged set their own uid.
	AllowUID *uint32
	// Timeout bounds one request, from accept to reply (default 10s). A
	// capture gets its duration on top.
	Timeout time.Duration
	// Observe, when set, is called once per connection after the reply is
	// written: the request's op (OpUnknown when it named none this package
	// knows, or could not be read, or the peer was refused), its error
	// code ("" on success) and how long it took from accept. It runs on the
	// connection's goroutine and must be quick.
	Observe func(op Op, code Code, elapsed time.Duration)
	Logger  *zap.Logger
}

// Server serves the local API on a unix socket.
type Server struct {
	cfg     ServerConfig
	allow   uint32
	h       Handler
	log     *zap.Logger
	ln      *net.UnixListener
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[*net.UnixConn]struct{}
	closed  bool
	closeCh chan struct{}
	serving atomic.Bool
	// stop ends long requests (captures) when the server closes.
	stop       context.Context
	stopCancel context.CancelFunc
}

// maxRequest bounds a request's size.
const maxRequest = 64 << 10

// captureReplyGrace is how long past its bound a capture's reply may take.
const captureReplyGrace = time.Second

// Listen creates the socket (0600, in a directory made 0700 when missing,
// an existing one left as it is), replacing a stale
// socket file that nobody answers on, and returns a Server that does not
// serve yet (see Serve).
func Listen(cfg ServerConfig, h Handler) (*Server, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultSocket
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, h: h, log: cfg.Logger.Named("api"), conns: map[*net.UnixConn]struct{}{}, closeCh: make(chan struct{})}
	s.stop, s.stopCancel = context.WithCancel(context.Background())
	if cfg.AllowUID != nil {
		s.allow = *cfg.AllowUID
	}
	if err := s.prepareDir(); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(cfg.Path); err == nil {
		c, derr := net.DialTimeout("unix", cfg.Path, time.Second)
		if derr == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%w: %s", ErrDaemonRunning, cfg.Path)
		}
		if err := os.Remove(cfg.Path); err != nil {
			return nil, fmt.Errorf("api: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	// The socket's mode is what keeps others out: its directory may be
	// one that is not ours to close (/run).
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("api: chmod socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s.ln = ln
	s.serving.Store(true) // connections queue from here; Serve takes them
	return s, nil
}

// prepareDir makes the socket's directory (0700, parents too) when it is
// missing, and checks that it is a directory owned by us. An existing
// directory's mode is left alone.
func (s *Server) prepareDir() error {
	dir := filepath.Dir(s.cfg.Path)
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("api: socket directory: %w", err)
		}
		// MkdirAll's mode is masked by the umask; the new directory is
		// ours to set.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("api: socket directory: %w", err)
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("api: socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("api: socket directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("api: socket directory %s is owned by uid %d, want %d", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.cfg.Path }

// Serving reports whether the socket takes connections: from Listen until
// Close, or until Serve returns (Serve is meant to be called right after
// Listen; connections queue in the listen backlog until it runs).
func (s *Server) Serving() bool { return s.serving.Load() }

// Serve accepts connections until Close; it returns nil after Close.
func (s *Server) Serve() error {
	defer s.serving.Store(false)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.closeCh:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("api: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops accepting, ends the captures in progress (they reply with
// what they wrote), waits for the other requests in progress (closing their
// connections after a grace period of one request timeout) and removes the
// socket file. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closeCh)
	s.mu.Unlock()
	s.serving.Store(false)
	s.stopCancel()
	err := s.ln.Close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.Timeout):
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
	}
	return err
}

func (s *Server) serveConn(c *net.UnixConn) {
	defer c.Close()
	t0 := time.Now()
	op, code := OpUnknown, Code("")
	if s.cfg.Observe != nil {
		defer func() { s.cfg.Observe(op, code, time.Since(t0)) }()
	}
	fail := func(err error) {
		code = codeOf(err)
		s.writeReply(c, reply{Error: &wireError{Code: code, Message: err.Error()}})
	}
	deadline := t0.Add(s.cfg.Timeout)
	_ = c.SetDeadline(deadline)
	if uid, err := peerUID(c); err != nil || uid != s.allow {
		s.log.Warn("refused peer", zap.Uint32("uid", uid), zap.Error(err))
		fail(fmt.Errorf("%w: peer uid %d is not allowed", ErrPermission, uid))
		return
	}
	req, files, err := readRequest(c)
	defer func() {
		for _, f := range files {
			if f != nil {
				_ = f.Close()
			}
		}
	}()
	if req.Op.known() {
		op = req.Op
	}
	if err != nil {
		fail(fmt.Errorf("%w: %w", ErrBadRequest, err))
		return
	}
	if req.Op == OpCapture && req.Capture != nil {
		// A capture carries its own bound: its duration plus the usual
		// time for the exchange.
		if err := req.Capture.Normalize(); err != nil {
			fail(err)
			return
		}
		deadline = time.Now().Add(req.Capture.Duration + s.cfg.Timeout)
		// The reply may follow a capture that ran to its bound.
		_ = c.SetDeadline(deadline.Add(captureReplyGrace))
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if req.Op == OpCapture {
		// The client ends a capture early by shutting down its side of
		// the connection; the server's Close ends it too.
		stop := context.AfterFunc(s.stop, cancel)
		defer stop()
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			var b [1]byte
			_, _ = c.Read(b[:])
			cancel()
		}()
		defer func() { <-watched }()
		defer func() { _ = c.SetReadDeadline(time.Now()) }() // ends the watch
	}
	rep, herr := s.dispatch(ctx, req, files)
	if herr != nil {
		if req.Op == OpAttach || req.Op == OpDetach || req.Op == OpCapture {
			s.log.Info("request failed", zap.String("op", string(req.Op)), zap.Error(herr))
		}
		fail(herr)
		return
	}
	s.writeReply(c, rep)
}

// dispatch runs the request; files[0], when the op consumes it, is set to
// nil so the caller does not close it.
func (s *Server) dispatch(ctx context.Context, req request, files []*os.File) (reply, error) {
	var rep reply
	if req.Op != OpAttach && req.Op != OpCapture && len(files) > 0 {
		return rep, fmt.Errorf("%w: op %s takes no fd", ErrBadRequest, req.Op)
	}
	switch req.Op {
	case OpAttach:
		if req.Attach == nil {
			return rep, fmt.Errorf("%w: attach without its request", ErrBadRequest)
		}
		if len(files) != 1 {
			return rep, fmt.Errorf("%w: attach wants exactly one fd (the TAP), got %d", ErrBadRequest, len(files))
		}
		if err := req.Attach.Validate(); err != nil {
			return rep, err
		}
		tap := files[0]
		files[0] = nil
		a, err := s.h.Attach(ctx, *req.Attach, tap)
		if err != nil {
			return rep, err
		}
		rep.Attachment = &a
	case OpCapture:
		if req.Capture == nil {
			return rep, fmt.Errorf("%w: capture without its request", ErrBadRequest)
		}
		if len(files) != 1 {
			return rep, fmt.Errorf("%w: capture wants exactly one fd (the output file), got %d", ErrBadRequest, len(files))
		}
		ch, ok := s.h.(CaptureHandler)
		if !ok {
			return rep, fmt.Errorf("%w: this daemon does not capture", ErrBadRequest)
		}
		out := files[0]
		files[0] = nil
		st, err := ch.Capture(ctx, *req.Capture, out)
		if err != nil {
			return rep, err
		}
		rep.Capture = &st
	case OpDetach:
		if req.ID == nil {
			return rep, fmt.Errorf("%w: detach without an id", ErrBadRequest)
		}
		if err := req.ID.Validate(); err != nil {
			return rep, err
		}
		if err := s.h.Detach(ctx, *req.ID); err != nil {
			return rep, err
		}
	case OpStatus:
		st, err := s.h.Status(ctx)
		if err != nil {
			return rep, err
		}
		rep.Status = &st
	case OpRoutes:
		rs, err := s.h.Routes(ctx)
		if err != nil {
			return rep, err
		}
		rep.Routes = rs
	case OpPorts:
		ps, err := s.h.Ports(ctx)
		if err != nil {
			return rep, err
		}
		rep.Ports = ps
	case OpAttachments:
		as, err := s.h.Attachments(ctx)
		if err != nil {
			return rep, err
		}
		rep.Attachments = as
	case OpConntrack:
		if err := s.serveConntrack(ctx, req, &rep); err != nil {
			return rep, err
		}
	case OpServices:
		if err := s.serveServices(ctx, req, &rep); err != nil {
			return rep, err
		}
	case OpPolicy:
		if err := s.servePolicy(ctx, req, &rep); err != nil {
			return rep, err
		}
	default:
		return rep, fmt.Errorf("%w: unknown op %q", ErrBadRequest, req.Op)
	}
	return rep, nil
}

func (s *Server) writeReply(c *net.UnixConn, rep reply) {
	rep.V = Version
	b, err := json.Marshal(rep)
	if err != nil {
		b, _ = json.Marshal(reply{V: Version, Error: &wireError{Code: CodeInternal, Message: err.Error()}})
	}
	b = append(b, '\n')
	if _, err := c.Write(b); err != nil {
		s.log.Debug("write reply", zap.Error(err))
	}
}

// readRequest reads one request line and the fds that came with its first
// bytes. The returned files are the caller's to close, also on error.
func readRequest(c *net.UnixConn) (request, []*os.File, error) {
	var req request
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var files []*os.File
	if oobn > 0 {
		fs, perr := parseRights(oob[:oobn])
		files = fs
		if perr != nil {
			return req, files, perr
		}
	}
	if flags&syscall.MSG_CTRUNC != 0 {
		return req, files, errors.New("too many fds with the request")
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return req, files, fmt.Errorf("read request: %w", err)
	}
	data := buf[:n]
	for !bytes.Contains(data, []byte{'\n'}) {
		if err != nil {
			return req, files, errors.New("request not terminated by a newline")
		}
		if len(data) >= maxRequest {
			return req, files, fmt.Errorf("request longer than %d bytes", maxRequest)
		}
		var m int
		m, err = c.Read(buf)
		data = append(data, buf[:m]...)
		if err != nil && !errors.Is(err, io.EOF) {
			return req, files, fmt.Errorf("read request: %w", err)
		}
	}
	line, _, _ := bytes.Cut(data, []byte{'\n'})
	req, err = decodeRequest(line)
	return req, files, err
}

// decodeRequest decodes one request line (without its newline): exactly
// one JSON object, no field this package does not know, of this protocol
// version. On error the request is what could be decoded (its Op names
// the request in metrics). The ops' own checks (Validate, Normalize)
// follow in dispatch.
func decodeRequest(line []byte) (request, error) {
	var req request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("decode request: %w", err)
	}
	// Decode stops after the first value: anything but white space after
	// it is a malformed request, not one to guess at.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, errors.New("decode request: data after the request object")
	}
	if req.V != Version {
		return req, fmt.Errorf("protocol version %d, want %d", req.V, Version)
	}
	return req, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	var errs []error
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET || m.Header.Type != syscall.SCM_RIGHTS {
			continue
		}
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "scm-rights"))
		}
	}
	return files, errors.Join(errs...)
}

// peerUID returns the uid of the process at the other end of c.
func peerUID(c *net.UnixConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var uid uint32
	var uerr error
	if err := rc.Control(func(fd uintptr) { uid, uerr = peerCredUID(int(fd)) }); err != nil {
		return 0, err
	}
	return uid, uerr
}
