// Package kubeproc runs the child processes of a throwaway Kubernetes
// control plane or node (router/kube/kubetest's etcd and kube-apiserver,
// deploy/cluster's components): each in its own process group, its output
// appended to a log file, killed by the kernel when the parent dies
// (Pdeathsig), its exit observed by a goroutine.
package kubeproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Proc is a started child process.
type Proc struct {
	// Name is the log file's name without ".log".
	Name string
	// Log is the log file's path.
	Log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited; err is set then
	err  error
}

// Start starts argv[0] with argv[1:], stdout and stderr appended to
// logPath, env added to this process's environment.
func Start(logPath string, env []string, argv ...string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Proc{Name: strings.TrimSuffix(filepath.Base(logPath), ".log"), Log: logPath, cmd: cmd, done: make(chan struct{})}
	// Pdeathsig fires when the forking OS thread exits, not the process:
	// fork from a goroutine locked to its thread until the child is
	// reaped, so that no other goroutine's thread exit (netns code locks
	// threads and lets them die) kills the child early.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	return p, nil
}

// Pid is the process's pid (and its process group's).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		if p.err == nil {
			return true, errors.New("exited")
		}
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the exit; it reports whether SIGKILL was needed. It is
// idempotent.
func (p *Proc) Stop(grace time.Duration) (killed bool) {
	select {
	case <-p.done:
		return false
	default:
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
		return true
	}
}

// Tail returns the last n bytes of the file at path (or the error).
func Tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return err.Error()
	}
	return string(b)
}
