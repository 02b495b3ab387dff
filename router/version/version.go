// Package version says which podrouter this is: the version and commit
// the build stamped in, else what the Go toolchain recorded.
//
// Release builds (the Makefile's build and images targets, the Dockerfile)
// stamp both with the linker:
//
//	go build -ldflags "-X github.com/podrouter/podrouter/router/version.version=v0.4.0 \
//	    -X github.com/podrouter/podrouter/router/version.commit=0123abc..."
//
// An unstamped build says "devel", or the module version when built by
// `go install module@version`, and takes the commit from the VCS
// information the go command embeds (vcs.revision, with "-dirty" when
// vcs.modified), or "unknown" when there is none (-buildvcs=false, a
// build outside a checkout). It never claims a version it does not know.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker (-X); empty in an unstamped build.
var (
	version string
	commit  string
)

// Devel is the version of an unstamped build from a source tree.
const Devel = "devel"

// Info is a build's identity.
type Info struct {
	Version   string // e.g. v0.4.0, v0.4.0-3-g0123abc-dirty, or Devel
	Commit    string // the full commit hash, "-dirty" appended when the tree had changes; "unknown"
	GoVersion string // runtime.Version()
	Platform  string // GOOS/GOARCH
}

// Get returns this binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, bi)
}

// get builds the Info from the stamped values and the build info (nil
// when the binary has none).
func get(stamped, stampedCommit string, bi *debug.BuildInfo) Info {
	in := Info{Version: stamped, Commit: stampedCommit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version // go install module@version
		}
		if in.Commit == "" {
			var rev string
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if rev != "" && modified {
				rev += "-dirty"
			}
			in.Commit = rev
		}
	}
	if in.Version == "" {
		in.Version = Devel
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	return in
}

// String is the one line `podrouter version` prints.
func (in Info) String() string {
	return fmt.Sprintf("podrouter %s (commit %s, %s, %s)", in.Version, in.Commit, in.GoVersion, in.Platform)
}
