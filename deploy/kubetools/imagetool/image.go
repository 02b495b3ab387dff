package main

// An image is one layer built from a list of entries plus a config:
//
//	entries (file, dir, symlink) --> tar (sorted, parents implied, fixed mtime)
//	  --> gzip layer --> v1.Image (empty + layer + config, linux/amd64)
//	  --> docker-archive tarball with RepoTags = [name]
//
// The docker-archive format (manifest.json with RepoTags) is what
// `ctr images import` and `docker load` both read; containerd normalizes
// the tag (podrouter:dev -> docker.io/library/podrouter:dev), as the
// kubelet does with a pod's image field, so the imported image is found
// under the name a pod spec uses and is never pulled.
//
// Design notes: every entry's mtime is the Unix epoch and the config has
// no creation time, so the same inputs give the same image digest; the
// Makefile can then rebuild freely and containerd sees an unchanged image.

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Kind is what an Entry puts at its path.
type Kind int

const (
	// File copies the bytes of Entry.Src.
	File Kind = iota
	// Dir makes a directory.
	Dir
	// Symlink makes a symbolic link to Entry.Target.
	Symlink
)

func (k Kind) String() string {
	switch k {
	case File:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Entry is one path in the image's filesystem.
type Entry struct {
	Kind   Kind
	Path   string // absolute path in the image, cleaned
	Src    string // File: the file on this machine to copy
	Target string // Symlink: what the link points to
	Mode   int64  // permission bits (and setuid/sticky); ignored for Symlink
	UID    int
	GID    int
	// Caps are File's capabilities (a mask of 1<<CAP_*), effective and
	// permitted, as `setcap CAPS=+ep`; 0: none.
	Caps uint64
}

// Spec is everything an image is made of.
type Spec struct {
	Name    name.Tag
	Entries []Entry
	Config  v1.Config
}

// epoch is every entry's mtime: fixed, so that builds are reproducible.
var epoch = time.Unix(0, 0).UTC()

// Errors of a Spec that cannot become an image.
var (
	ErrDuplicatePath = errors.New("imagetool: path given twice")
	ErrRelativePath  = errors.New("imagetool: path in image must be absolute")
	ErrCapsNotFile   = errors.New("imagetool: capabilities on an entry that is not a file")
)

// Layer writes the uncompressed tar of the entries: sorted by path, with
// every missing parent directory added as root:root 0755.
func Layer(entries []Entry) ([]byte, error) {
	byPath := map[string]Entry{}
	for _, e := range entries {
		if !path.IsAbs(e.Path) {
			return nil, fmt.Errorf("%w: %q", ErrRelativePath, e.Path)
		}
		e.Path = path.Clean(e.Path)
		if e.Path == "/" {
			return nil, fmt.Errorf("%w: %q", ErrRelativePath, e.Path)
		}
		if e.Caps != 0 && e.Kind != File {
			return nil, fmt.Errorf("%w: %s", ErrCapsNotFile, e.Path)
		}
		if _, dup := byPath[e.Path]; dup {
			return nil, fmt.Errorf("%w: %s", ErrDuplicatePath, e.Path)
		}
		byPath[e.Path] = e
	}
	for p := range byPath {
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := byPath[dir]; !ok {
				byPath[dir] = Entry{Kind: Dir, Path: dir, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    e.Mode,
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		var body []byte
		switch e.Kind {
		case File:
			b, err := os.ReadFile(e.Src)
			if err != nil {
				return nil, fmt.Errorf("imagetool: %s: %w", p, err)
			}
			body = b
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(b))
			if e.Caps != 0 {
				hdr.PAXRecords = map[string]string{xattrCapability: string(vfsCap(e.Caps))}
			}
		case Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case Symlink:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Target
			hdr.Mode = 0o777
		default:
			return nil, fmt.Errorf("imagetool: %s: unknown entry kind %v", p, e.Kind)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("imagetool: %s: %w", p, err)
		}
		if _, err := tw.Write(body); err != nil {
			return nil, fmt.Errorf("imagetool: %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image builds the linux/amd64 image of a Spec.
func Image(s Spec) (v1.Image, error) {
	raw, err := Layer(s.Entries)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("imagetool: layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("imagetool: layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagetool: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = "amd64"
	cf.Config = s.Config
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagetool: config: %w", err)
	}
	return img, nil
}

// Write builds the image of a Spec and writes it as a docker-archive
// tarball tagged with s.Name, replacing out atomically.
func Write(s Spec, out string) (v1.Image, error) {
	img, err := Image(s)
	if err != nil {
		return nil, err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, s.Name, img); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("imagetool: write %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("imagetool: write %s: %w", out, err)
	}
	return img, nil
}
