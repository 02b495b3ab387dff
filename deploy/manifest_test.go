package deploy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/kube/kubetest"
)

// ManifestFile is every object of the kustomization in one file, for
// `kubectl apply -f` as flannel's kube-flannel.yml is applied.
const ManifestFile = "podrouter.yaml"

// manifestHeader opens ManifestFile; `kubectl kustomize .` output follows.
const manifestHeader = `# podrouter: every object of deploy/ (kubectl kustomize deploy/) in one file.
#   kubectl apply -f deploy/podrouter.yaml
# Generated: do not edit. Edit deploy/*.yaml, which explain each field, then
# run 'make manifest'; deploy's TestRenderedManifest fails while they differ.
`

// envUpdateManifest, when "1", makes TestRenderedManifest write
// ManifestFile instead of comparing it (make manifest).
const envUpdateManifest = "PODROUTER_UPDATE_MANIFEST"

// TestRenderedManifest checks that podrouter.yaml is exactly what
// `kubectl kustomize deploy/` renders (under its header), with the kubectl
// that make kube-tools builds. It skips without that kubectl (fails under
// PODROUTER_REQUIRE_KUBE=1, as make test sets).
func TestRenderedManifest(t *testing.T) {
	_, _, kubectl, err := kubetest.Binaries()
	if err != nil {
		if os.Getenv(kubetest.EnvRequire) == "1" {
			t.Fatalf("%v (%s=1)", err, kubetest.EnvRequire)
		}
		t.Skipf("skipped: kubectl is needed to render deploy/: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", ".")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize deploy/: %v\n%s", err, stderr.Bytes())
	}
	want := append([]byte(manifestHeader), stdout.Bytes()...)
	if os.Getenv(envUpdateManifest) == "1" {
		if err := os.WriteFile(ManifestFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote deploy/%s (%d bytes)", ManifestFile, len(want))
		return
	}
	got, err := os.ReadFile(ManifestFile)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deploy/%s is missing: run 'make manifest'", ManifestFile)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("deploy/%s differs from kubectl kustomize deploy/ (first difference at line %d): run 'make manifest'", ManifestFile, firstDiffLine(got, want))
	}
}

// firstDiffLine returns the 1-based line where a and b first differ.
func firstDiffLine(a, b []byte) int {
	line := 1
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return line
		}
		if a[i] == '\n' {
			line++
		}
	}
	return line
}
