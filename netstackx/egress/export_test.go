package egress

// TrackedFlows is the number of flows ResetSource and Close would abort.
func (f *Forwarder) TrackedFlows() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}
