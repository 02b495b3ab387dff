// Command etcd is the etcd server (go.etcd.io/etcd/server/v3 etcdmain),
// built from the Go module proxy for the Kubernetes-mode tests: Debian's
// etcd 3.4 package breaks plain watches from a current kube-apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
