package kubetest

import "syscall"

// sysProcAttr puts the child in its own process group and has the kernel
// kill it when the test binary dies (Pdeathsig), so that a test binary
// killed by a timeout or a signal leaves no etcd or kube-apiserver behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
