package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// TestKlogGoesThroughZap: client-go's klog lines, classic and contextual,
// come out as the daemon's zap JSON lines, and klog is restored after.
func TestKlogGoesThroughZap(t *testing.T) {
	var buf bytes.Buffer
	log, err := (&logFlags{level: "info", format: "json"}).build(&buf)
	if err != nil {
		t.Fatal(err)
	}
	restore := routeKlog(log)
	klog.InfoS("Watch close", "reflector", "nodes", "total", 3)
	klog.Errorf("failed to list %s", "*v1.Node")
	klog.V(4).Info("hidden at info level")
	klog.FromContext(context.Background()).Info("contextual", "node", "n1")
	restore()

	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q (%v)\nall:\n%s", l, err, buf.String())
		}
		if m["logger"] != "client-go" {
			t.Errorf("line %q: logger %v, want client-go", l, m["logger"])
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (V(4) hidden):\n%s", len(lines), buf.String())
	}
	if l := lines[0]; l["msg"] != "Watch close" || l["reflector"] != "nodes" || l["total"] != float64(3) || l["level"] != "info" {
		t.Errorf("InfoS line %v", l)
	}
	if l := lines[1]; l["msg"] != "failed to list *v1.Node" || l["level"] != "error" {
		t.Errorf("Errorf line %v", l)
	}
	if l := lines[2]; l["msg"] != "contextual" || l["node"] != "n1" {
		t.Errorf("contextual line %v", l)
	}

	// Restored: nothing more reaches the zap logger.
	n := buf.Len()
	klog.InfoS("after")
	klog.Flush()
	if buf.Len() != n {
		t.Errorf("klog still writes to the daemon's logger after restore: %q", buf.String()[n:])
	}
}
