package policy

// Compile, in order:
//
//	namespaces ─► ids, labels (an unlisted namespace has no labels)
//	pods       ─► identities (namespace + label set), address index,
//	              label postings (key ─► value ─► identity ids), local pods
//	policies   ─► sorted by namespace/name ─► parsed: selectors, ipBlocks,
//	              ports (every problem reported here, local or not)
//	           ─► selecting a local identity? evaluate the rules' selector
//	              peers into identity bitsets (cached by selector text)
//	local pods ─► Rules per direction: the rules of the policies that
//	              select the pod, ingress named ports resolved against it

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// IP protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// policy is one NetworkPolicy, parsed.
type policy struct {
	namespace, name string
	ns              int32
	sel             labels.Selector // nil: does not parse, selects nothing
	types           [2]bool         // by Direction
	rules           [2][]*crule
}

// crule is one rule of a policy, parsed, shared by every pod it applies to.
type crule struct {
	index    int // in spec.ingress or spec.egress
	anyPeer  bool
	peers    []*cpeer // selector peers
	blocks   []ipBlock
	anyPort  bool
	ports    []portRange // numeric ports and ranges
	named    []namedSpec
	peerText []string
	portText []string // numeric and bad ports; named ones render per pod
	ids      bitset   // the peers' identities, once evaluated
	done     bool
}

// cpeer is a selector peer.
type cpeer struct {
	nsSel  labels.Selector // nil: the policy's own namespace
	podSel labels.Selector
	key    string
}

type namedSpec struct {
	proto uint8
	name  string
	id    int32 // interned; -1: no listed pod has a port of this name
}

// identity is a namespace and label set that one or more pods have.
type identity struct {
	ns     int32
	labels labels.Set
	locals []*localPod
	pols   [2][]int32 // policies selecting it, by direction (local identities)
}

type problemKey struct {
	policy int
	reason ProblemReason
	detail string
}

type compiler struct {
	nsID      map[string]int32
	nsNames   []string
	nsLabels  []labels.Set
	nsIdents  [][]int32
	nsLocal   [][]int32
	idents    []*identity
	identKey  map[string]int32
	postings  map[string]map[string][]int32
	portNames map[string]int32
	peerCache map[string]bitset
	nsCache   map[string][]bool
	problems  []Problem
	seen      map[problemKey]struct{}
	cur       int // the policy being parsed, for problems
	curPol    *policy
}

// Compile compiles in; see the package comment. Pods whose Node is
// in.Node are local and get rule sets. Problems are every part of a
// policy that could not be represented as written (each matches
// nothing), deduplicated, in policy order. Compile never fails: a Set
// always comes back.
func Compile(in Input) (*Set, []Problem) {
	c := &compiler{
		nsID:      make(map[string]int32, len(in.Namespaces)),
		identKey:  make(map[string]int32),
		postings:  make(map[string]map[string][]int32),
		portNames: make(map[string]int32),
		peerCache: make(map[string]bitset),
		nsCache:   make(map[string][]bool),
		seen:      make(map[problemKey]struct{}),
	}
	for _, ns := range in.Namespaces {
		if ns == nil {
			continue
		}
		id := c.namespace(ns.Name)
		c.nsLabels[id] = labels.Set(ns.Labels)
	}
	s := &Set{
		local: make(map[netip.Addr]*localPod),
		peers: make(map[netip.Addr]*podRec, len(in.Pods)),
	}
	var keyBuf []byte
	for _, pod := range in.Pods {
		if pod == nil || len(pod.IPs) == 0 {
			continue
		}
		var id int32
		id, keyBuf = c.identity(pod, keyBuf)
		rec := &podRec{pod: pod, ident: id}
		for _, np := range pod.Ports {
			rec.ports = append(rec.ports, podPort{name: c.portName(np.Name), proto: np.Proto, port: np.Port})
		}
		for _, a := range pod.IPs {
			a = a.Unmap()
			if _, dup := s.peers[a]; !dup {
				s.peers[a] = rec
			}
		}
		if pod.Node != in.Node || in.Node == "" {
			continue
		}
		lp := &localPod{rec: rec}
		idn := c.idents[id]
		if len(idn.locals) == 0 {
			c.nsLocal[idn.ns] = append(c.nsLocal[idn.ns], id)
		}
		idn.locals = append(idn.locals, lp)
		s.locals = append(s.locals, lp)
		for _, a := range pod.IPs {
			a = a.Unmap()
			if _, dup := s.local[a]; !dup {
				s.local[a] = lp
			}
		}
	}
	sort.Slice(s.locals, func(i, j int) bool {
		a, b := s.locals[i].rec.pod, s.locals[j].rec.pod
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})

	nps := make([]*networkingv1.NetworkPolicy, 0, len(in.Policies))
	for _, np := range in.Policies {
		if np != nil {
			nps = append(nps, np)
		}
	}
	sort.SliceStable(nps, func(i, j int) bool {
		if nps[i].Namespace != nps[j].Namespace {
			return nps[i].Namespace < nps[j].Namespace
		}
		return nps[i].Name < nps[j].Name
	})
	s.policies = make([]*policy, len(nps))
	for i, np := range nps {
		s.policies[i] = c.parsePolicy(i, np)
	}
	// Selector peers are evaluated against every identity, so identities
	// are complete from here on.
	for i, p := range s.policies {
		if p.sel == nil {
			continue
		}
		var selected []int32
		for _, id := range c.nsLocal[p.ns] {
			if p.sel.Matches(c.idents[id].labels) {
				selected = append(selected, id)
			}
		}
		if len(selected) == 0 {
			continue
		}
		for d := range p.types {
			if !p.types[d] {
				continue
			}
			for _, r := range p.rules[d] {
				c.evalRule(p, r)
			}
			for _, id := range selected {
				c.idents[id].pols[d] = append(c.idents[id].pols[d], int32(i))
			}
		}
	}
	for _, lp := range s.locals {
		idn := c.idents[lp.rec.ident]
		for d := range idn.pols {
			if len(idn.pols[d]) > 0 {
				lp.rules[d] = s.buildRules(Direction(d), lp, idn.pols[d])
			}
		}
	}
	s.idents = c.idents
	s.nsNames = c.nsNames
	return s, c.problems
}

// buildRules lays out a local pod's rules for d in policy index order.
func (s *Set) buildRules(d Direction, lp *localPod, pols []int32) *Rules {
	r := &Rules{policies: pols, peers: s.peers}
	for _, pi := range pols {
		for _, cr := range s.policies[pi].rules[d] {
			ru := rule{
				policy:  pi,
				anyPeer: cr.anyPeer,
				anyPort: cr.anyPort,
				ids:     cr.ids,
				blocks:  cr.blocks,
				ports:   cr.ports,
			}
			if !ru.anyPeer && ru.ids == nil && len(ru.blocks) == 0 {
				continue // matches no peer
			}
			for _, n := range cr.named {
				if d == Egress {
					if n.id >= 0 {
						ru.named = append(ru.named, namedRef{proto: n.proto, name: n.id})
					}
					continue
				}
				for _, pp := range lp.rec.pod.Ports {
					if pp.Name == n.name && pp.Proto == n.proto {
						// Clip: append copies, cr.ports is shared.
						ru.ports = append(slices.Clip(ru.ports), portRange{proto: n.proto, lo: pp.Port, hi: pp.Port})
					}
				}
			}
			if !ru.anyPort && len(ru.ports) == 0 && len(ru.named) == 0 {
				continue // matches no port
			}
			r.rules = append(r.rules, ru)
		}
	}
	r.rules = slices.Clip(r.rules)
	return r
}

func (c *compiler) namespace(name string) int32 {
	if id, ok := c.nsID[name]; ok {
		return id
	}
	id := int32(len(c.nsNames))
	c.nsID[name] = id
	c.nsNames = append(c.nsNames, name)
	c.nsLabels = append(c.nsLabels, nil)
	c.nsIdents = append(c.nsIdents, nil)
	c.nsLocal = append(c.nsLocal, nil)
	return id
}

// identity returns the id of the pod's namespace and label set.
func (c *compiler) identity(pod *Pod, buf []byte) (int32, []byte) {
	ns := c.namespace(pod.Namespace)
	keys := make([]string, 0, len(pod.Labels))
	for k := range pod.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	buf = append(buf[:0], pod.Namespace...)
	for _, k := range keys {
		buf = append(buf, 0)
		buf = append(buf, k...)
		buf = append(buf, '=')
		buf = append(buf, pod.Labels[k]...)
	}
	if id, ok := c.identKey[string(buf)]; ok {
		return id, buf
	}
	id := int32(len(c.idents))
	c.identKey[string(buf)] = id
	c.idents = append(c.idents, &identity{ns: ns, labels: labels.Set(pod.Labels)})
	c.nsIdents[ns] = append(c.nsIdents[ns], id)
	for k, v := range pod.Labels {
		vals := c.postings[k]
		if vals == nil {
			vals = make(map[string][]int32)
			c.postings[k] = vals
		}
		vals[v] = append(vals[v], id)
	}
	return id, buf
}

func (c *compiler) portName(name string) int32 {
	if id, ok := c.portNames[name]; ok {
		return id
	}
	id := int32(len(c.portNames))
	c.portNames[name] = id
	return id
}

func (c *compiler) problem(reason ProblemReason, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	k := problemKey{c.cur, reason, detail}
	if _, dup := c.seen[k]; dup {
		return
	}
	c.seen[k] = struct{}{}
	c.problems = append(c.problems, Problem{Namespace: c.curPol.namespace, Name: c.curPol.name, Reason: reason, Detail: detail})
}

// parsePolicy parses np and reports its problems.
func (c *compiler) parsePolicy(i int, np *networkingv1.NetworkPolicy) *policy {
	p := &policy{namespace: np.Namespace, name: np.Name, ns: c.namespace(np.Namespace)}
	c.cur, c.curPol = i, p
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		c.problem(ProblemBadSelector, "spec.podSelector: %v (the policy selects no pod)", err)
	} else {
		p.sel = sel
	}
	spec := &np.Spec
	if len(spec.PolicyTypes) == 0 {
		p.types[Ingress] = true
		p.types[Egress] = len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.types[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			p.types[Egress] = true
		}
	}
	if p.types[Ingress] {
		for ri := range spec.Ingress {
			r := &spec.Ingress[ri]
			p.rules[Ingress] = append(p.rules[Ingress], c.parseRule(fmt.Sprintf("spec.ingress[%d]", ri), "from", ri, r.From, r.Ports))
		}
	}
	if p.types[Egress] {
		for ri := range spec.Egress {
			r := &spec.Egress[ri]
			p.rules[Egress] = append(p.rules[Egress], c.parseRule(fmt.Sprintf("spec.egress[%d]", ri), "to", ri, r.To, r.Ports))
		}
	}
	return p
}

func (c *compiler) parseRule(path, peersField string, index int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) *crule {
	r := &crule{index: index, anyPeer: len(peers) == 0, anyPort: len(ports) == 0}
	if r.anyPeer {
		r.peerText = []string{"any"}
	}
	for pi := range peers {
		c.parsePeer(r, fmt.Sprintf("%s.%s[%d]", path, peersField, pi), &peers[pi])
	}
	if r.anyPort {
		r.portText = []string{"any"}
	}
	for pi := range ports {
		c.parsePort(r, fmt.Sprintf("%s.ports[%d]", path, pi), &ports[pi])
	}
	return r
}

func (c *compiler) parsePeer(r *crule, path string, pe *networkingv1.NetworkPolicyPeer) {
	bad := func(reason ProblemReason, format string, args ...any) {
		c.problem(reason, path+": "+format, args...)
		r.peerText = append(r.peerText, "none (invalid: "+fmt.Sprintf(format, args...)+")")
	}
	if pe.IPBlock != nil {
		if pe.PodSelector != nil || pe.NamespaceSelector != nil {
			bad(ProblemBadSelector, "ipBlock together with a selector")
			return
		}
		b, err := parseIPBlock(pe.IPBlock)
		if err != nil {
			bad(ProblemBadCIDR, "ipBlock: %v", err)
			return
		}
		r.blocks = append(r.blocks, b)
		r.peerText = append(r.peerText, renderBlock(pe.IPBlock))
		return
	}
	if pe.PodSelector == nil && pe.NamespaceSelector == nil {
		bad(ProblemBadSelector, "neither a selector nor an ipBlock")
		return
	}
	cp := &cpeer{podSel: labels.Everything()}
	if pe.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(pe.PodSelector)
		if err != nil {
			bad(ProblemBadSelector, "podSelector: %v", err)
			return
		}
		cp.podSel = sel
	}
	text := "pods{" + cp.podSel.String() + "}"
	if pe.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(pe.NamespaceSelector)
		if err != nil {
			bad(ProblemBadSelector, "namespaceSelector: %v", err)
			return
		}
		cp.nsSel = sel
		cp.key = "n\x00" + sel.String() + "\x00" + cp.podSel.String()
		text += " in namespaces{" + sel.String() + "}"
	} else {
		cp.key = "p\x00" + c.curPol.namespace + "\x00" + cp.podSel.String()
		text += " in namespace " + c.curPol.namespace
	}
	r.peers = append(r.peers, cp)
	r.peerText = append(r.peerText, text)
}

func parseIPBlock(b *networkingv1.IPBlock) (ipBlock, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return ipBlock{}, fmt.Errorf("cidr: %w", err)
	}
	out := ipBlock{cidr: cidr.Masked()}
	for _, e := range b.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			return ipBlock{}, fmt.Errorf("except: %w", err)
		}
		out.except = append(out.except, ep.Masked())
	}
	return out, nil
}

func renderBlock(b *networkingv1.IPBlock) string {
	s := "ipBlock " + b.CIDR
	if len(b.Except) > 0 {
		s += " except " + strings.Join(b.Except, ", ")
	}
	return s
}

func (c *compiler) parsePort(r *crule, path string, np *networkingv1.NetworkPolicyPort) {
	protoName := "TCP"
	if np.Protocol != nil {
		protoName = string(*np.Protocol)
	}
	text := protoName + "/" + renderPortValue(np)
	bad := func(reason ProblemReason, why string) {
		c.problem(reason, "%s: %s: %s", path, text, why)
		r.portText = append(r.portText, text+" (invalid: "+why+")")
	}
	var proto uint8
	switch corev1.Protocol(protoName) {
	case corev1.ProtocolTCP:
		proto = protoTCP
	case corev1.ProtocolUDP:
		proto = protoUDP
	case corev1.ProtocolSCTP:
		bad(ProblemSCTP, "SCTP is not supported, matches nothing")
		return
	default:
		bad(ProblemBadProtocol, "unknown protocol, matches nothing")
		return
	}
	if np.Port == nil {
		if np.EndPort != nil {
			bad(ProblemBadPort, "endPort without port")
			return
		}
		r.ports = append(r.ports, portRange{proto: proto, lo: 0, hi: 65535})
		r.portText = append(r.portText, text)
		return
	}
	if np.Port.Type == intstr.String {
		if np.Port.StrVal == "" {
			bad(ProblemBadPort, "empty port name")
			return
		}
		if np.EndPort != nil {
			bad(ProblemBadPort, "endPort with a named port")
			return
		}
		id, ok := c.portNames[np.Port.StrVal]
		if !ok {
			id = -1
		}
		r.named = append(r.named, namedSpec{proto: proto, name: np.Port.StrVal, id: id})
		return
	}
	lo := np.Port.IntVal
	if lo < 1 || lo > 65535 {
		bad(ProblemBadPort, "port out of 1..65535")
		return
	}
	hi := lo
	if np.EndPort != nil {
		hi = *np.EndPort
		if hi < lo || hi > 65535 {
			bad(ProblemBadPort, "endPort below port or above 65535")
			return
		}
	}
	r.ports = append(r.ports, portRange{proto: proto, lo: uint16(lo), hi: uint16(hi)})
	r.portText = append(r.portText, text)
}

func renderPortValue(np *networkingv1.NetworkPolicyPort) string {
	var s string
	switch {
	case np.Port == nil:
		s = "all"
	case np.Port.Type == intstr.String:
		s = np.Port.StrVal
	default:
		s = fmt.Sprint(np.Port.IntVal)
	}
	if np.EndPort != nil {
		s += fmt.Sprintf("-%d", *np.EndPort)
	}
	return s
}

// evalRule computes the identities the rule's selector peers match.
func (c *compiler) evalRule(p *policy, r *crule) {
	if r.done {
		return
	}
	r.done = true
	var out bitset
	shared := false
	for _, pe := range r.peers {
		b := c.evalPeer(p, pe)
		switch {
		case b == nil:
		case out == nil:
			out, shared = b, true // the cache's until a second peer adds to it
		default:
			if shared {
				out, shared = slices.Clone(out), false
			}
			for w := range b {
				out[w] |= b[w]
			}
		}
	}
	r.ids = out
}

// evalPeer returns the identities a selector peer matches, nil when none.
func (c *compiler) evalPeer(p *policy, pe *cpeer) bitset {
	if b, ok := c.peerCache[pe.key]; ok {
		return b
	}
	nsOK := c.namespaces(pe.nsSel)
	inNS := func(ns int32) bool {
		if nsOK == nil {
			return ns == p.ns
		}
		return nsOK[ns]
	}
	b := make(bitset, (len(c.idents)+63)/64)
	hit := false
	mark := func(id int32) {
		idn := c.idents[id]
		if inNS(idn.ns) && pe.podSel.Matches(idn.labels) {
			b.set(id)
			hit = true
		}
	}
	// Candidates from the rarest equality requirement, else by namespace.
	reqs, _ := pe.podSel.Requirements()
	best, bestN := -1, 0
	for i := range reqs {
		switch reqs[i].Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
		default:
			continue
		}
		n := 0
		vals := c.postings[reqs[i].Key()]
		for _, v := range reqs[i].ValuesUnsorted() {
			n += len(vals[v])
		}
		if best < 0 || n < bestN {
			best, bestN = i, n
		}
	}
	switch {
	case best >= 0:
		vals := c.postings[reqs[best].Key()]
		for _, v := range reqs[best].ValuesUnsorted() {
			for _, id := range vals[v] {
				mark(id)
			}
		}
	case nsOK == nil:
		for _, id := range c.nsIdents[p.ns] {
			mark(id)
		}
	default:
		for ns, ok := range nsOK {
			if ok {
				for _, id := range c.nsIdents[ns] {
					mark(id)
				}
			}
		}
	}
	if !hit {
		b = nil
	}
	c.peerCache[pe.key] = b
	return b
}

// namespaces returns which namespaces sel matches, nil for a nil sel.
func (c *compiler) namespaces(sel labels.Selector) []bool {
	if sel == nil {
		return nil
	}
	key := sel.String()
	if m, ok := c.nsCache[key]; ok {
		return m
	}
	m := make([]bool, len(c.nsNames))
	for i := range m {
		m[i] = sel.Matches(c.nsLabels[i])
	}
	c.nsCache[key] = m
	return m
}
