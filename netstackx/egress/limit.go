package egress

import (
	"net/netip"
	"sync"
)

// limiter counts a resource (flows, dials in flight) in total and per
// source address, and shares it fairly: a source may hold at most per,
// everyone together at most total, and once the total is seven eighths
// used, only sources holding less than a fair share get more (the total
// divided among the sources holding any, plus one that may come). So a pod
// that opens flows without end stops at its cap, and pods that flood
// together leave the last eighth to the others.
type limiter struct {
	mu         sync.Mutex
	total, per int
	used       int
	by         map[netip.Addr]int
}

func (l *limiter) init(total, per int) {
	l.total, l.per, l.by = total, per, map[netip.Addr]int{}
}

// acquire takes one unit for src, or reports false.
func (l *limiter) acquire(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.by[src]
	if n >= l.per || l.used >= l.total {
		return false
	}
	if l.used >= l.total-l.total/8 && n >= l.total/(len(l.by)+1) {
		// Near the limit, keep room as if one more source were waiting.
		return false
	}
	l.by[src] = n + 1
	l.used++
	return true
}

// release gives back one unit of src.
func (l *limiter) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.by[src]; n > 1 {
		l.by[src] = n - 1
	} else if n == 1 {
		delete(l.by, src)
	} else {
		return
	}
	l.used--
}

func (l *limiter) inUse() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used
}
