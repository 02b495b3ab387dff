package daemon

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadPeers(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "peers")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ps, err := LoadPeers(write("- name: b\n  endpoint: 192.0.2.2:8472\n  vtepMAC: 0a:00:00:00:00:02\n  podCIDRs: [10.244.2.0/24]\n"))
	if err != nil || len(ps) != 1 || ps[0].Addr != netip.MustParseAddrPort("192.0.2.2:8472") || ps[0].VTEPMAC.String() != "0a:00:00:00:00:02" ||
		ps[0].PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") {
		t.Fatalf("%+v %v", ps, err)
	}
	if ps, err := LoadPeers(write(`[{"name":"c","endpoint":"192.0.2.3:8285","podCIDRs":["10.244.3.0/24"]}]`)); err != nil || len(ps) != 1 {
		t.Fatalf("json: %+v %v", ps, err)
	}
	if ps, err := LoadPeers(write("- {name: h, endpoint: 192.0.2.5, podCIDRs: [10.244.5.0/24]}\n")); err != nil || len(ps) != 1 || ps[0].Addr != netip.MustParseAddrPort("192.0.2.5:0") {
		t.Fatalf("host-gw (no port): %+v %v", ps, err)
	}
	key := "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
	if ps, err := LoadPeers(write("- {name: w, endpoint: '192.0.2.4:51820', publicKey: " + key + ", podCIDRs: [10.244.4.0/24]}\n")); err != nil ||
		len(ps) != 1 || ps[0].PublicKey.String() != key {
		t.Fatalf("wireguard: %+v %v", ps, err)
	}
	for in, want := range map[string]string{
		"- name: b\n  endpoint: 192.0.2.2:0\n  podCIDRs: [10.244.2.0/24]\n":                                                              "endpoint",
		"- name: b\n  endpoint: nowhere\n  podCIDRs: [10.244.2.0/24]\n":                                                                  "endpoint",
		"- name: b\n  endpoint: 192.0.2.2:1\n  podCIDRs: [10.244.2.1/24]\n":                                                              "podCIDR",
		"- name: b\n  endpoint: 192.0.2.2:1\n":                                                                                           "podCIDRs",
		"- name: b\n  endpoint: 192.0.2.2:1\n  vtepMAC: 01:00:00:00:00:01\n  podCIDRs: [10.0.0.0/24]\n":                                  "vtepMAC",
		"- name: b\n  endpoint: 192.0.2.2:1\n  publicKey: AAAA\n  podCIDRs: [10.0.0.0/24]\n":                                             "publicKey",
		"- name: b\n  endpont: 192.0.2.2:1\n":                                                                                            "endpont",
		"- {name: b, endpoint: '192.0.2.2:1', podCIDRs: [10.0.0.0/24]}\n- {name: b, endpoint: '192.0.2.3:1', podCIDRs: [10.0.1.0/24]}\n": "twice",
	} {
		if _, err := LoadPeers(write(in)); !errors.Is(err, ErrPeersFile) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", in, err, want)
		}
	}
}
