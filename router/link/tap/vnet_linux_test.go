package tap

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/packet"
)

// TestNegotiate walks the offload fallback ladder with a kernel that
// refuses more and more: USO (before Linux 6.2), TSO, checksums, everything.
func TestNegotiate(t *testing.T) {
	uso := unix.TUN_F_USO4 | unix.TUN_F_USO6
	tso := unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	tests := []struct {
		name    string
		refuse  func(flags int) bool
		disable bool
		want    packet.Offloads
		tries   []int
		wantErr bool
	}{
		{"all", func(int) bool { return false }, false, offloadsAll, []int{unix.TUN_F_CSUM | tso | uso}, false},
		{"no-uso", func(f int) bool { return f&uso != 0 }, false, offloadsTSO,
			[]int{unix.TUN_F_CSUM | tso | uso, unix.TUN_F_CSUM | tso}, false},
		{"csum-only", func(f int) bool { return f&(uso|tso) != 0 }, false, packet.OffloadCsum,
			[]int{unix.TUN_F_CSUM | tso | uso, unix.TUN_F_CSUM | tso, unix.TUN_F_CSUM}, false},
		{"none", func(f int) bool { return f != 0 }, false, 0,
			[]int{unix.TUN_F_CSUM | tso | uso, unix.TUN_F_CSUM | tso, unix.TUN_F_CSUM, 0}, false},
		{"disabled", func(int) bool { return false }, true, 0, []int{0}, false},
		{"refused-all", func(int) bool { return true }, false, 0,
			[]int{unix.TUN_F_CSUM | tso | uso, unix.TUN_F_CSUM | tso, unix.TUN_F_CSUM, 0}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tries []int
			got, refused, err := negotiate(func(f int) error {
				tries = append(tries, f)
				if tc.refuse(f) {
					return unix.EINVAL
				}
				return nil
			}, tc.disable)
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, unix.EINVAL)) {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("offloads = %v, want %v", offloadsString(got), offloadsString(tc.want))
			}
			if len(tries) != len(tc.tries) {
				t.Fatalf("tried %#x, want %#x", tries, tc.tries)
			}
			for i := range tries {
				if tries[i] != tc.tries[i] {
					t.Fatalf("tried %#x, want %#x", tries, tc.tries)
				}
			}
			if !tc.wantErr && len(refused) != len(tries)-1 {
				t.Fatalf("%d refusals reported for %d tries", len(refused), len(tries))
			}
		})
	}
}

func vnetHdr(flags, typ uint8, hdrLen, size, start, off uint16) *[VnetHdrLen]byte {
	var h [VnetHdrLen]byte
	h[0], h[1] = flags, typ
	binary.NativeEndian.PutUint16(h[2:], hdrLen)
	binary.NativeEndian.PutUint16(h[4:], size)
	binary.NativeEndian.PutUint16(h[6:], start)
	binary.NativeEndian.PutUint16(h[8:], off)
	return &h
}

// TestDecodeHdr converts the kernel's virtio-net headers: offsets move from
// the frame to the IP header, hdr_len (the skb's linear length) is not
// taken, the ECN bit is dropped, and headers this package cannot honour are
// refused.
func TestDecodeHdr(t *testing.T) {
	const csum = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	tests := []struct {
		name string
		h    *[VnetHdrLen]byte
		flen int
		want packet.GSO
		ok   bool
	}{
		{"plain", vnetHdr(0, 0, 0, 0, 0, 0), 100, packet.GSO{}, true},
		{"data-valid", vnetHdr(unix.VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0), 100, packet.GSO{}, true},
		{"csum-tcp4", vnetHdr(csum, 0, 54, 0, 34, 16), 100, packet.GSO{NeedsCsum: true, CsumStart: 20, CsumOffset: 16}, true},
		{"tso4", vnetHdr(csum, 1, 9000, 1448, 34, 16), 60000,
			packet.GSO{Type: packet.GSOTCPv4, NeedsCsum: true, Size: 1448, CsumStart: 20, CsumOffset: 16}, true},
		{"tso4-ecn", vnetHdr(csum, 0x81, 66, 1448, 34, 16), 60000,
			packet.GSO{Type: packet.GSOTCPv4, NeedsCsum: true, Size: 1448, CsumStart: 20, CsumOffset: 16}, true},
		{"tso6", vnetHdr(csum, 4, 74, 1428, 54, 16), 60000,
			packet.GSO{Type: packet.GSOTCPv6, NeedsCsum: true, Size: 1428, CsumStart: 40, CsumOffset: 16}, true},
		{"uso", vnetHdr(csum, 5, 42, 1000, 34, 6), 5042,
			packet.GSO{Type: packet.GSOUDPL4, NeedsCsum: true, Size: 1000, CsumStart: 20, CsumOffset: 6}, true},
		{"ufo", vnetHdr(csum, 3, 42, 1000, 34, 6), 5042, packet.GSO{}, false},
		{"unknown-type", vnetHdr(csum, 7, 42, 1000, 34, 6), 5042, packet.GSO{}, false},
		{"gso-without-csum", vnetHdr(0, 1, 66, 1448, 34, 16), 60000, packet.GSO{}, false},
		{"gso-size-0", vnetHdr(csum, 1, 66, 0, 34, 16), 60000, packet.GSO{}, false},
		{"csum-in-ethernet", vnetHdr(csum, 0, 0, 0, 10, 2), 100, packet.GSO{}, false},
		{"csum-past-end", vnetHdr(csum, 0, 0, 0, 34, 16), 51, packet.GSO{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, ok := decodeHdr(tc.h, tc.flen)
			if ok != tc.ok || (ok && g != tc.want) {
				t.Fatalf("decodeHdr = %+v, %v; want %+v, %v", g, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestEncodeHdr checks that a descriptor decodes back to itself and that
// the header carries frame offsets and the header length.
func TestEncodeHdr(t *testing.T) {
	for _, g := range []packet.GSO{
		{},
		{NeedsCsum: true, CsumStart: 20, CsumOffset: 6},
		{Type: packet.GSOTCPv4, NeedsCsum: true, HdrLen: 52, Size: 1448, CsumStart: 20, CsumOffset: 16},
		{Type: packet.GSOTCPv6, NeedsCsum: true, HdrLen: 72, Size: 1428, CsumStart: 40, CsumOffset: 16},
		{Type: packet.GSOUDPL4, NeedsCsum: true, HdrLen: 28, Size: 1000, CsumStart: 20, CsumOffset: 6},
	} {
		h := make([]byte, VnetHdrLen)
		for i := range h {
			h[i] = 0xaa
		}
		encodeHdr(h, g)
		if g.Type != packet.GSONone {
			if got := binary.NativeEndian.Uint16(h[2:]); got != g.HdrLen+14 {
				t.Fatalf("%+v: hdr_len %d, want %d", g, got, g.HdrLen+14)
			}
		} else if h[1] != 0 || h[2] != 0 || h[3] != 0 {
			t.Fatalf("%+v: header %x not cleared", g, h)
		}
		back, ok := decodeHdr((*[VnetHdrLen]byte)(h), 65000)
		back.HdrLen = g.HdrLen
		if !ok || back != g {
			t.Fatalf("encode/decode %+v = %+v, %v", g, back, ok)
		}
	}
}
