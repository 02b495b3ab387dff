package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/podrouter/podrouter/cni"
	"github.com/podrouter/podrouter/router/kube"
)

func TestKubeConfig(t *testing.T) {
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","VNI":4}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	self := kube.Self{
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")},
		InternalIPs: []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("192.0.2.5")},
	}
	var cfg Config
	if err := kubeConfig(&cfg, KubeOptions{NodeName: "n", NetConf: nc}, self); err != nil {
		t.Fatal(err)
	}
	if cfg.PodCIDR != self.PodCIDRs[0] || cfg.PodCIDR6 != self.PodCIDRs[1] || len(cfg.ClusterCIDRs) != 2 ||
		cfg.Underlay.Backend != "vxlan" || cfg.Underlay.VNI != 4 ||
		cfg.Underlay.Listen != netip.MustParseAddrPort("192.0.2.5:8472") || len(cfg.NodeIPs) != 2 {
		t.Fatalf("config %+v", cfg)
	}
	if cfg.MTU != 0 { // the node's rule (node.PodMTU, TestPodMTU): the underlay's MTU less vxlan's 50
		t.Fatalf("MTU %d, want 0 (derived by the node)", cfg.MTU)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// --public-ip, an explicit MTU, net-conf's MTU.
	cfg = Config{MTU: 1400}
	if err := kubeConfig(&cfg, KubeOptions{NodeName: "n", NetConf: nc, PublicIP: netip.MustParseAddr("198.51.100.1"), MTUSet: true}, self); err != nil {
		t.Fatal(err)
	}
	if cfg.Underlay.Listen.Addr() != netip.MustParseAddr("198.51.100.1") || cfg.MTU != 1400 {
		t.Fatalf("config %+v", cfg)
	}
	nc.MTU = 1300
	cfg = Config{}
	if err := kubeConfig(&cfg, KubeOptions{NodeName: "n", NetConf: nc, Iface: "lo"}, self); err != nil {
		t.Fatal(err)
	}
	if cfg.MTU != 1300 || cfg.Underlay.Listen.Addr() != netip.MustParseAddr("127.0.0.1") || cfg.Underlay.Interface != "lo" {
		t.Fatalf("config %+v", cfg)
	}
	// No address at all; no IPv4 podCIDR.
	if err := kubeConfig(&Config{}, KubeOptions{NodeName: "n", NetConf: nc}, kube.Self{PodCIDRs: self.PodCIDRs[:1]}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no address: %v", err)
	}
	if err := kubeConfig(&Config{}, KubeOptions{NodeName: "n", NetConf: nc}, kube.Self{PodCIDRs: self.PodCIDRs[1:]}); !errors.Is(err, ErrConfig) {
		t.Fatalf("v6 only: %v", err)
	}
}

func TestNodeFiles(t *testing.T) {
	dir := t.TempDir()
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","masquerade":false}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), Socket: "/run/podrouter/podrouter.sock", MTU: 1450}
	ko := KubeOptions{NetConf: nc, CNIConf: filepath.Join(dir, "net.d", "10-podrouter.conflist"), SubnetEnv: filepath.Join(dir, "flannel", "subnet.env")}
	for range 2 { // the second write replaces the first
		if err := writeNodeFiles(cfg, ko); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(ko.CNIConf)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || list.Name != "podrouter" || len(list.Plugins) != 1 {
		t.Fatalf("conflist %s: %v", b, err)
	}
	// The runtime hands the plugin its entry with the list's version and name.
	var entry map[string]any
	if err := json.Unmarshal(list.Plugins[0], &entry); err != nil {
		t.Fatal(err)
	}
	entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
	eb, _ := json.Marshal(entry)
	conf, _, err := cni.ParseConf(eb) // the plugin's own parser accepts it
	if err != nil {
		t.Fatalf("plugin conf %s: %v", list.Plugins[0], err)
	}
	if conf.MTU != 1450 || conf.Socket != cfg.Socket {
		t.Fatalf("plugin conf %+v", conf)
	}
	env, err := os.ReadFile(ko.SubnetEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	if string(env) != want {
		t.Fatalf("subnet.env %q, want %q", env, want)
	}
	ents, _ := os.ReadDir(filepath.Dir(ko.CNIConf))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left", e.Name())
		}
	}
}

// TestKeepNodeFiles: a removed or edited conflist (or subnet.env) is
// written again within the check interval.
func TestKeepNodeFiles(t *testing.T) {
	dir := t.TempDir()
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), Socket: "/run/podrouter/podrouter.sock", MTU: 1450}
	ko := KubeOptions{NetConf: nc, CNIConf: filepath.Join(dir, "net.d", "10-podrouter.conflist"), SubnetEnv: filepath.Join(dir, "flannel", "subnet.env")}
	if err := writeNodeFiles(cfg, ko); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(ko.CNIConf)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); keepNodeFiles(ctx, cfg, ko, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	await := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if got, err := os.ReadFile(ko.CNIConf); err == nil && bytes.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("conflist not restored after %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := os.Remove(ko.CNIConf); err != nil {
		t.Fatal(err)
	}
	await("removal")
	if err := os.WriteFile(ko.CNIConf, []byte(`{"name":"other"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	await("an edit")
}

// TestKubeConfigFlannelKeys: net-conf's masquerade, Backend.MTU and
// SubnetLen/SubnetMin/SubnetMax reach the daemon's configuration: SNAT
// off, the underlay MTU, and a warning naming the key when the node's
// podCIDR does not match.
func TestKubeConfigFlannelKeys(t *testing.T) {
	nc, err := kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","SubnetLen":25,"SubnetMax":"10.244.2.0","masquerade":false,"Backend":{"Type":"vxlan","MTU":9000}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	self := kube.Self{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, InternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}}
	core, logs := observer.New(zap.WarnLevel)
	cfg := Config{Logger: zap.New(core)}
	if err := kubeConfig(&cfg, KubeOptions{NodeName: "n", NetConf: nc}, self); err != nil {
		t.Fatal(err)
	}
	if !cfg.Egress.NoMasquerade || cfg.Underlay.MTU != 9000 || cfg.MTU != 0 {
		t.Fatalf("config: noMasquerade %v, underlay MTU %d, MTU %d; want true, 9000, 0 (derived)", cfg.Egress.NoMasquerade, cfg.Underlay.MTU, cfg.MTU)
	}
	all := logs.All()
	if len(all) != 1 || !strings.Contains(all[0].ContextMap()["error"].(string), "SubnetLen 25: the node's podCIDR 10.244.3.0/24 is a /24") {
		t.Fatalf("logged %+v, want one warning naming SubnetLen", all)
	}
	// Masquerade on (the default) and a matching podCIDR: no warning.
	nc, err = kube.ParseNetConf([]byte(`{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	core, logs = observer.New(zap.WarnLevel)
	cfg = Config{Logger: zap.New(core)}
	if err := kubeConfig(&cfg, KubeOptions{NodeName: "n", NetConf: nc}, self); err != nil {
		t.Fatal(err)
	}
	if cfg.Egress.NoMasquerade || cfg.Underlay.MTU != 0 || logs.Len() != 0 {
		t.Fatalf("config: noMasquerade %v, underlay MTU %d, logged %+v", cfg.Egress.NoMasquerade, cfg.Underlay.MTU, logs.All())
	}
}
