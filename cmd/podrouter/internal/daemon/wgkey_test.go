package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/podrouter/podrouter/router/node"
	"github.com/podrouter/podrouter/router/nstest"
)

func TestWireGuardKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, WireGuardKeyFile)
	k, err := loadOrCreateKey(path, zaptest.NewLogger(t))
	if err != nil || k.IsZero() {
		t.Fatalf("create: %v %v", k, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v: want mode 0600", fi.Mode(), err)
	}
	b, _ := os.ReadFile(path)
	if string(b) != k.String()+"\n" {
		t.Fatalf("key file %q: want the base64 key and a newline, as wg genkey", b)
	}
	if k2, err := loadOrCreateKey(path, zaptest.NewLogger(t)); err != nil || k2 != k {
		t.Fatalf("reload: %v %v, want the same key", k2, err)
	}
	// A key made by wg genkey (any base64 key, surrounding space ignored).
	wg := "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
	other := filepath.Join(dir, "genkey")
	if err := os.WriteFile(other, []byte("  "+wg+"\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := loadOrCreateKey(other, zaptest.NewLogger(t)); err != nil || k.String() != wg {
		t.Fatalf("wg genkey's file: %v %v", k, err)
	}

	for _, tc := range []struct {
		name, data string
		mode       os.FileMode
		want       string
	}{
		{"group readable", wg + "\n", 0o640, "mode 0640"},
		{"world readable", wg + "\n", 0o604, "mode 0604"},
		{"garbage", "not a key\n", 0o600, "malformed"},
		{"short", "QkJC\n", 0o600, "malformed"},
		{"zero key", strings.Repeat("A", 43) + "=\n", 0o600, "malformed"},
		{"two keys", wg + "\n" + wg + "\n", 0o600, "malformed"},
		{"huge", strings.Repeat("A", 4096), 0o600, "over 256 bytes"},
		{"empty", "", 0o600, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), WireGuardKeyFile)
			if err := os.WriteFile(p, []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := loadOrCreateKey(p, zaptest.NewLogger(t))
			if !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v: want ErrKeyFile saying %q", err, tc.want)
			}
			if b, _ := os.ReadFile(p); string(b) != tc.data {
				t.Fatalf("the refused file was changed: %q", b)
			}
		})
	}
	t.Run("symlink", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), WireGuardKeyFile)
		if err := os.Symlink(path, p); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateKey(p, zaptest.NewLogger(t)); !errors.Is(err, ErrKeyFile) {
			t.Fatalf("err %v: want ErrKeyFile for a symlink", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), WireGuardKeyFile)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateKey(p, zaptest.NewLogger(t)); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), "regular file") {
			t.Fatalf("err %v: want ErrKeyFile for a directory", err)
		}
	})
}

// TestDaemonWireGuardKeyRestart: a wireguard daemon makes its key in the
// state directory, shows its public key in the status, and has the same
// one after a restart; a key file others may read stops it with a clear
// error.
func TestDaemonWireGuardKeyRestart(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t)
	dir := t.TempDir()
	uid := uint32(0)
	cfg := Config{
		PodCIDR:     netip.MustParsePrefix(fmt.Sprintf("10.252.%d.0/24", 1+rand.IntN(250))),
		StateDir:    filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "run", "api.sock"),
		Uplink:      fmt.Sprintf("prw%05x", rand.IntN(1<<20)),
		APIAllowUID: &uid,
		Underlay:    UnderlayConfig{Backend: node.BackendWireGuard, Listen: netip.MustParseAddrPort("127.0.0.1:0")},
		Logger:      zaptest.NewLogger(t),
	}
	start := func() (*Daemon, error) {
		var d *Daemon
		err := ns.Do(func() (err error) { d, err = New(cfg); return err })
		return d, err
	}
	publicKey := func() string {
		d, err := start()
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := d.Close(); err != nil {
				t.Error(err)
			}
		}()
		st, err := (handler{d}).Status(context.Background())
		if err != nil || st.Backend != node.BackendWireGuard || st.PublicKey == "" {
			t.Fatalf("status %+v, %v: want the wireguard backend and its public key", st, err)
		}
		return st.PublicKey
	}
	first := publicKey()
	keyFile := filepath.Join(cfg.StateDir, WireGuardKeyFile)
	k, err := loadKey(keyFile)
	if err != nil || node.PublicKey(k).String() != first {
		t.Fatalf("key file %v, %v: want the private key of %s", k, err, first)
	}
	if again := publicKey(); again != first {
		t.Fatalf("public key after a restart %s, want %s", again, first)
	}
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := start(); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), "mode 0644") {
		if d != nil {
			_ = d.Close()
		}
		t.Fatalf("New with a world-readable key: %v, want ErrKeyFile naming the mode", err)
	}
}
