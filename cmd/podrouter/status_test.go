package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podrouter/podrouter/router/api"
)

func TestDaemonBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no pod cidr", []string{"daemon"}, "pod-cidr"},
		{"bad pod cidr", []string{"daemon", "--pod-cidr", "10.0.0.0/33"}, "-pod-cidr"},
		{"bad node ip", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--node-ip", "nope"}, "-node-ip"},
		{"node ip in cluster", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--node-ip", "10.244.1.9"}, "node-ip"},
		{"bad mtu", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--mtu", "70000"}, "mtu"},
		{"relative socket", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--socket", "x.sock"}, "socket"},
		{"stray", []string{"daemon", "--pod-cidr", "10.244.1.0/24", "extra"}, "extra"},
		{"status stray", []string{"status", "extra"}, "extra"},
		{"routes bad timeout", []string{"routes", "--timeout", "0s"}, "--timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run(tc.args, &out, &errb); rc != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", rc, errb.String())
			}
			if msg := errb.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q: want one line naming %q", msg, tc.want)
			}
		})
	}
}

// cliHandler serves fixed answers for the CLI tests.
type cliHandler struct{ ready bool }

func (h cliHandler) Attach(context.Context, api.AttachRequest, *os.File) (api.Attachment, error) {
	return api.Attachment{}, api.ErrBadRequest
}
func (h cliHandler) Detach(context.Context, api.AttachmentID) error { return api.ErrNotFound }
func (h cliHandler) Status(context.Context) (api.Status, error) {
	return api.Status{Ready: h.ready, PID: 7, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Gateway: netip.MustParseAddr("10.244.1.1"), Uplink: "podr0", MTU: 1500, Attachments: 1}, nil
}
func (h cliHandler) Routes(context.Context) ([]api.Route, error) {
	return []api.Route{
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Kind: "unreachable", Port: -1},
		{Prefix: netip.MustParsePrefix("10.244.1.5/32"), Kind: "local", Port: 1, PortName: "c1/eth0"},
	}, nil
}
func (h cliHandler) Ports(context.Context) ([]api.Port, error) {
	return []api.Port{{Index: 1, Name: "c1/eth0", Kind: "pod", L2: true, MTU: 1500, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")},
		RxPackets: 10, TxPackets: 9, Drops: map[string]uint64{"spoofed-source": 2, "no-route": 1}}}, nil
}
func (h cliHandler) Attachments(context.Context) ([]api.Attachment, error) {
	return []api.Attachment{{AttachRequest: api.AttachRequest{AttachmentID: api.AttachmentID{ContainerID: "c1", IfName: "eth0"},
		Netns: "/run/netns/p1", MAC: api.MAC{0x0a, 0x58, 10, 244, 1, 5}, MTU: 1500, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}, PortIndex: 1}}, nil
}

func serveCLI(t *testing.T, h api.Handler) string {
	t.Helper()
	uid := uint32(os.Getuid())
	s, err := api.Listen(api.ServerConfig{Path: filepath.Join(t.TempDir(), "run", "s.sock"), AllowUID: &uid}, h)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = s.Serve(); close(done) }()
	t.Cleanup(func() { _ = s.Close(); <-done })
	return s.Path()
}

func TestOperatorCLI(t *testing.T) {
	sock := serveCLI(t, cliHandler{ready: true})
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"status", []string{"ready:", "true", "10.244.1.0/24", "podr0"}},
		{"routes", []string{"PREFIX", "10.244.1.5/32", "local", "1 c1/eth0", "unreachable"}},
		{"ports", []string{"DROPS", "c1/eth0", "no-route=1,spoofed-source=2"}},
		{"pods", []string{"CONTAINER", "c1", "/run/netns/p1", "0a:58:0a:f4:01:05"}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run([]string{tc.cmd, "--socket", sock}, &out, &errb); rc != 0 {
				t.Fatalf("exit %d: %s", rc, errb.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			out.Reset()
			if rc := run([]string{tc.cmd, "--socket", sock, "--json"}, &out, &errb); rc != 0 || !json.Valid(out.Bytes()) {
				t.Fatalf("--json: exit %d, output %q", rc, out.String())
			}
		})
	}
}

func TestStatusExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := run([]string{"status", "--socket", serveCLI(t, cliHandler{ready: false})}, &out, &errb); rc != 1 || !strings.Contains(out.String(), "false") {
		t.Errorf("not ready: exit %d, output %q", rc, out.String())
	}
	errb.Reset()
	if rc := run([]string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "unavailable") {
		t.Errorf("no daemon: exit %d, stderr %q", rc, errb.String())
	}
}

// underlayPeersHandler is a node with an underlay: its receive port and a
// peer's port, both with the underlay's counters.
type underlayPeersHandler struct{ peersHandler }

func (underlayPeersHandler) Ports(context.Context) ([]api.Port, error) {
	return []api.Port{
		{Index: 0, Name: "podr0", Kind: "uplink", MTU: 1500},
		{Index: 1, Name: "underlay", Kind: "peer", MTU: 1450, RxPackets: 7,
			Underlay: &api.UnderlayCounters{Addr: netip.MustParseAddrPort("192.0.2.1:8472"), RxPackets: 7,
				Drops: map[string]uint64{"unknown-sender": 3, "foreign-source": 2}}},
		{Index: 2, Name: "node-b", Kind: "peer", MTU: 1450, TxPackets: 5,
			Underlay: &api.UnderlayCounters{Peer: "node-b", Addr: netip.MustParseAddrPort("192.0.2.2:8472"), RxPackets: 6, RxBytes: 600, TxPackets: 5,
				Drops: map[string]uint64{"foreign-source": 2, "wrong-vni": 1}}},
	}, nil
}

func (underlayPeersHandler) Routes(context.Context) ([]api.Route, error) {
	return []api.Route{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Kind: "peer", Port: 2, PortName: "node-b"}}, nil
}

// TestPeersUnderlayCLI: podrouter peers shows each peer's endpoint, what
// the underlay received from it and dropped of it by reason, and on the
// underlay row every underlay drop, unknown senders' included.
func TestPeersUnderlayCLI(t *testing.T) {
	var out, errb bytes.Buffer
	sock := serveCLI(t, underlayPeersHandler{})
	if rc := run([]string{"peers", "--socket", sock}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "ADDR") || !strings.Contains(lines[0], "UNDERLAY DROPS") {
		t.Fatalf("peers table:\n%s", out.String())
	}
	row := func(name string) []string {
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 1 && f[1] == name {
				return f
			}
		}
		t.Fatalf("no row %s:\n%s", name, out.String())
		return nil
	}
	// INDEX NAME ADDR MTU PREFIXES RX-PKTS RX-BYTES TX-PKTS TX-BYTES DROPS UNDERLAY-DROPS
	if got, want := row("underlay"), []string{"1", "underlay", "192.0.2.1:8472", "1450", "-", "7", "0", "0", "0", "-", "foreign-source=2,unknown-sender=3"}; !slices.Equal(got, want) {
		t.Errorf("underlay row %q, want %q", got, want)
	}
	if got, want := row("node-b"), []string{"2", "node-b", "192.0.2.2:8472", "1450", "10.244.2.0/24", "6", "600", "5", "0", "-", "foreign-source=2,wrong-vni=1"}; !slices.Equal(got, want) {
		t.Errorf("node-b row %q, want %q", got, want)
	}
	out.Reset()
	if rc := run([]string{"peers", "--socket", sock, "--json"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	var ps []peer
	if err := json.Unmarshal(out.Bytes(), &ps); err != nil || len(ps) != 2 || ps[1].Underlay == nil ||
		ps[1].Underlay.Peer != "node-b" || ps[1].Underlay.Drops["foreign-source"] != 2 || ps[0].Underlay.Drops["unknown-sender"] != 3 {
		t.Errorf("peers --json: %+v, %v\n%s", ps, err, out.String())
	}
}

// TestReadinessLine: podrouter status's readiness line says what /readyz
// says, a stale cluster state included.
func TestReadinessLine(t *testing.T) {
	for _, tc := range []struct {
		st   api.Status
		want string
	}{
		{api.Status{Ready: true}, "ok"},
		{api.Status{Ready: true, Stale: "API server unreachable at start"}, "ok: stale: API server unreachable at start"},
		{api.Status{NotReady: "routes not synced", Stale: "x"}, "not ready: routes not synced"},
	} {
		if got := readiness(tc.st); got != tc.want {
			t.Errorf("readiness(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}
