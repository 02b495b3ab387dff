package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestLabRuns(t *testing.T) {
	var out, errb bytes.Buffer
	rc := run([]string{"lab", "--pods", "3", "--duration", "300ms"}, &out, &errb)
	if rc != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", rc, out.String(), errb.String())
	}
	for _, want := range []string{"pod-0", "pod-2", "PING", "TCP", "UDP", "throughput pod-0 -> pod-1 TCP", "result: 6/6 pairs ok: PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// usageCase is a command line that must fail as a usage error: exit 2,
// with one line on stderr that names want.
type usageCase struct {
	name string
	args []string
	want string
}

// checkUsageErrors runs each case, its args after common, as a subtest.
func checkUsageErrors(t *testing.T, common []string, cases []usageCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run(append(slices.Clone(common), tc.args...), &out, &errb); rc != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", rc, errb.String())
			}
			if msg := errb.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q: want one line naming %q", msg, tc.want)
			}
		})
	}
}

func TestBadFlagsAreOneLineErrors(t *testing.T) {
	checkUsageErrors(t, nil, []usageCase{
		{"unknown flag", []string{"lab", "--bogus"}, "-bogus"},
		{"bad CIDR", []string{"lab", "--pod-cidr", "10.1.0.0/33"}, "-pod-cidr"},
		{"host bits", []string{"lab", "--cluster-cidr", "10.244.3.0/16"}, "10.244.0.0/16"},
		{"pod CIDR outside the cluster", []string{"lab", "--pod-cidr", "10.245.1.0/24"}, "--pod-cidr 10.245.1.0/24"},
		{"too many pods", []string{"lab", "--pods", "300"}, "--pods"},
		{"bad MTU", []string{"lab", "--mtu", "100"}, "--mtu"},
		{"bad log level", []string{"lab", "--log-level", "loud"}, "--log-level"},
		{"stray argument", []string{"lab", "extra"}, "extra"},
		{"unknown command", []string{"fly"}, "fly"},
	})
}

func TestHelpDocumentsEveryLabFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := run([]string{"help", "lab"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	for _, f := range []string{"-pods", "-cluster-cidr", "-pod-cidr", "-pod-cidr6", "-no-ipv6", "-mtu", "-duration", "-timeout", "-parallel", "-log-level", "-log-format"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help lacks %s", f)
		}
	}
}
