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
	return answer(rep.Attachment, err, "attach reply without the attachment")
}

// Detach detaches id; an error wrapping ErrNotFound when it is not attached.
func (c *Client) Detach(ctx context.Context, id AttachmentID) error {
	_, err := c.do(ctx, request{Op: OpDetach, ID: &id}, nil)
	return err
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	rep, err := c.do(ctx, request{Op: OpStatus}, nil)
	return answer(rep.Status, err, "status reply without the status")
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

// Capture asks the daemon to capture req.Pod's traffic into out: the daemon
// writes a pcap stream (Ethernet link type for a pod's L2 port, raw IP for
// an L3 port) straight into its own copy of the descriptor, so the file is
// opened with the caller's rights; the caller still owns out and closes it.
// req is normalized first (its defaults filled in). Capture returns when the
// capture ends at req's Count or Duration. When ctx ends first, the client
// shuts down its side of the connection: the daemon stops the capture and
// replies with what it wrote, and Capture returns that (within the
// client's Timeout). An unknown pod gives an error wrapping ErrNotFound, a
// port already being captured one wrapping ErrConflict.
func (c *Client) Capture(ctx context.Context, req CaptureRequest, out *os.File) (CaptureStats, error) {
	if err := req.Normalize(); err != nil {
		return CaptureStats{}, err
	}
	if out == nil {
		return CaptureStats{}, fmt.Errorf("%w: capture without an output file", ErrBadRequest)
	}
	rep, err := c.exchange(ctx, request{Op: OpCapture, Capture: &req}, out, req.Duration)
	return answer(rep.Capture, err, "capture reply without the stats")
}

// answer returns *v, the part of a reply that answers its request, or the
// exchange's error. A successful reply without it (v nil) is an error
// wrapping ErrInternal that says what is missing.
func answer[T any](v *T, err error, missing string) (T, error) {
	var zero T
	if err != nil {
		return zero, err
	}
	if v == nil {
		return zero, fmt.Errorf("%w: %s", ErrInternal, missing)
	}
	return *v, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 10 * time.Second
	}
	return c.Timeout
}

// do sends one request (with f's descriptor when f is not nil) and reads
// the reply. A daemon that cannot be reached gives ErrUnavailable; a reply
// with an error gives that error's sentinel, wrapped with its message.
func (c *Client) do(ctx context.Context, req request, f *os.File) (reply, error) {
	return c.exchange(ctx, req, f, 0)
}

// exchange is do for a request that may run for long on top of the
// timeout. With long > 0 the end of ctx does not abandon the exchange: it
// shuts down the write side, which asks the server to finish early and
// reply, and the reply is awaited for at most one more timeout.
func (c *Client) exchange(ctx context.Context, req request, f *os.File, long time.Duration) (reply, error) {
	path := c.Path
	if path == "" {
		path = DefaultSocket
	}
	timeout := c.timeout()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return reply{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	hard := time.Now().Add(timeout + long)
	if long > 0 {
		hard = hard.Add(captureReplyGrace)
	}
	if long == 0 {
		if dl, ok := dctx.Deadline(); ok {
			hard = dl
		}
		ctx = dctx
	}
	_ = conn.SetDeadline(hard)
	if long == 0 {
		stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
		defer stop()
	}
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
	if long > 0 && sendErr == nil {
		stop := context.AfterFunc(ctx, func() {
			_ = conn.CloseWrite()
			if grace := time.Now().Add(timeout); grace.Before(hard) {
				_ = conn.SetDeadline(grace)
			}
		})
		defer stop()
	}
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
		if time.Now().After(hard) {
			return reply{}, fmt.Errorf("%w: no reply within %v: %w", ErrUnavailable, timeout+long, err)
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
