package daemon

// The node's CNI conflist, built from the CNI library's types.
//
//	cni-chain.json (ConfigMap key, optional) ─► ParseCNIChain ─► []ChainedPlugin
//	Config (socket, MTU) + dataDir + chain ─► CNIConfList ─► types.NetConfList
//	     + cniVersions, plugins: podrouter-cni (a types.PluginConf plus its
//	     own fields), then each chained plugin as the operator wrote it
//
// Design notes. The list's cniVersion is the oldest spec podrouter-cni
// speaks (1.0.0) and cniVersions lists every one (spec 1.1): a runtime
// whose libcni reads cniVersions (v1.2 and later) picks the newest it
// knows, 1.1.0 with STATUS and GC; an older one (libcni v1.1, spec 1.0.0
// at most, e.g. containerd 1.7) reads cniVersion and runs 1.0.0 rather
// than a version it does not know. Chained plugins are run by the runtime
// after ours, in order, on every ADD (and in reverse on DEL), and get the
// capabilities they declare (runtimeConfig). portmap, bandwidth and tuning
// may be named alone ("portmap") for their usual configuration; any plugin
// may be given as an object, passed through as written. When portmap is
// chained it owns the hostPorts: our entry then does not declare
// portMappings, so the daemon opens no hostPort socket for it (one owner per
// port; see README "CNI plugin").

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podrouter/podrouter/cni"
)

// cniPluginType is podrouter-cni's binary name, the conflist's first plugin.
const cniPluginType = "podrouter-cni"

// CNINetwork is the conflist's network name (host-local keeps its
// reservations under <dataDir>/<name>).
const CNINetwork = "podrouter"

// DefaultCNIChain is where the DaemonSet mounts the ConfigMap's
// cni-chain.json (--cni-chain's default).
const DefaultCNIChain = "/etc/kube-podrouter/cni-chain.json"

// ChainedPlugin is one plugin the conflist runs after podrouter-cni.
type ChainedPlugin struct {
	// Type is the plugin's binary name in the CNI bin directory.
	Type string
	// conf is the plugin's configuration object as the conflist carries it.
	conf json.RawMessage
}

// chainShorthands are the plugins that may be named alone, with the
// configuration they then get: the capabilities through which the runtime
// hands each its per-pod settings.
var chainShorthands = map[string]types.PluginConf{
	// hostPort mappings, as iptables DNAT (kubelet: a container port's hostPort).
	"portmap": {Type: "portmap", Capabilities: map[string]bool{"portMappings": true}},
	// traffic shaping (pod annotations kubernetes.io/ingress-bandwidth, egress-bandwidth).
	"bandwidth": {Type: "bandwidth", Capabilities: map[string]bool{"bandwidth": true}},
	// sysctls and interface settings of the pod's eth0 (its own fields: sysctl, mtu, ...).
	"tuning": {Type: "tuning"},
}

// ParseCNIChain parses cni-chain.json: a JSON array whose entries are
// "portmap", "bandwidth" or "tuning" (their usual configuration), or a
// plugin configuration object with a "type", chained as written. Errors
// name the entry and the bad value.
func ParseCNIChain(b []byte) ([]ChainedPlugin, error) {
	var raw []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("want a JSON array of plugin names or configuration objects: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON array")
	}
	var chain []ChainedPlugin
	for i, r := range raw {
		p, err := parseChained(r)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if slices.ContainsFunc(chain, func(q ChainedPlugin) bool { return q.Type == p.Type }) {
			return nil, fmt.Errorf("entry %d: %q chained twice", i, p.Type)
		}
		chain = append(chain, p)
	}
	return chain, nil
}

func parseChained(r json.RawMessage) (ChainedPlugin, error) {
	var name string
	if err := json.Unmarshal(r, &name); err == nil {
		pc, ok := chainShorthands[name]
		if !ok {
			return ChainedPlugin{}, fmt.Errorf("%q: want portmap, bandwidth or tuning, or an object with a \"type\"", name)
		}
		conf, err := withFields(&pc, nil)
		if err != nil {
			return ChainedPlugin{}, err
		}
		return ChainedPlugin{Type: name, conf: conf}, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(r, &obj); err != nil || obj == nil {
		return ChainedPlugin{}, fmt.Errorf("%s: want a plugin name or a configuration object", r)
	}
	var pc types.PluginConf
	if err := json.Unmarshal(r, &pc); err != nil {
		return ChainedPlugin{}, fmt.Errorf("%s: %w", r, err)
	}
	switch {
	case pc.Type == "":
		return ChainedPlugin{}, fmt.Errorf("%s: no \"type\"", r)
	case pc.Type == cniPluginType:
		return ChainedPlugin{}, fmt.Errorf("type %q: podrouter-cni is the list's first plugin already", pc.Type)
	case pc.Name != "" || pc.CNIVersion != "":
		return ChainedPlugin{}, fmt.Errorf("type %q: \"name\" and \"cniVersion\" are the list's, not a plugin's", pc.Type)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, r); err != nil {
		return ChainedPlugin{}, err
	}
	return ChainedPlugin{Type: pc.Type, conf: compact.Bytes()}, nil
}

// LoadCNIChain reads and parses the chain file at path; a missing file
// is an empty chain (the ConfigMap has no cni-chain.json).
func LoadCNIChain(path string) ([]ChainedPlugin, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	chain, err := ParseCNIChain(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return chain, nil
}

// chainWarnings are what the daemon warns of a chain under egress mode:
// combinations that are accepted but break some pods.
func chainWarnings(chain []ChainedPlugin, egress EgressMode) []string {
	var ws []string
	ts := chainTypes(chain)
	if slices.Contains(ts, "portmap") && egress != EgressUplink {
		ws = append(ws, "portmap chained: it DNATs hostPorts in the host's iptables, but replies to clients outside the cluster "+
			"leave through egress, not back through the host's conntrack, and fail; use --egress uplink")
	}
	if slices.Contains(ts, "bandwidth") {
		ws = append(ws, "bandwidth chained: it shapes the host side of a pod's veth pair, and podrouter's pods have a TAP, "+
			"no veth: a pod with a kubernetes.io/ingress-bandwidth or egress-bandwidth annotation fails to start; others pass")
	}
	return ws
}

// chainTypes returns the chain's plugin types, in order.
func chainTypes(chain []ChainedPlugin) []string {
	var ts []string
	for _, p := range chain {
		ts = append(ts, p.Type)
	}
	return ts
}

// CNIVersions are the spec versions the conflist offers (cniVersions):
// podrouter-cni's. cniVersion is the oldest, for runtimes that read only
// that.
var CNIVersions = cni.SupportedVersions

// confList is the conflist as written: the CNI library's NetConfList with
// cniVersions (spec 1.1, which the library's type lacks) and the plugins as
// their JSON objects (plugin configurations carry fields of their own).
type confList struct {
	types.NetConfList
	CNIVersions []string          `json:"cniVersions"`
	Plugins     []json.RawMessage `json:"plugins"`
}

// CNIConfList returns the node's CNI conflist (README "CNI plugin"):
// podrouter-cni with host-local's dataDir (default DefaultCNIData), then
// chain.
func CNIConfList(cfg Config, dataDir string, chain []ChainedPlugin) ([]byte, error) {
	if dataDir == "" {
		dataDir = DefaultCNIData
	}
	caps := map[string]bool{"mac": true, "portMappings": true}
	if slices.ContainsFunc(chain, func(p ChainedPlugin) bool { return p.Type == "portmap" }) {
		delete(caps, "portMappings") // portmap's (see the design notes)
	}
	own := types.PluginConf{Type: cniPluginType, Capabilities: caps, IPAM: types.IPAM{Type: "host-local"}}
	ownJSON, err := withFields(&own, map[string]any{
		"socket": cfg.Socket,
		"mtu":    cfg.MTU,
		"ipam":   map[string]string{"type": "host-local", "dataDir": dataDir},
	})
	if err != nil {
		return nil, err
	}
	list := confList{
		NetConfList: types.NetConfList{CNIVersion: CNIVersions[0], Name: CNINetwork},
		CNIVersions: CNIVersions,
		Plugins:     []json.RawMessage{ownJSON},
	}
	for _, p := range chain {
		list.Plugins = append(list.Plugins, p.conf)
	}
	b, err := json.MarshalIndent(&list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("daemon: cni conflist: %w", err)
	}
	return append(b, '\n'), nil
}

// withFields returns pc's JSON (the library's own marshalling, which leaves
// out an empty dns; an empty ipam is left out too) with the plugin-specific
// fields added or replaced.
func withFields(pc *types.PluginConf, fields map[string]any) (json.RawMessage, error) {
	b, err := json.Marshal(pc)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if pc.IPAM.IsEmpty() {
		delete(m, "ipam")
	}
	for k, v := range fields {
		m[k] = v
	}
	return json.Marshal(m)
}
