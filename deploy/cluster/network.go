package cluster

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/podrouter/podrouter/router/tempns"
)

// underlayBase is where the underlay /24s are picked from (one per
// cluster, 172.29.K.0/24 with K random among those no host address uses).
var underlayBase = netip.MustParsePrefix("172.29.0.0/16")

// ipCmd runs ip with args.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// underlay picks the cluster's /24 and creates its bridge, with the
// control plane's address (.254) on it.
func (c *Cluster) underlay(st *state) error {
	used := map[byte]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && underlayBase.Contains(p.Addr()) {
				used[p.Addr().As4()[2]] = true
			}
		}
	}
	var k byte
	for range 64 {
		var b [1]byte
		_, _ = rand.Read(b[:])
		if b[0] != 0 && b[0] != 255 && !used[b[0]] {
			k = b[0]
			break
		}
	}
	if k == 0 {
		return fmt.Errorf("cluster: no free /24 in %s", underlayBase)
	}
	c.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 29, k, 0}), 24)
	if err := ipCmd("link", "add", st.Bridge, "type", "bridge"); err != nil {
		st.Bridge = "" // not ours: nothing to delete
		return err
	}
	if err := c.saveState(st); err != nil {
		return err
	}
	if err := ipCmd("addr", "add", c.hostAddr().String()+"/24", "dev", st.Bridge); err != nil {
		return err
	}
	return ipCmd("link", "set", st.Bridge, "up")
}

// hostAddr is the control plane's address on the underlay (.254).
func (c *Cluster) hostAddr() netip.Addr { return c.nodeAddr(254) }

// nodeAddr is node i's underlay address.
func (c *Cluster) nodeAddr(i int) netip.Addr {
	a := c.Prefix.Addr().As4()
	a[3] = byte(i)
	return netip.AddrFrom4(a)
}

// nodeNetwork creates node i's network namespace and its veth onto the
// bridge (eth0 inside, with the node's address; no default route).
func (c *Cluster) nodeNetwork(st *state, i int) (netns string, err error) {
	netns = fmt.Sprintf("podrc%s-n%d", c.ID, i)
	if err := ipCmd("netns", "add", netns); err != nil {
		return "", err
	}
	st.Netns = append(st.Netns, netns)
	hostSide := fmt.Sprintf("pr%sn%d", c.ID, i)
	peer := fmt.Sprintf("pr%sp%d", c.ID, i)
	if err := ipCmd("link", "add", hostSide, "type", "veth", "peer", "name", peer); err != nil {
		return netns, err
	}
	st.Veths = append(st.Veths, hostSide)
	if err := c.saveState(st); err != nil {
		return netns, err
	}
	for _, args := range [][]string{
		{"link", "set", hostSide, "master", st.Bridge},
		{"link", "set", hostSide, "up"},
		{"link", "set", peer, "netns", netns},
		{"-n", netns, "link", "set", peer, "name", "eth0"},
		{"-n", netns, "addr", "add", c.nodeAddr(i).String() + "/24", "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return netns, err
		}
	}
	return netns, nil
}

// deleteNetns removes a node's namespace and whatever still runs in it.
func deleteNetns(name string) error { return tempns.Remove(name) }
