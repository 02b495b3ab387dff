package cluster

import (
	"context"
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

// stopGrace is how long a process has between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// proc is a child process whose exit a goroutine observes.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited; err is set then
	err  error
}

// startProc starts argv[0] with argv[1:], stdout and stderr appended to
// logPath, env added to this process's environment. The child is in its
// own process group and is killed when this process dies (Pdeathsig).
func startProc(logPath string, env []string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: filepath.Base(logPath), cmd: cmd, log: logPath, done: make(chan struct{})}
	// Pdeathsig fires when the forking OS thread exits, not the process:
	// fork from a goroutine locked to its thread until the child is reaped.
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
		return nil, fmt.Errorf("cluster: start %s: %w", strings.Join(argv, " "), err)
	}
	return p, nil
}

// pid is the process's pid.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited, with its error.
func (p *proc) exited() (bool, error) {
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

// stop sends SIGTERM to the process group, then SIGKILL after stopGrace,
// and waits for the exit. It is idempotent.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// tail returns the last n bytes of the file at path.
func tail(path string, n int64) string {
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

// waitFor polls ok every 200 ms until it returns true, p exits, ctx ends
// or timeout passes; the error names what and carries ok's last error.
func waitFor(ctx context.Context, what string, timeout time.Duration, p *proc, ok func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		done, err := ok()
		if done {
			return nil
		}
		if err != nil {
			last = err
		}
		if p != nil {
			if gone, perr := p.exited(); gone {
				return fmt.Errorf("cluster: %s: %s %v; log tail:\n%s", what, p.name, perr, tail(p.log, 3000))
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cluster: %s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("cluster: %s: not ready after %v", what, timeout)
			if last != nil {
				msg += ": " + last.Error()
			}
			if p != nil {
				msg += "; log tail:\n" + tail(p.log, 3000)
			}
			return errors.New(msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
