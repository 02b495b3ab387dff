package netstackx

import (
	"testing"
	"time"

	"github.com/podrouter/podrouter/router/leaktest"
)

// checkGoroutines fails t if, once t's other cleanups have run, more
// goroutines are alive than when it was called. Call it first in a test,
// so its cleanup runs last.
func checkGoroutines(t testing.TB) { t.Helper(); leaktest.Check(t, 5*time.Second) }
