package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a small authoritative server on 127.0.0.1, UDP and TCP on
// one port, answering from a fixed zone; it records each question it gets
// ("udp NAME TYPE") so that tests see the search order and the transport.
type dnsServer struct {
	port uint16
	udp  net.PacketConn
	tcp  net.Listener
	wg   sync.WaitGroup

	mu   sync.Mutex
	seen []string
}

// The zone. silent.test. is never answered; servfail.test. fails.
var testZone = map[string][]dnsmessage.Resource{
	"kubernetes.default.svc.cluster.local.": {rr("kubernetes.default.svc.cluster.local.", 30, &dnsmessage.AResource{A: [4]byte{10, 96, 0, 1}})},
	"_http._tcp.dns-test-service.ns.svc.cluster.local.": {rr("_http._tcp.dns-test-service.ns.svc.cluster.local.", 30,
		&dnsmessage.SRVResource{Priority: 0, Weight: 100, Port: 80, Target: dnsmessage.MustNewName("dns-test-service.ns.svc.cluster.local.")})},
	"1.0.96.10.in-addr.arpa.":   {rr("1.0.96.10.in-addr.arpa.", 30, &dnsmessage.PTRResource{PTR: dnsmessage.MustNewName("kubernetes.default.svc.cluster.local.")})},
	"ext.ns.svc.cluster.local.": {rr("ext.ns.svc.cluster.local.", 30, &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("foo.example.com.")})},
	"v6.test.":                  {rr("v6.test.", 5, &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8::1").As16()})},
	"txt.test.":                 {rr("txt.test.", 5, &dnsmessage.TXTResource{TXT: []string{`say "hi"`, "two"}})},
	// Only AAAA in the first search domain, an A in the second: dig stops
	// at the first reply that is not NXDOMAIN.
	"onlyaaaa.ns.svc.cluster.local.":  {rr("onlyaaaa.ns.svc.cluster.local.", 5, &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8::2").As16()})},
	"onlyaaaa.svc.cluster.local.":     {rr("onlyaaaa.svc.cluster.local.", 5, &dnsmessage.AResource{A: [4]byte{192, 0, 2, 2}})},
	"notexistname.resolv.conf.local.": {rr("notexistname.resolv.conf.local.", 5, &dnsmessage.AResource{A: [4]byte{1, 1, 1, 1}})},
	"big.test.":                       bigRRset(),
}

func rr(name string, ttl uint32, body dnsmessage.ResourceBody) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: ttl},
		Body:   body,
	}
}

// bigRRset is 100 A records: more than any UDP reply our queries allow.
func bigRRset() []dnsmessage.Resource {
	var out []dnsmessage.Resource
	for i := range 100 {
		out = append(out, rr("big.test.", 5, &dnsmessage.AResource{A: [4]byte{192, 0, 2, byte(i)}}))
	}
	return out
}

func newDNSServer(t *testing.T) *dnsServer {
	t.Helper()
	s := &dnsServer{}
	// One port for both: take a TCP port, then the same UDP port.
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			l.Close()
			if attempt < 10 {
				continue
			}
			t.Fatal(err)
		}
		s.tcp, s.udp, s.port = l, pc, uint16(port)
		break
	}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	t.Cleanup(func() {
		s.udp.Close()
		s.tcp.Close()
		s.wg.Wait() // no goroutine outlives the test
	})
	return s
}

func (s *dnsServer) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if reply := s.reply(buf[:n], "udp"); reply != nil {
			s.udp.WriteTo(reply, from)
		}
	}
}

func (s *dnsServer) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, q); err != nil {
				return
			}
			if reply := s.reply(q, "tcp"); reply != nil {
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(reply))), reply...))
			}
		}()
	}
}

// reply answers one query; nil is no answer.
func (s *dnsServer) reply(query []byte, proto string) []byte {
	var q dnsmessage.Message
	if q.Unpack(query) != nil || len(q.Questions) != 1 {
		return nil
	}
	qq := q.Questions[0]
	name := strings.ToLower(qq.Name.String())
	s.mu.Lock()
	s.seen = append(s.seen, proto+" "+name+" "+typeName(qq.Type))
	s.mu.Unlock()
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true, RecursionDesired: q.RecursionDesired},
		Questions: q.Questions,
	}
	rrs, ok := testZone[name]
	switch {
	case name == "silent.test.":
		return nil
	case name == "servfail.test.":
		m.RCode = dnsmessage.RCodeServerFailure
	case !ok:
		m.RCode = dnsmessage.RCodeNameError
	}
	for _, r := range rrs {
		if typeOf(r) == qq.Type || typeOf(r) == dnsmessage.TypeCNAME {
			m.Answers = append(m.Answers, r)
		}
	}
	limit := 512
	for _, a := range q.Additionals {
		if a.Header.Type == dnsmessage.TypeOPT {
			limit = int(a.Header.Class)
		}
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	if proto == "udp" && len(b) > limit {
		m.Truncated, m.Answers = true, nil
		b, _ = m.Pack()
	}
	return b
}

func typeOf(r dnsmessage.Resource) dnsmessage.Type {
	switch r.Body.(type) {
	case *dnsmessage.AResource:
		return dnsmessage.TypeA
	case *dnsmessage.AAAAResource:
		return dnsmessage.TypeAAAA
	case *dnsmessage.CNAMEResource:
		return dnsmessage.TypeCNAME
	case *dnsmessage.PTRResource:
		return dnsmessage.TypePTR
	case *dnsmessage.SRVResource:
		return dnsmessage.TypeSRV
	case *dnsmessage.TXTResource:
		return dnsmessage.TypeTXT
	}
	panic("type")
}

func (s *dnsServer) takeSeen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.seen
	s.seen = nil
	return out
}

// podResolvConf is what the kubelet writes for a ClusterFirst pod in
// namespace ns, with the server on this test's port (-p) at 127.0.0.1.
const podResolvConf = `search ns.svc.cluster.local svc.cluster.local cluster.local
nameserver 127.0.0.1
options ndots:5
`

func writeResolvConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDig runs the dig commands of the e2e DNS specs (dns_common.go's
// createProbeCommand and createTargetedProbeCommand, dns.go's resolv.conf
// spec, runDig) against the loopback server, and checks stdout, the exit
// status and the questions sent (names in search order, UDP or TCP).
func TestDig(t *testing.T) {
	srv := newDNSServer(t)
	conf := writeResolvConf(t, podResolvConf)
	port := strconv.Itoa(int(srv.port))

	tests := []struct {
		name     string
		args     []string
		conf     string // resolv.conf text; "" is podResolvConf
		wantOut  string
		wantA    int // instead of wantOut: this many A records on stdout
		wantCode int
		wantSeen []string
	}{
		{
			name:    "probe fqdn udp: ndots 5, search list first",
			args:    []string{"+notcp", "+noall", "+answer", "+search", "kubernetes.default.svc.cluster.local", "A"},
			wantOut: "kubernetes.default.svc.cluster.local.\t30\tIN\tA\t10.96.0.1\n",
			wantSeen: []string{
				"udp kubernetes.default.svc.cluster.local.ns.svc.cluster.local. A",
				"udp kubernetes.default.svc.cluster.local.svc.cluster.local. A",
				"udp kubernetes.default.svc.cluster.local.cluster.local. A",
				"udp kubernetes.default.svc.cluster.local. A",
			},
		},
		{
			name:    "probe partial name tcp",
			args:    []string{"+tcp", "+noall", "+answer", "+search", "kubernetes.default", "A"},
			wantOut: "kubernetes.default.svc.cluster.local.\t30\tIN\tA\t10.96.0.1\n",
			wantSeen: []string{
				"tcp kubernetes.default.ns.svc.cluster.local. A",
				"tcp kubernetes.default.svc.cluster.local. A",
			},
		},
		{
			name:    "probe srv",
			args:    []string{"+notcp", "+noall", "+answer", "+search", "_http._tcp.dns-test-service.ns.svc.cluster.local", "SRV"},
			wantOut: "_http._tcp.dns-test-service.ns.svc.cluster.local.\t30\tIN\tSRV\t0 100 80 dns-test-service.ns.svc.cluster.local.\n",
		},
		{
			name:     "probe ptr: absolute name, no search",
			args:     []string{"+tcp", "+noall", "+answer", "+search", "1.0.96.10.in-addr.arpa.", "PTR"},
			wantOut:  "1.0.96.10.in-addr.arpa.\t30\tIN\tPTR\tkubernetes.default.svc.cluster.local.\n",
			wantSeen: []string{"tcp 1.0.96.10.in-addr.arpa. PTR"},
		},
		{
			name:     "targeted cname",
			args:     []string{"+short", "ext.ns.svc.cluster.local", "CNAME"},
			wantOut:  "foo.example.com.\n",
			wantSeen: []string{"udp ext.ns.svc.cluster.local. CNAME"},
		},
		{
			name:    "short -x",
			args:    []string{"+short", "-x", "10.96.0.1"},
			wantOut: "kubernetes.default.svc.cluster.local.\n",
		},
		{
			name:    "short search: the pod's own search list",
			args:    []string{"+short", "+search", "notexistname"},
			conf:    "nameserver 127.0.0.1\nsearch resolv.conf.local\noptions ndots:2\n",
			wantOut: "1.1.1.1\n",
			wantSeen: []string{
				"udp notexistname.resolv.conf.local. A",
			},
		},
		{
			name:     "short aaaa, @server",
			args:     []string{"+short", "@127.0.0.1", "v6.test", "AAAA"},
			wantOut:  "2001:db8::1\n",
			wantSeen: []string{"udp v6.test. AAAA"},
		},
		{
			name:     "no +search: the name as given",
			args:     []string{"+short", "kubernetes.default"},
			wantSeen: []string{"udp kubernetes.default. A"},
		},
		{
			name: "NODATA ends the search, as BIND's dig",
			args: []string{"+short", "+search", "onlyaaaa"},
			wantSeen: []string{
				"udp onlyaaaa.ns.svc.cluster.local. A",
			},
		},
		{
			name: "NXDOMAIN everywhere: nothing on stdout, exit 0",
			args: []string{"+noall", "+answer", "+search", "nothere"},
			wantSeen: []string{
				"udp nothere.ns.svc.cluster.local. A",
				"udp nothere.svc.cluster.local. A",
				"udp nothere.cluster.local. A",
				"udp nothere. A",
			},
		},
		{
			name:     "SERVFAIL is a reply",
			args:     []string{"+short", "servfail.test"},
			wantSeen: []string{"udp servfail.test. A"},
		},
		{
			name:     "truncated over UDP: asked again over TCP",
			args:     []string{"+noall", "+answer", "big.test"},
			wantA:    100,
			wantSeen: []string{"udp big.test. A", "tcp big.test. A"},
		},
		{
			name:     "+ignore keeps the truncated reply",
			args:     []string{"+ignore", "+short", "big.test"},
			wantSeen: []string{"udp big.test. A"},
		},
		{
			name:    "txt quoting",
			args:    []string{"+short", "txt.test", "TXT"},
			wantOut: `"say \"hi\"" "two"` + "\n",
		},
		{
			name:     "no reply: exit 9, nothing on stdout",
			args:     []string{"+short", "+time=1", "+tries=1", "silent.test"},
			wantCode: digNoReply,
		},
		{name: "longer than a name may be", args: []string{"+short", strings.Repeat("a.", 140)}, wantCode: digInternal},
		{name: "help", args: []string{"-h"}, wantOut: digUsageText},
		{name: "unknown option", args: []string{"+frobnicate", "x"}, wantCode: digUsage},
		{name: "unknown flag", args: []string{"-z", "x"}, wantCode: digUsage},
		{name: "two names", args: []string{"a.test", "b.test"}, wantCode: digUsage},
		{name: "bad -x", args: []string{"-x", "nope"}, wantCode: digUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := conf
			if tt.conf != "" {
				path = writeResolvConf(t, tt.conf)
			}
			srv.takeSeen()
			var stdout, stderr bytes.Buffer
			code := dig(append([]string{"-p", port}, tt.args...), path, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if tt.wantA > 0 {
				if n := strings.Count(stdout.String(), "\tIN\tA\t192.0.2."); n != tt.wantA {
					t.Errorf("%d A records on stdout, want %d:\n%s", n, tt.wantA, stdout.String())
				}
			} else if stdout.String() != tt.wantOut {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.wantOut)
			}
			if code == digOK && stderr.Len() > 0 {
				t.Errorf("stderr %q on success", stderr.String())
			}
			if code != digOK && stderr.Len() == 0 {
				t.Errorf("exit %d and nothing on stderr", code)
			}
			if seen := srv.takeSeen(); tt.wantSeen != nil && !slices.Equal(seen, tt.wantSeen) {
				t.Errorf("questions\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(tt.wantSeen, "\n"))
			}
		})
	}
}

// TestDigFullOutput checks dig's default output: the header, the question
// and answer sections and the stats, as BIND's dig lays them out.
func TestDigFullOutput(t *testing.T) {
	srv := newDNSServer(t)
	var stdout, stderr bytes.Buffer
	code := dig([]string{"@127.0.0.1", "-p", strconv.Itoa(int(srv.port)), "+tcp", "kubernetes.default.svc.cluster.local"},
		writeResolvConf(t, podResolvConf), &stdout, &stderr)
	if code != digOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: ",
		";; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 0\n",
		"\n;; QUESTION SECTION:\n;kubernetes.default.svc.cluster.local.\t\tIN\tA\n",
		"\n;; ANSWER SECTION:\nkubernetes.default.svc.cluster.local.\t30\tIN\tA\t10.96.0.1\n",
		";; SERVER: 127.0.0.1#" + strconv.Itoa(int(srv.port)) + "(127.0.0.1) (TCP)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestDigServers: @server, else resolv.conf's nameservers in order, each
// at -p's port; -4 and -6 keep one family.
func TestDigServers(t *testing.T) {
	conf := parseResolvConf("nameserver 10.96.0.10\nnameserver fd00::10\n")
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"x"}, []string{"10.96.0.10:53", "[fd00::10]:53"}},
		{[]string{"-p", "10053", "x"}, []string{"10.96.0.10:10053", "[fd00::10]:10053"}},
		{[]string{"-6", "x"}, []string{"[fd00::10]:53"}},
		{[]string{"@10.244.1.5", "-4", "x"}, []string{"10.244.1.5:53"}},
	}
	for _, tt := range tests {
		o, err := parseDig(tt.args)
		if err != nil {
			t.Fatal(err)
		}
		got, err := o.servers(conf)
		var gotS []string
		for _, s := range got {
			gotS = append(gotS, s.String())
		}
		if err != nil || !slices.Equal(gotS, tt.want) {
			t.Errorf("%q: %v, %v; want %v", tt.args, gotS, err, tt.want)
		}
	}
}

func TestCandidates(t *testing.T) {
	pod := parseResolvConf(podResolvConf)
	dot := parseResolvConf("search ns.svc.cluster.local . _sip._tcp.abc_d.example.com\noptions ndots:2")
	tests := []struct {
		name   string
		query  string
		search bool
		conf   resolvConf
		ndots  int
		want   []string
	}{
		{"no search", "kubernetes.default", false, pod, -1, []string{"kubernetes.default."}},
		{"absolute", "a.b.", true, pod, -1, []string{"a.b."}},
		{"fewer dots than ndots: search first", "kubernetes", true, pod, -1,
			[]string{"kubernetes.ns.svc.cluster.local.", "kubernetes.svc.cluster.local.", "kubernetes.cluster.local.", "kubernetes."}},
		{"+ndots overrides", "a.b", true, pod, 1,
			[]string{"a.b.", "a.b.ns.svc.cluster.local.", "a.b.svc.cluster.local.", "a.b.cluster.local."}},
		{"root and underscore search domains", "kubernetes.default", true, dot, -1,
			[]string{"kubernetes.default.ns.svc.cluster.local.", "kubernetes.default.", "kubernetes.default._sip._tcp.abc_d.example.com.", "kubernetes.default."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := candidates(tt.query, tt.search, tt.conf, tt.ndots); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseResolvConf(t *testing.T) {
	// As the kubelet writes it for a pod with more than 6 search domains.
	c := parseResolvConf(`# comment
search ns.svc.cluster.local svc.cluster.local cluster.local example.com. 00000000000000000000000000000000000001.k8s.io
nameserver 10.96.0.10
nameserver fd00::a
nameserver 10.0.0.3
nameserver 10.0.0.4
options ndots:5 timeout:2
`)
	wantServers := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a"), netip.MustParseAddr("10.0.0.3")}
	if !slices.Equal(c.servers, wantServers) {
		t.Errorf("servers %v, want %v (three at most)", c.servers, wantServers)
	}
	wantSearch := []string{"ns.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com", "00000000000000000000000000000000000001.k8s.io"}
	if !slices.Equal(c.search, wantSearch) || c.ndots != 5 {
		t.Errorf("search %q ndots %d, want %q and 5", c.search, c.ndots, wantSearch)
	}
	if d := parseResolvConf("domain example.com\n"); !slices.Equal(d.search, []string{"example.com"}) || d.ndots != 1 || len(d.servers) != 2 {
		t.Errorf("domain only: %+v; want search [example.com], ndots 1, the local host's two addresses", d)
	}
}

func TestReverseName(t *testing.T) {
	for in, want := range map[string]string{
		"10.96.0.1":   "1.0.96.10.in-addr.arpa.",
		"2001:db8::1": "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
	} {
		if got, err := reverseName(in); err != nil || got != want {
			t.Errorf("reverseName(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// FuzzPrintReply: any reply the parser accepts prints without panicking,
// in full and +short.
func FuzzPrintReply(f *testing.F) {
	s := &dnsServer{}
	for _, q := range []dnsmessage.Question{
		{Name: dnsmessage.MustNewName("kubernetes.default.svc.cluster.local."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
		{Name: dnsmessage.MustNewName("txt.test."), Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassINET},
		{Name: dnsmessage.MustNewName("_http._tcp.dns-test-service.ns.svc.cluster.local."), Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET},
	} {
		b, err := (&dnsmessage.Message{Questions: []dnsmessage.Question{q}}).Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.reply(b, "tcp"))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m dnsmessage.Message
		if m.Unpack(b) != nil {
			return
		}
		ex := &exchange{server: netip.MustParseAddrPort("127.0.0.1:53"), reply: m, size: len(b)}
		printReply(io.Discard, digOpts{show: digShowAll}, nil, ex)
		printReply(io.Discard, digOpts{short: true}, nil, ex)
	})
}

// FuzzParseDig: any arguments parse or fail with a usage error.
func FuzzParseDig(f *testing.F) {
	f.Add("+notcp +noall +answer +search kubernetes.default A")
	f.Add("+short -x 10.96.0.1")
	f.Add("@10.0.0.1 -p 10053 +time=1 +tries=2 x.test AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := parseDig(strings.Fields(s))
		var ue *digUsageError
		if err != nil && !errors.As(err, &ue) {
			t.Fatalf("parseDig(%q): %v is not a usage error", s, err)
		}
	})
}
