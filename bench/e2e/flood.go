package main

// Case flood: a hostile pod on a real podrouter node, beside a TCP stream.
//
//	pod-a (flooder) ─┐
//	pod-b (client) ──┼─ TAP ─ engine (podrouter daemon, node netns)
//	pod-c (server) ──┘
//
// The stream b -> c (iperf3, one TCP stream) is measured alone, then again
// while a floods from an AF_PACKET socket with PACKET_VNET_HDR on its eth0
// (router/link/tap/taptest), at a fixed rate, three kinds of frames, each
// kind UDP to its own port so that the pods can count what reaches them:
//
//	spoofed     from b's or c's address, or from an outside one, to b and c
//	bad-offload from a's own address to b and c, with virtio-net headers
//	            the engine must refuse: a partial checksum into the IP source
//	            or onto the UDP source port, GSO of the wrong type (TCP over
//	            UDP) or of an unknown one (UFO)
//	ttl         TTL 1 to c: routed, so the engine answers time exceeded
//
// b and c count every frame of those ports that arrives on their eth0 (a
// socket filter, before checksums or sockets: taptest.Counter), a counts
// the time-exceeded messages it gets back. The case fails when any flood
// frame is delivered or when a gets more ICMP errors than its port's rate
// limit allows; it prints what a sent (and what a's own kernel refused),
// the engine's drop counters on a's port, and the stream's throughput
// alone and flooded:
//
//	case=flood impl=podrouter tcp_gbps=<alone>
//	case=flood impl=podrouter-flooded tcp_gbps=<flooded>
//	case=flood ratio=podrouter-flooded/podrouter tcp=<ratio>
//
// The ratio is about fairness on the machine it runs on: the flood, the
// engine's work on it and the stream share its cores.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/link/tap/taptest"
	"github.com/podrouter/podrouter/router/packet"
)

func init() {
	register(Case{Name: "flood", Baselines: []string{"podrouter"}, Run: runFlood})
}

// The flood's rates (frames per second of each kind) and ports.
const (
	floodSpoofedPPS    = 8000
	floodBadOffloadPPS = 8000
	floodTTLPPS        = 4000 // above the ICMP limit (1000/s per port), so it bites

	portSpoofed    = 9001
	portBadOffload = 9002
	portTTL        = 9003

	// The engine's default ICMP error limit per input port (engine.Config
	// ICMPRate, ICMPBurst; the daemon keeps the defaults).
	icmpRate, icmpBurst = 1000, 50
)

// outsider is a source outside the cluster (TEST-NET-1); faraway a
// destination outside it (TEST-NET-2), routed to the node's egress, which
// the flood's TTL-1 packets never reach.
var (
	outsider = netip.MustParseAddr("192.0.2.66")
	faraway  = netip.MustParseAddr("198.51.100.7")
)

// floodKind is one kind of flood frame: its frames (cycled through) and
// what became of them.
type floodKind struct {
	name   string
	pps    int
	frames []floodFrame
	sent   uint64 // accepted by a's kernel
	refuse uint64 // refused by a's kernel (EINVAL): never reached the TAP
}

type floodFrame struct {
	hdr   taptest.Hdr
	frame []byte
}

func runFlood(ctx context.Context, opt Options) ([]Result, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("iperf3 is not installed (make deps)")
	}
	n, err := startPodNode(ctx, opt, "fl", 3)
	if err != nil {
		return nil, err
	}
	defer n.close()
	res, err := flood(ctx, opt, n)
	if err != nil {
		return nil, fmt.Errorf("%w\ndaemon: %s", err, n.logs.String())
	}
	return res, nil
}

func flood(ctx context.Context, opt Options, n *podNode) ([]Result, error) {
	a, b, c := n.pods[0], n.pods[1], n.pods[2]
	ipA, ipB, ipC := n.ips[0], n.ips[1], n.ips[2]
	macA, gwMAC, err := podMACs(a)
	if err != nil {
		return nil, err
	}
	kinds := floodFrames(macA, gwMAC, ipA, ipB, ipC)

	secs := strconv.Itoa(max(1, int(opt.Duration.Seconds())))
	srv := c.cmd(ctx, "iperf3", "-s", "-B", ipC.String())
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	stream := func() (float64, error) {
		m, err := iperf3(ctx, b, ipC.String(), secs)
		if err != nil {
			return 0, err
		}
		return num(m, "end", "sum_received", "bits_per_second") / 1e9, nil
	}
	alone, err := stream()
	if err != nil {
		return nil, fmt.Errorf("alone: %w", err)
	}

	// The counters, each made inside its pod.
	var snd *taptest.Sender
	var icmp *taptest.Counter
	if err := a.do(func() (err error) {
		if snd, err = taptest.NewSender("eth0"); err != nil {
			return err
		}
		icmp, err = taptest.CountICMP("eth0", 11) // time exceeded
		return err
	}); err != nil {
		if snd != nil {
			snd.Close()
		}
		return nil, err
	}
	defer snd.Close()
	defer icmp.Close()
	var counters [2][2]*taptest.Counter // [b, c][spoofed, bad-offload]
	defer func() {
		for _, cs := range counters {
			for _, k := range cs {
				if k != nil {
					k.Close()
				}
			}
		}
	}()
	for i, p := range []*netns{b, c} {
		if err := p.do(func() (err error) {
			for j, port := range []uint16{portSpoofed, portBadOffload} {
				if counters[i][j], err = taptest.CountUDP("eth0", port); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	before, err := portOf(ctx, n.api, ipA)
	if err != nil {
		return nil, err
	}
	txDropped0, err := txDropped(a)
	if err != nil {
		return nil, err
	}

	fctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t0 := time.Now()
	for _, k := range kinds {
		wg.Add(1)
		go func() { defer wg.Done(); k.run(fctx, snd) }()
	}
	flooded, err := stream()
	stop()
	wg.Wait()
	elapsed := time.Since(t0)
	if err != nil {
		return nil, fmt.Errorf("flooded: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // the engine's queues drain
	after, err := portOf(ctx, n.api, ipA)
	if err != nil {
		return nil, err
	}
	txDropped1, err := txDropped(a)
	if err != nil {
		return nil, err
	}
	var delivered [2]uint64
	for _, cs := range counters {
		for j, k := range cs {
			v, err := k.Count()
			if err != nil {
				return nil, err
			}
			delivered[j] += v
		}
	}
	// Every error a got back was sent since t0 (the flood's last frames
	// reach the engine a little after the flood stops): the bucket holds
	// icmpBurst at t0 and gains icmpRate a second.
	window := time.Since(t0)
	icmpBack, err := icmp.Count()
	if err != nil {
		return nil, err
	}

	drop := func(reason string) uint64 { return after.Drops[reason] - before.Drops[reason] }
	limit := uint64(icmpBurst + icmpRate*window.Seconds())
	ratio := 0.0
	if alone > 0 {
		ratio = flooded / alone
	}
	fmt.Printf("case=flood tcp_alone=%.2f tcp_flooded=%.2f ratio=%.2f flood_s=%.1f"+
		" spoofed_sent=%d spoofed_refused=%d dropped_spoofed=%d delivered_spoofed=%d"+
		" bad_offload_sent=%d bad_offload_refused=%d dropped_bad_offload=%d delivered_bad_offload=%d"+
		" ttl_sent=%d dropped_ttl=%d icmp_back=%d icmp_limit=%d pod_tx_dropped=%d\n",
		alone, flooded, ratio, elapsed.Seconds(),
		kinds[0].sent, kinds[0].refuse, drop("spoofed-source"), delivered[0],
		kinds[1].sent, kinds[1].refuse, drop("bad-offload"), delivered[1],
		kinds[2].sent, drop("ttl-exceeded"), icmpBack, limit, txDropped1-txDropped0)

	var errs []error
	for j, k := range kinds {
		if j < len(delivered) && delivered[j] > 0 {
			errs = append(errs, fmt.Errorf("%d %s flood frames delivered to pods b and c", delivered[j], k.name))
		}
		if k.sent == 0 {
			errs = append(errs, fmt.Errorf("no %s flood frame was sent", k.name))
		}
	}
	if icmpBack > limit {
		errs = append(errs, fmt.Errorf("pod a got %d ICMP time exceeded in %v, over the limit %d", icmpBack, window, limit))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return []Result{{Impl: "podrouter", TCPGbps: alone}, {Impl: "podrouter-flooded", TCPGbps: flooded}}, nil
}

// run sends k's frames, cycled, at k.pps until ctx ends, in bursts every
// millisecond.
func (k *floodKind) run(ctx context.Context, snd *taptest.Sender) {
	buf := make([]byte, 2048)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	t0, i := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := int(time.Since(t0).Seconds() * float64(k.pps))
		for ; i < due; i++ {
			f := k.frames[i%len(k.frames)]
			switch err := snd.Write(buf, f.hdr, f.frame); {
			case err == nil:
				k.sent++
			case errors.Is(err, unix.EINVAL):
				k.refuse++
			default: // ENOBUFS and the like: not sent, not counted
			}
		}
	}
}

// floodFrames builds the three kinds of frames a (macA, ipA) sends to the
// gateway's MAC: spoofed, bad-offload and ttl, in that order.
func floodFrames(macA, gwMAC packet.MAC, ipA, ipB, ipC netip.Addr) []*floodKind {
	udp := func(src, dst netip.Addr, ttl uint8, port uint16, partial bool) []byte {
		return udpFrame(macA, gwMAC, src, dst, ttl, port, partial)
	}
	plain := taptest.Hdr{}
	const eth, ip4 = packet.EthernetLen, 20
	csum := uint8(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM)
	gso := func(typ uint8, off uint16) taptest.Hdr {
		return taptest.Hdr{Flags: csum, GSOType: typ, HdrLen: eth + ip4 + 8, GSOSize: 16, CsumStart: eth + ip4, CsumOffset: off}
	}
	return []*floodKind{
		{name: "spoofed", pps: floodSpoofedPPS, frames: []floodFrame{
			{plain, udp(ipB, ipC, 64, portSpoofed, false)},      // another pod's address
			{plain, udp(ipC, ipB, 64, portSpoofed, false)},      // another pod's address
			{plain, udp(outsider, ipB, 64, portSpoofed, false)}, // from outside the cluster
			{plain, udp(outsider, ipC, 64, portSpoofed, false)},
		}},
		{name: "bad-offload", pps: floodBadOffloadPPS, frames: []floodFrame{
			// "Finish" the checksum over the low half of the IP source.
			{taptest.Partial(eth+12, 2), udp(ipA, ipB, 64, portBadOffload, true)},
			// At the UDP header, but onto its source port.
			{taptest.Partial(eth+ip4, 0), udp(ipA, ipC, 64, portBadOffload, true)},
			// TCP segmentation of a UDP datagram (the TCP checksum's offset).
			{gso(unix.VIRTIO_NET_HDR_GSO_TCPV4, 16), udp(ipA, ipB, 64, portBadOffload, true)},
			// UDP segmentation with the TCP checksum's offset.
			{gso(unix.VIRTIO_NET_HDR_GSO_UDP_L4, 16), udp(ipA, ipC, 64, portBadOffload, true)},
			// UDP segmentation into segments of 0 bytes.
			{taptest.Hdr{Flags: csum, GSOType: unix.VIRTIO_NET_HDR_GSO_UDP_L4, HdrLen: eth + ip4 + 8, CsumStart: eth + ip4, CsumOffset: 6}, udp(ipA, ipB, 64, portBadOffload, true)},
		}},
		{name: "ttl", pps: floodTTLPPS, frames: []floodFrame{
			{plain, udp(ipA, faraway, 1, portTTL, false)},
		}},
	}
}

// udpFrame is an Ethernet frame with an IPv4 UDP datagram of 64 bytes of
// payload from src to dst:port. Its UDP checksum is complete, or, with
// partial, the pseudo-header's sum (as a sender leaves it for offload).
func udpFrame(smac, dmac packet.MAC, src, dst netip.Addr, ttl uint8, port uint16, partial bool) []byte {
	const payload = 64
	f := make([]byte, packet.EthernetLen+20+8+payload)
	copy(f[0:6], dmac[:])
	copy(f[6:12], smac[:])
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[packet.EthernetLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = ttl, unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^packet.Checksum(ip[:20], 0))
	u := ip[20:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], port)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	for i := range payload {
		u[8+i] = byte(i)
	}
	u[12] = 0x50 // read as a TCP header's data offset, a valid one (20 bytes)
	sum := packet.PseudoHeaderSum(src, dst, unix.IPPROTO_UDP, len(u))
	if partial {
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(u[6:], uint16(sum))
		return f
	}
	c := ^packet.Checksum(u, sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return f
}

// podMACs returns the MAC of pod p's eth0 and its gateway's (resolved by
// a ping of the gateway).
func podMACs(p *netns) (own, gw packet.MAC, err error) {
	out, err := p.Run(context.Background(), "ip", "-j", "route", "show", "default")
	if err != nil {
		return own, gw, err
	}
	var routes []struct{ Gateway string }
	if err := json.Unmarshal([]byte(out), &routes); err != nil || len(routes) == 0 {
		return own, gw, fmt.Errorf("pod default route %q: %v", out, err)
	}
	if _, err := p.Run(context.Background(), "ping", "-c", "1", "-W", "2", routes[0].Gateway); err != nil {
		return own, gw, err
	}
	mac := func(args ...string) (packet.MAC, error) {
		var m packet.MAC
		out, err := p.Run(context.Background(), "ip", append([]string{"-j"}, args...)...)
		if err != nil {
			return m, err
		}
		var v []struct{ Address, Lladdr string }
		if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) == 0 {
			return m, fmt.Errorf("ip %v: %q: %v", args, out, err)
		}
		s := v[0].Lladdr
		if s == "" {
			s = v[0].Address
		}
		return parseMAC(s)
	}
	if own, err = mac("link", "show", "eth0"); err != nil {
		return own, gw, err
	}
	gw, err = mac("neigh", "show", routes[0].Gateway, "dev", "eth0")
	return own, gw, err
}

func parseMAC(s string) (packet.MAC, error) {
	var m packet.MAC
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != len(m) {
		return m, fmt.Errorf("MAC %q: %v", s, err)
	}
	copy(m[:], hw)
	return m, nil
}

// txDropped returns the packets pod p's kernel dropped on their way out of
// its eth0 (to the TAP): a full queue, or a super-packet it could not
// segment in software.
func txDropped(p *netns) (uint64, error) {
	out, err := p.Run(context.Background(), "ip", "-j", "-s", "link", "show", "eth0")
	if err != nil {
		return 0, err
	}
	var v []struct {
		Stats64 struct{ Tx struct{ Dropped uint64 } }
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) == 0 {
		return 0, fmt.Errorf("ip -s link: %q: %v", out, err)
	}
	return v[0].Stats64.Tx.Dropped, nil
}

// portOf returns the engine port (and its counters) holding address ip.
func portOf(ctx context.Context, cl *api.Client, ip netip.Addr) (api.Port, error) {
	ports, err := cl.Ports(ctx)
	if err != nil {
		return api.Port{}, err
	}
	for _, p := range ports {
		for _, a := range p.Addrs {
			if a == ip {
				return p, nil
			}
		}
	}
	return api.Port{}, fmt.Errorf("no engine port has %s", ip)
}
