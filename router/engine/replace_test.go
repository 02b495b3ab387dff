package engine

import (
	"errors"
	"testing"

	"github.com/podrouter/podrouter/router/link/linktest"
)

// TestReplacePort: a replacement takes the old port's addresses in one
// swap; a replacement that cannot attach leaves the old port as it was.
func TestReplacePort(t *testing.T) {
	r := newRig(t)
	portOf := func() *Port {
		t.Helper()
		nh, ok := r.e.Routes().Lookup(addrA)
		if !ok {
			t.Fatal("no route to A")
		}
		return r.e.PortByIndex(nh.Port)
	}
	pc := r.pa.Config()
	// Refused: the new port would take B's address too. A stays.
	_, dev := linktest.Pipe(16, 2048, 8)
	bad := pc
	bad.Addrs = append(bad.Addrs, addrB)
	if _, err := r.e.ReplacePort(r.pa, dev, bad); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("ReplacePort taking B's address: %v", err)
	}
	_ = dev.Close()
	if portOf() != r.pa {
		t.Fatal("a refused replacement detached the old port")
	}
	// Accepted: the same name and addresses move to the new device.
	host, dev2 := linktest.Pipe(16, 2048, 8)
	defer host.Close()
	np, err := r.e.ReplacePort(r.pa, dev2, pc)
	if err != nil {
		t.Fatal(err)
	}
	if portOf() != np || np.Name() != pc.Name {
		t.Fatalf("A routes to %v, want the new port", portOf())
	}
	for _, p := range r.e.Ports() {
		if p == r.pa {
			t.Fatal("old port still attached")
		}
	}
	if _, err := r.e.ReplacePort(r.pa, dev2, pc); !errors.Is(err, ErrPortUnknown) {
		t.Fatalf("replacing a detached port: %v", err)
	}
}
