package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	imageutils "k8s.io/kubernetes/test/utils/image"
)

type tarEntry struct {
	typ      byte
	mode     int64
	uid, gid int
	link     string
	body     string
}

func readTar(t *testing.T, r io.Reader) (map[string]tarEntry, []string) {
	t.Helper()
	got := map[string]tarEntry{}
	var order []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got, order
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = tarEntry{h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, string(b)}
		order = append(order, h.Name)
	}
}

func TestLayer(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := Layer([]Entry{
		{Kind: File, Path: "/usr/local/bin/tool", Src: src, Mode: 0o755},
		{Kind: Dir, Path: "/home/nonroot/", Mode: 0o700, UID: 65532, GID: 65532},
		{Kind: Symlink, Path: "/bin/sh", Target: "busybox"},
		{Kind: Dir, Path: "/tmp", Mode: 0o1777},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, order := readTar(t, bytes.NewReader(raw))
	want := map[string]tarEntry{
		"bin/":               {tar.TypeDir, 0o755, 0, 0, "", ""},
		"bin/sh":             {tar.TypeSymlink, 0o777, 0, 0, "busybox", ""},
		"home/":              {tar.TypeDir, 0o755, 0, 0, "", ""},
		"home/nonroot/":      {tar.TypeDir, 0o700, 65532, 65532, "", ""},
		"tmp/":               {tar.TypeDir, 0o1777, 0, 0, "", ""},
		"usr/":               {tar.TypeDir, 0o755, 0, 0, "", ""},
		"usr/local/":         {tar.TypeDir, 0o755, 0, 0, "", ""},
		"usr/local/bin/":     {tar.TypeDir, 0o755, 0, 0, "", ""},
		"usr/local/bin/tool": {tar.TypeReg, 0o755, 0, 0, "", "ELF"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer:\n got %v\nwant %v", got, want)
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("entries not sorted (parents first): %q", order)
		}
	}
}

func TestLayerErrors(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
		want    error
	}{
		{"relative", []Entry{{Kind: Dir, Path: "tmp"}}, ErrRelativePath},
		{"root", []Entry{{Kind: Dir, Path: "/"}}, ErrRelativePath},
		{"duplicate", []Entry{{Kind: Dir, Path: "/tmp"}, {Kind: Symlink, Path: "/tmp/", Target: "x"}}, ErrDuplicatePath},
		{"missing source", []Entry{{Kind: File, Path: "/x", Src: "/nonexistent/file"}}, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Layer(tt.entries); !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
}

// TestWriteReadBack writes a tarball and reads it back with
// go-containerregistry's tarball package: the name, platform, config and
// files are what the Spec says, and a second build is byte-identical.
func TestWriteReadBack(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "pause")
	if err := os.WriteFile(src, []byte("not really ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("registry.k8s.io/pause:3.10.2", name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: tag, Entries: []Entry{{Kind: File, Path: "/pause", Src: src, Mode: 0o755}},
		Config: v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535", Env: []string{"A=1"}, Labels: map[string]string{"k": "v"}}}
	out1, out2 := filepath.Join(dir, "1.tar"), filepath.Join(dir, "2.tar")
	if _, err := Write(spec, out1); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(spec, out2); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(out1)
	b2, _ := os.ReadFile(out2)
	if !bytes.Equal(b1, b2) {
		t.Errorf("two builds of one spec differ: not reproducible")
	}
	checkTarball(t, out1, tag.String(), spec.Config, map[string]tarEntry{"pause": {tar.TypeReg, 0o755, 0, 0, "", "not really ELF"}})
}

// checkTarball reads a tarball back and checks its one tag, linux/amd64,
// its config, and that it holds at least the files in want.
func checkTarball(t *testing.T, path, ref string, want v1.Config, files map[string]tarEntry) {
	t.Helper()
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(m) != 1 || !reflect.DeepEqual(m[0].RepoTags, []string{ref}) {
		t.Fatalf("%s: manifest %+v, want one image tagged %s", path, m, ref)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("%s: platform %s/%s, want linux/amd64", path, cf.OS, cf.Architecture)
	}
	if !reflect.DeepEqual(cf.Config, want) {
		t.Errorf("%s: config\n got %+v\nwant %+v", path, cf.Config, want)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%s: %d layers, %v; want 1", path, len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, _ := readTar(t, rc)
	for p, w := range files {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: no %s in the image", path, p)
			continue
		}
		if w.body == "" {
			g.body = "" // only the header is checked
		}
		if g != w {
			t.Errorf("%s: %s is %+v, want %+v", path, p, g, w)
		}
	}
}

// makeVar reads NAME := VALUE from the Makefile.
func makeVar(t *testing.T, makefile []byte, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `\s*:=\s*(\S+)\s*$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatalf("Makefile sets no %s", name)
	}
	return string(m[1])
}

// TestMakefileNames checks that the Makefile's image names are the ones
// the pinned k8s.io/kubernetes e2e framework runs, so nothing is pulled.
// (containerd 2.4.2's DefaultSandboxImage is registry.k8s.io/pause:3.10.2
// too; its package is internal and not in this module.)
func TestMakefileNames(t *testing.T) {
	mk, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := makeVar(t, mk, "AGNHOST_IMAGE"), imageutils.GetE2EImage(imageutils.Agnhost); got != want {
		t.Errorf("Makefile AGNHOST_IMAGE %s, the e2e framework runs %s", got, want)
	}
	if got, want := makeVar(t, mk, "PAUSE_IMAGE"), imageutils.GetPauseImageName(); got != want {
		t.Errorf("Makefile PAUSE_IMAGE %s, the e2e framework expects %s", got, want)
	}
	if got, want := makeVar(t, mk, "GLIBC_DNS_IMAGE"), imageutils.GetE2EImage(imageutils.GlibcDnsTesting); got != want {
		t.Errorf("Makefile GLIBC_DNS_IMAGE %s, the e2e framework runs %s", got, want)
	}
}

// TestBuiltImages runs `make images` (seconds when cached; a cold agnhost
// build takes minutes) and reads each tarball back: its name, linux/amd64,
// its entrypoint and the files the pods rely on.
func TestBuiltImages(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds agnhost")
	}
	mk, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "../../..", "images", "IMAGES="+dir, "IMAGE=podrouter:built")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make images: %v\n%s", err, b)
	}
	pause, agnhost, glibcDNS := makeVar(t, mk, "PAUSE_IMAGE"), makeVar(t, mk, "AGNHOST_IMAGE"), makeVar(t, mk, "GLIBC_DNS_IMAGE")
	file := func(ref string) string {
		return filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	}
	link := func(target string) tarEntry { return tarEntry{tar.TypeSymlink, 0o777, 0, 0, target, ""} }
	checkTarball(t, file(pause), pause, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"},
		map[string]tarEntry{"pause": {tar.TypeReg, 0o755, 0, 0, "", ""}})
	checkTarball(t, file(agnhost), agnhost, v1.Config{
		Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, map[string]tarEntry{
		"agnhost":                        {tar.TypeReg, 0o755, 0, 0, "", ""},
		"agnhost-2":                      link("agnhost"),
		"coredns":                        {tar.TypeReg, 0o755, 0, 0, "", ""},
		"bin/busybox":                    {tar.TypeReg, 0o755, 0, 0, "", ""},
		"bin/sh":                         link("dash"),
		"bin/dash":                       {tar.TypeReg, 0o755, 0, 0, "", ""},
		"bin/grep":                       link("busybox"),
		"usr/bin/curl":                   link("nettools"),
		"usr/bin/nc":                     link("nettools"),
		"usr/bin/dig":                    link("nettools"),
		"usr/bin/nettools":               {tar.TypeReg, 0o755, 0, 0, "", ""},
		"usr/bin/getent":                 {tar.TypeReg, 0o755, 0, 0, "", ""},
		"lib/x86_64-linux-gnu/libc.so.6": {tar.TypeReg, 0o755, 0, 0, "", ""},
		"tmp/":                           {tar.TypeDir, 0o1777, 0, 0, "", ""},
		"uploads/":                       {tar.TypeDir, 0o755, 0, 0, "", ""},
	})
	// The DNS specs' glibc querier: sh, seq and sleep, dig, and getent
	// with the libc it links (ldd /usr/bin/getent).
	checkTarball(t, file(glibcDNS), glibcDNS, v1.Config{
		Cmd: []string{"sh"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, map[string]tarEntry{
		"bin/sh":                         link("dash"),
		"bin/dash":                       {tar.TypeReg, 0o755, 0, 0, "", ""},
		"bin/seq":                        link("busybox"),
		"bin/sleep":                      link("busybox"),
		"usr/bin/dig":                    link("nettools"),
		"usr/bin/getent":                 {tar.TypeReg, 0o755, 0, 0, "", ""},
		"lib64/ld-linux-x86-64.so.2":     {tar.TypeReg, 0o755, 0, 0, "", ""},
		"lib/x86_64-linux-gnu/libc.so.6": {tar.TypeReg, 0o755, 0, 0, "", ""},
		"etc/nsswitch.conf":              {tar.TypeReg, 0o644, 0, 0, "", ""},
		"tmp/":                           {tar.TypeDir, 0o1777, 0, 0, "", ""},
	})
	// CoreDNS as upstream lays it out: distroless/static's nonroot base,
	// /coredns with cap_net_bind_service (it binds :53 as uid 65532).
	coredns := "registry.k8s.io/coredns/coredns:" + corednsVersion(t)
	checkTarball(t, file(coredns), coredns, v1.Config{
		Entrypoint: []string{"/coredns"}, User: "65532:65532", WorkingDir: "/",
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
	}, map[string]tarEntry{
		"coredns":       {tar.TypeReg, 0o755, 0, 0, "", ""},
		"etc/passwd":    {tar.TypeReg, 0o644, 0, 0, "", ""},
		"tmp/":          {tar.TypeDir, 0o1777, 0, 0, "", ""},
		"home/nonroot/": {tar.TypeDir, 0o700, 65532, 65532, "", ""},
	})
	if got, want := layerCaps(t, file(coredns), coredns, "coredns"), "0100000200040000000000000000000000000000"; got != want {
		t.Errorf("coredns image: /coredns security.capability %s, want %s (cap_net_bind_service=+ep)", got, want)
	}
	// The podrouter image's config and files are checked against the
	// Dockerfile by deploy's TestGoImageMatchesDockerfile; here: the name.
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file("podrouter:built")) })
	if err != nil || len(m) != 1 || !reflect.DeepEqual(m[0].RepoTags, []string{"podrouter:built"}) {
		t.Errorf("podrouter image: manifest %+v, %v; want one image tagged podrouter:built", m, err)
	}
}
