package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/version"
)

// TestStatusShowsUnderlay: a vxlan daemon's status and start log give its
// own underlay endpoint, backend, VNI and VTEP MAC (derived from the
// endpoint when not configured: what a static peer list elsewhere must be
// given), and its version.
func TestStatusShowsUnderlay(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t)
	dir := t.TempDir()
	uid := uint32(0)
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := Config{
		PodCIDR:     netip.MustParsePrefix(fmt.Sprintf("10.252.%d.0/24", 1+rand.IntN(250))),
		StateDir:    filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "run", "api.sock"),
		Uplink:      fmt.Sprintf("prv%05x", rand.IntN(1<<20)),
		APIAllowUID: &uid,
		Underlay:    UnderlayConfig{Backend: "vxlan", VNI: 7, Listen: netip.MustParseAddrPort("127.0.0.1:0")},
		Logger:      zap.New(core),
	}
	var d *Daemon
	if err := ns.Do(func() (err error) { d, err = New(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	}()
	ann := d.Node().Backend().Announce()
	if ann.VTEPMAC[0]&1 != 0 || ann.VTEPMAC == [6]byte{} || ann.Endpoint.Port() == 0 {
		t.Fatalf("announcement %+v: want a unicast VTEP MAC and the bound port", ann)
	}
	st, err := (handler{d}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Backend != "vxlan" || st.Endpoint != ann.Endpoint || st.VNI != 7 || st.VTEPMAC != api.MAC(ann.VTEPMAC) {
		t.Errorf("status backend %q endpoint %v vni %d vtepMAC %v; want vxlan %v 7 %v", st.Backend, st.Endpoint, st.VNI, st.VTEPMAC, ann.Endpoint, ann.VTEPMAC)
	}
	if st.Version != version.Devel || st.Commit == "" {
		t.Errorf("status version %q commit %q, want devel and a commit", st.Version, st.Commit)
	}
	under := logs.FilterMessage("underlay").AllUntimed()
	if len(under) != 1 {
		t.Fatalf("%d underlay log lines, want 1", len(under))
	}
	f := under[0].ContextMap()
	if f["backend"] != "vxlan" || f["endpoint"] != ann.Endpoint.String() || f["vni"] != uint32(7) || f["vtepMAC"] != ann.VTEPMAC.String() {
		t.Errorf("underlay log fields %v; want vxlan %v 7 %v", f, ann.Endpoint, ann.VTEPMAC)
	}
	start := logs.FilterMessage("starting").AllUntimed()
	if len(start) != 1 || start[0].ContextMap()["version"] != version.Devel {
		t.Errorf("start log %v, want one with version devel", start)
	}
}
