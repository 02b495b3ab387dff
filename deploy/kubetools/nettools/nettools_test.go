package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCurl runs the curl commands of the e2e networking specs against a
// local server and checks the output and exit code each one relies on.
func TestCurl(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hostName":
			w.Write([]byte("netserver-0"))
		case "/slow":
			time.Sleep(2 * time.Second)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	// A port with nothing listening: bind one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	tests := []struct {
		name     string
		args     []string
		wantOut  string
		wantCode int
	}{
		{"body", []string{"-g", "-q", "-s", "--max-time", "15", "--connect-timeout", "1", "http://" + addr + "/hostName"}, "netserver-0", curlOK},
		{"no scheme", []string{"-s", addr + "/hostName"}, "netserver-0", curlOK},
		{"status code only", []string{"-g", "-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://" + addr + "/missing"}, "404", curlOK},
		{"include headers", []string{"-i", "-q", "-s", "--connect-timeout", "1", "http://" + addr + "/hostName"}, "HTTP/1.1 200 OK\r\n", curlOK},
		// As the HostPort conformance spec runs it: from a given local address.
		{"interface address", []string{"-g", "--connect-timeout", "5", "--interface", "127.0.0.1", "http://" + addr + "/hostName"}, "netserver-0", curlOK},
		{"interface name", []string{"-s", "--interface", "lo", "http://" + addr + "/hostName"}, "netserver-0", curlOK},
		{"refused", []string{"-g", "-q", "-s", "-w", "%{http_code}", "http://" + closed + "/"}, "000", curlConnect},
		{"max time", []string{"-s", "--max-time", "0.2", "http://" + addr + "/slow"}, "", curlTimeout},
		{"unknown option", []string{"--proxy", "x", "http://" + addr}, "", curlUsage},
		{"no url", []string{"-s"}, "", curlUsage},
		{"https", []string{"-s", "https://" + addr}, "", curlBadURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := curl(tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.wantCode, stderr.String())
			}
			if !strings.HasPrefix(stdout.String(), tt.wantOut) {
				t.Errorf("stdout %q, want it to start with %q", stdout.String(), tt.wantOut)
			}
			if code != curlUsage && hasArg(tt.args, "-s") && stderr.Len() > 0 {
				t.Errorf("-s but stderr %q: the e2e framework counts any stderr as a failure", stderr.String())
			}
		})
	}
}

func hasArg(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

func TestCurlOutputFile(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("body")) }))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "out")
	var stdout, stderr bytes.Buffer
	if code := curl([]string{"-s", "-o", out, "-w", `%{http_code}\n`, srv.URL}, &stdout, &stderr); code != curlOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stdout.String() != "200\n" {
		t.Errorf("stdout %q, want the -w line only", stdout.String())
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "body" {
		t.Errorf("-o file %q, %v; want body", b, err)
	}
}

// TestNCUDP is `echo hostName | nc -w 1 -u IP PORT` against a UDP server
// that answers each datagram, as agnhost netexec does.
func TestNCUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if strings.TrimSpace(string(buf[:n])) == "hostName" {
				pc.WriteTo([]byte("netserver-1"), from)
			}
		}
	}()
	host, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := nc([]string{"-w", "1", "-u", host, port}, strings.NewReader("hostName\n"), &stdout, &stderr)
	if code != 0 || stdout.String() != "netserver-1" || stderr.Len() != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0, netserver-1, nothing", code, stdout.String(), stderr.String())
	}
	if d := time.Since(start); d < time.Second || d > 3*time.Second {
		t.Errorf("took %v; want about -w 1 after the last reply", d)
	}
}

func TestNCTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Write(bytes.ToUpper(buf[:n]))
	}()
	host, port, _ := net.SplitHostPort(l.Addr().String())
	var stdout, stderr bytes.Buffer
	// As the e2e suite's reachability check runs it (jig.go).
	if code := nc([]string{"-v", "-t", "-w", "1", host, port}, strings.NewReader("ping"), &stdout, &stderr); code != 0 || stdout.String() != "PING" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and PING", code, stdout.String(), stderr.String())
	}
	if want := "Connection to " + host + " " + port + " port [tcp/*] succeeded!\n"; stderr.String() != want {
		t.Fatalf("-v: stderr %q, want %q", stderr.String(), want)
	}
}

func TestNCBadArgs(t *testing.T) {
	for _, args := range [][]string{{}, {"-w"}, {"-w", "x", "h", "1"}, {"-z", "h", "1"}, {"h"}} {
		var stdout, stderr bytes.Buffer
		if code := nc(args, strings.NewReader(""), &stdout, &stderr); code != 2 || stderr.Len() == 0 {
			t.Errorf("nc %q: exit %d, stderr %q; want 2 and a usage message", args, code, stderr.String())
		}
	}
}
