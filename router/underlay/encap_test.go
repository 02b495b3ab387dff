package underlay

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

var (
	macA = packet.MAC{0x0e, 0xaa, 0, 0, 0, 1}
	macB = packet.MAC{0x0e, 0xbb, 0, 0, 0, 2}
)

// unhex decodes annotated hex: whitespace and "# comments" to the end of
// a line are ignored.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		b.WriteString(strings.Join(strings.Fields(line), ""))
	}
	out, err := hex.DecodeString(b.String())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ipv4Packet builds an IPv4/UDP packet with gVisor's header package (an
// oracle independent of ours) and payload bytes of value fill.
func ipv4Packet(src, dst string, payload int, fill byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+payload)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(netip.MustParseAddr(src).As4()),
		DstAddr: tcpip.AddrFrom4(netip.MustParseAddr(dst).As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: 1000, DstPort: 2000, Length: uint16(header.UDPMinimumSize + payload)})
	for i := range b[header.IPv4MinimumSize+header.UDPMinimumSize:] {
		b[header.IPv4MinimumSize+header.UDPMinimumSize+i] = fill
	}
	return b
}

func ipv6Packet(payload int) []byte {
	b := make([]byte, header.IPv6MinimumSize+payload)
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(payload), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(netip.MustParseAddr("fd00:10:244:1::2").As16()),
		DstAddr: tcpip.AddrFrom16(netip.MustParseAddr("fd00:10:244:2::2").As16()),
	})
	return b
}

// withHeadroom returns a buffer holding pkt at link.Headroom.
func withHeadroom(pkt []byte) []byte {
	return append(make([]byte, link.Headroom), pkt...)
}

func TestVXLANHeader(t *testing.T) {
	var b [VXLANLen]byte
	PutVXLAN(b[:], 0x123456)
	want := unhex(t, `
		08 000000  # flags: I; reserved
		123456 00  # VNI; reserved`)
	if !bytes.Equal(b[:], want) {
		t.Fatalf("header %x, want %x", b, want)
	}
	v := VXLAN(b[:])
	if !v.IsValid() || v.VNI() != 0x123456 {
		t.Fatalf("IsValid %v VNI %#x", v.IsValid(), v.VNI())
	}
	if VXLAN(b[:7]).IsValid() {
		t.Error("a 7-byte header is valid")
	}
	b[0] = 0
	if v.IsValid() {
		t.Error("valid without the I flag")
	}
}

func TestEncapsulate(t *testing.T) {
	ip4 := ipv4Packet("10.244.1.2", "10.244.2.2", 10, 0xab)
	tmpl := newTemplate(1, macB, macA)
	cases := []struct {
		name string
		pkt  []byte
		tmpl *encapTemplate
		want []byte // the UDP payload
	}{
		{"udp: the IP packet as it is", ip4, nil, ip4},
		{"vxlan: ipv4", ip4, &tmpl, append(unhex(t, `
			08000000 00000100     # VXLAN: I flag, VNI 1
			0ebb00000002          # inner dst: the peer's VTEP MAC
			0eaa00000001          # inner src: ours
			0800                  # IPv4`), ip4...)},
		{"vxlan: ipv6", ipv6Packet(8), &tmpl, append(unhex(t, `
			08000000 00000100 0ebb00000002 0eaa00000001
			86dd                  # IPv6`), ipv6Packet(8)...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			buf := withHeadroom(tc.pkt)
			got := encapsulate(buf, link.Headroom, tc.tmpl)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("payload\n%x\nwant\n%x", got, tc.want)
			}
			// In place: the inner packet was not moved.
			if &got[len(got)-len(tc.pkt)] != &buf[link.Headroom] {
				t.Error("the inner packet was copied")
			}
			if !bytes.Equal(buf[link.Headroom:], tc.pkt) {
				t.Error("the inner packet changed")
			}
		})
	}
	t.Run("not IP", func(t *testing.T) {
		if got := encapsulate(withHeadroom([]byte{0x55, 1, 2, 3}), link.Headroom, &tmpl); got != nil {
			t.Fatalf("encapsulated a non-IP packet: %x", got)
		}
		if got := encapsulate(withHeadroom(nil), link.Headroom, nil); got != nil {
			t.Fatalf("encapsulated an empty packet: %x", got)
		}
	})
	t.Run("headroom too small", func(t *testing.T) {
		if got := encapsulate(append(make([]byte, 4), ip4...), 4, &tmpl); got != nil {
			t.Fatal("wrote in front of the buffer")
		}
	})
}

func TestDecapsulate(t *testing.T) {
	ip4 := ipv4Packet("10.244.2.2", "10.244.1.2", 4, 1)
	good := unhex(t, "08000000 00000100 0eaa00000001 0ebb00000002 0800")
	mutate := func(i int, v ...byte) []byte {
		b := append(append([]byte{}, good...), ip4...)
		copy(b[i:], v)
		return b
	}
	cases := []struct {
		name  string
		encap Encap
		in    []byte
		want  []byte
		why   DropReason
	}{
		{"udp ipv4", EncapUDP, ip4, ip4, dropNone},
		{"udp ipv6", EncapUDP, ipv6Packet(0), ipv6Packet(0), dropNone},
		{"udp not ip", EncapUDP, []byte{0x08, 0, 0, 0}, nil, DropNotIP},
		{"udp empty", EncapUDP, nil, nil, DropNotIP},
		{"vxlan", EncapVXLAN, append(append([]byte{}, good...), ip4...), ip4, dropNone},
		{"vxlan short", EncapVXLAN, good[:21], nil, DropShort},
		{"vxlan no I flag", EncapVXLAN, mutate(0, 0), nil, DropBadHeader},
		{"vxlan other VNI", EncapVXLAN, mutate(6, 2), nil, DropWrongVNI},
		{"vxlan other MAC", EncapVXLAN, mutate(13, 9), nil, DropWrongMAC},
		{"vxlan broadcast", EncapVXLAN, append(unhex(t, "08000000 00000100 ffffffffffff 0ebb00000002 0806"), make([]byte, 28)...), nil, DropWrongMAC},
		{"vxlan ethertype ipv6, packet ipv4", EncapVXLAN, mutate(20, 0x86, 0xdd), nil, DropNotIP},
		{"vxlan ARP", EncapVXLAN, mutate(21, 0x06), nil, DropNotIP},
		{"vxlan no inner packet", EncapVXLAN, good, nil, DropNotIP},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := decapsulate(tc.in, tc.encap, 1, macA)
			if why != tc.why || !bytes.Equal(got, tc.want) {
				t.Fatalf("got %x, %v; want %x, %v", got, why, tc.want, tc.why)
			}
		})
	}
}

func TestEncapNames(t *testing.T) {
	for _, e := range []Encap{EncapUDP, EncapVXLAN} {
		got, err := ParseEncap(e.String())
		if err != nil || got != e {
			t.Errorf("ParseEncap(%q) = %v, %v", e, got, err)
		}
	}
	if _, err := ParseEncap("gre"); !errors.Is(err, ErrBadEncap) {
		t.Errorf("ParseEncap(gre): %v", err)
	}
	for _, tc := range []struct {
		e    Encap
		v6   bool
		want int
		port uint16
	}{
		{EncapUDP, false, 28, 8285}, {EncapVXLAN, false, 50, 8472},
		{EncapUDP, true, 48, 8285}, {EncapVXLAN, true, 70, 8472},
	} {
		if got := tc.e.Overhead(tc.v6); got != tc.want {
			t.Errorf("%v.Overhead(v6=%v) = %d, want %d", tc.e, tc.v6, got, tc.want)
		}
		if got := tc.e.DefaultPort(); got != tc.port {
			t.Errorf("%v.DefaultPort() = %d, want %d", tc.e, got, tc.port)
		}
	}
	for r := dropNone + 1; r < numDropReasons; r++ {
		if r.String() == "" || r.String() == "unknown" {
			t.Errorf("drop reason %d has no name", r)
		}
	}
}

// FuzzDecapsulate: any datagram either drops with a reason or yields a
// suffix of itself that starts like an IP packet.
func FuzzDecapsulate(f *testing.F) {
	f.Add([]byte{}, true)
	f.Add(append(unhex(f, "08000000 00000100 0eaa00000001 0ebb00000002 0800"), ipv4Packet("10.0.0.1", "10.0.0.2", 0, 0)...), true)
	f.Add(ipv6Packet(4), false)
	f.Fuzz(func(t *testing.T, d []byte, vxlan bool) {
		e := EncapUDP
		if vxlan {
			e = EncapVXLAN
		}
		ip, why := decapsulate(d, e, 1, macA)
		if why != dropNone {
			if ip != nil {
				t.Fatalf("dropped (%v) but returned %x", why, ip)
			}
			return
		}
		if len(ip) == 0 || !bytes.HasSuffix(d, ip) || etherType(ip) == 0 {
			t.Fatalf("accepted %x as %x", d, ip)
		}
	})
}
