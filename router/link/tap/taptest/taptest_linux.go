// Package taptest plays a pod on the kernel side of a TAP that an engine
// holds: a Sender writes Ethernet frames through an AF_PACKET socket with
// PACKET_VNET_HDR, so that the pod itself chooses the virtio-net header
// (partial checksum offsets, GSO type and size) the engine reads with the
// frame; a Counter counts the UDP datagrams to one port (or ICMP messages of
// one type) that arrive on a pod's interface, whatever their checksums, as the kernel sees them before
// any socket does. Privileged tests and the end-to-end benchmark (bench/e2e,
// case flood) use both from inside the pod's network namespace.
package taptest

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/link/tap"
)

// Hdr is a virtio-net header as a pod writes it, offsets counted from the
// start of the Ethernet frame (the kernel's convention, not packet.GSO's).
type Hdr struct {
	Flags      uint8 // unix.VIRTIO_NET_HDR_F_*
	GSOType    uint8 // unix.VIRTIO_NET_HDR_GSO_*
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// Partial is a header asking for a partial checksum at start+off.
func Partial(start, off uint16) Hdr {
	return Hdr{Flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, CsumStart: start, CsumOffset: off}
}

func (h Hdr) put(b []byte) {
	b[0], b[1] = h.Flags, h.GSOType
	binary.NativeEndian.PutUint16(b[2:], h.HdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.GSOSize)
	binary.NativeEndian.PutUint16(b[6:], h.CsumStart)
	binary.NativeEndian.PutUint16(b[8:], h.CsumOffset)
}

// Sender writes frames with a chosen virtio-net header on one interface.
// Write is safe for concurrent use; Close closes the socket.
type Sender struct {
	fd int
}

// NewSender opens the socket on the interface named ifname in the calling
// thread's network namespace (call it inside tempns.NS.Do); it keeps
// sending there from any thread afterwards.
func NewSender(ifname string) (*Sender, error) {
	idx, err := IfIndex(ifname)
	if err != nil {
		return nil, err
	}
	// Protocol 0: the socket sends and receives nothing.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("PACKET_VNET_HDR: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: idx}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind to %s: %w", ifname, err)
	}
	return &Sender{fd: fd}, nil
}

// Write sends frame (from its Ethernet header on) behind h. buf is scratch
// of at least tap.VnetHdrLen+len(frame) bytes, owned by the caller (nil:
// one is allocated). The error is the kernel's: it refuses (EINVAL) some
// headers itself before the TAP sees them.
func (s *Sender) Write(buf []byte, h Hdr, frame []byte) error {
	n := tap.VnetHdrLen + len(frame)
	if len(buf) < n {
		buf = make([]byte, n)
	}
	h.put(buf)
	copy(buf[tap.VnetHdrLen:], frame)
	_, err := unix.Write(s.fd, buf[:n])
	return err
}

// Close closes the socket.
func (s *Sender) Close() error { return unix.Close(s.fd) }

// Counter counts IPv4 packets of one kind (UDP to a port, ICMP of a type)
// arriving on an interface: frames the interface receives, before
// checksums are checked or any socket is looked up, counted by a socket
// filter, so that nothing is copied to user space per packet.
type Counter struct {
	fd int
}

// Ancillary loads of classic BPF (linux/filter.h), absent from x/sys.
const (
	skfAdOff     = 0xfffff000 // SKF_AD_OFF (-0x1000)
	skfAdPktType = 4          // SKF_AD_PKTTYPE
)

// CountUDP starts counting the UDP datagrams to port that arrive on the
// interface named ifname in the calling thread's network namespace.
func CountUDP(ifname string, port uint16) (*Counter, error) {
	return newCounter(ifname, unix.IPPROTO_UDP, unix.BPF_H, 2, uint32(port))
}

// CountICMP starts counting the ICMP messages of type typ that arrive on
// the interface named ifname in the calling thread's network namespace.
func CountICMP(ifname string, typ uint8) (*Counter, error) {
	return newCounter(ifname, unix.IPPROTO_ICMP, unix.BPF_B, 0, uint32(typ))
}

// newCounter counts the incoming IPv4 packets (first fragments) of
// protocol proto whose transport header holds want at offset off (a
// BPF_H or BPF_B field).
func newCounter(ifname string, proto uint32, size uint16, off, want uint32) (*Counter, error) {
	idx, err := IfIndex(ifname)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	// Accept (1 byte: only the count matters) or drop; the jumps skip to
	// the last instruction, the drop.
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdOff + skfAdPktType},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 10, K: unix.PACKET_OUTGOING},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 8, K: unix.ETH_P_IP},
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 14 + 9},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 6, K: proto},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 14 + 6},
		{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 4, K: 0x1fff}, // not a first fragment
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 14},             // X = IP header length
		{Code: unix.BPF_LD | size | unix.BPF_IND, K: 14 + off},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 1, K: want},
		{Code: unix.BPF_RET | unix.BPF_K, K: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("SO_ATTACH_FILTER: %w", err)
	}
	// Bound with a protocol only now, after the filter: nothing unfiltered
	// is queued before it.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: idx}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind to %s: %w", ifname, err)
	}
	return &Counter{fd: fd}, nil
}

// Count returns the packets counted since the last Count (or since
// NewCounter), queued and dropped for a full queue alike
// (PACKET_STATISTICS, which the kernel resets on each read).
func (c *Counter) Count() (uint64, error) {
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0, fmt.Errorf("PACKET_STATISTICS: %w", err)
	}
	return uint64(st.Packets), nil
}

// Close stops counting.
func (c *Counter) Close() error { return unix.Close(c.fd) }

// IfIndex returns the index of the link named name in the calling thread's
// network namespace.
func IfIndex(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(s)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// htons is v in network byte order, as the kernel reads a uint16 field.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
