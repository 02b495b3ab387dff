package main

import (
	"flag"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestFlagsFromEnv(t *testing.T) {
	var (
		mtu      int
		kube     bool
		socket   string
		clusters []netip.Prefix
	)
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.IntVar(&mtu, "mtu", 1500, "")
	fs.BoolVar(&kube, "kube", false, "")
	fs.StringVar(&socket, "socket", "/run/a.sock", "")
	fs.Var(prefixListFlag(&clusters), "cluster-cidr", "")
	env := map[string]string{
		"PODROUTER_MTU":          "9000",
		"PODROUTER_KUBE":         "true",
		"PODROUTER_SOCKET":       "/run/env.sock",
		"PODROUTER_CLUSTER_CIDR": "10.244.0.0/16,fd00::/56",
		"FLANNELD_IFACE":         "eth9",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := fs.Parse([]string{"--socket", "/run/cli.sock"}); err != nil {
		t.Fatal(err)
	}
	fromEnv, err := flagsFromEnv(fs, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromEnv) != 3 || !fromEnv["mtu"] || fromEnv["socket"] {
		t.Errorf("fromEnv %v: want mtu, kube and cluster-cidr", fromEnv)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00::/56")}
	if mtu != 9000 || !kube || socket != "/run/cli.sock" || !slices.Equal(clusters, want) {
		t.Fatalf("mtu %d kube %v socket %q clusters %v: want 9000 true /run/cli.sock (the command line wins) %v", mtu, kube, socket, clusters, want)
	}
	var set []string
	fs.Visit(func(f *flag.Flag) { set = append(set, f.Name) })
	if !slices.Equal(set, []string{"cluster-cidr", "kube", "mtu", "socket"}) {
		t.Errorf("flags counted as given: %v; want those of the environment too", set)
	}

	// The command line wins over a list flag too: no merging.
	clusters = nil
	fs2 := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs2.Var(prefixListFlag(&clusters), "cluster-cidr", "")
	if err := fs2.Parse([]string{"--cluster-cidr", "10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if _, err := flagsFromEnv(fs2, lookup); err != nil || len(clusters) != 1 {
		t.Fatalf("clusters %v, %v: want the command line's only", clusters, err)
	}
}

func TestDaemonFlagsFromEnv(t *testing.T) {
	// Each case fails in validation, which shows which value won.
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad int", map[string]string{"PODROUTER_MTU": "big"}, nil, `$PODROUTER_MTU "big" (--mtu)`},
		{"bad prefix", map[string]string{"PODROUTER_POD_CIDR": "10.1.0.0/33"}, nil, `$PODROUTER_POD_CIDR "10.1.0.0/33" (--pod-cidr)`},
		{"bad bool", map[string]string{"PODROUTER_KUBE": "yes please"}, nil, `$PODROUTER_KUBE "yes please" (--kube)`},
		{"env value used", map[string]string{"PODROUTER_MTU": "100"}, []string{"--pod-cidr", "10.244.1.0/24"}, "mtu 100: out of range"},
		{"command line wins", map[string]string{"PODROUTER_MTU": "100", "PODROUTER_POD_CIDR": "10.244.1.0/24"},
			[]string{"--pod-cidr", "10.245.1.0/24", "--cluster-cidr", "10.244.0.0/16"}, "pod-cidr 10.245.1.0/24: not inside"},
		{"bool from env", map[string]string{"PODROUTER_KUBE": "true", "NODE_NAME": ""}, nil, "--node-name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PODROUTER_METRICS_ADDR", "off")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			checkUsageErrors(t, []string{"daemon"}, []usageCase{{tc.name, tc.args, tc.want}})
		})
	}
}

func TestDaemonHelpNamesTheEnvironment(t *testing.T) {
	var out, errb strings.Builder
	if rc := run([]string{"daemon", "-h"}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "$PODROUTER_POD_CIDR") {
		t.Fatalf("exit %d; help does not name $PODROUTER_POD_CIDR:\n%s", rc, out.String())
	}
}
