package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// onlyFiles fails the test unless dir holds exactly the named entries (no
// temporary file left behind).
func onlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s holds %v, want %v", dir, got, want)
	}
}

func TestInstallCNI(t *testing.T) {
	srcDir, dest := t.TempDir(), t.TempDir()
	src := filepath.Join(srcDir, "podrouter-cni")
	if err := os.WriteFile(src, []byte("new plugin"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dest, "podrouter-cni")
	if err := os.WriteFile(dst, []byte("old plugin, longer than the new one"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A runtime executing the old plugin holds it open: it must keep
	// reading the old bytes (the new file is renamed over, not rewritten).
	old, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	var out, errb bytes.Buffer
	if rc := run([]string{"install-cni", "--src", src, "--dest", dest}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	if !strings.Contains(out.String(), "installed "+src+" -> "+dst+" (10 bytes)") {
		t.Errorf("stdout %q does not report the install", out.String())
	}
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != "new plugin" {
		t.Fatalf("installed file = %q, %v; want the source's bytes", got, err)
	}
	st, err := os.Stat(dst)
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed mode = %v, %v; want 0755", st.Mode(), err)
	}
	if b, _ := io.ReadAll(old); string(b) != "old plugin, longer than the new one" {
		t.Errorf("the old plugin's open file now reads %q: it was rewritten in place", b)
	}
	onlyFiles(t, dest, "podrouter-cni")

	// Again: idempotent.
	if rc := run([]string{"install-cni", "--src", src, "--dest", dest}, &out, &errb); rc != 0 {
		t.Fatalf("second install: exit %d: %s", rc, errb.String())
	}
	onlyFiles(t, dest, "podrouter-cni")

	// Installing a file over itself leaves it as it is.
	if n, err := installFile(dst, dst); err != nil || n != 10 {
		t.Fatalf("install over itself: %d, %v", n, err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "new plugin" {
		t.Fatalf("install over itself changed the file to %q", got)
	}
}

func TestInstallCNIFailures(t *testing.T) {
	dest := t.TempDir()
	dst := filepath.Join(dest, "podrouter-cni")
	if err := os.WriteFile(dst, []byte("keep me"), 0o755); err != nil {
		t.Fatal(err)
	}
	srcDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(srcDir, "podrouter-cni"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := installFile(filepath.Join(srcDir, "podrouter-cni"), dst); !errors.Is(err, ErrNotRegular) {
		t.Errorf("installing a directory: err = %v, want ErrNotRegular", err)
	}
	cases := []struct {
		name string
		args []string
		rc   int
		want string
	}{
		{"missing source", []string{"--src", filepath.Join(t.TempDir(), "podrouter-cni"), "--dest", dest}, 1, "no such file"},
		{"source is a directory", []string{"--src", filepath.Join(srcDir, "podrouter-cni"), "--dest", dest}, 1, "not a regular file"},
		{"missing destination", []string{"--src", "/proc/self/exe", "--dest", filepath.Join(dest, "nope")}, 1, "nope"},
		{"relative destination", []string{"--dest", "opt/cni/bin"}, 2, "--dest"},
		{"empty source in the list", []string{"--src", "/proc/self/exe,", "--dest", dest}, 2, "empty path"},
		{"unknown flag", []string{"--bogus"}, 2, "-bogus"},
		{"stray argument", []string{"extra"}, 2, "extra"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run(append([]string{"install-cni"}, tc.args...), &out, &errb); rc != tc.rc {
				t.Fatalf("exit %d, want %d (stderr %q)", rc, tc.rc, errb.String())
			}
			msg := errb.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
				t.Fatalf("want one line naming %q, got %q", tc.want, msg)
			}
		})
	}
	if got, _ := os.ReadFile(dst); string(got) != "keep me" {
		t.Errorf("failed installs changed the destination to %q", got)
	}
	onlyFiles(t, dest, "podrouter-cni")
}

func TestHelpInstallCNI(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := run([]string{"help", "install-cni"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	for _, f := range []string{"-src", "-dest", "atomically"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help lacks %s:\n%s", f, out.String())
		}
	}
}

// TestInstallCNIMany installs the plugin and its IPAM plugin in one run,
// as the DaemonSet's init container does (--src a,b).
func TestInstallCNIMany(t *testing.T) {
	srcDir, dest := t.TempDir(), t.TempDir()
	var srcs []string
	for _, name := range cniPlugins {
		p := filepath.Join(srcDir, name)
		if err := os.WriteFile(p, []byte(name+" binary"), 0o600); err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, p)
	}
	var out, errb bytes.Buffer
	if rc := run([]string{"install-cni", "--src", strings.Join(srcs, ","), "--dest", dest}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	for _, name := range cniPlugins {
		if got, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(got) != name+" binary" {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	onlyFiles(t, dest, "host-local", "podrouter-cni", "portmap")
}
