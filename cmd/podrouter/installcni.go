package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/podrouter/podrouter/router/atomicfile"
)

// install-cni is the DaemonSet's init container: it copies the CNI plugin,
// the host-local IPAM plugin its conflist delegates to and the portmap
// plugin an operator may chain (cni-chain.json), from the image
// into the host's CNI bin directory (a hostPath), so the image needs no
// shell or cp and the node needs no CNI plugins package. The copy is atomic (a temporary file in the
// destination directory, fsynced, then renamed over the old plugin), so a
// container runtime calling the plugin meanwhile runs either the old or the
// new binary, never a partial one. The conflist is the daemon's to write:
// it knows the node's podCIDRs and MTU.

func init() {
	register(command{
		name:    "install-cni",
		summary: "copy the podrouter-cni, host-local and portmap plugins into the host's CNI bin directory, atomically (the DaemonSet's init container)",
		run:     runInstallCNI,
	})
}

// cniPlugins are the plugins the image ships next to podrouter and
// install-cni installs by default.
var cniPlugins = []string{"podrouter-cni", "host-local", "portmap"}

// ErrNotRegular is returned when the plugin to install is not a regular
// file.
var ErrNotRegular = errors.New("not a regular file")

func runInstallCNI(args []string, stdout, stderr io.Writer) int {
	var src, dest string
	fs := flag.NewFlagSet("install-cni", flag.ContinueOnError)
	fs.StringVar(&src, "src", "", "the plugins to install, comma-separated (default: podrouter-cni, host-local and portmap next to this executable)")
	fs.StringVar(&dest, "dest", "/opt/cni/bin", "the CNI bin directory to install into (it must exist); each file keeps its name")
	if rc := parseFlags(fs, "Usage: podrouter install-cni [--src PATH[,PATH...]] [--dest DIR]\n\n"+
		"Copies each plugin into DIR/<its name> atomically: a temporary file in DIR,\n"+
		"fsynced, mode 0755, renamed over the old one. The DaemonSet runs it as its\n"+
		"init container with the host's /opt/cni/bin mounted. Exits 0 when installed,\n"+
		"1 when the copy fails, 2 on bad flags.\n\nFlags:\n", args, stdout, stderr); rc >= 0 {
		return rc
	}
	var srcs []string
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "podrouter install-cni: --src not given and own path unknown: %v\n", err)
			return 2
		}
		for _, name := range cniPlugins {
			srcs = append(srcs, filepath.Join(filepath.Dir(exe), name))
		}
	} else {
		for _, s := range strings.Split(src, ",") {
			if s == "" {
				fmt.Fprintf(stderr, "podrouter install-cni: --src %q: empty path\n", src)
				return 2
			}
			srcs = append(srcs, s)
		}
	}
	if !filepath.IsAbs(dest) {
		fmt.Fprintf(stderr, "podrouter install-cni: --dest %q: want an absolute path\n", dest)
		return 2
	}
	for _, s := range srcs {
		dst := filepath.Join(dest, filepath.Base(s))
		n, err := installFile(s, dst)
		if err != nil {
			fmt.Fprintf(stderr, "podrouter install-cni: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "installed %s -> %s (%d bytes)\n", s, dst, n)
	}
	return 0
}

// installFile copies src to dst atomically with mode 0755 and returns the
// number of bytes copied. dst's directory must exist. On failure dst is
// untouched and no temporary file is left behind.
func installFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s: %w", src, ErrNotRegular)
	}
	if dstat, err := os.Stat(dst); err == nil && os.SameFile(st, dstat) {
		return st.Size(), nil // installing a file over itself: already there
	}
	n, err := atomicfile.Copy(dst, in, 0o755)
	if err != nil {
		return 0, fmt.Errorf("install %s as %s: %w", src, dst, err)
	}
	return n, nil
}
