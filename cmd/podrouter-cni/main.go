// Command podrouter-cni is podrouter's CNI plugin (spec 1.0.0 and 1.1.0):
// it gives a pod its eth0 (a TAP), an address from the node's podCIDR and
// routes via the gateway, and hands the TAP to the podrouter daemon. The
// logic lives in package cni.
package main

import "github.com/podrouter/podrouter/cni"

func main() { cni.Main(cni.Funcs()) }
