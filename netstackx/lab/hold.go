package lab

// Holding a lab: after its report the lab keeps running until interrupted,
// and a state file says which pods it has and, for netns pods, which
// namespace each lives in, so that `podrouter lab exec POD -- CMD`, from
// another shell, runs CMD inside a pod. The file is removed when the lab
// stops; a file whose process is gone is stale and replaced.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/podrouter/podrouter/router/atomicfile"
)

// Errors of Hold and exec.
var (
	// ErrHeld means another running lab holds the state file.
	ErrHeld = errors.New("another lab holds the state file")
	// ErrNoLab means no running lab holds the state file.
	ErrNoLab = errors.New("no lab is holding (start one with podrouter lab --hold)")
	// ErrNoPod means the held lab has no such pod.
	ErrNoPod = errors.New("no such pod")
	// ErrVirtualPod means the pod is a gVisor netstack: nothing to exec in.
	ErrVirtualPod = errors.New("a virtual pod (gVisor netstack) runs no commands; hold a lab with --pod-mode netns")
)

// DefaultStateFile is where a held lab describes itself.
func DefaultStateFile() string {
	if os.Geteuid() == 0 {
		return "/run/podrouter/lab.json"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "podrouter-lab.json")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("podrouter-lab-%d.json", os.Getuid()))
}

// State is what a held lab writes to its state file.
type State struct {
	PID  int        `json:"pid"`
	Mode string     `json:"podMode"`
	Pods []StatePod `json:"pods"`
}

// StatePod is one pod of a held lab.
type StatePod struct {
	Name  string `json:"name"`
	Node  string `json:"node"`
	IPv4  string `json:"ipv4"`
	IPv6  string `json:"ipv6,omitempty"`
	NetNS string `json:"netns,omitempty"` // netns pods: the namespace (ip netns)
}

func (l *Lab) state() State {
	s := State{PID: os.Getpid(), Mode: l.cfg.PodMode.String()}
	for _, p := range l.pods {
		sp := StatePod{Name: p.Name(), Node: l.node[p].Name, IPv4: p.Addr().String()}
		if p.Addr6().IsValid() {
			sp.IPv6 = p.Addr6().String()
		}
		if nsp, ok := p.(interface{ NetNS() string }); ok {
			sp.NetNS = nsp.NetNS()
		}
		s.Pods = append(s.Pods, sp)
	}
	return s
}

// Hold writes the state file (Config.StateFile) and waits until ctx ends,
// then removes it. The lab itself is closed by the caller.
func (l *Lab) Hold(ctx context.Context, out io.Writer) error {
	path := l.cfg.StateFile
	if old, err := LoadState(path); err == nil && alive(old.PID) {
		return fmt.Errorf("lab: %s: %w (pid %d)", path, ErrHeld, old.PID)
	}
	b, err := json.MarshalIndent(l.state(), "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("lab: state file: %w", err)
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("lab: state file: %w", err)
	}
	defer os.Remove(path)
	fmt.Fprintf(out, "\nholding the lab until interrupted (state: %s)\n", path)
	if l.cfg.PodMode == Netns {
		fmt.Fprintf(out, "run a command in a pod: podrouter lab exec %s -- ping -c1 %s\n", l.pods[0].Name(), l.pods[len(l.pods)-1].Addr())
	}
	<-ctx.Done()
	return nil
}

// LoadState reads a held lab's state file.
func LoadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH
}

// ExecCommand returns the command that runs argv inside the named pod of
// the lab holding statePath (ip netns exec, which also gives the command
// the namespace's /sys and /etc/netns files).
func ExecCommand(ctx context.Context, statePath, pod string, argv []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command")
	}
	s, err := LoadState(statePath)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !alive(s.PID)) {
		return nil, fmt.Errorf("%s: %w", statePath, ErrNoLab)
	}
	if err != nil {
		return nil, err
	}
	for _, p := range s.Pods {
		if p.Name != pod {
			continue
		}
		if p.NetNS == "" {
			return nil, fmt.Errorf("pod %s: %w", pod, ErrVirtualPod)
		}
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NetNS}, argv...)...), nil
	}
	var names []string
	for _, p := range s.Pods {
		names = append(names, p.Name)
	}
	return nil, fmt.Errorf("%w %q (the lab has %v)", ErrNoPod, pod, names)
}
