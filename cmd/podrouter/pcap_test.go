package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podrouter/podrouter/router/api"
)

// pcapHandler is cliHandler with a capture that writes a fixed body.
type pcapHandler struct {
	cliHandler
	got chan api.CaptureRequest
}

func (h pcapHandler) Capture(_ context.Context, req api.CaptureRequest, out *os.File) (api.CaptureStats, error) {
	defer out.Close()
	h.got <- req
	if req.Pod != "c1" && req.Pod != "10.244.1.5" {
		return api.CaptureStats{}, fmt.Errorf("%w: no pod or port %q", api.ErrNotFound, req.Pod)
	}
	if _, err := fmt.Fprintf(out, "PCAP(%s,%d)", req.Pod, req.Count); err != nil {
		return api.CaptureStats{}, err
	}
	return api.CaptureStats{Port: "c1/eth0", Captured: req.Count, Dropped: 2}, nil
}

func TestPcapCLI(t *testing.T) {
	h := pcapHandler{got: make(chan api.CaptureRequest, 8)}
	sock := serveCLI(t, h)
	dir := t.TempDir()

	file := filepath.Join(dir, "c1.pcap")
	var out, errb bytes.Buffer
	if rc := run([]string{"pcap", "c1", "-c", "5", "-w", file, "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "PCAP(c1,5)" {
		t.Fatalf("-w file: %q, %v", b, err)
	}
	if errb.String() != "captured 5 packets (2 dropped) on c1/eth0\n" || out.Len() != 0 {
		t.Errorf("stderr %q, stdout %q", errb.String(), out.String())
	}
	if req := <-h.got; req.Duration != api.MaxCaptureDuration {
		t.Errorf("count-only capture sent as %+v", req)
	}

	// Flags before POD, stdout as the output.
	out.Reset()
	errb.Reset()
	if rc := run([]string{"pcap", "--socket", sock, "--duration", "2s", "10.244.1.5", "-c", "3"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	if out.String() != "PCAP(10.244.1.5,3)" {
		t.Errorf("stdout %q", out.String())
	}
	if req := <-h.got; req.Duration != 2e9 || req.Count != 3 || req.Pod != "10.244.1.5" {
		t.Errorf("sent %+v", req)
	}

	// An unknown pod: exit 1, and the empty file this run created is gone.
	errb.Reset()
	missing := filepath.Join(dir, "none.pcap")
	if rc := run([]string{"pcap", "nope", "-w", missing, "--socket", sock}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "not found") {
		t.Fatalf("unknown pod: exit %d, stderr %q", rc, errb.String())
	}
	<-h.got
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("empty output left after a failed capture: %v", err)
	}
	// No daemon: exit 1.
	errb.Reset()
	if rc := run([]string{"pcap", "c1", "-w", filepath.Join(dir, "x.pcap"), "--socket", filepath.Join(dir, "absent.sock")}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "unavailable") {
		t.Errorf("no daemon: exit %d, stderr %q", rc, errb.String())
	}
}

func TestPcapBadFlags(t *testing.T) {
	checkUsageErrors(t, nil, []usageCase{
		{"no pod", []string{"pcap"}, "POD"},
		{"two pods", []string{"pcap", "a", "b"}, `"b"`},
		{"negative count", []string{"pcap", "a", "-c", "-1"}, "-c"},
		{"long duration", []string{"pcap", "a", "--duration", "11m"}, "--duration"},
		{"snaplen", []string{"pcap", "a", "-s", "999999"}, "-s"},
		{"unknown flag", []string{"pcap", "a", "--bogus"}, "-bogus"},
		{"bad pod", []string{"pcap", "a\tb"}, "pod"},
	})
}

// peersHandler is cliHandler on a node with one peer.
type peersHandler struct{ cliHandler }

func (peersHandler) Ports(context.Context) ([]api.Port, error) {
	return []api.Port{
		{Index: 0, Name: "podr0", Kind: "uplink", MTU: 1500},
		{Index: 1, Name: "node-b", Kind: "peer", MTU: 1450, RxPackets: 4, TxPackets: 5, Drops: map[string]uint64{"not-local": 1}},
	}, nil
}

func (peersHandler) Routes(context.Context) ([]api.Route, error) {
	return []api.Route{
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Kind: "peer", Port: 1, PortName: "node-b"},
		{Prefix: netip.MustParsePrefix("fd00:10:244:2::/64"), Kind: "peer", Port: 1, PortName: "node-b"},
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Kind: "egress", Port: 0, PortName: "podr0"},
	}, nil
}

func TestPeersCLI(t *testing.T) {
	var out, errb bytes.Buffer
	sock := serveCLI(t, peersHandler{})
	if rc := run([]string{"peers", "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "node-b") || !strings.Contains(lines[1], "10.244.2.0/24,fd00:10:244:2::/64") ||
		!strings.Contains(lines[1], "not-local=1") || strings.Contains(out.String(), "podr0") {
		t.Errorf("peers table:\n%s", out.String())
	}
	out.Reset()
	if rc := run([]string{"peers", "--socket", sock, "--json"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	var ps []peer
	if err := json.Unmarshal(out.Bytes(), &ps); err != nil || len(ps) != 1 || len(ps[0].Prefixes) != 2 || ps[0].TxPackets != 5 {
		t.Errorf("peers --json: %+v, %v\n%s", ps, err, out.String())
	}

	// A node without peers: a header and no rows, JSON [].
	sock = serveCLI(t, cliHandler{ready: true})
	out.Reset()
	if rc := run([]string{"peers", "--socket", sock}, &out, &errb); rc != 0 || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("no peers: exit %d, output %q", rc, out.String())
	}
	out.Reset()
	if rc := run([]string{"peers", "--socket", sock, "--json"}, &out, &errb); rc != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("no peers --json: exit %d, output %q", rc, out.String())
	}
}

func TestDaemonFlagErrors(t *testing.T) {
	checkUsageErrors(t, nil, []usageCase{
		{"metrics addr", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--metrics-addr", "localhost:x"}, "-metrics-addr"},
		{"metrics addr no port", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--metrics-addr", "127.0.0.1"}, "-metrics-addr"},
		{"log format", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--log-format", "xml"}, "--log-format"},
		{"log level", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--log-level", "loud"}, "--log-level"},
	})
	for in, want := range map[string]string{"off": "off", "": "off", ":9602": "[::]:9602", "[::1]:1": "[::1]:1", "10.0.0.1:9602": "10.0.0.1:9602"} {
		var ap netip.AddrPort
		if err := (listenAddrFlag{&ap}).Set(in); err != nil || (listenAddrFlag{&ap}).String() != want {
			t.Errorf("--metrics-addr %q = %v, %v; want %s", in, ap, err, want)
		}
	}
}
