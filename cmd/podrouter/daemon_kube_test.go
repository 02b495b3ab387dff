package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/podrouter/podrouter/cmd/podrouter/internal/daemon"
	"github.com/podrouter/podrouter/router/kube"
)

func TestDaemonKubeBadFlags(t *testing.T) {
	nc := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(nc, []byte(`{"Network":"10.244.0.0/16"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "")
	checkUsageErrors(t, []string{"daemon", "--kube", "--metrics-addr", "off"}, []usageCase{
		{"no node name", []string{"--net-conf", nc}, "--node-name"},
		{"no net-conf", []string{"--node-name", "n", "--net-conf", nc + ".absent"}, "--net-conf"},
		{"bad backend", []string{"--node-name", "n", "--net-conf", nc, "--backend", "gre"}, "--backend"},
		{"bad port", []string{"--node-name", "n", "--net-conf", nc, "--underlay-port", "70000"}, "--underlay-port"},
		{"bad public ip", []string{"--node-name", "n", "--net-conf", nc, "--public-ip", "nowhere"}, "--public-ip"},
		{"bad first read", []string{"--node-name", "n", "--net-conf", nc, "--kube-first-read", "0s"}, "--kube-first-read"},
	})
}

func TestDaemonStaticPeersBadFlags(t *testing.T) {
	pf := filepath.Join(t.TempDir(), "peers.yaml")
	if err := os.WriteFile(pf, []byte("- name: b\n  endpoint: 192.0.2.2:8472\n  vtepMAC: 0a:00:00:00:00:02\n  podCIDRs: [10.244.2.0/24]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(t.TempDir(), "bare.yaml")
	if err := os.WriteFile(bare, []byte("- name: b\n  endpoint: 192.0.2.2\n  vtepMAC: 0a:00:00:00:00:02\n  podCIDRs: [10.244.2.0/24]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkUsageErrors(t, []string{"daemon", "--pod-cidr", "10.244.1.0/24", "--cluster-cidr", "10.244.0.0/16", "--metrics-addr", "off"}, []usageCase{
		{"no public ip", []string{"--peers", pf}, "--public-ip"},
		{"bad backend", []string{"--peers", pf, "--public-ip", "192.0.2.1", "--backend", "gre"}, "--backend"},
		{"bad file", []string{"--peers", pf + ".absent", "--public-ip", "192.0.2.1"}, "--peers"},
		{"no port for vxlan", []string{"--peers", bare, "--public-ip", "192.0.2.1"}, "--peers"},
		{"direct routing udp", []string{"--peers", pf, "--public-ip", "192.0.2.1", "--backend", "udp", "--direct-routing"}, "--direct-routing"},
	})
}

func TestDaemonConflictingFlags(t *testing.T) {
	pf := filepath.Join(t.TempDir(), "peers.yaml")
	if err := os.WriteFile(pf, []byte("- name: b\n  endpoint: 192.0.2.2:8472\n  vtepMAC: 0a:00:00:00:00:02\n  podCIDRs: [10.244.2.0/24]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "n1") // the DaemonSet's: not a flag given, no conflict without --kube
	kube := []string{"--kube", "--net-conf", "/nonexistent"}
	static := []string{"--pod-cidr", "10.244.1.0/24", "--cluster-cidr", "10.244.0.0/16"}
	checkUsageErrors(t, []string{"daemon", "--metrics-addr", "off"}, []usageCase{
		{"kube with pod-cidr", append(kube, "--pod-cidr", "10.244.1.0/24"), `--pod-cidr "10.244.1.0/24": given with --kube`},
		{"kube with pod-cidr6", append(kube, "--pod-cidr6", "fd00::/64"), `--pod-cidr6 "fd00::/64": given with --kube`},
		{"kube with cluster-cidr", append(kube, "--cluster-cidr", "10.244.0.0/16"), `--cluster-cidr "10.244.0.0/16": given with --kube`},
		{"kube with peers", append(kube, "--peers", pf), "--peers " + `"` + pf + `": given with --kube`},
		{"kube services off with service-cidr", append(kube, "--services", "off", "--service-cidr", "10.96.0.0/12"), `--service-cidr "10.96.0.0/12": given with --services=off`},
		{"iface without kube", append(static, "--iface", "eth0"), `--iface "eth0": only with --kube`},
		{"kubeconfig without kube", append(static, "--kubeconfig", "/k"), `--kubeconfig "/k": only with --kube`},
		{"node-name without kube", append(static, "--node-name", "n1"), `--node-name "n1": only with --kube`},
		{"net-conf without kube", append(static, "--net-conf", "/n"), `--net-conf "/n": only with --kube`},
		{"cni-conf without kube", append(static, "--cni-conf", ""), `--cni-conf "": only with --kube`},
		{"cni-chain without kube", append(static, "--cni-chain", "/c"), `--cni-chain "/c": only with --kube`},
		{"subnet-env without kube", append(static, "--subnet-env", "/s"), `--subnet-env "/s": only with --kube`},
		{"trust without kube", append(static, "--trust-annotated-endpoints"), `--trust-annotated-endpoints "true": only with --kube`},
		{"first read without kube", append(static, "--kube-first-read", "1s"), `--kube-first-read "1s": only with --kube`},
		{"services without kube", append(static, "--services", "off"), "Services come from the cluster; they need --kube"},
		{"backend without peers", append(static, "--backend", "udp"), `--backend "udp": only with --kube or --peers`},
		{"port without peers", append(static, "--underlay-port", "9000"), `--underlay-port "9000": only with --kube or --peers`},
		{"public ip without peers", append(static, "--public-ip", "192.0.2.1"), `--public-ip "192.0.2.1": only with --kube or --peers`},
		{"direct routing without peers", append(static, "--direct-routing"), `--direct-routing "true": only with --kube or --peers`},
		{"no pod-cidr", []string{"--cluster-cidr", "10.244.0.0/16"}, "--pod-cidr: required"},
		{"netstack limit with uplink egress", append(static, "--egress", "uplink", "--egress-max-flows", "10"), "egress-max-flows 10: only with --egress netstack (egress is uplink)"},
		{"uplink route with snat egress", append(static, "--egress", "snat", "--snat-addr", "192.0.2.1", "--uplink-route", "192.168.0.0/16"), "uplink-route [192.168.0.0/16]: only with --egress netstack"},
		{"snat-addr without snat", append(static, "--snat-addr", "192.0.2.1"), "snat-addr: only with --egress snat"},
		{"snat without snat-addr", append(static, "--egress", "snat"), "snat-addr: required with --egress snat"},
		{"per-peer metrics without metrics", append(static, "--metrics-per-peer"), "--metrics-per-peer: given with --metrics-addr off"},
		{"kube after the static flags", append(static, "--kube"), `--pod-cidr "10.244.1.0/24": given with --kube`},
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv("PODROUTER_IFACE", "eth1")
		checkUsageErrors(t, []string{"daemon", "--metrics-addr", "off"}, []usageCase{
			{"iface from env without kube", static, `--iface "eth1" (from $PODROUTER_IFACE): only with --kube`},
		})
	})
}

// TestKubeNetConfFlags: flannel's kube-flannel.yml net-conf.json is read
// unchanged (EnableNFTables warned about once), and --ip-masq, when given,
// overrides its masquerade.
func TestKubeNetConfFlags(t *testing.T) {
	p := filepath.Join(t.TempDir(), "net-conf.json")
	kubeFlannel := "{\n  \"Network\": \"10.244.0.0/16\",\n  \"EnableNFTables\": false,\n  \"Backend\": {\n    \"Type\": \"vxlan\"\n  }\n}\n"
	if err := os.WriteFile(p, []byte(kubeFlannel), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		set  bool
		want bool
	}{
		{"default", nil, false, true},
		{"ip-masq=false", []string{"--ip-masq=false"}, true, false},
		{"ip-masq", []string{"--ip-masq"}, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cfg daemon.Config
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			registerEgressFlags(fs, &cfg.Egress)
			if err := fs.Parse(c.args); err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zap.WarnLevel)
			cfg.Logger = zap.New(core)
			k := kubeFlags{netConf: p}
			nc, err := k.loadNetConf(cfg, c.set)
			if err != nil {
				t.Fatal(err)
			}
			if nc.Masquerade != c.want || nc.Network.String() != "10.244.0.0/16" || nc.Backend != kube.BackendVXLAN || nc.VNI != 1 || nc.Port != 8472 {
				t.Fatalf("net-conf %+v, want masquerade %v", nc, c.want)
			}
			if all := logs.All(); len(all) != 1 || all[0].ContextMap()["key"] != "EnableNFTables" || all[0].LoggerName != "net-conf" {
				t.Fatalf("logged %+v, want one warning naming EnableNFTables", all)
			}
		})
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	registerEgressFlags(fs, &daemon.EgressConfig{})
	if err := fs.Parse([]string{"--ip-masq=sometimes"}); err == nil || !strings.Contains(err.Error(), "ip-masq") {
		t.Fatalf("--ip-masq=sometimes: %v", err)
	}
}

// TestKubeDirectRoutingFlag: net-conf's DirectRouting reaches the
// configuration, --direct-routing overrides it, and is refused with a
// backend other than vxlan; --backend away from vxlan drops net-conf's.
func TestKubeDirectRoutingFlag(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	direct := write("direct.json", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	udp := write("udp.json", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)
	for _, c := range []struct {
		name string
		k    kubeFlags
		want bool
		err  string
	}{
		{"net-conf", kubeFlags{netConf: direct}, true, ""},
		{"flag off", kubeFlags{netConf: direct, directRoutingSet: true}, false, ""},
		{"flag on", kubeFlags{netConf: write("plain.json", `{"Network":"10.244.0.0/16"}`), directRouting: true, directRoutingSet: true}, true, ""},
		{"backend udp drops it", kubeFlags{netConf: direct, backend: "udp"}, false, ""},
		{"flag with udp", kubeFlags{netConf: udp, directRouting: true, directRoutingSet: true}, false, "--direct-routing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc, err := c.k.loadNetConf(daemon.Config{}, false)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one naming %s", err, c.err)
				}
				return
			}
			if err != nil || nc.DirectRouting != c.want {
				t.Fatalf("DirectRouting %v, %v; want %v", nc.DirectRouting, err, c.want)
			}
		})
	}
}
