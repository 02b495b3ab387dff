package daemon

// The state store keeps one file per attachment under <state>/attachments,
// so a restarted daemon knows which persistent TAPs to re-open without any
// CNI call. Each write is atomic (temp file, fsync, rename, fsync of the
// directory): after a crash a record is either the old or the new one,
// never a torn one. The store directory is locked (flock) so two daemons
// never share it.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
)

// ErrLocked is returned by openStore when another process holds the state
// directory.
var ErrLocked = errors.New("daemon: state directory locked by another daemon")

// recordVersion is the on-disk format of a record.
const recordVersion = 1

// record is one attachment on disk.
type record struct {
	V int `json:"v"`
	api.AttachRequest
	Created int64 `json:"created"` // unix nanoseconds
}

// store is the attachment records directory. Its methods are not safe for
// concurrent use (the pods table serialises them).
type store struct {
	dir  string
	lock *os.File
}

// openStore creates (0700) and locks stateDir and returns its store.
func openStore(stateDir string) (*store, error) {
	dir := filepath.Join(stateDir, "attachments")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("daemon: state directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(stateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: state lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, stateDir)
		}
		return nil, fmt.Errorf("daemon: state lock: %w", err)
	}
	return &store{dir: dir, lock: lock}, nil
}

// Close releases the lock.
func (s *store) Close() error { return s.lock.Close() }

func (s *store) path(id api.AttachmentID) string {
	return filepath.Join(s.dir, base64.RawURLEncoding.EncodeToString([]byte(id.String()))+".json")
}

// put writes r atomically.
func (s *store) put(r record) error {
	r.V = recordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := writeAtomic(s.path(r.AttachmentID), b, 0o600); err != nil {
		return fmt.Errorf("daemon: record %s: %w", r.AttachmentID, err)
	}
	return s.syncDir()
}

// tmpPrefix starts the name of writeAtomic's temporary files; load removes
// those left by a crash.
const tmpPrefix = ".tmp-"

// writeAtomic writes data to path through a temporary file in the same
// directory, with mode, synced and renamed over path: readers see the old
// file or the whole new one. The directory must exist.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), tmpPrefix+"*")
	if err != nil {
		return err
	}
	success := false
	defer func() {
		if !success {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	success = true
	return nil
}

// remove deletes id's record; a missing record is not an error.
func (s *store) remove(id api.AttachmentID) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("daemon: remove record %s: %w", id, err)
	}
	return s.syncDir()
}

func (s *store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// load returns every record. Leftover temp files are removed; a record
// that does not decode is reported in bad (by file name) and left alone
// for an operator to look at.
func (s *store) load() (recs []record, bad []string, err error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("daemon: read state: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			bad = append(bad, name)
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.V != recordVersion || r.Validate() != nil || s.path(r.AttachmentID) != filepath.Join(s.dir, name) {
			bad = append(bad, name)
			continue
		}
		recs = append(recs, r)
	}
	return recs, bad, nil
}
