//go:build !podrouter_notaps

package engine

// tapsCompiled is true in every normal build. The podrouter_notaps build
// tag compiles the packet-capture hooks out of the forwarding loop, only to
// measure what they cost an idle data path (bench/tapcost.sh):
// with it, SetTap installs nothing the workers look at.
const tapsCompiled = true

// loadTap returns p's capture tap, nil when none runs.
func (p *Port) loadTap() *Tap { return p.tap.Load() }
