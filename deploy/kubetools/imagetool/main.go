// Command imagetool builds a single-layer linux/amd64 OCI image from files
// on this machine and writes it as a tarball that `ctr -n k8s.io images
// import` (or `docker load`) reads under the given name: no registry and
// no docker daemon. The Makefile's `images` target drives it.
//
//	imagetool -name registry.k8s.io/pause:3.10.2 -o pause.tar \
//	  -file /pause=.cache/images/bin/pause:0755 -entrypoint /pause -user 65535:65535
//
// Entries (each flag repeats):
//
//	-file DST=SRC[:MODE[:UID:GID]]   copy SRC to DST (MODE octal; default SRC's permissions)
//	-dir DST[:MODE[:UID:GID]]        a directory (default 0755 root:root)
//	-symlink DST=TARGET              a symbolic link
//	-cap DST=CAP[,CAP...]            file capabilities of the -file DST, as `setcap CAPS=+ep`
//	                                 (names as capabilities(7), e.g. cap_net_bind_service)
//
// Parent directories are implied (0755 root:root).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string) error {
	fs := flag.NewFlagSet("imagetool", flag.ContinueOnError)
	ref := fs.String("name", "", "image reference written into the tarball (required)")
	out := fs.String("o", "", "output tarball (required)")
	user := fs.String("user", "", "config User (uid[:gid])")
	workdir := fs.String("workdir", "", "config WorkingDir")
	var files, dirs, links, caps, entrypoint, cmd, env, labels list
	fs.Var(&files, "file", "DST=SRC[:MODE[:UID:GID]]")
	fs.Var(&dirs, "dir", "DST[:MODE[:UID:GID]]")
	fs.Var(&links, "symlink", "DST=TARGET")
	fs.Var(&caps, "cap", "DST=CAP[,CAP...]: file capabilities (effective, permitted) of the -file DST")
	fs.Var(&entrypoint, "entrypoint", "one entrypoint argument (repeat)")
	fs.Var(&cmd, "cmd", "one cmd argument (repeat)")
	fs.Var(&env, "env", "KEY=VALUE (repeat)")
	fs.Var(&labels, "label", "KEY=VALUE (repeat)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *out == "" || fs.NArg() != 0 {
		return fmt.Errorf("imagetool: -name and -o are required, and no positional arguments (got %q)", fs.Args())
	}
	tag, err := name.NewTag(*ref)
	if err == nil && !strings.Contains(path.Base(*ref), ":") {
		err = errors.New("no tag") // else it would silently be :latest
	}
	if err != nil {
		return fmt.Errorf("imagetool: -name %q: want a tagged reference: %w", *ref, err)
	}
	spec := Spec{Name: tag, Config: v1.Config{
		Entrypoint: entrypoint,
		Cmd:        cmd,
		User:       *user,
		WorkingDir: *workdir,
		Env:        env,
	}}
	if len(labels) > 0 {
		spec.Config.Labels = map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return fmt.Errorf("imagetool: -label %q: want KEY=VALUE", l)
			}
			spec.Config.Labels[k] = v
		}
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("imagetool: -env %q: want KEY=VALUE", e)
		}
	}
	for _, f := range files {
		e, err := parseFile(f)
		if err != nil {
			return err
		}
		spec.Entries = append(spec.Entries, e)
	}
	for _, c := range caps {
		dst, names, ok := strings.Cut(c, "=")
		if !ok || names == "" {
			return fmt.Errorf("imagetool: -cap %q: want DST=CAP[,CAP...]", c)
		}
		mask, err := parseCaps(names)
		if err != nil {
			return fmt.Errorf("imagetool: -cap %q: %w", c, err)
		}
		found := false
		for i := range spec.Entries {
			if path.Clean(spec.Entries[i].Path) == path.Clean(dst) {
				spec.Entries[i].Caps |= mask
				found = true
			}
		}
		if !found {
			return fmt.Errorf("imagetool: -cap %q: no -file %s", c, dst)
		}
	}
	for _, d := range dirs {
		dst, rest, _ := strings.Cut(d, ":")
		e := Entry{Kind: Dir, Path: dst, Mode: 0o755}
		if err := parseOwner(&e, rest); err != nil {
			return fmt.Errorf("imagetool: -dir %q: %w", d, err)
		}
		spec.Entries = append(spec.Entries, e)
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || target == "" {
			return fmt.Errorf("imagetool: -symlink %q: want DST=TARGET", l)
		}
		spec.Entries = append(spec.Entries, Entry{Kind: Symlink, Path: dst, Target: target})
	}
	img, err := Write(spec, *out)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]any{"name": tag.String(), "file": *out, "bytes": st.Size(), "digest": digest.String()})
	fmt.Println(string(line))
	return nil
}

// parseFile parses DST=SRC[:MODE[:UID:GID]].
func parseFile(f string) (Entry, error) {
	dst, src, ok := strings.Cut(f, "=")
	if !ok || src == "" {
		return Entry{}, fmt.Errorf("imagetool: -file %q: want DST=SRC[:MODE[:UID:GID]]", f)
	}
	src, rest, _ := strings.Cut(src, ":")
	st, err := os.Stat(src)
	if err != nil {
		return Entry{}, fmt.Errorf("imagetool: -file %q: %w", f, err)
	}
	if !st.Mode().IsRegular() {
		return Entry{}, fmt.Errorf("imagetool: -file %q: %s is not a regular file", f, src)
	}
	e := Entry{Kind: File, Path: dst, Src: src, Mode: int64(st.Mode().Perm())}
	if err := parseOwner(&e, rest); err != nil {
		return Entry{}, fmt.Errorf("imagetool: -file %q: %w", f, err)
	}
	return e, nil
}

// parseOwner parses [MODE[:UID:GID]] into e, keeping e's defaults for
// what is absent.
func parseOwner(e *Entry, s string) error {
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ":")
	if len(parts) != 1 && len(parts) != 3 {
		return fmt.Errorf("want MODE or MODE:UID:GID, got %q", s)
	}
	mode, err := strconv.ParseInt(parts[0], 8, 64)
	if err != nil || mode < 0 || mode > 0o7777 {
		return fmt.Errorf("mode %q: want octal 0..7777", parts[0])
	}
	e.Mode = mode
	if len(parts) == 3 {
		if e.UID, err = strconv.Atoi(parts[1]); err != nil || e.UID < 0 {
			return fmt.Errorf("uid %q: want a number", parts[1])
		}
		if e.GID, err = strconv.Atoi(parts[2]); err != nil || e.GID < 0 {
			return fmt.Errorf("gid %q: want a number", parts[2])
		}
	}
	return nil
}
