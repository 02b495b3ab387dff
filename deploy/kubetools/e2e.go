//go:build tools

// Package kubetools pins the Kubernetes e2e suite (k8s.io/kubernetes/test/e2e)
// so that `go test -c k8s.io/kubernetes/test/e2e` builds e2e.test from this
// module for `make conformance`.
package kubetools

import (
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/e2e/network"
)
