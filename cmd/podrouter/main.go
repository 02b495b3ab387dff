// Command podrouter is the podrouter node agent, its lab mode and its
// operator CLI. main stays thin: flags -> config -> run.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// command is a subcommand. Each lives in its own file and registers itself
// in init, so main.go stays the dispatcher.
type command struct {
	name    string
	summary string // one line for the usage text
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands []command

func register(c command) { commands = append(commands, c) }

func usage() string {
	var b strings.Builder
	b.WriteString("podrouter: a userspace virtual router for Kubernetes pod networking.\n\nUsage:\n")
	slices.SortFunc(commands, func(a, b command) int { return strings.Compare(a.name, b.name) })
	for _, c := range commands {
		fmt.Fprintf(&b, "  podrouter %-10s %s\n", c.name, c.summary)
	}
	b.WriteString("  podrouter help [command]\n  podrouter --version\n\nRun 'podrouter help COMMAND' (or COMMAND -h) for a command's flags.\n")
	return b.String()
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	name := args[0]
	if name == "--version" || name == "-version" {
		return runVersion(args[1:], stdout, stderr)
	}
	if name == "help" || name == "-h" || name == "-help" || name == "--help" {
		if len(args) > 1 {
			for _, c := range commands {
				if c.name == args[1] {
					return c.run([]string{"-h"}, stdout, stderr)
				}
			}
			fmt.Fprintf(stderr, "podrouter: unknown command %q (try 'podrouter help')\n", args[1])
			return 2
		}
		fmt.Fprint(stdout, usage())
		return 0
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "podrouter: unknown command %q (try 'podrouter help')\n", name)
	return 2
}

// prefixFlag is a flag.Value holding a netip.Prefix, validated when parsed.
type prefixFlag struct{ p *netip.Prefix }

func (f prefixFlag) String() string { return flagText(f.p, "") }

// flagText is the String of a flag.Value holding v: v's text, or unset
// while v is nil (the flag package's zero Value) or invalid.
func flagText[T interface {
	IsValid() bool
	String() string
}](v *T, unset string) string {
	if v == nil || !(*v).IsValid() {
		return unset
	}
	return (*v).String()
}

func (f prefixFlag) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("not a CIDR prefix")
	}
	if p != p.Masked() {
		return fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	*f.p = p
	return nil
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet, defLevel string) {
	fs.StringVar(&l.level, "log-level", defLevel, "log level: debug, info, warn, error")
	fs.StringVar(&l.format, "log-format", "console", "log format: console or json")
}

// logger builds the logger of the command name, writing to stderr. On a bad
// flag it prints one line to stderr and returns nil: the command exits 2.
func (l *logFlags) logger(name string, stderr io.Writer) *zap.Logger {
	log, err := l.build(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "podrouter %s: %v\n", name, err)
		return nil
	}
	return log
}

func (l *logFlags) build(stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(l.level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch l.format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", l.format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)), nil
}

// parseFlags parses args into fs for `podrouter <fs.Name()>`. For -h it
// prints usage and the flags to stdout and returns 0; for a bad flag or an
// unexpected argument it prints one line to stderr and returns 2; otherwise
// it returns -1 and the command goes on.
func parseFlags(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) int {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return parseError(fs, err, usage, stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "podrouter %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

// parseError answers the error of fs.Parse: for -h (flag.ErrHelp) it
// prints usage and the flags to stdout and returns 0; otherwise it prints
// the error's first line to stderr and returns 2.
func parseError(fs *flag.FlagSet, err error, usage string, stdout, stderr io.Writer) int {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	fmt.Fprintf(stderr, "podrouter %s: %s\n", fs.Name(), firstLine(err.Error()))
	return 2
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// EnvPrefix starts the environment variable of each daemon flag: --pod-cidr
// is also $PODROUTER_POD_CIDR (as flanneld's --iface is $FLANNELD_IFACE).
const EnvPrefix = "PODROUTER_"

// envName is the environment variable of flag name: EnvPrefix, then the
// name in upper case with '-' as '_'.
func envName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// flagsFromEnv sets every flag of fs not given on the command line from its
// environment variable (envName), when lookup finds one: the command line
// wins. A flag set so counts as given (fs.Visit sees it); fromEnv names
// them. A bad value is an error naming the variable and the value.
func flagsFromEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) (fromEnv map[string]bool, err error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fromEnv = map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		v, ok := lookup(envName(f.Name))
		if !ok {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("$%s %q (--%s): %v", envName(f.Name), v, f.Name, e)
			return
		}
		fromEnv[f.Name] = true
	})
	return fromEnv, err
}
