//go:build podrouter_notaps

package engine

// tapsCompiled is false under the podrouter_notaps build tag: the
// forwarding loop has no capture hooks (see taps.go).
const tapsCompiled = false

func (p *Port) loadTap() *Tap { return nil }
