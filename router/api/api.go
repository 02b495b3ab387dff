// Package api is the node daemon's local API: a root-only unix socket over
// which the CNI plugin attaches and detaches pods (the pod's TAP file
// descriptor travels with the attach request, by SCM_RIGHTS) and the operator
// CLI reads status, routes, ports and attachments and captures a pod's
// traffic (the output file's descriptor travels with the capture request).
//
//	client: dial ─► one request (JSON line, + the TAP or output fd) ─► one reply ─► close
//	server: accept ─► SO_PEERCRED check ─► read request (+ fds) ─► Handler ─► reply
//
// Design notes. One request per connection keeps the protocol trivially
// correct about which fd belongs to which request and lets the server bound
// every exchange with one deadline (a capture carries its own, longer bound: its duration plus
// the usual timeout, capped by MaxCaptureDuration). The socket is a SOCK_STREAM unix socket
// carrying newline-terminated JSON (Version below); the fd of an attach
// request rides on the first bytes of the request, the only place the
// server looks for it. Errors cross the socket as a code (Code) that the
// client turns back into this package's sentinel errors, so callers match
// them with errors.Is on either side.
package api

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/podrouter/podrouter/router/packet"
)

// DefaultSocket is where the daemon listens unless configured otherwise.
const DefaultSocket = "/run/podrouter/podrouter.sock"

// Version is the protocol version every request and reply carries. A server
// refuses requests of another version with ErrBadRequest.
const Version = 1

// Sentinel errors. A Handler returns them (wrapped with %w) to pick the
// code the client sees; Client methods return them wrapped with the
// server's message.
var (
	// ErrNotFound: the attachment (or other named object) does not exist.
	ErrNotFound = errors.New("api: not found")
	// ErrNotReady: the daemon is starting (re-attaching pods) or stopping;
	// try again later.
	ErrNotReady = errors.New("api: daemon not ready")
	// ErrBadRequest: the request is malformed or names invalid values.
	ErrBadRequest = errors.New("api: bad request")
	// ErrConflict: the request conflicts with existing state (an address
	// attached to another pod).
	ErrConflict = errors.New("api: conflict")
	// ErrPermission: the peer is not allowed to use the socket.
	ErrPermission = errors.New("api: permission denied")
	// ErrInternal: the daemon failed to carry out a valid request.
	ErrInternal = errors.New("api: internal error")
	// ErrUnavailable: no daemon answers on the socket (absent, refused,
	// timed out). Only the client returns it.
	ErrUnavailable = errors.New("api: daemon unavailable")
)

// Code is an error's name on the wire.
type Code string

// Error codes.
const (
	CodeNotFound   Code = "not-found"
	CodeNotReady   Code = "not-ready"
	CodeBadRequest Code = "bad-request"
	CodeConflict   Code = "conflict"
	CodePermission Code = "permission"
	CodeInternal   Code = "internal"
)

var codeErrs = []struct {
	code Code
	err  error
}{
	{CodeNotFound, ErrNotFound},
	{CodeNotReady, ErrNotReady},
	{CodeBadRequest, ErrBadRequest},
	{CodeConflict, ErrConflict},
	{CodePermission, ErrPermission},
	{CodeInternal, ErrInternal},
}

// codeOf returns the wire code for err (CodeInternal for unknown errors).
func codeOf(err error) Code {
	for _, c := range codeErrs {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// errOf returns the sentinel error for a wire code.
func errOf(c Code) error {
	for _, ce := range codeErrs {
		if ce.code == c {
			return ce.err
		}
	}
	return ErrInternal
}

// Op names a request.
type Op string

// Operations.
const (
	OpAttach      Op = "attach"      // AttachRequest + the TAP fd -> Attachment
	OpDetach      Op = "detach"      // AttachmentID -> nothing
	OpStatus      Op = "status"      // -> Status
	OpRoutes      Op = "routes"      // -> []Route
	OpPorts       Op = "ports"       // -> []Port
	OpAttachments Op = "attachments" // -> []Attachment
	OpCapture     Op = "capture"     // CaptureRequest + the output fd -> CaptureStats
	// OpUnknown is what ServerConfig.Observe reports for a request that
	// named no known op or could not be read (so metrics labels stay a
	// fixed set whatever a client sends).
	OpUnknown Op = "unknown"
)

// Ops returns every known operation (not OpUnknown).
func Ops() []Op {
	return []Op{OpAttach, OpDetach, OpStatus, OpRoutes, OpPorts, OpAttachments, OpCapture, OpConntrack, OpServices, OpPolicy}
}

// known reports whether op is one of Ops.
func (op Op) known() bool {
	for _, o := range Ops() {
		if o == op {
			return true
		}
	}
	return false
}

// AttachmentID names one attachment as CNI does: the container and the
// interface name inside it.
type AttachmentID struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// String returns "containerID/ifName" (an interface name has no '/').
func (id AttachmentID) String() string { return id.ContainerID + "/" + id.IfName }

// Validate checks the ID as CNI does: a container ID of letters, digits,
// '_', '.' and '-' starting with a letter or digit, and a Linux interface
// name (1..15 bytes, no '/', ':' or white space, not "." or "..").
func (id AttachmentID) Validate() error {
	if err := validContainerID(id.ContainerID); err != nil {
		return fmt.Errorf("%w: container ID: %w", ErrBadRequest, err)
	}
	if err := ValidIfName(id.IfName); err != nil {
		return fmt.Errorf("%w: interface name: %w", ErrBadRequest, err)
	}
	return nil
}

func validContainerID(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 1024 {
		return errors.New("longer than 1024 bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '.' && c != '-')) {
			return fmt.Errorf("%q: want letters, digits, '_', '.', '-', starting with a letter or digit", s)
		}
	}
	return nil
}

// ValidIfName reports whether name is a valid Linux interface name.
func ValidIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > 15:
		return fmt.Errorf("%q longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return fmt.Errorf("%q contains '/', ':' or white space", name)
	}
	return nil
}

// MAC is an Ethernet address that reads and writes itself as
// "aa:bb:cc:dd:ee:ff" in JSON.
type MAC packet.MAC

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(packet.MAC(m).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	hw, err := net.ParseMAC(string(b))
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("MAC %q: want six colon-separated hex bytes", b)
	}
	copy(m[:], hw)
	return nil
}

// String returns the colon form.
func (m MAC) String() string { return packet.MAC(m).String() }

// AttachRequest asks the daemon to attach a pod interface whose TAP fd
// travels with the request.
type AttachRequest struct {
	AttachmentID
	// Netns is the path of the pod's network namespace
	// (/var/run/netns/NAME, /proc/PID/ns/net): the daemon re-opens the TAP
	// inside it after a restart.
	Netns string `json:"netns"`
	// MAC is the pod interface's address (the engine's frames go to it).
	MAC MAC `json:"mac"`
	// MTU of the pod interface.
	MTU int `json:"mtu"`
	// Addrs are the pod's addresses (one per family, from the podCIDRs).
	Addrs []netip.Addr `json:"addrs"`
	// PortMappings are the pod's hostPorts (CNI's portMappings
	// capability): the daemon publishes them on the node for as long as
	// the attachment lives.
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	// Pod is the Kubernetes pod the attachment belongs to, from the
	// runtime's CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME); zero when the
	// runtime passes none. Metrics label the pod's port with it.
	Pod PodRef `json:"pod,omitzero"`
}

// PodRef names a Kubernetes pod.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// IsZero reports whether r names no pod.
func (r PodRef) IsZero() bool { return r == PodRef{} }

// String returns "namespace/name".
func (r PodRef) String() string { return r.Namespace + "/" + r.Name }

// Validate checks r as Kubernetes names: a namespace is a DNS label (1..63
// of a-z, 0-9, '-', alphanumeric at both ends), a pod name a DNS
// subdomain (1..253, labels joined by '.'). The zero PodRef is valid.
func (r PodRef) Validate() error {
	if r.IsZero() {
		return nil
	}
	if !dnsLabel(r.Namespace) {
		return fmt.Errorf("%w: pod namespace %.80q: want a DNS label (a-z, 0-9, '-', at most 63)", ErrBadRequest, r.Namespace)
	}
	if len(r.Name) > 253 || r.Name == "" {
		return fmt.Errorf("%w: pod name %.80q: want a DNS subdomain (at most 253)", ErrBadRequest, r.Name)
	}
	for _, l := range strings.Split(r.Name, ".") {
		if !dnsLabel(l) {
			return fmt.Errorf("%w: pod name %.80q: want a DNS subdomain (a-z, 0-9, '-', '.')", ErrBadRequest, r.Name)
		}
	}
	return nil
}

func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// PortMapping publishes a pod's port on the node's addresses (a
// hostPort), as CNI's runtimeConfig.portMappings entry says.
type PortMapping struct {
	HostPort      uint16 `json:"hostPort"`
	ContainerPort uint16 `json:"containerPort"`
	// Protocol is "tcp" or "udp".
	Protocol string `json:"protocol"`
	// HostIP is the node address to listen on; zero: all of them (of
	// each family the pod has an address of).
	HostIP netip.Addr `json:"hostIP,omitzero"`
}

// Validate checks the mapping's ports, protocol and address.
func (m PortMapping) Validate() error {
	if m.HostPort == 0 || m.ContainerPort == 0 {
		return fmt.Errorf("%w: port mapping %d->%d: ports must be non-zero", ErrBadRequest, m.HostPort, m.ContainerPort)
	}
	if m.Protocol != "tcp" && m.Protocol != "udp" {
		return fmt.Errorf("%w: port mapping %d->%d: protocol %q, want tcp or udp", ErrBadRequest, m.HostPort, m.ContainerPort, m.Protocol)
	}
	if h := m.HostIP; h.IsValid() && (h.Zone() != "" || h.Is4In6() || h.IsMulticast()) {
		return fmt.Errorf("%w: port mapping %d->%d: host IP %s", ErrBadRequest, m.HostPort, m.ContainerPort, h)
	}
	return nil
}

// Validate checks what the client can check without the daemon.
func (r *AttachRequest) Validate() error {
	if err := r.AttachmentID.Validate(); err != nil {
		return err
	}
	if !strings.HasPrefix(r.Netns, "/") {
		return fmt.Errorf("%w: netns %q: want an absolute path", ErrBadRequest, r.Netns)
	}
	if packet.MAC(r.MAC).IsMulticast() || r.MAC == (MAC{}) {
		return fmt.Errorf("%w: MAC %s: want a unicast address", ErrBadRequest, r.MAC)
	}
	if r.MTU < 68 || r.MTU > 65535 {
		return fmt.Errorf("%w: MTU %d out of range 68..65535", ErrBadRequest, r.MTU)
	}
	if len(r.Addrs) == 0 {
		return fmt.Errorf("%w: no addresses", ErrBadRequest)
	}
	for _, a := range r.Addrs {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("%w: address %s: want a plain IPv4 or IPv6 address", ErrBadRequest, a)
		}
	}
	for _, m := range r.PortMappings {
		if err := m.Validate(); err != nil {
			return err
		}
	}
	if err := r.Pod.Validate(); err != nil {
		return err
	}
	return nil
}

// Attachment is an attached pod interface, as the daemon keeps it.
type Attachment struct {
	AttachRequest
	// Port is the engine port's name; PortIndex its index (-1 while the
	// attachment is recorded but not attached, e.g. its re-attach failed).
	Port      string    `json:"port"`
	PortIndex int32     `json:"portIndex"`
	Created   time.Time `json:"created"`
}

// Status is the daemon's state.
type Status struct {
	// Ready is true once the engine, the uplink and every re-attachment
	// are up; attach requests before that fail with ErrNotReady.
	Ready bool `json:"ready"`
	// NotReady is why the daemon's /readyz fails now (routes not synced,
	// uplink down, API not serving, re-attaching, shutting down), empty
	// when it passes. It can be set while Ready is true: the uplink went
	// down after the start.
	NotReady string `json:"notReady,omitempty"`
	// Stale, in Kubernetes mode, says that the daemon runs on the cluster
	// state an earlier run persisted (its podCIDRs, peers), because the API
	// server did not answer at start; empty once a fresh peer snapshot is
	// applied. The daemon is ready meanwhile: its pods forward.
	Stale        string         `json:"stale,omitempty"`
	PID          int            `json:"pid"`
	Started      time.Time      `json:"started"`
	PodCIDRs     []netip.Prefix `json:"podCIDRs"`
	ClusterCIDRs []netip.Prefix `json:"clusterCIDRs"`
	Gateway      netip.Addr     `json:"gateway"`
	Gateway6     netip.Addr     `json:"gateway6,omitzero"`
	GatewayMAC   MAC            `json:"gatewayMAC"`
	// Uplink is the host-side TUN device's name.
	Uplink string `json:"uplink"`
	// MTU is the default pod MTU.
	MTU         int `json:"mtu"`
	Attachments int `json:"attachments"`
	// Reattached and ReattachFailed count the recorded attachments the
	// daemon re-opened at start; ReattachTime is how long that took.
	Reattached     int           `json:"reattached"`
	ReattachFailed int           `json:"reattachFailed"`
	ReattachTime   time.Duration `json:"reattachTime"`
	// Goroutines and FDs are the process's goroutine and open fd counts
	// (leak checks).
	Goroutines int `json:"goroutines"`
	FDs        int `json:"fds"`
	// EgressMode is how pods reach the outside: netstack, uplink or snat;
	// Egress, in netstack mode, the egress forwarder's counters, in snat
	// mode the engine's conntrack table's.
	EgressMode string  `json:"egressMode,omitempty"`
	Egress     *Egress `json:"egress,omitempty"`
	// NoMasquerade: masquerade is off (--ip-masq=false, net-conf's
	// masquerade: false): EgressMode is then uplink, whatever --egress
	// says, and pods leave with their own addresses.
	NoMasquerade bool `json:"noMasquerade,omitempty"`
	// Backend is the underlay backend (empty: none, a single node) and
	// Endpoint where peers send to; PublicKey, with the wireguard
	// backend, the node's WireGuard public key in base64 (what its Node
	// announces and its peers configure).
	Backend   string         `json:"backend,omitempty"`
	Endpoint  netip.AddrPort `json:"endpoint,omitzero"`
	PublicKey string         `json:"publicKey,omitempty"`
	// VNI and VTEPMAC, with the vxlan backend, are the node's VXLAN
	// network identifier and VTEP MAC: what its Node announces, and what a
	// static peer list elsewhere must give for this node (vtepMAC).
	VNI     uint32 `json:"vni,omitempty"`
	VTEPMAC MAC    `json:"vtepMAC,omitzero"`
	// Version and Commit are the daemon's build (router/version).
	Version string `json:"version,omitempty"`
	Commit  string `json:"commit,omitempty"`
}

// Route is one entry of the engine's table.
type Route struct {
	Prefix netip.Prefix `json:"prefix"`
	// Kind is the next hop's kind: local, egress, peer, unreachable,
	// blackhole.
	Kind string `json:"kind"`
	// Port is the next hop's port index (local, egress) or peer index
	// (peer); PortName names the port when there is one.
	Port     int32  `json:"port"`
	PortName string `json:"portName,omitempty"`
}

// Port is one engine port with its counters.
type Port struct {
	Index     int32             `json:"index"`
	Name      string            `json:"name"`
	Kind      string            `json:"kind"`
	L2        bool              `json:"l2"`
	MTU       int               `json:"mtu"`
	Addrs     []netip.Addr      `json:"addrs,omitempty"`
	RxPackets uint64            `json:"rxPackets"`
	RxBytes   uint64            `json:"rxBytes"`
	TxPackets uint64            `json:"txPackets"`
	TxBytes   uint64            `json:"txBytes"`
	Drops     map[string]uint64 `json:"drops,omitempty"` // by reason, non-zero only
	// Underlay is set on the ports of kind peer of a daemon with an
	// underlay (nil elsewhere, and from an older daemon): on a peer's
	// port, what the underlay counted for that peer; on the underlay's
	// receive port, its totals.
	Underlay *UnderlayCounters `json:"underlay,omitempty"`
}

// UnderlayCounters are the underlay's counters behind a peer port (see
// Port.Underlay). A peer's port counts nothing received (what the peer
// sends comes out of the receive port), so RxPackets and RxBytes here are
// where a peer's traffic to us shows.
type UnderlayCounters struct {
	// Peer is the node's name and Addr its underlay endpoint, on a peer's
	// port; on the receive port, Peer is empty and Addr is the local
	// endpoint.
	Peer string         `json:"peer,omitempty"`
	Addr netip.AddrPort `json:"addr,omitzero"`
	// RxPackets and RxBytes are the inner packets received (from the
	// peer) and delivered to the engine; TxPackets and TxBytes those
	// handed to the kernel (to the peer).
	RxPackets uint64 `json:"rxPackets"`
	RxBytes   uint64 `json:"rxBytes"`
	TxPackets uint64 `json:"txPackets"`
	TxBytes   uint64 `json:"txBytes"`
	// Drops are the underlay's drops by reason (underlay.DropReason's
	// names: foreign-source, wrong-vni, short, bad-checksum, ...),
	// non-zero only. On the receive port they are every drop of the
	// underlay, those of no peer included (unknown-sender, no-peer).
	Drops map[string]uint64 `json:"drops,omitempty"`
}

// Capture bounds.
const (
	// DefaultCaptureDuration bounds a capture that names neither a count
	// nor a duration.
	DefaultCaptureDuration = 10 * time.Second
	// MaxCaptureDuration is the longest capture, and the bound of one that
	// names only a count.
	MaxCaptureDuration = 10 * time.Minute
	// MaxCaptureCount is the most packets one capture may ask for.
	MaxCaptureCount = 10_000_000
	// MaxSnaplen is the most bytes kept of one packet (a whole 64 KiB
	// super-packet with its link header fits).
	MaxSnaplen = 262144
)

// CaptureRequest asks the daemon to capture a pod's traffic, both
// directions as its port sees them, into the pcap file whose descriptor
// travels with the request.
type CaptureRequest struct {
	// Pod names the port: its exact port name (a pod's is
	// "containerID/ifName"; the uplink's is its device name), a pod
	// address, or a container ID or a prefix of one that matches exactly
	// one attachment.
	Pod string `json:"pod"`
	// Count stops the capture after this many packets (0: no count).
	Count int `json:"count,omitempty"`
	// Duration stops the capture after this long. Normalize sets it when
	// it is zero: DefaultCaptureDuration without a Count, else
	// MaxCaptureDuration.
	Duration time.Duration `json:"duration,omitempty"`
	// Snaplen is the most bytes kept of each packet (0: MaxSnaplen).
	Snaplen int `json:"snaplen,omitempty"`
}

// Normalize fills in the default bound and checks every field; errors wrap
// ErrBadRequest and name the field.
func (r *CaptureRequest) Normalize() error {
	if r.Pod == "" {
		return fmt.Errorf("%w: capture: pod: empty", ErrBadRequest)
	}
	if len(r.Pod) > 1100 || strings.ContainsFunc(r.Pod, func(c rune) bool { return c < 0x21 || c == 0x7f }) {
		return fmt.Errorf("%w: capture: pod %.40q: want a port name, container ID or address", ErrBadRequest, r.Pod)
	}
	if r.Count < 0 || r.Count > MaxCaptureCount {
		return fmt.Errorf("%w: capture: count %d out of range 0..%d", ErrBadRequest, r.Count, MaxCaptureCount)
	}
	if r.Duration < 0 || r.Duration > MaxCaptureDuration {
		return fmt.Errorf("%w: capture: duration %v out of range 0..%v", ErrBadRequest, r.Duration, MaxCaptureDuration)
	}
	if r.Snaplen < 0 || r.Snaplen > MaxSnaplen {
		return fmt.Errorf("%w: capture: snaplen %d out of range 0..%d", ErrBadRequest, r.Snaplen, MaxSnaplen)
	}
	if r.Duration == 0 {
		r.Duration = DefaultCaptureDuration
		if r.Count > 0 {
			r.Duration = MaxCaptureDuration
		}
	}
	if r.Snaplen == 0 {
		r.Snaplen = MaxSnaplen
	}
	return nil
}

// CaptureStats reports a finished capture.
type CaptureStats struct {
	// Port is the captured port's name.
	Port string `json:"port"`
	// Captured packets were written to the file; Dropped ones crossed the
	// port while the writer was behind (the data path never waits for a
	// capture).
	Captured int    `json:"captured"`
	Dropped  uint64 `json:"dropped"`
}

// request is the wire form of a request.
type request struct {
	V       int             `json:"v"`
	Op      Op              `json:"op"`
	Attach  *AttachRequest  `json:"attach,omitempty"`
	ID      *AttachmentID   `json:"id,omitempty"`
	Capture *CaptureRequest `json:"capture,omitempty"`
	// Conntrack: OpConntrack's request (conntrack.go).
	Conntrack *ConntrackRequest `json:"conntrack,omitempty"`
	// Services: OpServices' request (services.go).
	Services *ServicesRequest `json:"services,omitempty"`
	// Policy: OpPolicy's request (policy.go).
	Policy *PolicyRequest `json:"policy,omitempty"`
}

// wireError is the wire form of an error.
type wireError struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// reply is the wire form of a reply: Error, or the field of the request's
// op.
type reply struct {
	V           int           `json:"v"`
	Error       *wireError    `json:"error,omitempty"`
	Attachment  *Attachment   `json:"attachment,omitempty"`
	Status      *Status       `json:"status,omitempty"`
	Routes      []Route       `json:"routes,omitempty"`
	Ports       []Port        `json:"ports,omitempty"`
	Attachments []Attachment  `json:"attachments,omitempty"`
	Capture     *CaptureStats `json:"capture,omitempty"`
	Conntrack   *Conntrack    `json:"conntrack,omitempty"`
	Services    *Services     `json:"services,omitempty"`
	Policy      *Policy       `json:"policy,omitempty"`
}
