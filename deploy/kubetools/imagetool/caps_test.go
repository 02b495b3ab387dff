package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestVFSCap compares the encoding with what `setcap CAPS=+ep FILE` wrote
// into security.capability on Linux 6.x (getxattr, hex).
func TestVFSCap(t *testing.T) {
	tests := []struct {
		name, caps, want string
	}{
		// magic_etc 0x02000001 | data[0] permitted 1<<10, inheritable 0 | data[1] 0, 0
		{"net_bind_service", "cap_net_bind_service", "01000002" + "00040000" + "00000000" + "00000000" + "00000000"},
		// 13 in data[0]; checkpoint_restore (40) is bit 8 of data[1].permitted
		{"two words", "NET_RAW,cap_checkpoint_restore", "01000002" + "00200000" + "00000000" + "00010000" + "00000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mask, err := parseCaps(tt.caps)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(vfsCap(mask)); got != tt.want {
				t.Errorf("vfsCap(%s) = %s, want %s", tt.caps, got, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "cap_net_bind", "net_bind_service,", "cap_41"} {
		if _, err := parseCaps(bad); err == nil {
			t.Errorf("parseCaps(%q): no error", bad)
		}
	}
}

// TestLayerCaps checks that a file's capabilities travel as the PAX
// record containerd turns into the security.capability attribute, and
// that only files may carry them.
func TestLayerCaps(t *testing.T) {
	src := filepath.Join(t.TempDir(), "coredns")
	if err := os.WriteFile(src, []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := Layer([]Entry{
		{Kind: File, Path: "/coredns", Src: src, Mode: 0o755, Caps: 1 << 10},
		{Kind: File, Path: "/plain", Src: src, Mode: 0o755},
	})
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]map[string]string{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		records[h.Name] = h.PAXRecords
	}
	if got, want := hex.EncodeToString([]byte(records["coredns"][xattrCapability])), "0100000200040000000000000000000000000000"; got != want {
		t.Errorf("coredns: %s = %s, want %s", xattrCapability, got, want)
	}
	if v, ok := records["plain"][xattrCapability]; ok {
		t.Errorf("plain: has %s %x", xattrCapability, v)
	}
	if _, err := Layer([]Entry{{Kind: Dir, Path: "/d", Caps: 1}}); !errors.Is(err, ErrCapsNotFile) {
		t.Errorf("caps on a dir: err %v, want %v", err, ErrCapsNotFile)
	}
}

// layerCaps returns, in hex, the security.capability record of file in
// the one layer of the image ref in the tarball at path ("" if none).
func layerCaps(t *testing.T, path, ref, file string) string {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
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
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("%s: no %s in the image", path, file)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == file {
			return hex.EncodeToString([]byte(h.PAXRecords[xattrCapability]))
		}
	}
}

// corednsVersion is the CoreDNS version deploy/kubetools/coredns pins.
func corednsVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../coredns/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "github.com/coredns/coredns" {
			return f[1]
		}
	}
	t.Fatal("../coredns/go.mod requires no github.com/coredns/coredns")
	return ""
}
