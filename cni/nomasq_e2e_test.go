package cni_test

// End-to-end masquerade off (root): the real daemon started with
// --ip-masq=false (flannel's flag; net-conf's masquerade: false in
// Kubernetes mode), once with the default netstack egress and once with
// --egress snat, in a node netns that forwards, pods attached by the real
// CNI plugin, and the "outside" netns (newOutside) that routes the node's
// podCIDR back to the node, as a network must for flannel with
// --ip-masq=false. The outside must see the pods' own addresses, never the
// node's or the SNAT address.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
)

func TestNoMasqueradeEgress(t *testing.T) {
	for _, mode := range []string{"netstack", "snat"} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			nstestRequireTcpdump(t)
			o := newOutside(t, n)
			snat := fmt.Sprintf("10.249.%d.7", 1+rand.IntN(250))
			flags := []string{"--ip-masq=false"}
			if mode == "snat" {
				flags = append(flags, "--egress", "snat", "--snat-addr", snat)
			}
			n.ns.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
			o.ns.Run(t, "ip", "route", "add", n.podCIDR.String(), "via", o.nodeIP.String())
			n.startDaemon(flags...)
			a := n.addPod()
			capture := startCapture(t, o, fmt.Sprintf("ip and (src net %s or src host %s or src host %s)", n.podCIDR, o.nodeIP, snat))
			o.serveEcho(t)

			body := httpGet(t, a.ns, fmt.Sprintf("http://%s:8080/", o.addr))
			host, _, err := net.SplitHostPort(strings.TrimPrefix(body, "you are "))
			if err != nil || host != a.ip.String() {
				t.Fatalf("the outside saw %q, want the pod's own address %s", body, a.ip)
			}
			_, pc := listen(t, a.ns, "udp4", ":0")
			defer pc.Close()
			for i := range 3 {
				o.udpEcho(t, pc, i, a.ip)
			}
			ping(t, a.ns, o.addr)

			st, err := n.client().Status(context.Background())
			if err != nil || st.EgressMode != "uplink" || !st.NoMasquerade || st.Egress != nil {
				t.Fatalf("status: egress %q, noMasquerade %v, stats %+v, %v; want uplink, masquerade off, no table", st.EgressMode, st.NoMasquerade, st.Egress, err)
			}
			if logs := n.logText(); !strings.Contains(logs, "masquerade off") {
				t.Errorf("the daemon did not log masquerade off:\n%s", logs)
			}

			lines := capture()
			fromPod := 0
			for _, l := range lines {
				switch {
				case strings.TrimSpace(l) == "":
				case strings.Contains(l, " "+a.ip.String()+".") || strings.Contains(l, " "+a.ip.String()+" "):
					fromPod++
				default:
					t.Errorf("the outside received a packet not from the pod's address: %s", l)
				}
			}
			if fromPod == 0 {
				t.Fatalf("the capture saw nothing from the pod %s:\n%s", a.ip, strings.Join(lines, "\n"))
			}
			t.Logf("the outside received %d packets, all from the pod's address %s", fromPod, a.ip)
		})
	}
}
