//go:build !linux

package kubetest

import "syscall"

// sysProcAttr puts the child in its own process group; without Pdeathsig
// only t.Cleanup stops it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
