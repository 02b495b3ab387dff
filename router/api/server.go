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

// ErrDaemonRunning is returned by Listen when another process answers on
// the socket.
var ErrDaemonRunning = errors.New("api: another daemon is listening on the socket")

// ServerConfig configures a Server.
type ServerConfig struct {
	// Path is the socket path (default DefaultSocket). Its directory is
	// created with mode 0700 when missing (an existing one is set to 0700)
	// and must be owned by this process's effective uid.
	Path string
	// AllowUID is the only peer uid served (SO_PEERCRED); default 0.
	// Tests running unprivileged set their own uid.
	AllowUID *uint32
	// Timeout bounds one request, from accept to reply (default 10s).
	Timeout time.Duration
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
}

// maxRequest bounds a request's size.
const maxRequest = 64 << 10

// Listen creates the socket (directory 0700, socket 0600), replacing a stale
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
	// The directory (0700) already keeps others out; this closes the
	// socket itself too.
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("api: chmod socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s.ln = ln
	return s, nil
}

func (s *Server) prepareDir() error {
	dir := filepath.Dir(s.cfg.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("api: socket directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("api: socket directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("api: socket directory %s is owned by uid %d, want %d", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("api: socket directory: %w", err)
		}
	}
	return nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.cfg.Path }

// Serve accepts connections until Close; it returns nil after Close.
func (s *Server) Serve() error {
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

// Close stops accepting, waits for the requests in progress (closing their
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
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(s.cfg.Timeout))
	if uid, err := peerUID(c); err != nil || uid != s.allow {
		s.log.Warn("refused peer", zap.Uint32("uid", uid), zap.Error(err))
		s.writeReply(c, reply{Error: &wireError{Code: CodePermission, Message: fmt.Sprintf("peer uid %d is not allowed", uid)}})
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
	if err != nil {
		s.writeReply(c, reply{Error: &wireError{Code: CodeBadRequest, Message: err.Error()}})
		return
	}
	rep, herr := s.dispatch(ctx, req, files)
	if herr != nil {
		rep = reply{Error: &wireError{Code: codeOf(herr), Message: herr.Error()}}
		if req.Op == OpAttach || req.Op == OpDetach {
			s.log.Info("request failed", zap.String("op", string(req.Op)), zap.Error(herr))
		}
	}
	s.writeReply(c, rep)
}

// dispatch runs the request; files[0], when the op consumes it, is set to
// nil so the caller does not close it.
func (s *Server) dispatch(ctx context.Context, req request, files []*os.File) (reply, error) {
	var rep reply
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
	default:
		return rep, fmt.Errorf("%w: unknown op %q", ErrBadRequest, req.Op)
	}
	if req.Op != OpAttach && len(files) > 0 {
		return reply{}, fmt.Errorf("%w: op %s takes no fd", ErrBadRequest, req.Op)
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
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, files, fmt.Errorf("decode request: %w", err)
	}
	if req.V != Version {
		return req, files, fmt.Errorf("protocol version %d, want %d", req.V, Version)
	}
	return req, files, nil
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
