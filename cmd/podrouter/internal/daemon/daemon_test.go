package daemon

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podrouter/podrouter/router/api"
)

// configCase is a Config that must validate (field empty) or fail with
// ErrConfig, naming field.
type configCase struct {
	name  string
	cfg   Config
	field string
}

// checkValidate runs each case as a subtest; valid, when not nil, checks
// a config that validated (Validate fills in defaults).
func checkValidate(t *testing.T, cases []configCase, valid func(t *testing.T, cfg Config)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if valid != nil {
					valid(t, tc.cfg)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want ErrConfig naming %q", err, tc.field)
			}
		})
	}
}

// withEgress is a valid config (pod CIDR 10.244.1.0/24 in cluster
// 10.244.0.0/16) with e as its egress.
func withEgress(e EgressConfig) Config {
	pfx := netip.MustParsePrefix
	return Config{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Egress: e}
}

func TestConfigValidate(t *testing.T) {
	pfx := netip.MustParsePrefix
	checkValidate(t, []configCase{
		{"minimal", Config{PodCIDR: pfx("10.244.1.0/24")}, ""},
		{"dual stack in cluster", Config{PodCIDR: pfx("10.244.1.0/24"), PodCIDR6: pfx("fd00:10:244:1::/64"),
			ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")}, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.1.10")}}, ""},
		{"no pod cidr", Config{}, "pod-cidr"},
		{"pod cidr v6", Config{PodCIDR: pfx("fd00::/64")}, "pod-cidr"},
		{"pod cidr /31", Config{PodCIDR: pfx("10.0.0.0/31")}, "pod-cidr"},
		{"pod cidr6 v4", Config{PodCIDR: pfx("10.244.1.0/24"), PodCIDR6: pfx("10.0.0.0/8")}, "pod-cidr6"},
		{"pod cidr outside cluster", Config{PodCIDR: pfx("10.245.1.0/24"), ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}}, "not inside any cluster-cidr"},
		{"node ip in cluster", Config{PodCIDR: pfx("10.244.1.0/24"), NodeIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}, "node-ip"},
		{"relative state", Config{PodCIDR: pfx("10.244.1.0/24"), StateDir: "state"}, "state-dir"},
		{"relative socket", Config{PodCIDR: pfx("10.244.1.0/24"), Socket: "x.sock"}, "socket"},
		{"uplink name", Config{PodCIDR: pfx("10.244.1.0/24"), Uplink: "much-too-long-name"}, "uplink"},
		{"mtu", Config{PodCIDR: pfx("10.244.1.0/24"), MTU: 576}, "mtu"},
	}, func(t *testing.T, cfg Config) {
		if cfg.StateDir != DefaultStateDir || cfg.Socket != api.DefaultSocket || cfg.Uplink != DefaultUplink || cfg.MTU != DefaultMTU || len(cfg.ClusterCIDRs) == 0 {
			t.Fatalf("defaults not filled in: %+v", cfg)
		}
	})
}

func testRecord(id string) record {
	return record{AttachRequest: api.AttachRequest{
		AttachmentID: api.AttachmentID{ContainerID: id, IfName: "eth0"},
		Netns:        "/run/netns/" + id,
		MAC:          api.MAC{0x0a, 0x58, 10, 244, 1, 5},
		MTU:          1500,
		Addrs:        []netip.Addr{netip.MustParseAddr("10.244.1.5")},
	}, Created: 42}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openStore(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second openStore: %v, want ErrLocked", err)
	}
	a, b := testRecord("aaa"), testRecord("b.b-b_b")
	for _, r := range []record{a, b, a} { // the second put of a replaces it
		if err := s.put(r); err != nil {
			t.Fatal(err)
		}
	}
	// Debris: a torn temp file from a crash and a corrupt record.
	if err := os.WriteFile(filepath.Join(s.dir, ".tmp-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "junk.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, bad, err := s.load()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || len(bad) != 1 || bad[0] != "junk.json" {
		t.Fatalf("load = %d records, bad %v", len(recs), bad)
	}
	for _, r := range recs {
		if r.AttachmentID != a.AttachmentID && r.AttachmentID != b.AttachmentID || r.Created != 42 || r.MAC != a.MAC || r.Addrs[0] != a.Addrs[0] {
			t.Errorf("record = %+v", r)
		}
	}
	if _, err := os.Stat(filepath.Join(s.dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Error("temp file not removed by load")
	}
	if err := s.remove(a.AttachmentID); err != nil {
		t.Fatal(err)
	}
	if err := s.remove(a.AttachmentID); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed: the lock is free again and the state is what was left.
	s2, err := openStore(dir)
	if err != nil {
		t.Fatalf("openStore after Close: %v", err)
	}
	defer s2.Close()
	recs, _, err = s2.load()
	if err != nil || len(recs) != 1 || recs[0].AttachmentID != b.AttachmentID {
		t.Fatalf("after reopen: %+v, %v", recs, err)
	}
	if fi, err := os.Stat(s2.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
}
