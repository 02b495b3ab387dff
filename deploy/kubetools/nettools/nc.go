package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

type ncOpts struct {
	udp     bool
	verbose bool          // -v: say on stderr that the connection succeeded, as OpenBSD netcat
	wait    time.Duration // -w: connect timeout, and how long to wait for replies after stdin ends
	address string
}

func parseNC(args []string) (ncOpts, error) {
	var o ncOpts
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-u":
			o.udp = true
		case "-t": // TCP, the default (OpenBSD netcat's flag, which the e2e suite passes)
			o.udp = false
		case "-v":
			o.verbose = true
		case "-w":
			if i+1 >= len(args) {
				return o, errors.New("-w needs a number of seconds")
			}
			n, err := strconv.Atoi(args[i+1])
			if err != nil || n < 0 {
				return o, fmt.Errorf("-w %q: not a number of seconds", args[i+1])
			}
			o.wait = time.Duration(n) * time.Second
			i++
		default:
			if len(a) > 1 && a[0] == '-' {
				return o, fmt.Errorf("option %s: not supported by this nc", a)
			}
			rest = append(rest, a)
		}
	}
	if len(rest) != 2 {
		return o, fmt.Errorf("want HOST PORT, got %q", rest)
	}
	o.address = net.JoinHostPort(rest[0], rest[1])
	return o, nil
}

// nc sends stdin to HOST:PORT and copies what comes back to stdout, as
// netcat 1.10 does: over UDP each read of stdin is one datagram; once stdin
// ends it waits for replies until -w seconds pass without one (forever
// without -w), then exits 0.
func nc(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseNC(args)
	if err != nil {
		fmt.Fprintf(stderr, "nc: %v\nusage: nc [-v] [-t|-u] [-w SECONDS] HOST PORT\n", err)
		return 2
	}
	network := "tcp"
	if o.udp {
		network = "udp"
	}
	conn, err := net.DialTimeout(network, o.address, o.wait)
	if err != nil {
		fmt.Fprintf(stderr, "nc: %v\n", err)
		return 1
	}
	defer conn.Close()
	if o.verbose {
		h, p, _ := net.SplitHostPort(o.address)
		fmt.Fprintf(stderr, "Connection to %s %s port [%s/*] succeeded!\n", h, p, network)
	}

	// When stdin ends, the reader gets -w seconds for each next reply.
	var stdinEnded atomic.Bool
	stdinErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stdin) // over UDP: one datagram per Read of stdin
		if tc, ok := conn.(*net.TCPConn); ok && err == nil {
			err = tc.CloseWrite()
		}
		stdinEnded.Store(true)
		if o.wait > 0 {
			conn.SetReadDeadline(time.Now().Add(o.wait))
		}
		stdinErr <- err
	}()

	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if stdinEnded.Load() && o.wait > 0 {
				conn.SetReadDeadline(time.Now().Add(o.wait))
			}
			if _, werr := stdout.Write(buf[:n]); werr != nil {
				fmt.Fprintf(stderr, "nc: %v\n", werr)
				return 1
			}
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF), os.IsTimeout(err):
			// The peer closed (TCP), or no reply came within -w after
			// stdin ended: the normal end.
		default:
			fmt.Fprintf(stderr, "nc: %v\n", err)
			return 1
		}
		if errors.Is(err, io.EOF) && !stdinEnded.Load() {
			return 0 // the peer is done; netcat exits without waiting for stdin
		}
		if serr := <-stdinErr; serr != nil {
			fmt.Fprintf(stderr, "nc: %v\n", serr)
			return 1
		}
		return 0
	}
}
