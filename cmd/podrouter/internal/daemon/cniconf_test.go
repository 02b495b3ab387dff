package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podrouter/podrouter/cni"
)

// runtimeView parses conflist as a container runtime does (libcni) and
// returns it with each plugin's configuration as the runtime hands it to
// the plugin: the list's name and chosen cniVersion injected.
func runtimeView(t *testing.T, conflist []byte) (*libcni.NetworkConfigList, []map[string]any) {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes(conflist)
	if err != nil {
		t.Fatalf("libcni refuses the conflist: %v\n%s", err, conflist)
	}
	var plugins []map[string]any
	for _, p := range list.Plugins {
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			t.Fatal(err)
		}
		m["name"], m["cniVersion"] = list.Name, list.CNIVersion
		plugins = append(plugins, m)
	}
	return list, plugins
}

// ownConf parses the first plugin as podrouter-cni does.
func ownConf(t *testing.T, m map[string]any) *cni.NetConf {
	t.Helper()
	b, _ := json.Marshal(m)
	conf, ipam, err := cni.ParseConf(b)
	if err != nil {
		t.Fatalf("podrouter-cni refuses its entry %s: %v", b, err)
	}
	if ipam.Type != "host-local" || ipam.DataDir != "/var/lib/cni/networks" {
		t.Errorf("ipam %+v, want host-local in /var/lib/cni/networks", ipam)
	}
	return conf
}

func TestCNIConfList(t *testing.T) {
	cfg := Config{Socket: "/run/podrouter/podrouter.sock", MTU: 1450}
	b, err := CNIConfList(cfg, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var top struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	// Runtimes that read only cniVersion get the oldest podrouter-cni
	// speaks; libcni (1.1.0 here) the newest it knows of cniVersions.
	if top.CNIVersion != "1.0.0" || !reflect.DeepEqual(top.CNIVersions, []string{"1.0.0", "1.1.0"}) {
		t.Errorf("cniVersion %q cniVersions %q, want 1.0.0 and [1.0.0 1.1.0]", top.CNIVersion, top.CNIVersions)
	}
	list, plugins := runtimeView(t, b)
	if list.Name != "podrouter" || list.CNIVersion != "1.1.0" || len(plugins) != 1 {
		t.Fatalf("runtime sees %s %s with %d plugins, want podrouter 1.1.0 with 1", list.Name, list.CNIVersion, len(plugins))
	}
	conf := ownConf(t, plugins[0])
	if conf.Type != "podrouter-cni" || conf.MTU != 1450 || conf.Socket != cfg.Socket ||
		!reflect.DeepEqual(conf.Capabilities, map[string]bool{"mac": true, "portMappings": true}) {
		t.Errorf("podrouter-cni entry %+v", conf)
	}
	if strings.Contains(string(b), `"dns"`) {
		t.Errorf("an empty dns section written:\n%s", b)
	}
}

func TestCNIConfListChain(t *testing.T) {
	chain, err := ParseCNIChain([]byte(`["portmap", "bandwidth",
		{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}]`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := CNIConfList(Config{Socket: "/run/podrouter/podrouter.sock", MTU: 1450}, "", chain)
	if err != nil {
		t.Fatal(err)
	}
	list, plugins := runtimeView(t, b)
	var typs []string
	for _, p := range list.Plugins {
		typs = append(typs, p.Network.Type)
	}
	if want := []string{"podrouter-cni", "portmap", "bandwidth", "tuning"}; !reflect.DeepEqual(typs, want) {
		t.Fatalf("plugins %q, want %q", typs, want)
	}
	// portmap owns the hostPorts: podrouter-cni no longer asks for them.
	if conf := ownConf(t, plugins[0]); !reflect.DeepEqual(conf.Capabilities, map[string]bool{"mac": true}) {
		t.Errorf("podrouter-cni capabilities %v with portmap chained, want mac only", conf.Capabilities)
	}
	for i, want := range []map[string]bool{{"portMappings": true}, {"bandwidth": true}, nil} {
		if got := list.Plugins[i+1].Network.Capabilities; !reflect.DeepEqual(got, want) {
			t.Errorf("%s capabilities %v, want %v", typs[i+1], got, want)
		}
	}
	if strings.Contains(string(b), `"ipam": {}`) {
		t.Errorf("an empty ipam section written:\n%s", b)
	}
	if sc, _ := plugins[3]["sysctl"].(map[string]any); sc["net.ipv4.conf.eth0.accept_redirects"] != "0" {
		t.Errorf("tuning's own fields lost: %v", plugins[3])
	}
	// Without portmap, hostPorts stay podrouter's.
	chain, _ = ParseCNIChain([]byte(`["bandwidth"]`))
	b, _ = CNIConfList(Config{Socket: "/run/podrouter/podrouter.sock"}, "", chain)
	if _, plugins := runtimeView(t, b); !ownConf(t, plugins[0]).Capabilities["portMappings"] {
		t.Errorf("portMappings dropped without portmap:\n%s", b)
	}
}

func TestParseCNIChainErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"not an array", `{"type": "portmap"}`, "JSON array"},
		{"unknown name", `["portmapp"]`, `entry 0: "portmapp": want portmap, bandwidth or tuning`},
		{"number", `["portmap", 7]`, "entry 1: 7: want a plugin name or a configuration object"},
		{"no type", `[{"snat": true}]`, `entry 0: {"snat": true}: no "type"`},
		{"type not a string", `[{"type": 1}]`, "entry 0:"},
		{"ourselves", `[{"type": "podrouter-cni"}]`, `entry 0: type "podrouter-cni"`},
		{"twice", `["portmap", {"type": "portmap"}]`, `entry 1: "portmap" chained twice`},
		{"list fields", `[{"type": "tuning", "cniVersion": "0.4.0"}]`, `entry 0: type "tuning": "name" and "cniVersion"`},
		{"trailing", `["portmap"] ["tuning"]`, "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCNIChain([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseCNIChain(%s) = %v, want an error containing %q", tc.in, err, tc.want)
			}
		})
	}
	if chain, err := ParseCNIChain([]byte(`[]`)); err != nil || len(chain) != 0 {
		t.Errorf("empty chain: %v %v", chain, err)
	}
}

func TestLoadCNIChain(t *testing.T) {
	dir := t.TempDir()
	if chain, err := LoadCNIChain(filepath.Join(dir, "absent.json")); err != nil || chain != nil {
		t.Errorf("missing file: %v %v, want no chain", chain, err)
	}
	p := filepath.Join(dir, "cni-chain.json")
	if err := os.WriteFile(p, []byte(`["tuning", "portmap"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if chain, err := LoadCNIChain(p); err != nil || !reflect.DeepEqual(chainTypes(chain), []string{"tuning", "portmap"}) {
		t.Errorf("LoadCNIChain: %v %v", chain, err)
	}
	if err := os.WriteFile(p, []byte(`["tunning"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCNIChain(p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"tunning"`) {
		t.Errorf("bad file: %v, want the path and the bad value", err)
	}
}

func TestChainWarnings(t *testing.T) {
	chain := func(s string) []ChainedPlugin {
		c, err := ParseCNIChain([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		chain  string
		egress EgressMode
		want   []string
	}{
		{`[]`, EgressNetstack, nil},
		{`["tuning"]`, EgressNetstack, nil},
		{`["portmap"]`, EgressUplink, nil},
		{`["portmap"]`, EgressNetstack, []string{"portmap chained"}},
		{`["portmap"]`, EgressSNAT, []string{"portmap chained"}},
		{`["portmap", "bandwidth"]`, EgressUplink, []string{"bandwidth chained"}},
	} {
		got := chainWarnings(chain(tc.chain), tc.egress)
		if len(got) != len(tc.want) {
			t.Errorf("%s under %s: warnings %q, want %q", tc.chain, tc.egress, got, tc.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tc.want[i]) {
				t.Errorf("%s under %s: warning %q, want %q...", tc.chain, tc.egress, got[i], tc.want[i])
			}
		}
	}
}
