//go:build !linux

package api

import "errors"

// peerCredUID is unsupported off Linux: every peer is refused.
func peerCredUID(int) (uint32, error) {
	return ^uint32(0), errors.New("api: peer credentials need Linux")
}
