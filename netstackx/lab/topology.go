package lab

// Topology files: a custom lab in YAML.
//
//	backend: vxlan               # udp | vxlan (default vxlan)
//	podMode: virtual             # virtual | netns (default virtual)
//	clusterCIDR: 10.244.0.0/16   # default 10.244.0.0/16
//	clusterCIDR6: fd00:10:244::/56
//	underlayMTU: 1500            # default 1500
//	podMTU: 1450                 # default underlayMTU - overhead (1500 on one node)
//	nodes:
//	  - name: alpha              # default n<i>
//	    podCIDR: 10.244.1.0/24   # default: the i-th /24 of clusterCIDR
//	    podCIDR6: fd00:10:244:1::/64  # default: the i-th /64 of clusterCIDR6, when given
//	    pods: 3                  # default 2
//
// Unknown fields are errors, and every error names its field.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/podrouter/podrouter/router/node"
)

// topologyFile is the YAML document; strings are parsed into typed values
// by LoadTopology, with the field's name in every error.
type topologyFile struct {
	Backend      string         `yaml:"backend"`
	PodMode      string         `yaml:"podMode"`
	ClusterCIDR  string         `yaml:"clusterCIDR"`
	ClusterCIDR6 string         `yaml:"clusterCIDR6"`
	UnderlayMTU  int            `yaml:"underlayMTU"`
	PodMTU       int            `yaml:"podMTU"`
	Nodes        []topologyNode `yaml:"nodes"`
}

type topologyNode struct {
	Name     string `yaml:"name"`
	PodCIDR  string `yaml:"podCIDR"`
	PodCIDR6 string `yaml:"podCIDR6"`
	Pods     *int   `yaml:"pods"`
}

// ErrTopology wraps every topology file error.
var ErrTopology = errors.New("topology")

// LoadTopologyFile reads a topology file into cfg (see LoadTopology).
func LoadTopologyFile(path string, cfg *Config) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTopology, err)
	}
	defer f.Close()
	if err := LoadTopology(f, cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// LoadTopology reads a YAML topology into cfg: the lab's shape (nodes,
// podCIDRs, pods, backend, MTUs, pod mode). The rest of cfg is left as it
// is. The result is validated; errors name the field ("nodes[1].podCIDR").
func LoadTopology(r io.Reader, cfg *Config) error {
	src, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTopology, err)
	}
	var t topologyFile
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: empty file", ErrTopology)
		}
		return fmt.Errorf("%w: %w", ErrTopology, err)
	}
	if err := t.apply(cfg); err != nil {
		return fmt.Errorf("%w: %w", ErrTopology, err)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrTopology, err)
	}
	return nil
}

func parsePrefix(field, s string, want6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%s %q: not a CIDR prefix", field, s)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("%s %s: host bits set (did you mean %s?)", field, p, p.Masked())
	}
	if p.Addr().Is6() != want6 {
		fam := "IPv4"
		if want6 {
			fam = "IPv6"
		}
		return p, fmt.Errorf("%s %s: want an %s prefix", field, p, fam)
	}
	return p, nil
}

func (t *topologyFile) apply(cfg *Config) error {
	var err error
	if t.Backend != "" {
		if _, err := node.LookupBackend(t.Backend); err != nil {
			return err
		}
		cfg.Backend = t.Backend
	}
	if t.PodMode != "" {
		if cfg.PodMode, err = ParsePodMode(t.PodMode); err != nil {
			return fmt.Errorf("podMode %w", err)
		}
	}
	cfg.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	if t.ClusterCIDR != "" {
		if cfg.ClusterCIDR, err = parsePrefix("clusterCIDR", t.ClusterCIDR, false); err != nil {
			return err
		}
	}
	cfg.ClusterCIDR6 = netip.Prefix{}
	if t.ClusterCIDR6 != "" {
		if cfg.ClusterCIDR6, err = parsePrefix("clusterCIDR6", t.ClusterCIDR6, true); err != nil {
			return err
		}
	}
	if t.UnderlayMTU != 0 {
		cfg.UnderlayMTU = t.UnderlayMTU
	}
	if t.PodMTU != 0 {
		cfg.MTU = t.PodMTU
	}
	if len(t.Nodes) == 0 {
		return errors.New("nodes: at least one node is required")
	}
	cfg.Topology = make([]NodeSpec, len(t.Nodes))
	for i, n := range t.Nodes {
		f := fmt.Sprintf("nodes[%d]", i)
		s := NodeSpec{Name: n.Name, Pods: 2}
		if s.Name == "" {
			s.Name = fmt.Sprintf("n%d", i)
		}
		if n.Pods != nil {
			s.Pods = *n.Pods
		}
		if n.PodCIDR != "" {
			if s.PodCIDR, err = parsePrefix(f+".podCIDR", n.PodCIDR, false); err != nil {
				return err
			}
		} else {
			bits := max(cfg.ClusterCIDR.Bits(), 24)
			if s.PodCIDR, err = carve(cfg.ClusterCIDR, bits, i); err != nil {
				return fmt.Errorf("%s.podCIDR: %w", f, err)
			}
		}
		if n.PodCIDR6 != "" {
			if s.PodCIDR6, err = parsePrefix(f+".podCIDR6", n.PodCIDR6, true); err != nil {
				return err
			}
		} else if cfg.ClusterCIDR6.IsValid() {
			bits := max(cfg.ClusterCIDR6.Bits(), 64)
			if s.PodCIDR6, err = carve(cfg.ClusterCIDR6, bits, i); err != nil {
				return fmt.Errorf("%s.podCIDR6: %w", f, err)
			}
		}
		cfg.Topology[i] = s
	}
	return nil
}

// carve returns the i-th prefix of length bits inside c.
func carve(c netip.Prefix, bits, i int) (netip.Prefix, error) {
	p, ok := nthPrefix(netip.PrefixFrom(c.Addr(), bits), i)
	if !ok || !contains(c, p) {
		return netip.Prefix{}, fmt.Errorf("%s has no %d-th /%d for a default", c, i, bits)
	}
	return p, nil
}
