// Command pause is the pod sandbox's process: it holds the pod's
// namespaces open by doing nothing until it is told to stop. It is our
// own, built static (CGO_ENABLED=0) into the pause image that the
// Makefile's `images` target writes under containerd's default sandbox
// image name, so nothing is pulled.
//
// It exits 0 on SIGINT or SIGTERM. As PID 1 of a pod that shares its
// process namespace it is the parent of orphaned processes, so it reaps
// every child that exits (SIGCHLD) and no zombie is left behind.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "pause: takes no arguments; sleeps until SIGINT or SIGTERM")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	reap() // children that exited before Notify took effect
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: %v: exiting\n", sig)
		os.Exit(0)
	}
}

// reap collects every exited child without blocking. SIGCHLD signals
// coalesce, so one signal may stand for several children.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited yet
			return
		}
	}
}
