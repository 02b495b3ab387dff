package conntrack

import (
	"fmt"
	"math"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

// Dir is the direction of a packet within its flow.
type Dir uint8

// Directions.
const (
	Original Dir = iota // as the flow's first packet went
	Reply               // the other way
)

// String returns "original" or "reply".
func (d Dir) String() string {
	if d == Original {
		return "original"
	}
	return "reply"
}

// State is a TCP flow's state, as netfilter names it. UDP and ICMP flows
// are always StateNone; their progress is in Flow.SeenReply and
// Flow.Assured.
type State uint8

// TCP states (netfilter's tcp_conntrack, without simultaneous open).
const (
	StateNone        State = iota // not TCP
	StateSynSent                  // SYN seen
	StateSynRecv                  // SYN/ACK seen
	StateEstablished              // ACK of the SYN/ACK seen
	StateFinWait                  // a FIN seen
	StateCloseWait                // the FIN acknowledged, other side still open
	StateLastAck                  // FINs seen both ways
	StateTimeWait                 // the last ACK seen
	StateClose                    // reset
	numStates
)

var stateNames = [numStates]string{"none", "syn-sent", "syn-recv", "established", "fin-wait", "close-wait", "last-ack", "time-wait", "close"}

// String returns the state's kebab-case name.
func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "unknown"
}

// Timeouts are how long a flow lives without a packet, per state. They
// have one-second resolution. The defaults are netfilter's
// (nf_conntrack_tcp_timeout_*, nf_conntrack_udp_timeout{,_stream},
// nf_conntrack_icmp_timeout).
type Timeouts struct {
	TCPSynSent     time.Duration // default 120s
	TCPSynRecv     time.Duration // default 60s
	TCPEstablished time.Duration // default 432000s (5 days)
	TCPFinWait     time.Duration // default 120s
	TCPCloseWait   time.Duration // default 60s
	TCPLastAck     time.Duration // default 30s
	TCPTimeWait    time.Duration // default 120s
	TCPClose       time.Duration // default 10s
	UDP            time.Duration // unreplied, or replied within its first 2s: default 30s
	UDPStream      time.Duration // replied and older than 2s (assured): default 120s
	ICMP           time.Duration // default 30s
}

// DefaultTimeouts returns netfilter's defaults.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		TCPSynSent:     120 * time.Second,
		TCPSynRecv:     60 * time.Second,
		TCPEstablished: 432000 * time.Second,
		TCPFinWait:     120 * time.Second,
		TCPCloseWait:   60 * time.Second,
		TCPLastAck:     30 * time.Second,
		TCPTimeWait:    120 * time.Second,
		TCPClose:       10 * time.Second,
		UDP:            30 * time.Second,
		UDPStream:      120 * time.Second,
		ICMP:           30 * time.Second,
	}
}

// maxTimeout keeps expiry stamps within their 32 bits for a century.
const maxTimeout = 10 * 365 * 24 * time.Hour

// secs holds validated timeouts in whole seconds, indexed for the data path.
type secs struct {
	tcp                    [numStates]uint32
	udp, udpStream, icmpTO uint32
}

// resolve fills zero fields with defaults, checks the range and rounds up
// to whole seconds.
func (t Timeouts) resolve() (secs, error) {
	d := DefaultTimeouts()
	var s secs
	fields := []struct {
		name   string
		v, def time.Duration
		dst    *uint32
	}{
		{"TCPSynSent", t.TCPSynSent, d.TCPSynSent, &s.tcp[StateSynSent]},
		{"TCPSynRecv", t.TCPSynRecv, d.TCPSynRecv, &s.tcp[StateSynRecv]},
		{"TCPEstablished", t.TCPEstablished, d.TCPEstablished, &s.tcp[StateEstablished]},
		{"TCPFinWait", t.TCPFinWait, d.TCPFinWait, &s.tcp[StateFinWait]},
		{"TCPCloseWait", t.TCPCloseWait, d.TCPCloseWait, &s.tcp[StateCloseWait]},
		{"TCPLastAck", t.TCPLastAck, d.TCPLastAck, &s.tcp[StateLastAck]},
		{"TCPTimeWait", t.TCPTimeWait, d.TCPTimeWait, &s.tcp[StateTimeWait]},
		{"TCPClose", t.TCPClose, d.TCPClose, &s.tcp[StateClose]},
		{"UDP", t.UDP, d.UDP, &s.udp},
		{"UDPStream", t.UDPStream, d.UDPStream, &s.udpStream},
		{"ICMP", t.ICMP, d.ICMP, &s.icmpTO},
	}
	for _, f := range fields {
		v := f.v
		if v == 0 {
			v = f.def
		}
		if v < 0 || v > maxTimeout {
			return secs{}, fmt.Errorf("conntrack: timeout %s: %v outside (0, %v]", f.name, f.v, maxTimeout)
		}
		*f.dst = uint32(min(math.Ceil(v.Seconds()), math.MaxUint32))
	}
	return s, nil
}

// TCP flag classes, netfilter's get_conntrack_index.
const (
	tcpSYN = iota
	tcpSYNACK
	tcpFIN
	tcpACK
	tcpRST
	tcpNone
	numTCPClasses
)

func tcpClass(flags uint8) int {
	switch {
	case flags&packet.TCPFlagRST != 0:
		return tcpRST
	case flags&packet.TCPFlagSYN != 0:
		if flags&packet.TCPFlagACK != 0 {
			return tcpSYNACK
		}
		return tcpSYN
	case flags&packet.TCPFlagFIN != 0:
		return tcpFIN
	case flags&packet.TCPFlagACK != 0:
		return tcpACK
	}
	return tcpNone
}

// Pseudo-states of the transition table.
const (
	sIV = numStates     // invalid: the packet does not fit the flow; the state stays
	sIG = numStates + 1 // ignored: may be valid (a late retransmission); the state stays
)

// Short names for the table, as in nf_conntrack_proto_tcp.c.
const (
	sNO = StateNone
	sSS = StateSynSent
	sSR = StateSynRecv
	sES = StateEstablished
	sFW = StateFinWait
	sCW = StateCloseWait
	sLA = StateLastAck
	sTW = StateTimeWait
	sCL = StateClose
)

// tcpTransitions is netfilter's tcp_conntracks table (Linux 6.x) without
// the SYN_SENT2 column of simultaneous open, whose reply-direction SYN is
// invalid here. We track no windows, so every segment is taken as in
// window. Indexed [dir][flag class][state].
var tcpTransitions = [2][numTCPClasses][numStates]State{
	Original: {
		//            sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL
		tcpSYN:    {sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS},
		tcpSYNACK: {sIV, sIV, sIG, sIG, sIG, sIG, sIG, sIG, sIG},
		tcpFIN:    {sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL},
		tcpACK:    {sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL},
		tcpRST:    {sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
		tcpNone:   {sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV},
	},
	Reply: {
		//            sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL
		tcpSYN:    {sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV},
		tcpSYNACK: {sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG},
		tcpFIN:    {sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL},
		tcpACK:    {sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL},
		tcpRST:    {sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
		tcpNone:   {sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV},
	},
}
