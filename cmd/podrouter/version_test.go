package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: `podrouter version` and `podrouter --version` print the same
// line; an unstamped (test) binary says devel. --json is one object.
func TestVersion(t *testing.T) {
	var lines []string
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		var out, errb bytes.Buffer
		if rc := run(args, &out, &errb); rc != 0 || errb.Len() > 0 {
			t.Fatalf("%v: exit %d, stderr %q", args, rc, errb.String())
		}
		lines = append(lines, out.String())
	}
	if want := "podrouter devel (commit "; !strings.HasPrefix(lines[0], want) || !strings.HasSuffix(lines[0], ", "+runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")\n") {
		t.Errorf("version: %q, want %q... with the Go version and platform", lines[0], want)
	}
	if lines[1] != lines[0] || lines[2] != lines[0] {
		t.Errorf("--version %q and -version %q differ from version %q", lines[1], lines[2], lines[0])
	}
	var out, errb bytes.Buffer
	if rc := run([]string{"version", "--json"}, &out, &errb); rc != 0 {
		t.Fatalf("version --json: exit %d, stderr %q", rc, errb.String())
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["version"] != "devel" || v["commit"] == "" || v["goVersion"] != runtime.Version() || v["platform"] == "" {
		t.Errorf("version --json: %q (%v)", out.String(), err)
	}
	var usage bytes.Buffer
	run([]string{"help"}, &usage, &errb)
	if !strings.Contains(usage.String(), "podrouter version") || !strings.Contains(usage.String(), "podrouter --version") {
		t.Errorf("usage lacks version:\n%s", usage.String())
	}
	checkUsageErrors(t, nil, []usageCase{{"stray argument", []string{"version", "now"}, "now"}})
}
