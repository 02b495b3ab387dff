package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupFS is where the cgroup hierarchies are mounted.
const cgroupFS = "/sys/fs/cgroup"

// hierarchies returns the mount points of every cgroup hierarchy: one
// for cgroup v2, one per controller (and the named and unified ones) for
// v1 and hybrid.
func hierarchies() ([]string, error) {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS}, nil
	}
	ents, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		p := filepath.Join(cgroupFS, e.Name())
		// Co-mounted controllers show up as symlinks (cpu -> cpu,cpuacct):
		// only real mount points count.
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out, nil
}

// makeCgroup creates the cgroup path (like /podr-ab12/node-1) in every
// hierarchy; in cpuset it copies cpus and mems from the parent, which a
// new v1 cpuset needs before it takes a task.
func makeCgroup(path string) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		parts := strings.Split(strings.Trim(path, "/"), "/")
		dir := h
		for _, part := range parts {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("cluster: cgroup %s: %w", dir, err)
			}
			if filepath.Base(h) == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return err
					}
					if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) == "" {
						if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
							return fmt.Errorf("cluster: cgroup %s/%s: %w", dir, f, err)
						}
					}
				}
			}
		}
	}
	return nil
}

// joinCgroup moves pid into path in every hierarchy.
func joinCgroup(path string, pid int) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		f := filepath.Join(h, path, "cgroup.procs")
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("cluster: join %s: %w", f, err)
		}
	}
	return nil
}

// removeCgroup kills every process in path and below, in every
// hierarchy, and removes the cgroups, deepest first. A missing path is no
// error.
func removeCgroup(path string) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for try := 0; try < 50; try++ {
		errs = errs[:0]
		for _, h := range hs {
			root := filepath.Join(h, path)
			var dirs []string
			_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			slices.Reverse(dirs) // deepest first
			for _, d := range dirs {
				killProcs(filepath.Join(d, "cgroup.procs"))
				if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
		if len(errs) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cluster: remove cgroups %s: %w", path, errors.Join(errs...))
}

// killProcs sends SIGKILL to every pid listed in a cgroup.procs file.
func killProcs(procs string) {
	b, err := os.ReadFile(procs)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
