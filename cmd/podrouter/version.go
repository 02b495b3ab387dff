package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/podrouter/podrouter/router/version"
)

// version prints the build's identity (router/version): what the Makefile
// or the Dockerfile stamped in, else "devel" and the VCS commit the go
// command recorded. `podrouter --version` is the same.

func init() {
	register(command{
		name:    "version",
		summary: "print podrouter's version, commit, Go version and platform (also --version)",
		run:     runVersion,
	})
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.BoolVar(&asJSON, "json", false, "print a JSON object: version, commit, goVersion, platform")
	if rc := parseFlags(fs, "Usage: podrouter version [--json]\n\n"+
		"Prints the version and commit the build stamped in (make build, make images,\n"+
		"the Dockerfile), or \"devel\" and the commit the go command recorded for a\n"+
		"plain go build (\"unknown\" when it recorded none).\n\nFlags:\n", args, stdout, stderr); rc >= 0 {
		return rc
	}
	in := version.Get()
	if !asJSON {
		fmt.Fprintln(stdout, in)
		return 0
	}
	b, _ := json.Marshal(struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		GoVersion string `json:"goVersion"`
		Platform  string `json:"platform"`
	}{in.Version, in.Commit, in.GoVersion, in.Platform})
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}
