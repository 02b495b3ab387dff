// Command clusterctl starts and removes deploy/cluster's one-machine
// Kubernetes clusters with podrouter as the pod network (make cluster,
// make cluster-down).
//
//	clusterctl up [--nodes N] [--bin DIR] [--images T1,T2] [--sandbox-image NAME]
//	              [--deploy DIR --image NAME:TAG]
//	clusterctl e2e [the flags of up] --e2e E2E.TEST --ginkgo GINKGO --focus RE [--skip RE]
//	clusterctl down
//
// up prints the admin kubeconfig's path and holds the cluster until SIGINT
// or SIGTERM, then removes it. e2e runs the upstream e2e suite against the
// held cluster, or against one of its own that it removes afterwards, and
// exits non-zero when a spec failed. down removes every cluster (a held
// one's clusterctl is stopped first), and what a killed run left.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podrouter/podrouter/deploy/cluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "clusterctl:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: clusterctl up|down [flags]")
	}
	switch args[0] {
	case "down":
		return cluster.DownAll()
	case "up", "e2e":
	default:
		return fmt.Errorf("unknown command %q (want up, e2e or down)", args[0])
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	var cfg cluster.Config
	var images string
	fs.IntVar(&cfg.Nodes, "nodes", 2, "number of nodes")
	fs.StringVar(&cfg.Bin, "bin", ".cache/kube/bin", "directory of the kube, containerd and runc binaries")
	fs.StringVar(&images, "images", "", "comma-separated OCI image tarballs to import into every node")
	fs.StringVar(&cfg.SandboxImage, "sandbox-image", cluster.DefaultSandboxImage, "the pause image's name")
	fs.StringVar(&cfg.Deploy, "deploy", "", "kustomization directory to apply (deploy/); empty: no DaemonSet")
	fs.StringVar(&cfg.Image, "image", "podrouter:dev", "the podrouter image (with --deploy)")
	fs.DurationVar(&cfg.ReadyTimeout, "ready-timeout", 120*time.Second, "how long to wait for the nodes to be Ready (with --deploy)")
	var e2e e2eFlags
	if args[0] == "e2e" {
		e2e.register(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if images != "" {
		cfg.Images = strings.Split(images, ",")
	}
	cfg.Log = func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, a...)...)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if args[0] == "e2e" {
		return e2e.run(ctx, cfg)
	}
	c, err := cluster.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("cluster %s up: %d nodes\nexport KUBECONFIG=%s\n", c.ID, len(c.Nodes), c.Kubeconfig)
	fmt.Println("holding; Ctrl-C (or make cluster-down) removes it")
	<-ctx.Done()
	fmt.Println("removing the cluster")
	return c.Down()
}
