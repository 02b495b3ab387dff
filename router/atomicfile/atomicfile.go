// Package atomicfile replaces files so that a reader, or the next boot after
// a crash, sees either the old content or the whole new one, never a part:
//
//	temp file in the same directory ─► write ─► chmod ─► fsync file
//	  ─► rename over the path ─► fsync directory
//
// The temporary file lives in the target's directory because rename(2) is
// atomic only within one file system; the file is synced before the rename
// so the new name never points at unwritten blocks, and the directory is
// synced after it so the rename itself survives a power loss (without that
// fsync ext4 and xfs may come back with the old name, or none). Every writer
// of the daemon's state and configuration files (attachment records, the
// Kubernetes state, the WireGuard key, the CNI conflist, subnet.env, the
// installed CNI binaries, the lab's state file) goes through here.
package atomicfile

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// TempPrefix starts the name of every temporary file (TempPrefix, the
// target's base name, '-', a random suffix). A crash between create and
// rename leaves one behind, for the directory's owner to remove (the
// daemon's state store does at start). Their extension is no config
// file's, so libcni never loads one from a CNI config directory.
const TempPrefix = ".tmp-"

// sync is f.Sync; tests record the order of the calls.
var sync = (*os.File).Sync

// Write replaces path with data, with mode (not subject to the umask). The
// directory must exist. On error path is unchanged and no temporary file is
// left, except when only the final directory sync failed: path then holds
// data, and the error says so.
func Write(path string, data []byte, mode os.FileMode) error {
	_, err := Copy(path, bytes.NewReader(data), mode)
	return err
}

// Copy is Write with the content read from r; it returns the bytes
// written.
func Copy(path string, r io.Reader, mode os.FileMode) (int64, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, TempPrefix+base+"-*")
	if err != nil {
		return 0, err
	}
	success := false
	defer func() {
		if !success {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	n, err := io.Copy(f, r)
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Chmod(mode); err != nil {
		return 0, err
	}
	if err := sync(f); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return 0, err
	}
	success = true
	if err := SyncDir(dir); err != nil {
		return n, fmt.Errorf("%s written, but its directory not synced (the rename may not survive a crash): %w", path, err)
	}
	return n, nil
}

// SyncDir fsyncs the directory dir: a rename, create or remove in it is
// then durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return sync(d)
}
