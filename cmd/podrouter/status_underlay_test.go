package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/podrouter/podrouter/router/api"
)

// TestStatusUnderlayLines: podrouter status shows the daemon's version and
// its own underlay: backend and endpoint, and for vxlan the VNI and VTEP
// MAC a static peer list elsewhere must give for this node; --json carries
// them as vni and vtepMAC.
func TestStatusUnderlayLines(t *testing.T) {
	st := api.Status{Backend: "vxlan", Endpoint: netip.MustParseAddrPort("192.0.2.5:8472"), VNI: 7,
		VTEPMAC: api.MAC{0x0a, 0x58, 0xc0, 0x00, 0x02, 0x05}, Version: "v0.4.0", Commit: "0123abc"}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{"version:", "v0.4.0 (commit 0123abc)", "backend:", "vxlan on 192.0.2.5:8472", "vni:", " 7\n", "vtep mac:", "0a:58:c0:00:02:05"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"vni":7`) || !strings.Contains(string(b), `"vtepMAC":"0a:58:c0:00:02:05"`) {
		t.Errorf("--json: %s", b)
	}
	var back api.Status
	if err := json.Unmarshal(b, &back); err != nil || back.VTEPMAC != st.VTEPMAC || back.VNI != 7 {
		t.Errorf("round trip %+v, %v", back, err)
	}
	// A udp or wireguard node has neither line.
	out.Reset()
	printStatus(&out, api.Status{Backend: "udp", Endpoint: netip.MustParseAddrPort("192.0.2.5:8285")})
	if strings.Contains(out.String(), "vni") || strings.Contains(out.String(), "vtep mac") {
		t.Errorf("udp status shows vxlan lines:\n%s", out.String())
	}
	if b, _ := json.Marshal(api.Status{Backend: "udp"}); strings.Contains(string(b), "vtepMAC") || strings.Contains(string(b), `"vni"`) {
		t.Errorf("udp --json has vxlan fields: %s", b)
	}
}
