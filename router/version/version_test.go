package version

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/podrouter/podrouter", Version: "(devel)"}}
		if rev != "" {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.revision", Value: rev})
		}
		if modified != "" {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return bi
	}
	installed := &debug.BuildInfo{Main: debug.Module{Path: "github.com/podrouter/podrouter", Version: "v0.4.1"}}
	for _, tc := range []struct {
		name            string
		stamped, commit string
		bi              *debug.BuildInfo
		wantV, wantC    string
	}{
		{"stamped", "v0.4.0", "0123abc", vcs("fff", "true"), "v0.4.0", "0123abc"},
		{"stamped version only", "v0.4.0", "", vcs("fedcba", "false"), "v0.4.0", "fedcba"},
		{"vcs clean", "", "", vcs("fedcba", "false"), Devel, "fedcba"},
		{"vcs dirty", "", "", vcs("fedcba", "true"), Devel, "fedcba-dirty"},
		{"no vcs", "", "", vcs("", ""), Devel, "unknown"},
		{"no build info", "", "", nil, Devel, "unknown"},
		{"go install @version", "", "", installed, "v0.4.1", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := get(tc.stamped, tc.commit, tc.bi)
			if in.Version != tc.wantV || in.Commit != tc.wantC {
				t.Errorf("version %q commit %q, want %q %q", in.Version, in.Commit, tc.wantV, tc.wantC)
			}
			if in.GoVersion != runtime.Version() || in.Platform != runtime.GOOS+"/"+runtime.GOARCH {
				t.Errorf("go %q platform %q", in.GoVersion, in.Platform)
			}
		})
	}
	want := "podrouter v1 (commit abc, " + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	if got := get("v1", "abc", nil).String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// TestGetThisBinary: the test binary is unstamped; it must say so.
func TestGetThisBinary(t *testing.T) {
	if in := Get(); in.Version != Devel || in.Commit == "" {
		t.Errorf("unstamped test binary: %+v", in)
	}
}
