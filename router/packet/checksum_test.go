package packet_test

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/podrouter/podrouter/router/packet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func newRand(t testing.TB) *rand.Rand {
	t.Helper()
	return rand.New(rand.NewPCG(0x5eed, uint64(len(t.Name()))))
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randAddr(r *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte(randBytes(r, 16)))
	}
	return netip.AddrFrom4([4]byte(randBytes(r, 4)))
}

// refChecksum is RFC 1071's checksum loop, summing big-endian 16-bit words
// in 64 bits: slow and plainly right.
func refChecksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for ; len(b) >= 2; b = b[2:] {
		sum += uint64(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}

// TestChecksumReference compares Checksum with refChecksum for buffers of
// every length up to 1600 at every alignment mod 8, with random unfolded
// initial sums.
func TestChecksumReference(t *testing.T) {
	r := newRand(t)
	buf := randBytes(r, 1600+8)
	for n := 0; n <= 1600; n++ {
		for a := range 8 {
			b := buf[a : a+n]
			initial := r.Uint32()
			if got, want := packet.Checksum(b, initial), refChecksum(b, initial); got != want {
				t.Fatalf("len %d align %d initial %#x: Checksum = %#04x, reference %#04x", n, a, initial, got, want)
			}
		}
	}
	// All ones drive the 64-bit sum to wrap on every add: the carries
	// must all come back around.
	ones := make([]byte, 65535)
	for i := range ones {
		ones[i] = 0xff
	}
	for n := 0; n <= len(ones); n += 1 + n/8 {
		for _, initial := range []uint32{0, 0xffff, 0xffffffff} {
			if got, want := packet.Checksum(ones[:n], initial), refChecksum(ones[:n], initial); got != want {
				t.Fatalf("%d bytes of 0xff, initial %#x: Checksum = %#04x, reference %#04x", n, initial, got, want)
			}
		}
	}
	big := randBytes(r, 65535)
	if got, want := packet.Checksum(big, 0xffffffff), refChecksum(big, 0xffffffff); got != want {
		t.Fatalf("64 KiB: Checksum = %#04x, reference %#04x", got, want)
	}
}

// TestChecksum compares Checksum with gVisor's for random buffers of every
// length 0..200, at odd and even starting addresses, with random initial
// values, and for the extremes (all zeros, all ones).
func TestChecksum(t *testing.T) {
	r := newRand(t)
	for n := 0; n <= 200; n++ {
		for range 20 {
			buf := randBytes(r, n+1)
			for _, b := range [][]byte{buf[:n], buf[1:]} { // aligned and misaligned
				initial := uint16(r.Uint32())
				if got, want := packet.Checksum(b, uint32(initial)), checksum.Checksum(b, initial); got != want {
					t.Fatalf("len %d initial %#04x: Checksum = %#04x, gVisor %#04x (% x)", n, initial, got, want, b)
				}
			}
		}
		zeros := make([]byte, n)
		ones := make([]byte, n)
		for i := range ones {
			ones[i] = 0xff
		}
		for _, b := range [][]byte{zeros, ones} {
			if got, want := packet.Checksum(b, 0), checksum.Checksum(b, 0); got != want {
				t.Fatalf("len %d % x: Checksum = %#04x, gVisor %#04x", n, b[:min(n, 4)], got, want)
			}
		}
	}
}

// TestChecksumLargeInitial feeds Checksum the unfolded 32-bit sums that
// PseudoHeaderSum returns.
func TestChecksumLargeInitial(t *testing.T) {
	r := newRand(t)
	for range 1000 {
		initial := r.Uint32()
		b := randBytes(r, r.IntN(64))
		folded := uint16(initial>>16) + uint16(initial)
		if folded < uint16(initial) { // end-around carry
			folded++
		}
		if got, want := packet.Checksum(b, initial), checksum.Checksum(b, folded); got != want {
			t.Fatalf("initial %#x: Checksum = %#04x, gVisor %#04x", initial, got, want)
		}
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	r := newRand(t)
	for i := range 2000 {
		v6 := i%2 == 1
		src, dst := randAddr(r, v6), randAddr(r, v6)
		proto := []uint8{packet.ProtoTCP, packet.ProtoUDP, packet.ProtoICMPv6}[r.IntN(3)]
		length := r.IntN(65536)
		got := packet.Checksum(nil, packet.PseudoHeaderSum(src, dst, proto, length))
		want := header.PseudoHeaderChecksum(gvProto(proto), gvAddr(src), gvAddr(dst), uint16(length))
		if got != want {
			t.Fatalf("%v -> %v proto %d len %d: %#04x, gVisor %#04x", src, dst, proto, length, got, want)
		}
	}
}

// TestUpdateChecksumIPv4 changes one random 16-bit word of a random valid
// IPv4 header (never the checksum itself) and compares the incremental
// update with a full recomputation.
func TestUpdateChecksumIPv4(t *testing.T) {
	r := newRand(t)
	for range 5000 {
		var opts header.IPv4OptionsSerializer
		if r.IntN(2) == 0 {
			opts = header.IPv4OptionsSerializer{&header.IPv4SerializableRouterAlertOption{}}
		}
		h := ip4(v4{src: randAddr(r, false), dst: randAddr(r, false), proto: uint8(r.Uint32()), ttl: uint8(r.IntN(255) + 1), opts: opts}, nil)
		w := r.IntN(len(h) / 2)
		if w == 5 {
			continue // the checksum field
		}
		old := binary.BigEndian.Uint16(h[2*w:])
		nw := uint16(r.Uint32())
		field := binary.BigEndian.Uint16(h[10:])
		binary.BigEndian.PutUint16(h[2*w:], nw)
		got := packet.UpdateChecksum(field, old, nw)
		// Full recomputation, skipping the (old) checksum field.
		want := ^checksum.Checksum(h[:10], checksum.Checksum(h[12:], 0))
		if got != want {
			t.Fatalf("word %d %#04x->%#04x: incremental %#04x, full %#04x", w, old, nw, got, want)
		}
		binary.BigEndian.PutUint16(h[10:], got)
		// The word may have been the version/IHL or total length, so
		// verify over the header as built rather than with IsValid.
		if checksum.Checksum(h, 0) != 0xffff {
			t.Fatalf("checksum invalid after update: % x", h)
		}
	}
}

// TestUpdateChecksumBytesIPv4 rewrites the source or destination address of
// a random IPv4 header, as SNAT/DNAT do.
func TestUpdateChecksumBytesIPv4(t *testing.T) {
	r := newRand(t)
	for range 5000 {
		h := ip4(v4{src: randAddr(r, false), dst: randAddr(r, false), proto: packet.ProtoTCP, ttl: 64}, nil)
		off := 12 + 4*r.IntN(2)
		old := append([]byte(nil), h[off:off+4]...)
		nw := randBytes(r, 4)
		copy(h[off:], nw)
		got := packet.UpdateChecksumBytes(header.IPv4(h).Checksum(), old, nw)
		want := ^checksum.Checksum(h[:10], checksum.Checksum(h[12:20], 0))
		if got != want {
			t.Fatalf("%x -> %x: incremental %#04x, full %#04x", old, nw, got, want)
		}
	}
}

// TestUpdateChecksumTCP changes a port or an address of the pseudo-header
// of a random TCP segment (v4 and v6, odd and even payload lengths) and
// checks the incremental checksum against gVisor's full one.
func TestUpdateChecksumTCP(t *testing.T) {
	r := newRand(t)
	for i := range 5000 {
		v6 := i%2 == 1
		src, dst := randAddr(r, v6), randAddr(r, v6)
		seg := tcpSeg(src, dst, uint16(r.Uint32()), uint16(r.Uint32()), header.TCPFlags(r.Uint32()), randBytes(r, r.IntN(100)))
		tc := header.TCP(seg)
		field := tc.Checksum()
		var got uint16
		switch r.IntN(4) {
		case 0, 1: // a word of the segment: a port, the window, a sequence half
			w := []int{0, 1, 2, 3, 7}[r.IntN(5)]
			old := binary.BigEndian.Uint16(seg[2*w:])
			nw := uint16(r.Uint32())
			binary.BigEndian.PutUint16(seg[2*w:], nw)
			got = packet.UpdateChecksum(field, old, nw)
		case 2: // source address
			ns := randAddr(r, v6)
			got = packet.UpdateChecksumBytes(field, src.AsSlice(), ns.AsSlice())
			src = ns
		case 3: // destination address
			nd := randAddr(r, v6)
			got = packet.UpdateChecksumBytes(field, dst.AsSlice(), nd.AsSlice())
			dst = nd
		}
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gvAddr(src), gvAddr(dst), uint16(len(seg)))
		// Full recomputation by gVisor, over a copy with the field zeroed.
		tmp := append([]byte(nil), seg...)
		header.TCP(tmp).SetChecksum(0)
		want := ^header.TCP(tmp).CalculateChecksum(checksum.Checksum(header.TCP(tmp).Payload(), xsum))
		if got != want {
			t.Fatalf("iteration %d: incremental %#04x, full %#04x", i, got, want)
		}
		tc.SetChecksum(got)
		if !tc.IsChecksumValid(gvAddr(src), gvAddr(dst), checksum.Checksum(tc.Payload(), 0), uint16(len(tc.Payload()))) {
			t.Fatalf("iteration %d: gVisor rejects the updated checksum", i)
		}
	}
}

func TestDecTTL(t *testing.T) {
	r := newRand(t)
	for ttl := 1; ttl <= 255; ttl++ {
		for range 20 {
			h := ip4(v4{src: randAddr(r, false), dst: randAddr(r, false), proto: uint8(r.Uint32()), ttl: uint8(ttl)}, randBytes(r, 8))
			packet.IPv4(h).DecTTL()
			g := header.IPv4(h)
			if int(g.TTL()) != ttl-1 || !g.IsChecksumValid() || !packet.IPv4(h).IsValid() {
				t.Fatalf("ttl %d: after DecTTL ttl=%d checksum valid=%v", ttl, g.TTL(), g.IsChecksumValid())
			}
		}
	}
}
