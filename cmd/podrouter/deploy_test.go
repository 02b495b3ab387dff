package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
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
