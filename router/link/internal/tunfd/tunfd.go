// Package tunfd holds what the tap and tun devices share about their
// /dev/net/tun descriptor: creating or attaching to a device of their kind
// and checking a descriptor handed over, duplicating one passed as an
// *os.File, the virtio-net header length, the persist flag, and the device's
// MTU, read and set in the network namespace the device lives in.
//
// Each package names its kind once (a Kind: TAP or TUN, with its own
// sentinel errors), so the shared code reports the errors the package
// documents.
package tunfd

// VnetHdrLen is the length of the virtio-net header (struct virtio_net_hdr,
// without num_buffers) in front of every packet on a descriptor opened with
// IFF_VNET_HDR, once set with SetVnetHdrLen.
const VnetHdrLen = 10
