package daemon

// The wireguard backend's private key lives in the state directory as
// wireguard.key: 0600, one line of base64 as `wg genkey` writes it, so an
// operator can read it with wg(8) tools and a restarted daemon keeps its
// public key (the one its Node announces and its peers have configured).
// A missing key is generated and written atomically; an existing one that
// others may read, or that does not parse, is refused rather than replaced:
// replacing it would silently change the node's identity, and a readable
// key is already compromised.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/atomicfile"
	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/underlay"
)

// WireGuardKeyFile is, in the state directory, the node's WireGuard
// private key.
const WireGuardKeyFile = "wireguard.key"

// ErrKeyFile is wrapped by the errors of a key file that exists but cannot
// be used.
var ErrKeyFile = errors.New("daemon: wireguard key file")

// maxKeyFile bounds what is read of a key file (a key is 45 bytes).
const maxKeyFile = 256

// loadOrCreateKey returns the private key in path, generating and writing
// it (0600, atomically) when path does not exist.
func loadOrCreateKey(path string, log *zap.Logger) (node.Key, error) {
	k, err := loadKey(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	if k, err = node.GenerateKey(); err != nil {
		return node.Key{}, err
	}
	if err := atomicfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return node.Key{}, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	log.Info("wireguard private key generated", zap.String("file", path), zap.Stringer("publicKey", node.PublicKey(k)))
	return k, nil
}

// loadKey reads the private key in path. The file must be a regular file
// (not a link) that neither its group nor others may read or write.
func loadKey(path string) (node.Key, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return node.Key{}, err
		}
		return node.Key{}, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return node.Key{}, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	if !fi.Mode().IsRegular() {
		return node.Key{}, fmt.Errorf("%w: %s: %v: want a regular file", ErrKeyFile, path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return node.Key{}, fmt.Errorf("%w: %s: mode %04o lets group or others at the private key: chmod 600 it if it was not exposed, else remove it to make a new key",
			ErrKeyFile, path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return node.Key{}, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	if len(b) > maxKeyFile {
		return node.Key{}, fmt.Errorf("%w: %s: over %d bytes: want one base64 key as `wg genkey` writes it", ErrKeyFile, path, maxKeyFile)
	}
	k, err := underlay.ParseKey(strings.TrimSpace(string(b)))
	if err != nil || k.IsZero() {
		return node.Key{}, fmt.Errorf("%w: %s: malformed: want one base64 key of 32 bytes as `wg genkey` writes it", ErrKeyFile, path)
	}
	return k, nil
}
