//go:build !linux

package lab

import (
	"errors"

	"go.uber.org/zap"
)

// ErrPrivileges means netns pods cannot be built here.
var ErrPrivileges = errors.New("netns pods need Linux")

type netnsEnv struct{}

func newNetnsEnv(*zap.Logger) (*netnsEnv, error) { return nil, ErrPrivileges }

func (e *netnsEnv) close() error { return nil }

func (e *netnsEnv) newPod(*Node, podSpec) (Pod, error) { return nil, ErrPrivileges }
