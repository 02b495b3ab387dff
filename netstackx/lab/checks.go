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
	"sync"
	"time"
)

// Check is one check of one pair.
type Check struct {
	Name string        // ping, tcp, udp, ping6, tcp6
	RTT  time.Duration // for pings
	Err  error
}

// PairResult holds the checks from one pod to another.
type PairResult struct {
	Src, Dst  string
	CrossNode bool // the pods are on different nodes
	Checks    []Check
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
	Pairs []PairResult
	// Throughput is TCP Gbit/s between the first two pods of the first
	// node with two pods (same node); zero when not measured.
	Throughput float64
	ThroughErr error
	// CrossThroughput is TCP Gbit/s from the first pod of the first node to
	// the first pod of the next node with pods; zero when not measured.
	CrossThroughput float64
	CrossErr        error
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
	if r.CrossErr != nil {
		out = append(out, fmt.Sprintf("cross-node throughput: %v", r.CrossErr))
	}
	return out
}

// CheckPairs checks every ordered pair of pods, across nodes, Parallel
// pairs at a time. Results are in (src, dst) order of Pods().
func (l *Lab) CheckPairs(ctx context.Context) []PairResult {
	pods := l.pods
	var pairs []PairResult
	var idx [][2]int
	for i, a := range pods {
		for j, b := range pods {
			if i != j {
				pairs = append(pairs, PairResult{Src: a.Name(), Dst: b.Name(), CrossNode: l.node[a] != l.node[b]})
				idx = append(idx, [2]int{i, j})
			}
		}
	}
	sem := make(chan struct{}, l.cfg.Parallel)
	var wg sync.WaitGroup
	for k := range pairs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pairs[k].Checks = l.checkPair(ctx, pods[idx[k][0]], pods[idx[k][1]])
		}()
	}
	wg.Wait()
	return pairs
}

func (l *Lab) checkPair(ctx context.Context, src, dst Pod) []Check {
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
	if a6 := dst.Addr6(); a6.IsValid() && src.Addr6().IsValid() {
		ping("ping6", a6)
		checks = append(checks, Check{Name: "tcp6", Err: tcpEcho(ctx, src, netip.AddrPortFrom(a6, echoPort))})
	}
	return checks
}

// tcpEcho sends random bytes to an echo server and checks they come back.
func tcpEcho(ctx context.Context, pod Pod, dst netip.AddrPort) error {
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
func udpEcho(ctx context.Context, pod Pod, dst netip.AddrPort) error {
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
func Throughput(ctx context.Context, src, dst Pod, d time.Duration) (float64, error) {
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

// throughputPairs picks the same-node pair (the first node with two pods)
// and the cross-node pair (first pods of the first two nodes with pods).
func (l *Lab) throughputPairs() (same, cross [2]Pod) {
	var withPods []*Node
	for _, n := range l.Nodes {
		if len(n.Pods) >= 2 && same[0] == nil {
			same = [2]Pod{n.Pods[0], n.Pods[1]}
		}
		if len(n.Pods) > 0 {
			withPods = append(withPods, n)
		}
	}
	if len(withPods) >= 2 {
		cross = [2]Pod{withPods[0].Pods[0], withPods[1].Pods[0]}
	}
	return same, cross
}
