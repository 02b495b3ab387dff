// Package deploy holds the Kubernetes manifests (kustomization.yaml) and,
// in deploy/kubetools, the helper module that builds kube-apiserver, etcd
// and kubectl for the tests. Its tests check what can be checked without
// a container runtime: that the Dockerfile's binaries build static, and
// that the DaemonSet runs the paths the Dockerfile installs. The manifests
// are applied to a real API server by
// router/kube/kubetest's TestDeploy.
package deploy

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestStaticBinaries builds podrouter and podrouter-cni as the Dockerfile
// does (CGO_ENABLED=0, -trimpath) and checks that both are static ELF
// executables: no program interpreter, no shared libraries. distroless
// static has no libc, so a dynamic binary would not start in the image.
func TestStaticBinaries(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	build := regexp.MustCompile(`CGO_ENABLED=0 [^\n]*\\\n\s*go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/podrouter ./cmd/podrouter-cni\n`)
	if !build.Match(dockerfile) {
		t.Fatalf("the Dockerfile no longer builds both commands with CGO_ENABLED=0 as this test does; update the test with it")
	}
	if !strings.Contains(string(dockerfile), "FROM gcr.io/distroless/static") {
		t.Fatalf("the final stage is no longer distroless/static; revisit this test")
	}
	out := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out+"/", "../cmd/podrouter", "../cmd/podrouter-cni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	for _, name := range []string{"podrouter", "podrouter-cni"} {
		f, err := elf.Open(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer f.Close()
		if f.Type != elf.ET_EXEC {
			t.Errorf("%s: ELF type %v, want ET_EXEC (not position-independent, no loader)", name, f.Type)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s: has a %v program header: dynamically linked", name, p.Type)
			}
		}
		if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
			t.Errorf("%s: imports shared libraries %v (%v)", name, libs, err)
		}
	}
}

// TestDaemonSetRunsImagePaths checks that every container of the DaemonSet
// runs a binary the Dockerfile installs, with the image the kustomization
// names, and that the image's ENTRYPOINT is the same binary.
func TestDaemonSetRunsImagePaths(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	installed := map[string]bool{}
	for _, line := range strings.Split(string(dockerfile), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "COPY" && f[1] == "--from=build" {
			dir := f[len(f)-1]
			for _, src := range f[2 : len(f)-1] {
				installed[dir+filepath.Base(src)] = true
			}
		}
	}
	if !installed["/usr/local/bin/podrouter"] || !installed["/usr/local/bin/podrouter-cni"] {
		t.Fatalf("the Dockerfile installs %v, want podrouter and podrouter-cni in /usr/local/bin", installed)
	}
	var ds struct {
		Kind string
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `yaml:"initContainers"`
					Containers     []container `yaml:"containers"`
				}
			}
		}
	}
	b, err := os.ReadFile("daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &ds); err != nil || ds.Kind != "DaemonSet" {
		t.Fatalf("daemonset.yaml: kind %q, %v", ds.Kind, err)
	}
	all := append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...)
	if len(all) != 2 {
		t.Fatalf("daemonset.yaml has %d containers, want install-cni and podrouter", len(all))
	}
	for _, c := range all {
		if c.Image != "podrouter:dev" {
			t.Errorf("container %s: image %q, want podrouter:dev (kustomization.yaml's images: entry rewrites it)", c.Name, c.Image)
		}
		if len(c.Command) == 0 || !installed[c.Command[0]] {
			t.Errorf("container %s runs %v: not a binary the Dockerfile installs", c.Name, c.Command)
		}
		for _, a := range append(c.Command[1:], c.Args...) {
			if strings.HasPrefix(a, "/usr/local/bin/") && !installed[strings.TrimPrefix(a, "--src=")] {
				t.Errorf("container %s names %s, which the image lacks", c.Name, a)
			}
			if v, ok := strings.CutPrefix(a, "--src="); ok && !installed[v] {
				t.Errorf("container %s installs %s, which the image lacks", c.Name, v)
			}
		}
	}
	if !strings.Contains(string(dockerfile), `ENTRYPOINT ["/usr/local/bin/podrouter"]`) {
		t.Errorf("the image's ENTRYPOINT is not /usr/local/bin/podrouter")
	}
}

type container struct {
	Name    string
	Image   string
	Command []string
	Args    []string
}
