package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/podrouter/podrouter/deploy/cluster"
)

// e2eFlags are clusterctl e2e's own flags.
type e2eFlags struct {
	e2eTest, ginkgo, focus, skip, reportDir string
	procs                                   int
	timeout                                 time.Duration
}

func (e *e2eFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.e2eTest, "e2e", ".cache/kube/bin/e2e.test", "the e2e suite binary (k8s.io/kubernetes/test/e2e)")
	fs.StringVar(&e.ginkgo, "ginkgo", ".cache/kube/bin/ginkgo", "the ginkgo CLI")
	fs.StringVar(&e.focus, "focus", `\[sig-network\] Networking Granular Checks`, "ginkgo focus (regular expression)")
	fs.StringVar(&e.skip, "skip", "", "ginkgo skip (regular expression)")
	fs.StringVar(&e.reportDir, "report-dir", ".cache/conformance", "where the JUnit report and the log go (a directory per run)")
	fs.IntVar(&e.procs, "procs", 2, "parallel ginkgo processes")
	fs.DurationVar(&e.timeout, "timeout", 2*time.Hour, "the suite's timeout")
}

// run runs the suite against the held cluster, or against one it starts
// and removes afterwards.
func (e *e2eFlags) run(ctx context.Context, cfg cluster.Config) (err error) {
	kubeconfig, nodes := "", cfg.Nodes
	held, err := cluster.Held()
	if err != nil {
		return err
	}
	if held != "" {
		kubeconfig = filepath.Join(held, "kubeconfig")
		fmt.Printf("using the held cluster %s\n", held)
	} else {
		c, err := cluster.Up(ctx, cfg)
		if err != nil {
			return err
		}
		defer func() {
			if derr := c.Down(); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
		kubeconfig, nodes = c.Kubeconfig, len(c.Nodes)
	}
	dir, err := filepath.Abs(filepath.Join(e.reportDir, time.Now().Format("20060102-150405")))
	if err != nil {
		return err
	}
	for _, p := range []*string{&e.e2eTest, &e.ginkgo} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{
		"--procs=" + strconv.Itoa(e.procs), "--no-color", "--timeout=" + e.timeout.String(),
		"--focus=" + e.focus,
	}
	if e.skip != "" {
		args = append(args, "--skip="+e.skip)
	}
	args = append(args, e.e2eTest, "--",
		"--kubeconfig="+kubeconfig,
		"--provider=skeleton",
		"--num-nodes="+strconv.Itoa(nodes),
		"--report-dir="+dir,
		"--kubectl-path="+filepath.Join(filepath.Dir(e.e2eTest), "kubectl"),
		"--dump-logs-on-failure=false",
	)
	logf, err := os.Create(filepath.Join(dir, "e2e.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, e.ginkgo, args...)
	// The ginkgo CLI warns of a version mismatch: it reads the go.mod
	// above the binary's directory (podrouter's, with an older ginkgo), not
	// the module e2e.test was built from (deploy/kubetools, the CLI's
	// version). Both are built from deploy/kubetools; the warning is noise.
	cmd.Stdout = &tee{os.Stdout, logf}
	cmd.Stderr = cmd.Stdout
	began := time.Now()
	runErr := cmd.Run()
	fmt.Printf("e2e: %v; log and JUnit report in %s\n", time.Since(began).Round(time.Second), dir)
	return runErr
}

// tee writes to both writers.
type tee struct{ a, b *os.File }

func (t *tee) Write(p []byte) (int, error) {
	if _, err := t.b.Write(p); err != nil {
		return 0, err
	}
	return t.a.Write(p)
}
