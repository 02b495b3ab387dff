package main

// File capabilities: what `setcap cap_net_bind_service=+ep FILE` writes,
// carried in the layer as a PAX record SCHILY.xattr.security.capability
// (the record tar, Docker and containerd use for extended attributes).
// containerd sets the attribute when it unpacks the layer, so a non-root
// process gains the capabilities when it executes the file, within the
// container's bounding set (upstream CoreDNS's image binds :53 as uid 65532
// this way).

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// xattrCapability is the PAX record of a file's security.capability.
const xattrCapability = "SCHILY.xattr.security.capability"

// capNumbers are Linux's capability numbers (include/uapi/linux/capability.h).
var capNumbers = map[string]uint{
	"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
	"kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9,
	"net_bind_service": 10, "net_broadcast": 11, "net_admin": 12, "net_raw": 13,
	"ipc_lock": 14, "ipc_owner": 15, "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18,
	"sys_ptrace": 19, "sys_pacct": 20, "sys_admin": 21, "sys_boot": 22, "sys_nice": 23,
	"sys_resource": 24, "sys_time": 25, "sys_tty_config": 26, "mknod": 27, "lease": 28,
	"audit_write": 29, "audit_control": 30, "setfcap": 31, "mac_override": 32,
	"mac_admin": 33, "syslog": 34, "wake_alarm": 35, "block_suspend": 36,
	"audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}

// parseCaps parses a comma-separated list of capability names, with or
// without the cap_ prefix, in any case (net_bind_service, CAP_NET_RAW),
// into a capability mask.
func parseCaps(s string) (uint64, error) {
	var mask uint64
	for _, n := range strings.Split(s, ",") {
		key := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(n)), "cap_")
		num, ok := capNumbers[key]
		if !ok {
			return 0, fmt.Errorf("unknown capability %q", n)
		}
		mask |= 1 << num
	}
	return mask, nil
}

// vfsCap encodes mask as a struct vfs_cap_data of revision 2 (20 bytes,
// little-endian) with the effective flag set and no inheritable
// capabilities: setcap's "=+ep". Revision 2 applies in every user
// namespace (revision 3 names a root uid).
func vfsCap(mask uint64) []byte {
	const (
		revision2 = 0x02000000
		effective = 0x000001
	)
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], revision2|effective)
	binary.LittleEndian.PutUint32(b[4:], uint32(mask))      // data[0].permitted
	binary.LittleEndian.PutUint32(b[8:], 0)                 // data[0].inheritable
	binary.LittleEndian.PutUint32(b[12:], uint32(mask>>32)) // data[1].permitted
	binary.LittleEndian.PutUint32(b[16:], 0)                // data[1].inheritable
	return b
}
