package node

import (
	"cmp"
	"maps"
	"slices"
	"sync"
)

// registry holds the kinds of one stage by name (egress modes, backends).
// Kinds register from init functions; lookups happen while nodes are built.
type registry[K cmp.Ordered, V any] struct {
	what string // for panics: "egress", "backend"
	mu   sync.RWMutex
	m    map[K]V
}

// add registers v under k. It panics when k is taken: a programming error.
func (r *registry[K, V]) add(k K, v V) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[K]V{}
	}
	if _, dup := r.m[k]; dup {
		panic("node: " + r.what + " kind registered twice")
	}
	r.m[k] = v
}

func (r *registry[K, V]) get(k K) (V, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, ok := r.m[k]
	return v, ok
}

// names returns the registered names, sorted.
func (r *registry[K, V]) names() []K {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.m))
}
