// Package deploy holds the Kubernetes manifests (kustomization.yaml) and,
// in deploy/kubetools, the helper module that builds kube-apiserver, etcd
// and kubectl for the tests. Its tests check what can be checked without
// a container runtime: that the Dockerfile's binaries build static, and
// that the DaemonSet runs the paths the Dockerfile installs. The manifests
// are applied to a real API server by
// router/kube/kubetest's TestDeploy.
package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestStaticBinaries builds podrouter, podrouter-cni, host-local and portmap as the Dockerfile
// does (CGO_ENABLED=0, -trimpath) and checks that both are static ELF
// executables: no program interpreter, no shared libraries. distroless
// static has no libc, so a dynamic binary would not start in the image.
func TestStaticBinaries(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	build := regexp.MustCompile(`CGO_ENABLED=0 [^\n]*\\\n\s*go build -trimpath -ldflags="([^"]*)" -o /out/ ./cmd/podrouter ./cmd/podrouter-cni \\\n\s*github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/meta/portmap\n`)
	m := build.FindSubmatch(dockerfile)
	if m == nil {
		t.Fatalf("the Dockerfile no longer builds both commands with CGO_ENABLED=0 as this test does; update the test with it")
	}
	// The Dockerfile's own -ldflags, its build args given values: the
	// binary must report them (a -X naming a variable that does not exist
	// is silently ignored by the linker).
	ldflags := os.Expand(string(m[1]), func(k string) string {
		return map[string]string{"VERSION": "v0.0.0-dockerfile", "COMMIT": "0123abcd"}[k]
	})
	if !strings.Contains(ldflags, "-s -w") {
		t.Errorf("the Dockerfile's -ldflags %q lack -s -w", m[1])
	}
	if !strings.Contains(string(dockerfile), "FROM gcr.io/distroless/static") {
		t.Fatalf("the final stage is no longer distroless/static; revisit this test")
	}
	out := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags="+ldflags, "-o", out+"/", "../cmd/podrouter", "../cmd/podrouter-cni",
		"github.com/containernetworking/plugins/plugins/ipam/host-local", "github.com/containernetworking/plugins/plugins/meta/portmap")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	for _, name := range []string{"podrouter", "podrouter-cni", "host-local", "portmap"} {
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
	checkVersion(t, filepath.Join(out, "podrouter"), "v0.0.0-dockerfile", "0123abcd")
}

// checkVersion runs the podrouter binary at path with --version and checks
// that it reports version and commit.
func checkVersion(t *testing.T, path, version, commit string) {
	t.Helper()
	b, err := exec.Command(path, "--version").CombinedOutput()
	if want := "podrouter " + version + " (commit " + commit + ", go"; err != nil || !strings.HasPrefix(string(b), want) {
		t.Errorf("%s --version: %v: %q, want it to start %q", path, err, b, want)
	}
}

// TestMakefileStampsVersion: make build stamps VERSION and COMMIT into
// podrouter.
func TestMakefileStampsVersion(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make: %v", err)
	}
	bin := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "..", "BIN="+bin, "VERSION=v0.0.0-make", "COMMIT=fedcba98", "build")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, b)
	}
	checkVersion(t, filepath.Join(bin, "podrouter"), "v0.0.0-make", "fedcba98")
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
	if !installed["/usr/local/bin/podrouter"] || !installed["/usr/local/bin/podrouter-cni"] || !installed["/usr/local/bin/host-local"] || !installed["/usr/local/bin/portmap"] {
		t.Fatalf("the Dockerfile installs %v, want podrouter, podrouter-cni, host-local and portmap in /usr/local/bin", installed)
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
			if strings.HasPrefix(a, "/usr/local/bin/") && !installed[a] {
				t.Errorf("container %s names %s, which the image lacks", c.Name, a)
			}
			if v, ok := strings.CutPrefix(a, "--src="); ok {
				for _, src := range strings.Split(v, ",") {
					if !installed[src] {
						t.Errorf("container %s installs %s, which the image lacks", c.Name, src)
					}
				}
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

// dockerStage is what the Dockerfile's final stage puts in the image.
type dockerStage struct {
	base       string
	files      []string // COPY --from=build destinations
	labels     map[string]string
	user       string
	entrypoint []string
	cmd        []string
}

// parseFinalStage reads the instructions after the Dockerfile's last FROM,
// with continuation lines joined.
func parseFinalStage(t *testing.T, dockerfile string) dockerStage {
	t.Helper()
	joined := strings.ReplaceAll(dockerfile, "\\\n", " ")
	var st dockerStage
	lines := strings.Split(joined, "\n")
	last := 0
	for i, line := range lines {
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(line)), "FROM ") {
			last = i
		}
	}
	for _, line := range lines[last:] {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			st = dockerStage{base: strings.Fields(rest)[0], labels: map[string]string{}}
		case "LABEL":
			for _, m := range regexp.MustCompile(`([\w.\-]+)="([^"]*)"`).FindAllStringSubmatch(rest, -1) {
				st.labels[m[1]] = m[2]
			}
		case "COPY":
			f := strings.Fields(rest)
			if len(f) < 3 || f[0] != "--from=build" {
				t.Fatalf("Dockerfile: %q: this test knows only COPY --from=build SRC... DIR/", line)
			}
			for _, src := range f[1 : len(f)-1] {
				st.files = append(st.files, f[len(f)-1]+filepath.Base(src))
			}
		case "USER":
			st.user = rest
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				t.Fatalf("Dockerfile: %q: want the JSON (exec) form: %v", line, err)
			}
			if strings.ToUpper(instr) == "CMD" {
				st.cmd = v
			} else {
				st.entrypoint = v
			}
		default:
			t.Fatalf("Dockerfile: %q in the final stage: teach this test and the Makefile's podrouter image about it", line)
		}
	}
	return st
}

// ociImage is an image read back from a docker-archive tarball.
type ociImage struct {
	repoTags []string
	os, arch string
	config   struct {
		User       string
		Env        []string
		Entrypoint []string
		Cmd        []string
		WorkingDir string
		Labels     map[string]string
	}
	files map[string]*tar.Header
	body  map[string][]byte // regular files
}

// readImageTarball parses a docker-archive tarball (manifest.json, config
// and gzip layers) with the standard library only.
func readImageTarball(t *testing.T, path string) *ociImage {
	t.Helper()
	blobs := map[string][]byte{}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if blobs[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(blobs["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("%s: manifest.json: %d images, %v; want one", path, len(manifest), err)
	}
	img := &ociImage{repoTags: manifest[0].RepoTags, files: map[string]*tar.Header{}, body: map[string][]byte{}}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       json.RawMessage
	}
	if err := json.Unmarshal(blobs[manifest[0].Config], &cfg); err != nil {
		t.Fatalf("%s: config %s: %v", path, manifest[0].Config, err)
	}
	img.os, img.arch = cfg.OS, cfg.Architecture
	if err := json.Unmarshal(cfg.Config, &img.config); err != nil {
		t.Fatalf("%s: config: %v", path, err)
	}
	for _, l := range manifest[0].Layers {
		zr, err := gzip.NewReader(bytes.NewReader(blobs[l]))
		if err != nil {
			t.Fatalf("%s: layer %s: %v", path, l, err)
		}
		lr := tar.NewReader(zr)
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: layer %s: %v", path, l, err)
			}
			p := "/" + strings.TrimSuffix(h.Name, "/")
			img.files[p] = h
			if h.Typeflag == tar.TypeReg {
				if img.body[p], err = io.ReadAll(lr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return img
}

// TestGoImageMatchesDockerfile builds the podrouter image as `make images`
// does (deploy/kubetools/imagetool, no docker daemon) and checks it against
// the Dockerfile's final stage: the same files, entrypoint, cmd, user and
// labels, distroless/static nonroot's env, workdir and users, linux/amd64,
// the tag asked for, and static binaries.
func TestGoImageMatchesDockerfile(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make: %v (the images are built by the Makefile)", err)
	}
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	st := parseFinalStage(t, string(dockerfile))
	if st.base != "gcr.io/distroless/static-debian12:nonroot" {
		t.Fatalf("final stage FROM %s: the Makefile's podrouter image copies distroless/static-debian12:nonroot's base; update both", st.base)
	}
	dir := t.TempDir()
	const ref = "podrouter:imagetest"
	out := filepath.Join(dir, "podrouter_imagetest.tar")
	cmd := exec.Command("make", "-s", "-C", "..", "IMAGES="+dir, "IMAGE="+ref, "VERSION=v0.0.0-image", "COMMIT=89abcdef", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make %s: %v\n%s", out, err, b)
	}
	img := readImageTarball(t, out)

	if !reflect.DeepEqual(img.repoTags, []string{ref}) {
		t.Errorf("RepoTags %q, want [%s]", img.repoTags, ref)
	}
	if img.os != "linux" || img.arch != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", img.os, img.arch)
	}
	c := img.config
	if !reflect.DeepEqual(c.Entrypoint, st.entrypoint) || !reflect.DeepEqual(c.Cmd, st.cmd) {
		t.Errorf("entrypoint %q cmd %q; the Dockerfile has %q %q", c.Entrypoint, c.Cmd, st.entrypoint, st.cmd)
	}
	if c.User != st.user {
		t.Errorf("user %q; the Dockerfile has USER %s", c.User, st.user)
	}
	if !reflect.DeepEqual(c.Labels, st.labels) {
		t.Errorf("labels %v; the Dockerfile has %v", c.Labels, st.labels)
	}
	// What distroless/static-debian12:nonroot gives the final stage.
	if want := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}; !reflect.DeepEqual(c.Env, want) {
		t.Errorf("env %q, want distroless's %q", c.Env, want)
	}
	if c.WorkingDir != "/home/nonroot" {
		t.Errorf("workdir %q, want distroless nonroot's /home/nonroot", c.WorkingDir)
	}
	for p, want := range map[string]struct {
		typ      byte
		mode     int64
		uid, gid int
	}{
		"/tmp":               {tar.TypeDir, 0o1777, 0, 0},
		"/home/nonroot":      {tar.TypeDir, 0o700, 65532, 65532},
		"/etc/passwd":        {tar.TypeReg, 0o644, 0, 0},
		"/etc/group":         {tar.TypeReg, 0o644, 0, 0},
		"/etc/nsswitch.conf": {tar.TypeReg, 0o644, 0, 0},
	} {
		h := img.files[p]
		if h == nil || h.Typeflag != want.typ || h.Mode != want.mode || h.Uid != want.uid || h.Gid != want.gid {
			t.Errorf("%s: %+v, want %+v", p, h, want)
		}
	}
	if !regexp.MustCompile(`(?m)^nonroot:x:65532:65532:`).Match(img.body["/etc/passwd"]) {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", img.body["/etc/passwd"])
	}
	// The Dockerfile's files and only those are executables.
	var execs []string
	for p, h := range img.files {
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 {
			execs = append(execs, p)
		}
	}
	sort.Strings(execs)
	want := append([]string(nil), st.files...)
	sort.Strings(want)
	if !reflect.DeepEqual(execs, want) {
		t.Errorf("executables in the image %q; the Dockerfile copies %q", execs, want)
	}
	for _, p := range st.files {
		h := img.files[p]
		if h == nil {
			continue // reported above
		}
		if h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mode %o uid %d gid %d, want 0755 root:root as COPY makes it", p, h.Mode, h.Uid, h.Gid)
		}
		f, err := elf.NewFile(bytes.NewReader(img.body[p]))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s: dynamically linked: distroless/static has no loader", p)
			}
		}
	}
	// The image's podrouter carries the version make was given.
	exe := filepath.Join(dir, "podrouter-from-image")
	if err := os.WriteFile(exe, img.body["/usr/local/bin/podrouter"], 0o755); err != nil {
		t.Fatal(err)
	}
	checkVersion(t, exe, "v0.0.0-image", "89abcdef")
}
