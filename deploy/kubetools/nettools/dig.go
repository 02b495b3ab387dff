package main

// dig: one DNS question, sent to @server or to /etc/resolv.conf's
// nameservers, and the reply printed as BIND's dig prints it.
//
//	args -> digOpts -> names to try (+search: resolv.conf's search list and ndots)
//	     -> for each name: query -> UDP (TCP on TC, or +tcp) to each server in turn
//	     -> the first reply that is not NXDOMAIN (dig goes on through the search
//	        list on NXDOMAIN only) -> printed: full, +noall +answer, or +short
//
// The e2e DNS specs run (test/e2e/network/dns_common.go, dns.go):
//
//	dig +notcp +noall +answer +search NAME A       (and +tcp; SRV for _port._proto names)
//	dig +notcp +noall +answer +search REVERSE PTR
//	dig +short NAME CNAME > /results/FILE
//	dig +short +search SHORTNAME
//	dig +short @SERVER [-p PORT] NAME [AAAA], dig +short -x IP
//
// and look at stdout only (not empty, or equal to one answer's data) and at
// the exit status. Design notes: as BIND's dig, the exit status is 0 for any
// reply, NXDOMAIN and SERVFAIL included, 1 for bad arguments, 9 when no
// server answered and 10 for a name that cannot be sent; unlike dig, its
// diagnostics (";; ... no servers could be reached") go to stderr, so that stdout
// holds answers only and `check="$(dig ...)" && test -n "$check"` cannot
// pass on an error message. The resolver here is our own, not the libc's
// (BIND's dig does not use the libc's either): the glibc querier's libc is
// exercised by getent.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dig exit codes (dig(1) RETURN CODES).
const (
	digOK       = 0
	digUsage    = 1
	digNoReply  = 9
	digInternal = 10
)

// digTypes are the record types dig takes by name (and TYPEnnn for others).
var digTypes = map[string]dnsmessage.Type{
	"A": dnsmessage.TypeA, "NS": dnsmessage.TypeNS, "CNAME": dnsmessage.TypeCNAME,
	"SOA": dnsmessage.TypeSOA, "PTR": dnsmessage.TypePTR, "MX": dnsmessage.TypeMX,
	"TXT": dnsmessage.TypeTXT, "AAAA": dnsmessage.TypeAAAA, "SRV": dnsmessage.TypeSRV,
	"OPT": dnsmessage.TypeOPT, "SVCB": dnsmessage.TypeSVCB, "HTTPS": dnsmessage.TypeHTTPS,
	"ANY": dnsmessage.TypeALL,
}

func typeName(t dnsmessage.Type) string {
	for name, v := range digTypes {
		if v == t {
			return name
		}
	}
	return fmt.Sprintf("TYPE%d", t)
}

func parseType(s string) (dnsmessage.Type, bool) {
	s = strings.ToUpper(s)
	if t, ok := digTypes[s]; ok {
		return t, true
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(s, "TYPE"), 10, 16); err == nil && strings.HasPrefix(s, "TYPE") {
		return dnsmessage.Type(n), true
	}
	return 0, false
}

func className(c dnsmessage.Class) string {
	if c == dnsmessage.ClassINET {
		return "IN"
	}
	return fmt.Sprintf("CLASS%d", c)
}

var rcodeNames = map[dnsmessage.RCode]string{
	dnsmessage.RCodeSuccess: "NOERROR", dnsmessage.RCodeFormatError: "FORMERR",
	dnsmessage.RCodeServerFailure: "SERVFAIL", dnsmessage.RCodeNameError: "NXDOMAIN",
	dnsmessage.RCodeNotImplemented: "NOTIMP", dnsmessage.RCodeRefused: "REFUSED",
}

func rcodeName(r dnsmessage.RCode) string {
	if s, ok := rcodeNames[r]; ok {
		return s
	}
	return fmt.Sprintf("RESERVED%d", r)
}

// digShow is which parts of a reply are printed (+[no]cmd, +[no]answer, ...).
type digShow struct {
	cmd, comments, question, answer, authority, additional, stats bool
}

var digShowAll = digShow{true, true, true, true, true, true, true}

type digOpts struct {
	name     string // "" is the root; without a trailing dot unless absolute
	qtype    dnsmessage.Type
	qclass   dnsmessage.Class
	server   string // @server: an address or a host name; "" is resolv.conf's nameservers
	port     uint16
	tcp      bool
	ignoreTC bool // +ignore: keep a truncated UDP reply, do not retry over TCP
	search   bool
	ndots    int // -1: resolv.conf's
	recurse  bool
	edns     bool
	bufsize  uint16
	timeout  time.Duration // per try; 0: 5s over UDP, 10s over TCP, as dig
	tries    int
	short    bool
	show     digShow
	family   int // 4 or 6 (-4, -6): servers of that family only; 0 either
}

type digUsageError struct{ msg string }

func (e *digUsageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &digUsageError{fmt.Sprintf(format, a...)} }

func parseDig(args []string) (digOpts, error) {
	o := digOpts{
		qclass: dnsmessage.ClassINET, port: 53, ndots: -1, recurse: true, edns: true,
		bufsize: 1232, tries: 3, show: digShowAll,
	}
	typeSet := false
	nameSet := false
	setName := func(n string) error {
		if nameSet {
			return usagef("one query name only, got %q and %q", o.name, n)
		}
		o.name, nameSet = n, true
		return nil
	}
	value := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", usagef("option %s: needs a value", args[i])
		}
		return args[i+1], nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case strings.HasPrefix(a, "+"):
			if err := o.plus(a[1:]); err != nil {
				return o, err
			}
		case strings.HasPrefix(a, "@"):
			o.server = a[1:]
		case a == "-4":
			o.family = 4
		case a == "-6":
			o.family = 6
		case a == "-p", a == "-t", a == "-c", a == "-q", a == "-x":
			v, err := value(i)
			if err != nil {
				return o, err
			}
			i++
			switch a {
			case "-p":
				n, err := strconv.ParseUint(v, 10, 16)
				if err != nil {
					return o, usagef("-p %q: not a port", v)
				}
				o.port = uint16(n)
			case "-t":
				t, ok := parseType(v)
				if !ok {
					return o, usagef("-t %q: not a record type", v)
				}
				o.qtype, typeSet = t, true
			case "-c":
				if !strings.EqualFold(v, "IN") {
					return o, usagef("-c %q: class IN only", v)
				}
			case "-q":
				if err := setName(v); err != nil {
					return o, err
				}
			case "-x":
				rev, err := reverseName(v)
				if err != nil {
					return o, err
				}
				if err := setName(rev); err != nil {
					return o, err
				}
				if !typeSet {
					o.qtype, typeSet = dnsmessage.TypePTR, true
				}
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			return o, usagef("option %s: not supported by this dig", a)
		default:
			// As dig: a record type, else a class, else the name.
			if t, ok := parseType(a); ok && !typeSet {
				o.qtype, typeSet = t, true
				continue
			}
			if strings.EqualFold(a, "IN") {
				continue
			}
			if err := setName(a); err != nil {
				return o, err
			}
		}
	}
	if !nameSet {
		o.name, o.qtype = ".", dnsmessage.TypeNS // as dig: the root's servers
		if typeSet {
			return o, usagef("a record type but no name")
		}
	}
	if !typeSet {
		o.qtype = dnsmessage.TypeA
	}
	return o, nil
}

// plus applies one +keyword[=value].
func (o *digOpts) plus(kw string) error {
	key, val, hasVal := strings.Cut(kw, "=")
	on := true
	if strings.HasPrefix(key, "no") {
		on, key = false, key[2:]
	}
	number := func(min, max int) (int, error) {
		n, err := strconv.Atoi(val)
		if !hasVal || !on || err != nil || n < min || n > max {
			return 0, usagef("+%s: needs a number from %d to %d", kw, min, max)
		}
		return n, nil
	}
	var err error
	switch key {
	case "tcp", "vc":
		o.tcp = on
	case "ignore":
		o.ignoreTC = on
	case "search", "defname":
		o.search = on
	case "recurse", "rec":
		o.recurse = on
	case "edns":
		o.edns = on
	case "short":
		o.short = on
		if on {
			o.show = digShow{answer: true}
		}
	case "all":
		if on {
			o.show = digShowAll
		} else {
			o.show = digShow{}
		}
	case "cmd":
		o.show.cmd = on
	case "comments":
		o.show.comments = on
	case "question":
		o.show.question = on
	case "answer":
		o.show.answer = on
	case "authority":
		o.show.authority = on
	case "additional":
		o.show.additional = on
	case "stats":
		o.show.stats = on
	case "cookie", "ttlid", "class":
		// Printing and EDNS details this dig does not vary; accepted so
		// that scripts written for BIND's dig run.
	case "time":
		var n int
		n, err = number(1, 300)
		o.timeout = time.Duration(n) * time.Second
	case "tries":
		o.tries, err = number(1, 100)
	case "retry":
		var n int
		n, err = number(0, 99)
		o.tries = n + 1
	case "ndots":
		o.ndots, err = number(0, 15)
	case "bufsize":
		var n int
		n, err = number(0, 65535)
		o.bufsize = uint16(n)
	default:
		return usagef("invalid option: +%s", kw)
	}
	return err
}

// reverseName is -x's name: a.b.c.d -> d.c.b.a.in-addr.arpa., IPv6 nibbles
// under ip6.arpa.
func reverseName(s string) (string, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return "", usagef("-x %q: not an IP address", s)
	}
	ip = ip.Unmap()
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.in-addr.arpa.", a[3], a[2], a[1], a[0])
		return b.String(), nil
	}
	a := ip.As16()
	const hex = "0123456789abcdef"
	for i := len(a) - 1; i >= 0; i-- {
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa.")
	return b.String(), nil
}

// resolvConf is what dig takes from /etc/resolv.conf.
type resolvConf struct {
	servers []netip.Addr
	search  []string // without trailing dots; "." is the root
	ndots   int
}

// parseResolvConf reads resolv.conf(5): nameserver (three at most), search
// and domain (the last one wins), options ndots:N. A missing file is the
// resolver's defaults: the local host, no search list, ndots 1.
func parseResolvConf(text string) resolvConf {
	c := resolvConf{ndots: 1}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0][0] == '#' || f[0][0] == ';' {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 && len(c.servers) < 3 {
				if ip, err := netip.ParseAddr(f[1]); err == nil {
					c.servers = append(c.servers, ip)
				}
			}
		case "domain":
			if len(f) > 1 {
				c.search = []string{trimDot(f[1])}
			}
		case "search":
			c.search = c.search[:0:0]
			for _, d := range f[1:] {
				if d[0] == '#' || d[0] == ';' {
					break
				}
				c.search = append(c.search, trimDot(d))
			}
		case "options":
			for _, opt := range f[1:] {
				if v, ok := strings.CutPrefix(opt, "ndots:"); ok {
					if n, err := strconv.Atoi(v); err == nil && n >= 0 {
						c.ndots = min(n, 15)
					}
				}
			}
		}
	}
	if len(c.servers) == 0 {
		c.servers = []netip.Addr{netip.IPv6Loopback(), netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	}
	return c
}

// trimDot drops a trailing dot but keeps the root ".".
func trimDot(d string) string {
	if len(d) > 1 {
		return strings.TrimSuffix(d, ".")
	}
	return d
}

// candidates are the names dig asks for, in order, absolute: as given when
// it ends in a dot or without +search; else, as BIND's dig, the name as given first
// when it has at least ndots dots, then with each search domain, the name
// as given last otherwise.
func candidates(name string, search bool, conf resolvConf, ndots int) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	if !search {
		return []string{name + "."}
	}
	if ndots < 0 {
		ndots = conf.ndots
	}
	var out []string
	for _, d := range conf.search {
		if d == "." {
			out = append(out, name+".")
		} else {
			out = append(out, name+"."+d+".")
		}
	}
	if strings.Count(name, ".") >= ndots {
		return append([]string{name + "."}, out...)
	}
	return append(out, name+".")
}

// exchange is one query to one server and its reply.
type exchange struct {
	server netip.AddrPort
	tcp    bool
	reply  dnsmessage.Message
	size   int
	rtt    time.Duration
}

// errQuery is a question that cannot be sent (not a legal name): no server
// is asked.
var errQuery = errors.New("cannot build the query")

const digUsageText = "usage: dig [@server] [-4|-6] [-p port] [-x addr] [-t type] [-q name] [+[no]tcp] [+[no]search] [+ndots=N]\n" +
	"           [+short] [+[no]all] [+[no]answer] [+time=S] [+tries=N] [+[no]ignore] [+[no]recurse] [+[no]edns] name [type]\n"

func dig(args []string, resolvConfPath string, stdout, stderr io.Writer) int {
	if slices.Contains(args, "-h") {
		io.WriteString(stdout, digUsageText)
		return digOK
	}
	o, err := parseDig(args)
	if err != nil {
		fmt.Fprintf(stderr, "dig: %v\n%s", err, digUsageText)
		return digUsage
	}
	text, _ := os.ReadFile(resolvConfPath) // missing: the resolver's defaults
	conf := parseResolvConf(string(text))

	servers, err := o.servers(conf)
	if err != nil {
		fmt.Fprintf(stderr, "dig: %v\n", err)
		return digUsage
	}
	var last *exchange
	for _, n := range candidates(o.name, o.search, conf, o.ndots) {
		q, err := dnsmessage.NewName(n)
		if err != nil || len(n) > 254 {
			continue // longer than a name may be: the resolver skips it too
		}
		ex, err := o.ask(q, servers)
		if errors.Is(err, errQuery) {
			fmt.Fprintf(stderr, "dig: %v\n", err)
			return digInternal
		}
		if err != nil {
			fmt.Fprintf(stderr, ";; %s\n;; no servers could be reached\n", strings.ReplaceAll(err.Error(), "\n", "\n;; "))
			return digNoReply
		}
		last = ex
		if ex.reply.RCode != dnsmessage.RCodeNameError {
			break
		}
	}
	if last == nil {
		fmt.Fprintf(stderr, "dig: '%s' is not a legal name\n", o.name)
		return digInternal
	}
	printReply(stdout, o, args, last)
	return digOK
}

// servers are the addresses to ask, in order: @server (an address, or a
// name resolved by the Go resolver), else resolv.conf's nameservers.
func (o *digOpts) servers(conf resolvConf) ([]netip.AddrPort, error) {
	var addrs []netip.Addr
	if o.server != "" {
		if ip, err := netip.ParseAddr(o.server); err == nil {
			addrs = []netip.Addr{ip}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", o.server)
			if err != nil {
				return nil, fmt.Errorf("couldn't get address for '%s': %v", o.server, err)
			}
			addrs = ips
		}
	} else {
		addrs = conf.servers
	}
	var out []netip.AddrPort
	for _, ip := range addrs {
		ip = ip.Unmap()
		if (o.family == 4 && !ip.Is4()) || (o.family == 6 && !ip.Is6()) {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, o.port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no server of the address family asked for (-%d)", o.family)
	}
	return out, nil
}

// ask sends the question for name to each server in turn (each o.tries
// times over UDP, once over TCP) until one replies; a truncated UDP reply
// is asked again over TCP unless +ignore.
func (o *digOpts) ask(name dnsmessage.Name, servers []netip.AddrPort) (*exchange, error) {
	q := dnsmessage.Question{Name: name, Type: o.qtype, Class: o.qclass}
	var errs []error
	for _, s := range servers {
		tries := o.tries
		if o.tcp {
			tries = 1
		}
		for try := 0; try < tries; try++ {
			ex, err := o.query(q, s, o.tcp)
			if err == nil && ex.reply.Truncated && !o.tcp && !o.ignoreTC {
				ex, err = o.query(q, s, true)
			}
			if err == nil || errors.Is(err, errQuery) {
				return ex, err
			}
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			if !os.IsTimeout(err) {
				break // refused or unreachable: the next server
			}
		}
	}
	return nil, errors.Join(errs...)
}

// query is one exchange with one server over UDP or TCP.
func (o *digOpts) query(q dnsmessage.Question, server netip.AddrPort, tcp bool) (*exchange, error) {
	var idb [2]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: o.recurse},
		Questions: []dnsmessage.Question{q},
	}
	if o.edns {
		var h dnsmessage.ResourceHeader
		h.SetEDNS0(int(o.bufsize), dnsmessage.RCodeSuccess, false)
		msg.Additionals = []dnsmessage.Resource{{Header: h, Body: &dnsmessage.OPTResource{}}}
	}
	packed, err := msg.Pack()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errQuery, err)
	}
	timeout := o.timeout
	if timeout == 0 {
		timeout = 5 * time.Second
		if tcp {
			timeout = 10 * time.Second
		}
	}
	network := "udp"
	if tcp {
		network = "tcp"
	}
	start := time.Now()
	conn, err := net.DialTimeout(network, server.String(), timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(start.Add(timeout))

	ex := &exchange{server: server, tcp: tcp}
	if tcp {
		framed := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(packed)), uint16(len(packed)))
		if _, err := conn.Write(append(framed, packed...)); err != nil {
			return nil, err
		}
		var l [2]byte
		if _, err := io.ReadFull(conn, l[:]); err != nil {
			return nil, err
		}
		buf := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return nil, err
		}
		if err := ex.reply.Unpack(buf); err != nil {
			return nil, fmt.Errorf("malformed reply: %w", err)
		}
		if !answers(&ex.reply, id, q) {
			return nil, errors.New("the reply does not match the query")
		}
		ex.size, ex.rtt = len(buf), time.Since(start)
		return ex, nil
	}
	if _, err := conn.Write(packed); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		// Datagrams that are not the reply (a late answer to an earlier
		// try, garbage) are skipped until the deadline.
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || !answers(&m, id, q) {
			continue
		}
		ex.reply, ex.size, ex.rtt = m, n, time.Since(start)
		return ex, nil
	}
}

// answers reports whether m is the reply to the query id for q.
func answers(m *dnsmessage.Message, id uint16, q dnsmessage.Question) bool {
	if !m.Response || m.ID != id {
		return false
	}
	if len(m.Questions) == 0 {
		return m.RCode != dnsmessage.RCodeSuccess // FORMERR and the like may omit it
	}
	r := m.Questions[0]
	return r.Type == q.Type && r.Class == q.Class && strings.EqualFold(r.Name.String(), q.Name.String())
}

// printReply prints the reply as dig does, in the sections o.show asks for;
// +short prints the data of each answer only.
func printReply(w io.Writer, o digOpts, args []string, ex *exchange) {
	m := &ex.reply
	if o.short {
		for _, r := range m.Answers {
			fmt.Fprintln(w, rdata(r))
		}
		return
	}
	s := o.show
	if s.cmd {
		fmt.Fprintf(w, "\n; <<>> DiG (podrouter nettools) <<>> %s\n;; global options: +cmd\n", strings.Join(args, " "))
	}
	if s.comments {
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{m.Response, "qr"}, {m.Authoritative, "aa"}, {m.Truncated, "tc"}, {m.RecursionDesired, "rd"},
			{m.RecursionAvailable, "ra"}, {m.AuthenticData, "ad"}, {m.CheckingDisabled, "cd"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		fmt.Fprintf(w, ";; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: %s, id: %d\n", rcodeName(m.RCode), m.ID)
		fmt.Fprintf(w, ";; flags: %s; QUERY: %d, ANSWER: %d, AUTHORITY: %d, ADDITIONAL: %d\n",
			strings.Join(flags, " "), len(m.Questions), len(m.Answers), len(m.Authorities), len(m.Additionals))
		for _, r := range m.Additionals {
			if r.Header.Type == dnsmessage.TypeOPT {
				fmt.Fprintf(w, "\n;; OPT PSEUDOSECTION:\n; EDNS: version: %d, flags:; udp: %d\n", r.Header.TTL>>16&0xff, r.Header.Class)
			}
		}
	}
	if s.question && len(m.Questions) > 0 {
		if s.comments {
			fmt.Fprint(w, "\n;; QUESTION SECTION:\n")
		}
		for _, q := range m.Questions {
			fmt.Fprintf(w, ";%s\t\t%s\t%s\n", escapeName(q.Name), className(q.Class), typeName(q.Type))
		}
	}
	section := func(show bool, title string, rrs []dnsmessage.Resource) {
		var lines []string
		for _, r := range rrs {
			if r.Header.Type != dnsmessage.TypeOPT {
				lines = append(lines, rrString(r))
			}
		}
		if !show || len(lines) == 0 {
			return
		}
		if s.comments {
			fmt.Fprintf(w, "\n;; %s SECTION:\n", title)
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	section(s.answer, "ANSWER", m.Answers)
	section(s.authority, "AUTHORITY", m.Authorities)
	section(s.additional, "ADDITIONAL", m.Additionals)
	if s.stats {
		proto := "UDP"
		if ex.tcp {
			proto = "TCP"
		}
		fmt.Fprintf(w, "\n;; Query time: %d msec\n;; SERVER: %s#%d(%s) (%s)\n;; WHEN: %s\n;; MSG SIZE  rcvd: %d\n\n",
			ex.rtt.Milliseconds(), ex.server.Addr(), ex.server.Port(), ex.server.Addr(), proto,
			time.Now().Format("Mon Jan 02 15:04:05 MST 2006"), ex.size)
	}
}

// rrString is a record as in a zone file: name TTL class type data.
func rrString(r dnsmessage.Resource) string {
	return fmt.Sprintf("%s\t%d\t%s\t%s\t%s", escapeName(r.Header.Name), r.Header.TTL,
		className(r.Header.Class), typeName(r.Header.Type), rdata(r))
}

// rdata is a record's data in presentation format (RFC 1035 section 5.1;
// RFC 3597's \# form for types this dig does not know).
func rdata(r dnsmessage.Resource) string {
	switch b := r.Body.(type) {
	case *dnsmessage.AResource:
		return netip.AddrFrom4(b.A).String()
	case *dnsmessage.AAAAResource:
		return netip.AddrFrom16(b.AAAA).String()
	case *dnsmessage.CNAMEResource:
		return escapeName(b.CNAME)
	case *dnsmessage.NSResource:
		return escapeName(b.NS)
	case *dnsmessage.PTRResource:
		return escapeName(b.PTR)
	case *dnsmessage.MXResource:
		return fmt.Sprintf("%d %s", b.Pref, escapeName(b.MX))
	case *dnsmessage.SRVResource:
		return fmt.Sprintf("%d %d %d %s", b.Priority, b.Weight, b.Port, escapeName(b.Target))
	case *dnsmessage.SOAResource:
		return fmt.Sprintf("%s %s %d %d %d %d %d", escapeName(b.NS), escapeName(b.MBox),
			b.Serial, b.Refresh, b.Retry, b.Expire, b.MinTTL)
	case *dnsmessage.TXTResource:
		quoted := make([]string, len(b.TXT))
		for i, t := range b.TXT {
			quoted[i] = `"` + escape(t, `"\`) + `"`
		}
		return strings.Join(quoted, " ")
	case *dnsmessage.SVCBResource:
		return svcbString(b.Priority, b.Target, b.Params)
	case *dnsmessage.HTTPSResource:
		return svcbString(b.Priority, b.Target, b.Params)
	case *dnsmessage.UnknownResource:
		return fmt.Sprintf(`\# %d %x`, len(b.Data), b.Data)
	}
	return fmt.Sprintf("; %T", r.Body)
}

// svcbString is SVCB and HTTPS data with each parameter in RFC 9460's
// generic key65535="value" form.
func svcbString(prio uint16, target dnsmessage.Name, params []dnsmessage.SVCParam) string {
	s := fmt.Sprintf("%d %s", prio, escapeName(target))
	for _, p := range params {
		s += fmt.Sprintf(` key%d="%s"`, p.Key, escape(string(p.Value), `"\`))
	}
	return s
}

func escapeName(n dnsmessage.Name) string { return escape(n.String(), "") }

// escape writes bytes outside printable ASCII as \DDD, and those in special
// with a backslash before them.
func escape(s, special string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c > 0x7e:
			fmt.Fprintf(&b, `\%03d`, c)
		case strings.IndexByte(special, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
