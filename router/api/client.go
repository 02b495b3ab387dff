package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Client talks to the daemon's socket. The zero value uses DefaultSocket
// and a 10 s timeout per request; a Client is safe for concurrent use (each
// request has its own connection).
type Client struct {
	Path    string        // socket path (default DefaultSocket)
	Timeout time.Duration // per request, when ctx has no earlier deadline (default 10s)
}

// Attach hands the TAP file tap to the daemon with req. The daemon gets its
// own copy of the descriptor: the caller still owns tap and closes it.
func (c *Client) Attach(ctx context.Context, req AttachRequest, tap *os.File) (Attachment, error) {
	if err := req.Validate(); err != nil {
		return Attachment{}, err
	}
	if tap == nil {
		return Attachment{}, fmt.Errorf("%w: attach without a TAP file", ErrBadRequest)
	}
	rep, err := c.do(ctx, request{Op: OpAttach, Attach: &req}, tap)
	if err != nil {
		return Attachment{}, err
	}
	if rep.Attachment == nil {
		return Attachment{}, fmt.Errorf("%w: attach reply without the attachment", ErrInternal)
	}
	return *rep.Attachment, nil
}

// Detach detaches id; an error wrapping ErrNotFound when it is not attached.
func (c *Client) Detach(ctx context.Context, id AttachmentID) error {
	_, err := c.do(ctx, request{Op: OpDetach, ID: &id}, nil)
	return err
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	rep, err := c.do(ctx, request{Op: OpStatus}, nil)
	if err != nil {
		return Status{}, err
	}
	if rep.Status == nil {
		return Status{}, fmt.Errorf("%w: status reply without the status", ErrInternal)
	}
	return *rep.Status, nil
}

// Routes returns the engine's routing table.
func (c *Client) Routes(ctx context.Context) ([]Route, error) {
	rep, err := c.do(ctx, request{Op: OpRoutes}, nil)
	return rep.Routes, err
}

// Ports returns the engine's ports with their counters.
func (c *Client) Ports(ctx context.Context) ([]Port, error) {
	rep, err := c.do(ctx, request{Op: OpPorts}, nil)
	return rep.Ports, err
}

// Attachments returns every recorded attachment.
func (c *Client) Attachments(ctx context.Context) ([]Attachment, error) {
	rep, err := c.do(ctx, request{Op: OpAttachments}, nil)
	return rep.Attachments, err
}

// do sends one request (with f's descriptor when f is not nil) and reads
// the reply. A daemon that cannot be reached gives ErrUnavailable; a reply
// with an error gives that error's sentinel, wrapped with its message.
func (c *Client) do(ctx context.Context, req request, f *os.File) (reply, error) {
	path := c.Path
	if path == "" {
		path = DefaultSocket
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return reply{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	req.V = Version
	b, err := json.Marshal(req)
	if err != nil {
		return reply{}, fmt.Errorf("api: encode request: %w", err)
	}
	b = append(b, '\n')
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	n, _, err := conn.WriteMsgUnix(b, oob, nil)
	if err == nil && n < len(b) {
		_, err = conn.Write(b[n:])
	}
	sendErr := err
	// Read the reply even when the send failed: a server that refuses a
	// peer answers and closes without reading the request.
	line, err := bufio.NewReaderSize(conn, 64<<10).ReadBytes('\n')
	if err != nil && sendErr != nil {
		return reply{}, fmt.Errorf("%w: send request: %w", ErrUnavailable, sendErr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return reply{}, fmt.Errorf("%w: no reply: %w", ErrUnavailable, ctx.Err())
		}
		return reply{}, fmt.Errorf("%w: read reply: %w", ErrUnavailable, err)
	}
	var rep reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return reply{}, fmt.Errorf("%w: decode reply: %w", ErrInternal, err)
	}
	if rep.V != Version {
		return reply{}, fmt.Errorf("%w: reply protocol version %d, want %d", ErrInternal, rep.V, Version)
	}
	if rep.Error != nil {
		sentinel := errOf(rep.Error.Code)
		return reply{}, fmt.Errorf("%w: %s", sentinel, strings.TrimPrefix(rep.Error.Message, sentinel.Error()+": "))
	}
	return rep, nil
}

// IsUnavailable reports whether err means no daemon answered.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }
