package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// recordSyncs makes sync record the names it syncs, in order.
func recordSyncs(t *testing.T) *[]string {
	var names []string
	old := sync
	sync = func(f *os.File) error {
		names = append(names, f.Name())
		return old(f)
	}
	t.Cleanup(func() { sync = old })
	return &names
}

func TestWriteSyncsFileThenDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-podrouter.conflist")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	syncs := recordSyncs(t)
	if err := Write(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q, %v", b, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	// The temp file (in the same directory, with the prefix) is synced
	// before the rename, the directory after it.
	if len(*syncs) != 2 || filepath.Dir((*syncs)[0]) != dir || !strings.HasPrefix(filepath.Base((*syncs)[0]), TempPrefix+"10-podrouter.conflist-") ||
		filepath.Clean((*syncs)[1]) != dir {
		t.Fatalf("synced %q: want the temp file in %s, then the directory", *syncs, dir)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the file", len(ents))
	}
}

func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := sync
	sync = func(f *os.File) error { return errors.New("disk on fire") }
	t.Cleanup(func() { sync = old })
	if err := Write(path, []byte("new"), 0o600); err == nil {
		t.Fatal("no error when the file's fsync fails")
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("path holds %q after a failed write, want the old content", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries after a failed write: a temp file left behind", len(ents))
	}
	// Renaming over a directory fails: nothing left either.
	sync = old
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(sub, []byte("x"), 0o600); err == nil {
		t.Fatal("renamed over a non-empty directory")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d entries after a failed rename, want 2", len(ents))
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("wrote into a missing directory")
	}
}

// TestReadersSeeWholeFiles: a reader racing the writer sees one whole
// version or another, never a mix or a truncated file.
func TestReadersSeeWholeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	a, b := bytes.Repeat([]byte("a"), 1<<20), bytes.Repeat([]byte("b"), 1<<20)
	if err := Write(path, a, 0o644); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan error)
	go func() {
		for i := 0; !stop.Load(); i++ {
			data := a
			if i%2 == 1 {
				data = b
			}
			if err := Write(path, data, 0o644); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 200 {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
			t.Fatalf("read %d bytes that are neither version", len(got))
		}
	}
	stop.Store(true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "podrouter-cni")
	n, err := Copy(path, strings.NewReader("#!/bin/true\n"), 0o755)
	if err != nil || n != 12 {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
}
