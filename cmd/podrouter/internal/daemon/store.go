package daemon

// The state store keeps one file per attachment under <state>/attachments,
// so a restarted daemon knows which persistent TAPs to re-open without any
// CNI call. In Kubernetes mode <state>/kube-state.json keeps the node's
// podCIDRs, net-conf and last applied peer snapshot, so a daemon restarted
// while the API server is away starts forwarding at once. Each write is atomic (temp file, fsync, rename, fsync of the
// directory): after a crash a record is either the old or the new one,
// never a torn one. The store directory is locked (flock) so two daemons
// never share it.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/atomicfile"
	"github.com/podrouter/podrouter/router/kube"
	"github.com/podrouter/podrouter/router/underlay"
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

// maxRecordName keeps record file names under NAME_MAX (255) with room.
const maxRecordName = 200

// path is id's record file: the ID in base64url, or, when that would be
// too long for a file name (container IDs may have up to 1024 bytes), "h-"
// and its SHA-256 (the record inside still names the ID in full).
func (s *store) path(id api.AttachmentID) string {
	name := base64.RawURLEncoding.EncodeToString([]byte(id.String()))
	if len(name) > maxRecordName {
		sum := sha256.Sum256([]byte(id.String()))
		name = "h-" + hex.EncodeToString(sum[:])
	}
	return filepath.Join(s.dir, name+".json")
}

// put writes r atomically.
func (s *store) put(r record) error {
	r.V = recordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path(r.AttachmentID), b, 0o600); err != nil {
		return fmt.Errorf("daemon: record %s: %w", r.AttachmentID, err)
	}
	return nil
}

// tmpPrefix starts the name of atomicfile's temporary files; load removes
// those left by a crash.
const tmpPrefix = atomicfile.TempPrefix

// remove deletes id's record; a missing record is not an error.
func (s *store) remove(id api.AttachmentID) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("daemon: remove record %s: %w", id, err)
	}
	return s.syncDir()
}

func (s *store) syncDir() error { return atomicfile.SyncDir(s.dir) }

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

// kubeStateFile is, in the state directory, what Kubernetes mode last knew
// of the cluster: written after every applied peer snapshot, read at start
// when the API server does not answer (README "Kubernetes mode").
const kubeStateFile = "kube-state.json"

// kubeStateVersion is the on-disk format of kubeState.
const kubeStateVersion = 1

// kubeState is the cluster's state as this node last applied it: enough to
// start the data plane without the API server.
type kubeState struct {
	V           int             `json:"v"`
	Node        string          `json:"node"`
	PodCIDRs    []netip.Prefix  `json:"podCIDRs"`
	InternalIPs []netip.Addr    `json:"internalIPs,omitempty"`
	NetConf     kube.NetConf    `json:"netConf"`
	Peers       []underlay.Peer `json:"peers"`
	// Saved is when the snapshot was applied.
	Saved time.Time `json:"saved"`
}

// ErrNoKubeState: the state directory holds no (usable) Kubernetes state.
var ErrNoKubeState = errors.New("daemon: no persisted kubernetes state")

// saveKubeState writes st to stateDir atomically (atomicfile: temp file,
// fsync, rename, directory fsync), readable by root only: it names every node's address.
func saveKubeState(stateDir string, st kubeState) error {
	st.V = kubeStateVersion
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("daemon: kube state: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(stateDir, kubeStateFile), b, 0o600); err != nil {
		return fmt.Errorf("daemon: kube state: %w", err)
	}
	return nil
}

// loadKubeState reads what saveKubeState wrote for node. A missing file,
// another node's, another format version or one without an IPv4 podCIDR
// wraps ErrNoKubeState (a missing file os.ErrNotExist too).
func loadKubeState(stateDir, node string) (kubeState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, kubeStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return kubeState{}, fmt.Errorf("%w: %w", ErrNoKubeState, err)
	}
	if err != nil {
		return kubeState{}, fmt.Errorf("daemon: kube state: %w", err)
	}
	var st kubeState
	switch {
	case json.Unmarshal(b, &st) != nil:
		return kubeState{}, fmt.Errorf("%w: %s does not decode", ErrNoKubeState, kubeStateFile)
	case st.V != kubeStateVersion:
		return kubeState{}, fmt.Errorf("%w: %s has version %d, want %d", ErrNoKubeState, kubeStateFile, st.V, kubeStateVersion)
	case st.Node != node:
		return kubeState{}, fmt.Errorf("%w: %s is node %q's, not %q's", ErrNoKubeState, kubeStateFile, st.Node, node)
	case !slices.ContainsFunc(st.PodCIDRs, func(p netip.Prefix) bool { return p.IsValid() && p.Addr().Is4() && p == p.Masked() }):
		return kubeState{}, fmt.Errorf("%w: %s has no IPv4 podCIDR", ErrNoKubeState, kubeStateFile)
	}
	return st, nil
}
