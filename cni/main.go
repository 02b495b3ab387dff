package cni

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// about is what the plugin prints when run without CNI_COMMAND.
const about = "podrouter-cni: pods on the podrouter engine"

// Main runs funcs as the CNI plugin (skel dispatches on CNI_COMMAND) and
// exits: 0 on success; 1 with a CNI error JSON on stdout on failure. A
// panic anywhere in the plugin is such a failure too, never a Go crash
// (exit 2 and a stack trace, which the runtime cannot parse and retries
// forever): it becomes error 999 (ErrInternal) naming the panic and where
// it happened, and the stack goes to stderr, which runtimes log.
func Main(funcs skel.CNIFuncs) {
	if e := run(funcs); e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintln(os.Stderr, "podrouter-cni: write error JSON:", err)
		}
		os.Exit(1)
	}
}

// run is Main without the exit: skel's dispatch with the panic turned
// into an error.
func run(funcs skel.CNIFuncs) (e *types.Error) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			fmt.Fprintf(os.Stderr, "podrouter-cni: panic: %v\n%s", r, stack)
			e = panicError(r, stack)
		}
	}()
	return skel.PluginMainFuncsWithError(funcs, version.PluginSupports(SupportedVersions...), about)
}

// panicError is the CNI error for a recovered panic r: its value as the
// message, and as details the function and line that panicked (read off
// stack, the panicking goroutine's stack as debug.Stack prints it), not the
// stack itself.
func panicError(r any, stack []byte) *types.Error {
	return types.NewError(types.ErrInternal, fmt.Sprintf("podrouter-cni: panic: %v", r), panicSite(stack))
}

// panicSite returns "function (file:line)" of the innermost frame of stack
// that is neither the runtime's nor this file's recovery, "" when none.
func panicSite(stack []byte) string {
	lines := strings.Split(string(stack), "\n")
	// Frames are pairs: "pkg.func(args)" then "\tfile:line +0x..".
	for i := 1; i+1 < len(lines); i += 2 {
		fn, loc := lines[i], strings.TrimSpace(lines[i+1])
		if strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "panic(") ||
			strings.Contains(fn, "runtime/debug.") || strings.Contains(fn, "/cni.run.func") {
			continue
		}
		if j := strings.LastIndex(fn, "("); j > 0 {
			fn = fn[:j]
		}
		if j := strings.LastIndex(loc, " +0x"); j > 0 {
			loc = loc[:j]
		}
		return fmt.Sprintf("%s (%s)", fn, loc)
	}
	return ""
}
