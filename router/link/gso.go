package link

import "github.com/podrouter/podrouter/router/packet"

// GSODevice is a Device that also moves super-packets and packets with
// partial checksums, each described by a GSO. The engine uses ReadGSO and
// WriteGSO when a device implements them; Read and Write must still work
// (returning and taking only complete, checksummed packets).
type GSODevice interface {
	Device
	// ReadGSO is Read that also fills gso[i] for packet i; len(gso) >=
	// len(bufs). Packets may be larger than the MTU when gso[i].Type is not
	// GSONone (up to 64 KiB of IP packet).
	ReadGSO(bufs [][]byte, sizes []int, gso []packet.GSO, offset int) (int, error)
	// WriteGSO is Write for packets described by gso[i]; the device
	// accepts only what Offloads() says.
	WriteGSO(bufs [][]byte, gso []packet.GSO, offset int) (int, error)
	// Offloads returns what WriteGSO accepts. It is fixed after creation.
	Offloads() packet.Offloads
}
