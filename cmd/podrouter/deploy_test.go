package main

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/daemon"
)

// TestDaemonSetFlagsParse runs the flags deploy/daemonset.yaml gives each
// container through that command's own flag set, so a renamed or removed
// flag breaks this test and not a cluster's rollout.
func TestDaemonSetFlagsParse(t *testing.T) {
	b, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type container struct {
		Name    string
		Command []string
		Args    []string
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `yaml:"initContainers"`
					Containers     []container `yaml:"containers"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	all := append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...)
	if len(all) != 2 {
		t.Fatalf("%d containers, want install-cni and podrouter", len(all))
	}
	for _, c := range all {
		argv := append(c.Command[1:], c.Args...)
		if len(argv) == 0 {
			t.Fatalf("container %s runs podrouter without a subcommand", c.Name)
		}
		// Every --flag must be one the subcommand's help lists.
		var out, errb bytes.Buffer
		if rc := run([]string{"help", argv[0]}, &out, &errb); rc != 0 {
			t.Fatalf("container %s: podrouter help %s: exit %d: %s", c.Name, argv[0], rc, errb.String())
		}
		for _, a := range argv[1:] {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !strings.HasPrefix(a, "-") || !strings.Contains(out.String(), "  -"+name+" ") && !strings.Contains(out.String(), "  -"+name+"\n") {
				t.Errorf("container %s: podrouter %s has no flag %q", c.Name, argv[0], a)
			}
		}
	}
}

// TestDaemonSetInstallsEveryPlugin: the init container's --src names
// exactly the plugins install-cni installs by default (cniPlugins), from
// the image's /usr/local/bin.
func TestDaemonSetInstallsEveryPlugin(t *testing.T) {
	b, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []struct {
						Name    string
						Command []string
					} `yaml:"initContainers"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, p := range cniPlugins {
		want = append(want, "/usr/local/bin/"+p)
	}
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		for _, a := range c.Command {
			if v, ok := strings.CutPrefix(a, "--src="); ok {
				if got := strings.Split(v, ","); !slices.Equal(got, want) {
					t.Errorf("init container %s installs %q, want %q", c.Name, got, want)
				}
				return
			}
		}
	}
	t.Fatal("no init container runs install-cni --src=...")
}

// TestConfigMapCNIChain: the ConfigMap's cni-chain.json is one the daemon
// accepts.
func TestConfigMapCNIChain(t *testing.T) {
	b, err := os.ReadFile("../../deploy/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct{ Data map[string]string }
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	chain, ok := cm.Data["cni-chain.json"]
	if !ok {
		t.Fatal("configmap.yaml has no cni-chain.json")
	}
	if _, err := daemon.ParseCNIChain([]byte(chain)); err != nil {
		t.Errorf("cni-chain.json %q: %v", chain, err)
	}
}
