package main

// podrouter pcap: captures a pod's traffic through the daemon into a pcap
// file (or stdout). The CLI opens the output itself, with the caller's
// rights, and hands the daemon its descriptor; the daemon writes into it.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
)

func init() {
	register(command{name: "pcap", summary: "capture a pod's traffic into a pcap file (tcpdump -r, tshark, Wireshark)", run: runPcap})
}

const pcapDoc = `Usage: podrouter pcap POD [-c N] [-w FILE] [--duration D] [-s SNAPLEN] [--socket PATH]

Captures the traffic of POD's port, both directions, as the engine sees it, into
a pcap file (Ethernet frames for a pod, bare IP for the uplink). POD is a port
name (containerID/ifName, or the uplink's name), a pod address, or a container ID
or a unique prefix of one. The capture stops after N packets, after D, or on
Ctrl-C; with neither -c nor --duration it lasts 10s, with -c alone at most 10m.
The file is written by the daemon into the descriptor this command opened, so it
is created with your rights. Without -w (or with -w -) the pcap goes to stdout,
which must not be a terminal:  podrouter pcap POD | tcpdump -n -r -
At the end it prints "captured N packets (M dropped)" to stderr; dropped packets
crossed the port while the writer was behind (the data path never waits).
Exits 0 after a capture, 1 when it fails (no such pod, no daemon), 2 on bad flags.

Flags:
`

func runPcap(args []string, stdout, stderr io.Writer) int {
	var (
		req    api.CaptureRequest
		file   string
		socket string
	)
	fs := flag.NewFlagSet("pcap", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&req.Count, "c", 0, "stop after this many packets")
	fs.StringVar(&file, "w", "-", "write the pcap to this file (- for stdout)")
	fs.DurationVar(&req.Duration, "duration", 0, "stop after this long (default 10s without -c; at most 10m)")
	fs.IntVar(&req.Snaplen, "s", 0, "keep at most this many bytes of each packet (default 262144)")
	fs.StringVar(&socket, "socket", api.DefaultSocket, "the daemon's local API socket")
	// POD may come before, between or after the flags.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return parseError(fs, err, pcapDoc, stdout, stderr)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case len(pos) == 0:
		fmt.Fprintln(stderr, "podrouter pcap: name the POD to capture (try 'podrouter help pcap')")
		return 2
	case len(pos) > 1:
		fmt.Fprintf(stderr, "podrouter pcap: unexpected argument %q\n", pos[1])
		return 2
	case req.Count < 0 || req.Count > api.MaxCaptureCount:
		fmt.Fprintf(stderr, "podrouter pcap: -c %d: want 0..%d packets\n", req.Count, api.MaxCaptureCount)
		return 2
	case req.Duration < 0 || req.Duration > api.MaxCaptureDuration:
		fmt.Fprintf(stderr, "podrouter pcap: --duration %v: want at most %v\n", req.Duration, api.MaxCaptureDuration)
		return 2
	case req.Snaplen < 0 || req.Snaplen > api.MaxSnaplen:
		fmt.Fprintf(stderr, "podrouter pcap: -s %d: want 0..%d bytes\n", req.Snaplen, api.MaxSnaplen)
		return 2
	}
	req.Pod = pos[0]
	if err := req.Normalize(); err != nil {
		fmt.Fprintf(stderr, "podrouter pcap: %v\n", err)
		return 2
	}

	out, finish, err := pcapOutput(file, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "podrouter pcap: %v\n", err)
		if errors.Is(err, errTerminal) {
			return 2
		}
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &api.Client{Path: socket, Timeout: 10 * time.Second}
	st, err := c.Capture(ctx, req, out)
	if ferr := finish(err == nil); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(stderr, "podrouter pcap: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "captured %d packets (%d dropped) on %s\n", st.Captured, st.Dropped, st.Port)
	return 0
}

var errTerminal = errors.New("refusing to write a pcap to a terminal: use -w FILE or a pipe (| tcpdump -n -r -)")

// pcapOutput opens the capture's output: the file named (created or
// truncated, 0644 before the umask), or stdout. A stdout that is not an
// *os.File (tests) gets a pipe copied into it. finish(ok) closes what
// pcapOutput opened, waits for the copy and, when the capture failed,
// removes a file it created that stayed empty.
func pcapOutput(name string, stdout io.Writer) (*os.File, func(ok bool) error, error) {
	if name != "-" {
		_, statErr := os.Stat(name)
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("-w: %w", err)
		}
		return f, func(ok bool) error {
			fi, serr := f.Stat()
			err := f.Close()
			if !ok && errors.Is(statErr, os.ErrNotExist) && serr == nil && fi.Size() == 0 {
				_ = os.Remove(name)
			}
			return err
		}, nil
	}
	if f, isFile := stdout.(*os.File); isFile {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			return nil, nil, errTerminal
		}
		return f, func(bool) error { return nil }, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdout, r)
		_ = r.Close()
		copied <- err
	}()
	return w, func(bool) error {
		_ = w.Close()
		if err := <-copied; err != nil && !strings.Contains(err.Error(), "closed") {
			return err
		}
		return nil
	}, nil
}
