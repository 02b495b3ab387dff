//go:build !linux

package underlay

import (
	"net/netip"

	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/packet"
)

// The underlay needs sendmmsg, recvmmsg and UDP GSO/GRO: Linux only.

type socket struct{ local netip.AddrPort }

func openSocket(Config, *zap.Logger) (*socket, error) { return nil, ErrUnsupported }
func (s *socket) offloads() (gso, gro bool)           { return false, false }
func (s *socket) close() error                        { return nil }

func putSockaddr(b *[28]byte, ap netip.AddrPort) uint32 { return 0 }

type sendBatch struct{}

func newSendBatch(*Underlay) any { return &sendBatch{} }

func (b *sendBatch) send(*peerState, [][]byte, []packet.GSO, int) error { return link.ErrClosed }

type rxDevice struct{ link.GSODevice }

func newRxDevice(*Underlay) *rxDevice { return &rxDevice{} }
