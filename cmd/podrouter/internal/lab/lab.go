// Package lab builds a podrouter node on one machine without privileges: an
// engine plus virtual pods (gVisor netstacks on engine ports), checks that
// every pod reaches every other one (ICMP echo, TCP, UDP, IPv4 and IPv6),
// measures pod-to-pod TCP throughput and reports it all as a table.
//
//	pod-0 ─┐
//	pod-1 ─┼─ engine (podCIDR, gateway = first address, L2 ports, ARP/NDP proxy)
//	pod-N ─┘
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/packet"
)

// Ports the lab's pods serve on.
const (
	echoPort   = 7    // TCP and UDP echo
	sinkPort   = 5201 // TCP discard, for throughput
	tcpPayload = 64 << 10
	udpPayload = 512
)

// DefaultDuration is the default throughput measurement time.
const DefaultDuration = 2 * time.Second

// Config describes a lab. Validate fills in defaults.
type Config struct {
	ClusterCIDR netip.Prefix  // default 10.244.0.0/16
	PodCIDR     netip.Prefix  // the node's podCIDR; default the first /24 of ClusterCIDR
	PodCIDR6    netip.Prefix  // default fd00:10:244::/64; IPv6 checks run when valid
	NoIPv6      bool          // run IPv4 only
	Pods        int           // virtual pods, 2..250; default 4
	MTU         int           // pod MTU, 1280..65535; default 1500
	Duration    time.Duration // throughput measurement; 0 skips it; default 2s
	Timeout     time.Duration // per check; default 5s
	Parallel    int           // pairs checked at once; default 8
	Logger      *zap.Logger
}

// Validate checks cfg and fills in defaults. Errors name the flag.
func (c *Config) Validate() error {
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	}
	if !c.ClusterCIDR.Addr().Is4() || c.ClusterCIDR != c.ClusterCIDR.Masked() {
		return fmt.Errorf("--cluster-cidr %s: want a masked IPv4 prefix such as 10.244.0.0/16", c.ClusterCIDR)
	}
	if !c.PodCIDR.IsValid() {
		// The first /24, as kube-controller-manager gives the first node.
		c.PodCIDR = netip.PrefixFrom(c.ClusterCIDR.Addr(), max(c.ClusterCIDR.Bits(), 24))
	}
	if !c.PodCIDR.Addr().Is4() || c.PodCIDR != c.PodCIDR.Masked() {
		return fmt.Errorf("--pod-cidr %s: want a masked IPv4 prefix such as 10.244.1.0/24", c.PodCIDR)
	}
	if !c.ClusterCIDR.Contains(c.PodCIDR.Addr()) || c.PodCIDR.Bits() < c.ClusterCIDR.Bits() {
		return fmt.Errorf("--pod-cidr %s: not inside --cluster-cidr %s", c.PodCIDR, c.ClusterCIDR)
	}
	if c.Pods == 0 {
		c.Pods = 4
	}
	if c.Pods < 2 || c.Pods > 250 {
		return fmt.Errorf("--pods %d: want 2..250", c.Pods)
	}
	if hosts := 1<<(32-c.PodCIDR.Bits()) - 3; c.Pods > hosts { // network, gateway, broadcast
		return fmt.Errorf("--pods %d: --pod-cidr %s holds at most %d pods", c.Pods, c.PodCIDR, max(hosts, 0))
	}
	if c.NoIPv6 {
		c.PodCIDR6 = netip.Prefix{}
	} else if !c.PodCIDR6.IsValid() {
		c.PodCIDR6 = netip.MustParsePrefix("fd00:10:244::/64")
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("--mtu %d: want 1280..65535", c.MTU)
	}
	if c.Duration < 0 {
		return fmt.Errorf("--duration %s: must not be negative", c.Duration)
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Timeout < 0 {
		return fmt.Errorf("--timeout %s: must be positive", c.Timeout)
	}
	if c.Parallel <= 0 {
		c.Parallel = 8
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// Check is one check of one pair.
type Check struct {
	Name string        // ping, ping6, tcp, tcp6, udp
	RTT  time.Duration // for pings
	Err  error
}

// PairResult holds the checks from one pod to another.
type PairResult struct {
	Src, Dst string
	Checks   []Check
}

// Failed returns the failed checks.
func (p PairResult) Failed() []Check {
	var out []Check
	for _, c := range p.Checks {
		if c.Err != nil {
			out = append(out, c)
		}
	}
	return out
}

// Result is what a lab run found.
type Result struct {
	Pairs      []PairResult
	Throughput float64 // Gbit/s, pod-0 -> pod-1
	ThroughErr error
}

// Failures lists every failed check as "src -> dst: check: error".
func (r *Result) Failures() []string {
	var out []string
	for _, p := range r.Pairs {
		for _, c := range p.Failed() {
			out = append(out, fmt.Sprintf("%s -> %s: %s: %v", p.Src, p.Dst, c.Name, c.Err))
		}
	}
	if r.ThroughErr != nil {
		out = append(out, fmt.Sprintf("throughput: %v", r.ThroughErr))
	}
	return out
}

// Lab is a running single-node lab.
type Lab struct {
	cfg  Config
	Eng  *engine.Engine
	Pods []*netstackx.Pod
	wg   sync.WaitGroup
	lns  []io.Closer
}

// Start builds the engine and the pods and starts the pods' servers.
func Start(cfg Config) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ecfg := engine.Config{PodCIDR: cfg.PodCIDR, ClusterCIDRs: []netip.Prefix{cfg.ClusterCIDR}, Logger: cfg.Logger}
	if cfg.PodCIDR6.IsValid() {
		ecfg.PodCIDR6 = cfg.PodCIDR6
		ecfg.ClusterCIDRs = append(ecfg.ClusterCIDRs, cfg.PodCIDR6)
	}
	eng, err := engine.New(ecfg)
	if err != nil {
		return nil, fmt.Errorf("lab: engine: %w", err)
	}
	l := &Lab{cfg: cfg, Eng: eng}
	success := false
	defer func() {
		if !success {
			l.Close()
		}
	}()
	a4, a6 := eng.Gateway(), eng.Gateway6()
	for i := range cfg.Pods {
		a4 = a4.Next()
		pc := netstackx.PodConfig{
			Name: fmt.Sprintf("pod-%d", i), Addr: netip.PrefixFrom(a4, cfg.PodCIDR.Bits()),
			Gateway: eng.Gateway(), MTU: cfg.MTU,
		}
		addrs := []netip.Addr{a4}
		if cfg.PodCIDR6.IsValid() {
			a6 = a6.Next()
			pc.Addr6, pc.Gateway6 = netip.PrefixFrom(a6, cfg.PodCIDR6.Bits()), eng.Gateway6()
			addrs = append(addrs, a6)
		}
		pod, err := netstackx.NewPod(pc)
		if err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
		l.Pods = append(l.Pods, pod)
		if _, err := eng.AddPort(pod.Device(), engine.PortConfig{
			Name: pc.Name, Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(pod.MAC()), MTU: cfg.MTU, Addrs: addrs,
		}); err != nil {
			return nil, fmt.Errorf("lab: attach %s: %w", pc.Name, err)
		}
		if err := l.serve(pod); err != nil {
			return nil, fmt.Errorf("lab: %s: %w", pc.Name, err)
		}
	}
	success = true
	return l, nil
}

// serve starts the pod's TCP echo, UDP echo and TCP discard servers.
func (l *Lab) serve(pod *netstackx.Pod) error {
	echo, err := pod.ListenTCP(echoPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, echo)
	sink, err := pod.ListenTCP(sinkPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, sink)
	uecho, err := pod.ListenUDP(echoPort)
	if err != nil {
		return err
	}
	l.lns = append(l.lns, uecho)
	accept := func(ln net.Listener, handle func(net.Conn)) {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}
	l.wg.Add(3)
	go accept(echo, func(c net.Conn) { _, _ = io.Copy(c, c) })
	go accept(sink, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := uecho.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = uecho.WriteTo(buf[:n], from)
		}
	}()
	return nil
}

// Close stops everything the lab started.
func (l *Lab) Close() {
	for _, c := range l.lns {
		_ = c.Close()
	}
	if l.Eng != nil {
		_ = l.Eng.Close()
	}
	for _, p := range l.Pods {
		_ = p.Close()
	}
	l.wg.Wait()
}

// CheckPairs checks every ordered pair of pods.
func (l *Lab) CheckPairs(ctx context.Context) []PairResult {
	var pairs []PairResult
	for i := range l.Pods {
		for j := range l.Pods {
			if i != j {
				pairs = append(pairs, PairResult{Src: l.Pods[i].Name(), Dst: l.Pods[j].Name()})
			}
		}
	}
	sem := make(chan struct{}, l.cfg.Parallel)
	var wg sync.WaitGroup
	for k := range pairs {
		i, j := k/(len(l.Pods)-1), k%(len(l.Pods)-1)
		if j >= i {
			j++
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pairs[k].Checks = l.checkPair(ctx, l.Pods[i], l.Pods[j])
		}()
	}
	wg.Wait()
	return pairs
}

func (l *Lab) checkPair(ctx context.Context, src, dst *netstackx.Pod) []Check {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	var checks []Check
	ping := func(name string, a netip.Addr) {
		rtt, err := src.Ping(ctx, a, 56)
		checks = append(checks, Check{Name: name, RTT: rtt, Err: err})
	}
	ping("ping", dst.Addr())
	checks = append(checks, Check{Name: "tcp", Err: tcpEcho(ctx, src, netip.AddrPortFrom(dst.Addr(), echoPort))})
	checks = append(checks, Check{Name: "udp", Err: udpEcho(ctx, src, netip.AddrPortFrom(dst.Addr(), echoPort))})
	if a6 := dst.Addr6(); a6.IsValid() {
		ping("ping6", a6)
		checks = append(checks, Check{Name: "tcp6", Err: tcpEcho(ctx, src, netip.AddrPortFrom(a6, echoPort))})
	}
	return checks
}

// tcpEcho sends random bytes to an echo server and checks they come back.
func tcpEcho(ctx context.Context, pod *netstackx.Pod, dst netip.AddrPort) error {
	c, err := pod.DialTCP(ctx, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	want := make([]byte, tcpPayload)
	_, _ = rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		errc <- err
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("echoed bytes differ")
	}
	return nil
}

// udpEcho sends a datagram to an echo server, retrying a few times within
// the context's deadline, and checks the reply.
func udpEcho(ctx context.Context, pod *netstackx.Pod, dst netip.AddrPort) error {
	c, err := pod.DialUDP(dst)
	if err != nil {
		return err
	}
	defer c.Close()
	want := make([]byte, udpPayload)
	_, _ = rand.Read(want)
	got := make([]byte, 2*udpPayload)
	deadline, _ := ctx.Deadline()
	for attempt := 0; ; attempt++ {
		if _, err := c.Write(want); err != nil {
			return err
		}
		rd := time.Now().Add(500 * time.Millisecond)
		if !deadline.IsZero() && deadline.Before(rd) {
			rd = deadline
		}
		_ = c.SetReadDeadline(rd)
		n, err := c.Read(got)
		if err == nil {
			if !bytes.Equal(got[:n], want) {
				return errors.New("echoed datagram differs")
			}
			return nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
			return fmt.Errorf("no reply after %d attempts: %w", attempt+1, err)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Throughput streams TCP from src to dst's discard server for d, then
// half-closes and waits until the server has read everything, and returns
// Gbit/s of payload delivered over the whole time.
func Throughput(ctx context.Context, src, dst *netstackx.Pod, d time.Duration) (float64, error) {
	c, err := src.DialTCP(ctx, netip.AddrPortFrom(dst.Addr(), sinkPort))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	var n int64
	start := time.Now()
	end := start.Add(d)
	_ = c.SetDeadline(end.Add(30 * time.Second))
	for time.Now().Before(end) {
		k, err := c.Write(buf)
		n += int64(k)
		if err != nil {
			return 0, err
		}
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return 0, errors.New("connection cannot half-close")
	}
	if err := cw.CloseWrite(); err != nil {
		return 0, err
	}
	// The server closes once it has read our FIN: every byte was delivered.
	if _, err := io.Copy(io.Discard, c); err != nil {
		return 0, fmt.Errorf("waiting for the receiver: %w", err)
	}
	return float64(n) * 8 / time.Since(start).Seconds() / 1e9, nil
}

// Run starts a lab, checks it, measures it, writes the report to out and
// closes it. The error is non-nil when any check failed.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Result, error) {
	l, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	cfg = l.cfg
	fmt.Fprintf(out, "podrouter lab: 1 node, podCIDR %s", cfg.PodCIDR)
	if cfg.PodCIDR6.IsValid() {
		fmt.Fprintf(out, " + %s", cfg.PodCIDR6)
	}
	fmt.Fprintf(out, ", gateway %s, %d virtual pods, MTU %d\n\n", l.Eng.Gateway(), len(l.Pods), cfg.MTU)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tIPv4\tIPv6\tMAC")
	for _, p := range l.Pods {
		a6 := "-"
		if p.Addr6().IsValid() {
			a6 = p.Addr6().String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name(), p.Addr(), a6, p.MAC())
	}
	_ = tw.Flush()
	fmt.Fprintln(out)

	res := &Result{Pairs: l.CheckPairs(ctx)}
	writePairs(out, res.Pairs)

	if cfg.Duration > 0 {
		res.Throughput, res.ThroughErr = Throughput(ctx, l.Pods[0], l.Pods[1], cfg.Duration)
		if res.ThroughErr == nil {
			fmt.Fprintf(out, "\nthroughput %s -> %s TCP: %.2f Gbit/s over %s\n", l.Pods[0].Name(), l.Pods[1].Name(), res.Throughput, cfg.Duration)
		}
	}
	writeCounters(out, l.Eng)

	fails := res.Failures()
	nPairs := len(res.Pairs)
	okPairs := 0
	for _, p := range res.Pairs {
		if len(p.Failed()) == 0 {
			okPairs++
		}
	}
	fmt.Fprintf(out, "\nresult: %d/%d pairs ok", okPairs, nPairs)
	if len(fails) == 0 {
		fmt.Fprintln(out, ": PASS")
		return res, nil
	}
	fmt.Fprintln(out, ": FAIL")
	for _, f := range fails {
		fmt.Fprintf(out, "FAIL %s\n", f)
	}
	return res, fmt.Errorf("lab: %d checks failed", len(fails))
}

func writePairs(out io.Writer, pairs []PairResult) {
	var names []string
	for _, c := range pairs[0].Checks {
		names = append(names, strings.ToUpper(c.Name))
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SRC\tDST\t%s\n", strings.Join(names, "\t"))
	for _, p := range pairs {
		cells := make([]string, len(p.Checks))
		for i, c := range p.Checks {
			switch {
			case c.Err != nil:
				cells[i] = "FAIL"
			case c.RTT > 0:
				cells[i] = c.RTT.Round(time.Microsecond).String()
			default:
				cells[i] = "ok"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Src, p.Dst, strings.Join(cells, "\t"))
	}
	_ = tw.Flush()
}

func writeCounters(out io.Writer, eng *engine.Engine) {
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPS")
	ports := eng.Ports()
	slices.SortFunc(ports, func(a, b *engine.Port) int { return strings.Compare(a.Name(), b.Name()) })
	for _, p := range ports {
		s := p.Stats()
		var drops []string
		for _, r := range engine.DropReasons() {
			if n := s.Drops[r]; n > 0 {
				drops = append(drops, fmt.Sprintf("%s=%d", r, n))
			}
		}
		d := "0"
		if len(drops) > 0 {
			d = strings.Join(drops, ",")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", p.Name(), s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes, d)
	}
	_ = tw.Flush()
	sent, limited := eng.ICMPStats()
	fmt.Fprintf(out, "icmp errors sent %d, rate-limited %d\n", sent, limited)
}
