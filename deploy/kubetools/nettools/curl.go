package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// curl exit codes (curl(1) EXIT CODES) for the failures we tell apart.
const (
	curlOK         = 0
	curlUsage      = 2 // failed to initialize: bad options
	curlBadURL     = 3
	curlResolve    = 6
	curlConnect    = 7
	curlWrite      = 23
	curlTimeout    = 28
	curlRecvFailed = 56
)

type curlOpts struct {
	url            string
	method         string
	include        bool // -i: the status line and headers before the body
	silent         bool
	showError      bool
	output         string // -o FILE; "" is stdout
	writeOut       string // -w FORMAT
	maxTime        time.Duration
	connectTimeout time.Duration
	iface          string // --interface: an address, or an interface whose address to connect from
}

func parseCurl(args []string) (curlOpts, error) {
	o := curlOpts{method: http.MethodGet}
	seconds := func(i int) (time.Duration, error) {
		if i+1 >= len(args) {
			return 0, fmt.Errorf("option %s: needs a number of seconds", args[i])
		}
		f, err := strconv.ParseFloat(args[i+1], 64)
		if err != nil || f < 0 {
			return 0, fmt.Errorf("option %s: %q is not a number of seconds", args[i], args[i+1])
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	value := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("option %s: needs a value", args[i])
		}
		return args[i+1], nil
	}
	for i := 0; i < len(args); i++ {
		var err error
		switch a := args[i]; a {
		case "-g", "--globoff", "-q", "--disable":
			// No URL globbing and no .curlrc: both are what we do anyway.
		case "-s", "--silent":
			o.silent = true
		case "-S", "--show-error":
			o.showError = true
		case "-i", "--include":
			o.include = true
		case "-o", "--output":
			o.output, err = value(i)
			i++
		case "-w", "--write-out":
			o.writeOut, err = value(i)
			i++
		case "-X", "--request":
			o.method, err = value(i)
			i++
		case "-m", "--max-time":
			o.maxTime, err = seconds(i)
			i++
		case "--connect-timeout":
			o.connectTimeout, err = seconds(i)
			i++
		case "--interface":
			o.iface, err = value(i)
			i++
		default:
			if strings.HasPrefix(a, "-") {
				return o, fmt.Errorf("option %s: not supported by this curl", a)
			}
			if o.url != "" {
				return o, fmt.Errorf("one URL only, got %q and %q", o.url, a)
			}
			o.url = a
		}
		if err != nil {
			return o, err
		}
	}
	if o.url == "" {
		return o, errors.New("no URL specified")
	}
	return o, nil
}

func curl(args []string, stdout, stderr io.Writer) int {
	o, err := parseCurl(args)
	if err != nil {
		fmt.Fprintf(stderr, "curl: %v\n", err)
		return curlUsage
	}
	fail := func(code int, err error) int {
		if !o.silent || o.showError {
			fmt.Fprintf(stderr, "curl: (%d) %v\n", code, err)
		}
		if o.writeOut != "" {
			io.WriteString(stdout, expandWriteOut(o.writeOut, 0))
		}
		return code
	}
	if !strings.Contains(o.url, "://") {
		o.url = "http://" + o.url
	}
	ctx := context.Background()
	if o.maxTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.maxTime)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, o.method, o.url, nil)
	if err != nil || req.URL.Scheme != "http" {
		return fail(curlBadURL, fmt.Errorf("URL %q: only http:// is supported (%v)", o.url, err))
	}
	req.Header.Set("User-Agent", "curl/podrouter-nettools")
	dialer := &net.Dialer{Timeout: o.connectTimeout}
	if o.iface != "" {
		ip, err := localAddr(o.iface)
		if err != nil {
			return fail(45, err) // CURLE_INTERFACE_FAILED
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	client := &http.Client{
		Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // curl follows no redirect without -L
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return fail(curlErrCode(err), err)
	}
	defer resp.Body.Close()

	out := stdout
	if o.output != "" && o.output != "-" {
		f, err := os.Create(o.output)
		if err != nil {
			return fail(curlWrite, err)
		}
		defer f.Close()
		out = f
	}
	if o.include {
		fmt.Fprintf(out, "%s %s\r\n", resp.Proto, resp.Status)
		resp.Header.Write(out)
		io.WriteString(out, "\r\n")
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		code := curlRecvFailed
		if errors.Is(err, context.DeadlineExceeded) {
			code = curlTimeout
		}
		return fail(code, err)
	}
	if o.writeOut != "" {
		io.WriteString(stdout, expandWriteOut(o.writeOut, resp.StatusCode))
	}
	return curlOK
}

// curlErrCode maps a failed request to curl's exit code.
func curlErrCode(err error) int {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return curlTimeout // as curl: --connect-timeout and --max-time both give 28
	case errors.As(err, &dnsErr):
		return curlResolve
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return curlConnect
	}
	return curlRecvFailed
}

// expandWriteOut expands -w's %{http_code} and its \n, \r, \t escapes;
// other %{variables} expand to nothing.
func expandWriteOut(format string, code int) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		switch {
		case c == '%' && strings.HasPrefix(format[i:], "%{"):
			end := strings.IndexByte(format[i:], '}')
			if end < 0 {
				b.WriteString(format[i:])
				return b.String()
			}
			if format[i+2:i+end] == "http_code" || format[i+2:i+end] == "response_code" {
				fmt.Fprintf(&b, "%03d", code)
			}
			i += end
		case c == '\\' && i+1 < len(format):
			switch format[i+1] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(c)
				continue
			}
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// localAddr resolves curl's --interface: an IP address, or the name of an
// interface (its first address).
func localAddr(s string) (net.IP, error) {
	if ip := net.ParseIP(s); ip != nil {
		return ip, nil
	}
	ifi, err := net.InterfaceByName(s)
	if err != nil {
		return nil, fmt.Errorf("--interface %s: %v", s, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil || len(addrs) == 0 {
		return nil, fmt.Errorf("--interface %s: no address", s)
	}
	if n, ok := addrs[0].(*net.IPNet); ok {
		return n.IP, nil
	}
	return nil, fmt.Errorf("--interface %s: no IP address", s)
}
