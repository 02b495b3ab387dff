package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/underlay"
)

// ErrPeersFile is wrapped by LoadPeers's errors.
var ErrPeersFile = errors.New("daemon: invalid peers file")

// peerEntry is one peer in a static peers file (YAML, or JSON, a subset).
type peerEntry struct {
	Name     string   `yaml:"name"`
	Endpoint string   `yaml:"endpoint"`
	VTEPMAC  string   `yaml:"vtepMAC"`
	PodCIDRs []string `yaml:"podCIDRs"`
	// PublicKey is the peer's WireGuard public key (wireguard).
	PublicKey string `yaml:"publicKey"`
}

// LoadPeers reads a static peer list (--peers FILE): a YAML or JSON list of
// {name, endpoint: "IP:port" (host-gw: "IP"), vtepMAC (vxlan), publicKey (wireguard, base64),
// podCIDRs: [...]}, validated
// strictly (unknown fields, bad addresses and duplicate names are errors
// naming the entry).
func LoadPeers(path string) ([]underlay.Peer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPeersFile, err)
	}
	var es []peerEntry
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&es); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPeersFile, path, err)
	}
	bad := func(i int, format string, a ...any) error {
		return fmt.Errorf("%w: %s: peer %d: "+format, append([]any{ErrPeersFile, path, i}, a...)...)
	}
	seen := map[string]bool{}
	out := make([]underlay.Peer, 0, len(es))
	for i, e := range es {
		if e.Name == "" || seen[e.Name] {
			return nil, bad(i, "name %q: empty or listed twice", e.Name)
		}
		seen[e.Name] = true
		p := underlay.Peer{Name: e.Name}
		if p.Addr, err = netip.ParseAddrPort(e.Endpoint); err != nil || p.Addr.Port() == 0 || p.Addr.Addr().Zone() != "" {
			// A bare IP: host-gw's peers have no port (the others get
			// it refused by the daemon).
			a, aerr := netip.ParseAddr(e.Endpoint)
			if aerr != nil || a.Zone() != "" {
				return nil, bad(i, "endpoint %q: want IP:port (host-gw: IP)", e.Endpoint)
			}
			p.Addr = netip.AddrPortFrom(a, 0)
		}
		if e.VTEPMAC != "" {
			var m packet.MAC
			var n int
			if n, err = fmt.Sscanf(e.VTEPMAC, "%02x:%02x:%02x:%02x:%02x:%02x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]); err != nil || n != 6 || len(e.VTEPMAC) != 17 || m.IsMulticast() {
				return nil, bad(i, "vtepMAC %q: want a unicast xx:xx:xx:xx:xx:xx", e.VTEPMAC)
			}
			p.VTEPMAC = m
		}
		if e.PublicKey != "" {
			if p.PublicKey, err = underlay.ParseKey(e.PublicKey); err != nil || p.PublicKey.IsZero() {
				return nil, bad(i, "publicKey %.64q: want a WireGuard public key in base64", e.PublicKey)
			}
		}
		if len(e.PodCIDRs) == 0 {
			return nil, bad(i, "podCIDRs: required")
		}
		for _, s := range e.PodCIDRs {
			c, err := netip.ParsePrefix(s)
			if err != nil || c != c.Masked() {
				return nil, bad(i, "podCIDR %q: want a masked prefix", s)
			}
			p.PodCIDRs = append(p.PodCIDRs, c)
		}
		out = append(out, p)
	}
	return out, nil
}
