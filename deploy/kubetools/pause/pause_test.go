package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReap starts a child and lets it exit without waiting for it: it
// stays a zombie until reap collects it, as orphans do under PID 1.
func TestReap(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	stat := func() string {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return string(b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stat(), ") Z ") {
		if time.Now().After(deadline) {
			t.Fatalf("child %d never became a zombie: %q", pid, stat())
		}
		time.Sleep(10 * time.Millisecond)
	}
	reap()
	if s := stat(); s != "" {
		t.Fatalf("child %d still there after reap: %q", pid, s)
	}
	reap() // no children left: returns (ECHILD) rather than blocking
}

// TestSignals builds pause and checks that SIGTERM and SIGINT end it with
// status 0, and that it refuses arguments.
func TestSignals(t *testing.T) {
	bin := t.TempDir() + "/pause"
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // past signal.Notify
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			t.Fatalf("pause exited before %v: %v", sig, err)
		default:
		}
		cmd.Process.Signal(sig)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%v: %v, want exit status 0", sig, err)
			}
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v: pause still running after 5s", sig)
		}
	}
	if err := exec.Command(bin, "x").Run(); err == nil {
		t.Errorf("pause x: exit 0, want a usage error")
	}
}
