package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/podrouter/podrouter/router/kube/kubeproc"
)

// stopGrace is how long a process has between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// waitFor polls ok every 200 ms until it returns true, p exits, ctx ends
// or timeout passes; the error names what and carries ok's last error.
func waitFor(ctx context.Context, what string, timeout time.Duration, p *kubeproc.Proc, ok func() (bool, error)) error {
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
			if gone, perr := p.Exited(); gone {
				return fmt.Errorf("cluster: %s: %s %v; log tail:\n%s", what, p.Name, perr, kubeproc.Tail(p.Log, 3000))
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
				msg += "; log tail:\n" + kubeproc.Tail(p.Log, 3000)
			}
			return errors.New(msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
