package cni_test

// DEL and a failed ADD through the real plugin binary, run as a runtime
// runs it (CNI_* environment, the network config on stdin), so that each
// test controls what cnitool would choose: the container ID, CNI_NETNS and
// whether a prevResult comes along.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/nstest"
)

// pluginRun is what one run of a plugin binary gave.
type pluginRun struct {
	stdout, stderr string
	code           int // exit status
}

func (r pluginRun) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// cniError decodes the CNI error JSON of a failed run.
func (r pluginRun) cniError(t *testing.T) (code int, msg, details string) {
	t.Helper()
	var e struct {
		Code    int    `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("stdout is not a CNI error: %v\n%s", err, r)
	}
	return e.Code, e.Msg, e.Details
}

// execPlugin runs the plugin binary bin for command cmd on id in netns
// (CNI_NETNS, may be empty), with conf on stdin and CNI_PATH path; env adds
// to the environment.
func execPlugin(t *testing.T, bin, path, cmd string, id api.AttachmentID, netns string, conf []byte, env ...string) pluginRun {
	t.Helper()
	c := exec.Command(bin)
	c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID="+id.ContainerID, "CNI_NETNS="+netns,
		"CNI_IFNAME="+id.IfName, "CNI_PATH="+path)
	c.Env = append(c.Env, env...)
	c.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %s: %v", bin, err)
	}
	return pluginRun{stdout: stdout.String(), stderr: stderr.String(), code: c.ProcessState.ExitCode()}
}

// plugin runs podrouter-cni against n's daemon; prev, when not nil, is
// the prevResult the runtime passes.
func (n *node) plugin(cmd string, id api.AttachmentID, netns string, prev []byte) pluginRun {
	n.t.Helper()
	return execPlugin(n.t, filepath.Join(n.bin, "podrouter-cni"), n.cniPath, cmd, id, netns, n.pluginConf(prev))
}

// pluginConf is the network config a runtime hands the plugin: the
// conflist's plugin entry with the list's name and version, and prev as
// prevResult when not nil.
func (n *node) pluginConf(prev []byte) []byte {
	n.t.Helper()
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(n.confList, &list); err != nil || len(list.Plugins) != 1 {
		n.t.Fatalf("conflist: %v", err)
	}
	conf := list.Plugins[0]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	if prev != nil {
		conf["prevResult"] = json.RawMessage(prev)
	}
	b, err := json.Marshal(conf)
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

func netnsPath(ns *nstest.NS) string { return "/run/netns/" + ns.Name }

// randomID returns a container ID unique to this run.
func randomID(prefix string) string {
	return fmt.Sprintf("%s-%d-%08x", prefix, os.Getpid(), rand.Uint32())
}

// attachmentOf returns the daemon's attachment id, if it lists one.
func (n *node) attachmentOf(t *testing.T, id api.AttachmentID) (api.Attachment, bool) {
	t.Helper()
	as, err := n.client().Attachments(context.Background())
	if err != nil {
		t.Fatalf("attachments: %v", err)
	}
	i := slices.IndexFunc(as, func(a api.Attachment) bool { return a.AttachmentID == id })
	if i < 0 {
		return api.Attachment{}, false
	}
	return as[i], true
}

// TestDelMatrix runs DEL through the real plugin binary in every
// combination of what a runtime may hand it and what may be gone: the
// daemon up or down, a prevResult or none, the pod's netns present, gone
// or not named (CNI_NETNS empty), and a first or a repeated DEL. A
// repeated DEL follows a first one made as a runtime with its result
// cache makes it (with the prevResult), so "prevResult-none,repeated" is
// the DEL after the runtime dropped its cache. Every DEL must exit 0 and
// leave nothing behind that it could know of: no IPAM reservation, no TAP
// in the pod's netns, no attachment in the daemon (which a stopped daemon
// drops at its restart when the TAP is gone).
//
// One cell cannot name the netns: a first DEL with the daemon down, no
// prevResult and CNI_NETNS empty. There the TAP stays (a runtime passes no
// netns when it is gone, and the TAP with it), and the restarted daemon
// re-attaches it.
func TestDelMatrix(t *testing.T) {
	n := newNode(t)
	n.startDaemon()

	type cell struct {
		name     string
		daemonUp bool
		prev     bool
		netns    string // present, gone, empty
		repeated bool

		pod *pod
		id  api.AttachmentID
		res []byte // the ADD result
	}
	var cells []*cell
	for _, up := range []bool{true, false} {
		for _, prev := range []bool{true, false} {
			for _, netns := range []string{"present", "gone", "empty"} {
				for _, repeated := range []bool{false, true} {
					c := &cell{daemonUp: up, prev: prev, netns: netns, repeated: repeated}
					c.name = fmt.Sprintf("daemon-%s,prevResult-%s,netns-%s,%s",
						map[bool]string{true: "up", false: "down"}[up], map[bool]string{true: "yes", false: "none"}[prev],
						netns, map[bool]string{false: "first", true: "repeated"}[repeated])
					cells = append(cells, c)
				}
			}
		}
	}
	// tapStays: the one cell where nothing names the netns.
	tapStays := func(c *cell) bool { return !c.daemonUp && !c.prev && c.netns == "empty" && !c.repeated }

	// Every pod is added with the daemon up; the daemon-down cells run
	// after it is stopped.
	for _, c := range cells {
		c.pod = &pod{ns: nstest.New(t)}
		c.id = api.AttachmentID{ContainerID: randomID("del"), IfName: "eth0"}
		r := n.plugin("ADD", c.id, netnsPath(c.pod.ns), nil)
		if r.code != 0 {
			t.Fatalf("%s: ADD: %s\ndaemon:\n%s", c.name, r, n.logText())
		}
		c.res = []byte(r.stdout)
		var res struct{ IPs []struct{ Address string } }
		if err := json.Unmarshal(c.res, &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("%s: ADD result: %v\n%s", c.name, err, r.stdout)
		}
		ip, _, _ := strings.Cut(res.IPs[0].Address, "/")
		c.pod.ip = netip.MustParseAddr(ip)
		id := c.id
		t.Cleanup(func() { n.plugin("DEL", id, "", nil) })
	}

	run := func(t *testing.T, c *cell) {
		if c.netns == "gone" {
			c.pod.ns.Delete()
		}
		netns := netnsPath(c.pod.ns)
		if c.netns == "empty" {
			netns = ""
		}
		runs := 1
		if c.repeated {
			runs = 2
		}
		for i := range runs {
			var prev []byte
			if c.prev || i < runs-1 {
				prev = c.res
			}
			r := n.plugin("DEL", c.id, netns, prev)
			if r.code != 0 || r.stdout != "" || strings.Contains(r.stderr, "panic") {
				t.Fatalf("DEL #%d: %s", i+1, r)
			}
		}
		if slices.Contains(ipamFiles(t, n), c.pod.ip.String()) {
			t.Errorf("IPAM reservation of %s left", c.pod.ip)
		}
		if c.netns != "gone" {
			if got := tapExists(t, c.pod); got != tapStays(c) {
				t.Errorf("eth0 in the pod netns after DEL: %v, want %v", got, tapStays(c))
			}
		}
		if c.daemonUp {
			if a, ok := n.attachmentOf(t, c.id); ok {
				t.Errorf("attachment left after DEL: %+v", a)
			}
		}
	}
	for _, up := range []bool{true, false} {
		if !up {
			n.stopDaemon(syscall.SIGTERM)
		}
		for _, c := range cells {
			if c.daemonUp == up {
				t.Run(c.name, func(t *testing.T) { run(t, c) })
			}
		}
	}

	// The restarted daemon drops the records of the pods whose TAP DEL
	// removed, and re-attaches the one it could not.
	n.startDaemon()
	as, err := n.client().Attachments(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, a := range as {
		got = append(got, a.AttachmentID.String())
	}
	for _, c := range cells {
		if tapStays(c) {
			want = append(want, c.id.String())
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("attachments after the daemon's restart: %v, want %v", got, want)
	}
}

// TestAddExistingInterface: an ADD whose interface name already exists in
// the pod's netns fails with a clear error and destroys nothing it did not
// create: the pod that owns the interface keeps it, its attachment and its
// address, and still forwards.
func TestAddExistingInterface(t *testing.T) {
	n := newNode(t)
	n.startDaemon()
	first := n.addPod()
	as, err := n.client().Attachments(context.Background())
	if err != nil || len(as) != 1 {
		t.Fatalf("attachments: %+v, %v", as, err)
	}
	firstID := as[0].AttachmentID

	for _, c := range []struct {
		name string
		add  func() pluginRun
		want string // in the error's message or details
	}{
		{
			// Another container's ADD into the same netns (the bug:
			// its rollback deleted the first pod's TAP).
			name: "other-container",
			add: func() pluginRun {
				id := api.AttachmentID{ContainerID: randomID("other"), IfName: "eth0"}
				t.Cleanup(func() { n.plugin("DEL", id, "", nil) })
				return n.plugin("ADD", id, netnsPath(first.ns), nil)
			},
			want: "eth0 (a tuntap",
		},
		{
			// The same container's ADD again: host-local refuses the
			// second address before anything is made.
			name: "same-container",
			add:  func() pluginRun { return n.plugin("ADD", firstID, netnsPath(first.ns), nil) },
			want: "duplicate allocation is not allowed",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := c.add()
			if r.code != 1 {
				t.Fatalf("ADD over an existing eth0 succeeded or crashed: %s", r)
			}
			_, msg, details := r.cniError(t)
			if !strings.Contains(msg+" "+details, c.want) {
				t.Errorf("ADD error %q (%s), want it to say %q", msg, details, c.want)
			}
			if !tapExists(t, first) {
				t.Fatal("the first pod's eth0 was deleted")
			}
			if a, ok := n.attachmentOf(t, firstID); !ok || a.PortIndex < 0 {
				t.Errorf("the first pod's attachment: %+v, listed %v", a, ok)
			}
			if files := ipamFiles(t, n); !slices.Equal(files, []string{first.ip.String()}) {
				t.Errorf("IPAM reservations %v, want only the first pod's %s", files, first.ip)
			}
			ping(t, first.ns, n.podCIDR.Addr().Next())
		})
	}
}

// panicHelper is the helperEnv value that makes the test binary a CNI
// plugin whose every command panics, through cni.Main as podrouter-cni.
const panicHelper = "panic-plugin"

// TestPanicIsCNIError runs a plugin that panics (a nil map write in DEL, a
// panic with an error value in ADD) and checks what the runtime sees:
// exit 1, a CNI error JSON with code 999 that names the panic and where it
// happened, no stack on stdout, and the stack on stderr.
func TestPanicIsCNIError(t *testing.T) {
	conf := []byte(`{"cniVersion":"1.1.0","name":"podr-panic","type":"podrouter-cni","ipam":{"type":"host-local"}}`)
	for _, c := range []struct {
		cmd, msg, site string
	}{
		{"DEL", "podrouter-cni: panic: assignment to entry in nil map", "cni_test.panicDel"},
		{"ADD", "podrouter-cni: panic: boom", "cni_test.panicAdd"},
	} {
		t.Run(c.cmd, func(t *testing.T) {
			netns := ""
			if c.cmd == "ADD" {
				netns = "/proc/self/ns/net" // skel wants one; the command never looks
			}
			r := execPlugin(t, os.Args[0], "/nonexistent", c.cmd, api.AttachmentID{ContainerID: "panic", IfName: "eth0"},
				netns, conf, helperEnv+"="+panicHelper)
			if r.code != 1 {
				t.Fatalf("exit status %d, want 1: %s", r.code, r)
			}
			code, msg, details := r.cniError(t)
			if code != 999 || msg != c.msg || !strings.Contains(details, c.site) || !strings.Contains(details, "del_e2e_test.go:") {
				t.Errorf("CNI error code %d msg %q details %q, want 999 %q at %s", code, msg, details, c.msg, c.site)
			}
			if strings.Contains(r.stdout, "goroutine") || strings.Count(r.stdout, ".go:") != 1 {
				t.Errorf("stdout carries more than the error JSON:\n%s", r.stdout)
			}
			if !strings.Contains(r.stderr, "goroutine ") || !strings.Contains(r.stderr, c.site) {
				t.Errorf("stderr lacks the stack:\n%s", r.stderr)
			}
		})
	}
}

func panicDel() error {
	var m map[string]int
	m["x"]++
	return nil
}

func panicAdd() error { panic(errors.New("boom")) }

// refusingDaemon is a daemon that is ready but refuses every attach with
// err, and records the detaches it is asked for.
type refusingDaemon struct {
	err      error
	podCIDR  netip.Prefix
	mu       sync.Mutex
	detached []api.AttachmentID
}

func (d *refusingDaemon) Attach(_ context.Context, _ api.AttachRequest, tap *os.File) (api.Attachment, error) {
	_ = tap.Close()
	return api.Attachment{}, d.err
}

func (d *refusingDaemon) Detach(_ context.Context, id api.AttachmentID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.detached = append(d.detached, id)
	return nil
}

func (d *refusingDaemon) Status(context.Context) (api.Status, error) {
	return api.Status{Ready: true, PodCIDRs: []netip.Prefix{d.podCIDR}, Gateway: d.podCIDR.Addr().Next(), MTU: 1500}, nil
}

func (d *refusingDaemon) Routes(context.Context) ([]api.Route, error)           { return nil, nil }
func (d *refusingDaemon) Ports(context.Context) ([]api.Port, error)             { return nil, nil }
func (d *refusingDaemon) Attachments(context.Context) ([]api.Attachment, error) { return nil, nil }

// TestAddAttachRefused: a daemon that answers an attach with an error
// attached nothing, so the failed ADD must not ask it to detach that ID
// (it may be another attachment's, kept while the daemon is not ready);
// the ADD still removes its own TAP and reservation.
func TestAddAttachRefused(t *testing.T) {
	nstest.RequireRoot(t)
	bin, tools := buildBinaries(t)
	for _, c := range []struct {
		name string
		err  error
		code int
	}{
		{"not-ready", fmt.Errorf("%w: re-attaching recorded pods", api.ErrNotReady), 11},
		{"conflict", fmt.Errorf("%w: address in use", api.ErrConflict), 999},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			d := &refusingDaemon{err: c.err, podCIDR: netip.MustParsePrefix("10.248.0.0/24")}
			s, err := api.Listen(api.ServerConfig{Path: filepath.Join(dir, "run", "api.sock")}, d)
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = s.Serve() }()
			t.Cleanup(func() { _ = s.Close() })
			conf := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podr-refused","type":"podrouter-cni","socket":%q,"ipam":{"type":"host-local","dataDir":%q}}`,
				s.Path(), filepath.Join(dir, "ipam")))
			p := &pod{ns: nstest.New(t)}
			id := api.AttachmentID{ContainerID: randomID("refused"), IfName: "eth0"}
			r := execPlugin(t, filepath.Join(bin, "podrouter-cni"), bin+string(os.PathListSeparator)+tools, "ADD", id, netnsPath(p.ns), conf)
			if r.code != 1 {
				t.Fatalf("ADD with the attach refused: %s", r)
			}
			if code, msg, _ := r.cniError(t); code != c.code {
				t.Errorf("CNI error %d %q, want code %d", code, msg, c.code)
			}
			d.mu.Lock()
			detached := d.detached
			d.mu.Unlock()
			if len(detached) != 0 {
				t.Errorf("the failed ADD asked the daemon to detach %v, which it never attached", detached)
			}
			if tapExists(t, p) {
				t.Error("eth0 left after the refused attach")
			}
			if files := ipamFilesIn(t, filepath.Join(dir, "ipam", "podr-refused")); len(files) != 0 {
				t.Errorf("IPAM reservations left: %v", files)
			}
		})
	}
}
