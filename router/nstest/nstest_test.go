package nstest

import (
	"os"
	"strings"
	"testing"
)

func exists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func TestNamespaceLifecycle(t *testing.T) {
	var name string
	t.Run("create", func(t *testing.T) {
		n := New(t)
		name = n.Name
		if !exists(name) {
			t.Fatal("namespace not created")
		}
		if out := n.Run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
			t.Fatalf("lo not up: %s", out)
		}
		// Only lo lives in a new namespace.
		if out := n.Run(t, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
			t.Fatalf("unexpected links: %s", out)
		}
	})
	if name != "" && exists(name) {
		t.Fatalf("namespace %s left behind", name)
	}
}
