package underlay_test

// Kernel interop (privileged): a podrouter node whose vxlan underlay socket
// lives in netns "nodeA", joined by a veth to netns "nodeB", where a Linux
// vxlan device, a bridge and a pod namespace are set up exactly as
// flannel's vxlan backend and the bridge CNI plugin set them up:
//
//	nodeA (podrouter, 10.244.1.0/24)          nodeB (Linux, 10.244.2.0/24)
//	  virtual pod 10.244.1.2                    pod netns: eth0 10.244.2.2
//	  engine ─ underlay 192.168.250.1:8472        │ veth ─ cni0 10.244.2.1
//	            │                                 flannel.1 (vxlan id 1, 8472,
//	            └──── veth0 ═══════════ veth0 ───  nolearning, static FDB/neigh)
//	                  192.168.250.1      192.168.250.2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/podrouter/podrouter/netstackx"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/nstest"
	"github.com/podrouter/podrouter/router/packet"
	"github.com/podrouter/podrouter/router/route"
	"github.com/podrouter/podrouter/router/underlay"
)

var (
	underA   = netip.MustParseAddr("192.168.250.1")
	underB   = netip.MustParseAddr("192.168.250.2")
	underX   = netip.MustParseAddr("192.168.250.3") // a stranger on the underlay
	cidrA    = netip.MustParsePrefix("10.244.1.0/24")
	cidrB    = netip.MustParsePrefix("10.244.2.0/24")
	vpodAddr = netip.MustParseAddr("10.244.1.2")
	kpodAddr = netip.MustParseAddr("10.244.2.2")
)

type interop struct {
	nodeA, nodeB, kpod *nstest.NS
	u                  *underlay.Underlay
	pod                *netstackx.Pod
	flannelMAC         packet.MAC
}

func setupInterop(t *testing.T) *interop {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "bridge", "ping", "ethtool")
	x := &interop{nodeA: nstest.New(t), nodeB: nstest.New(t), kpod: nstest.New(t)}
	a, b, p := x.nodeA, x.nodeB, x.kpod

	// The underlay link.
	b.Run(t, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", a.Name)
	a.Run(t, "ip", "addr", "add", underA.String()+"/24", "dev", "veth0")
	a.Run(t, "ip", "link", "set", "veth0", "up")
	b.Run(t, "ip", "addr", "add", underB.String()+"/24", "dev", "veth0")
	b.Run(t, "ip", "addr", "add", underX.String()+"/24", "dev", "veth0")
	b.Run(t, "ip", "link", "set", "veth0", "up")
	// A veth hands checksum offload on to its peer: the kernel's packets
	// would reach podrouter's UDP socket with partial inner checksums that
	// no NIC ever completed. A physical uplink computes them; here nodeB's
	// kernel must, in software.
	b.Run(t, "ethtool", "-K", "veth0", "tx", "off")

	// nodeB: flannel's vxlan backend, the bridge CNI plugin, one pod.
	b.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	b.Run(t, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", underB.String(), "dstport", "8472", "nolearning", "dev", "veth0")
	b.Run(t, "ip", "link", "set", "flannel.1", "mtu", "1450", "up")
	b.Run(t, "ip", "addr", "add", "10.244.2.0/32", "dev", "flannel.1")
	b.Run(t, "ip", "link", "add", "cni0", "type", "bridge")
	b.Run(t, "ip", "addr", "add", "10.244.2.1/24", "dev", "cni0")
	b.Run(t, "ip", "link", "set", "cni0", "mtu", "1450", "up")
	b.Run(t, "ip", "link", "add", "vethpod", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", p.Name)
	b.Run(t, "ip", "link", "set", "vethpod", "master", "cni0", "up")
	p.Run(t, "ip", "addr", "add", kpodAddr.String()+"/24", "dev", "eth0")
	p.Run(t, "ip", "link", "set", "eth0", "mtu", "1450", "up")
	p.Run(t, "ip", "route", "add", "default", "via", "10.244.2.1")
	mac, err := net.ParseMAC(strings.TrimSpace(b.Run(t, "cat", "/sys/class/net/flannel.1/address")))
	if err != nil {
		t.Fatal(err)
	}
	x.flannelMAC = packet.MAC(mac)

	// nodeA: podrouter. Its underlay socket is opened inside nodeA.
	log := zaptest.NewLogger(t)
	if err := a.Do(func() (err error) {
		x.u, err = underlay.New(underlay.Config{
			Encap: underlay.EncapVXLAN, Listen: netip.AddrPortFrom(underA, underlay.DefaultVXLANPort),
			Interface: "veth0", Logger: log,
		})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = x.u.Close() })
	if x.u.MTU() != 1450 {
		t.Fatalf("MTU from veth0: %d, want 1450", x.u.MTU())
	}
	eng, err := engine.New(engine.Config{PodCIDR: cidrA, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close() })
	if _, err := eng.AddPort(x.u.RxDevice(), engine.PortConfig{Name: "underlay", Kind: engine.KindPeer, MTU: x.u.MTU()}); err != nil {
		t.Fatal(err)
	}
	if err := x.u.SetPeers([]underlay.Peer{{Name: "nodeB", Addr: netip.AddrPortFrom(underB, 8472), AnySourcePort: true, VTEPMAC: x.flannelMAC, PodCIDRs: []netip.Prefix{cidrB}}}); err != nil {
		t.Fatal(err)
	}
	peer, err := eng.AddPort(x.u.PeerDevice("nodeB"), engine.PortConfig{Name: "peer-nodeB", Kind: engine.KindPeer, MTU: x.u.MTU()})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.SetRoutes([]route.Route{{Prefix: cidrB, NextHop: route.ToPeer(peer.Index())}}); err != nil {
		t.Fatal(err)
	}
	x.pod, err = netstackx.NewPod(netstackx.PodConfig{Name: "vpod", Addr: netip.PrefixFrom(vpodAddr, 24), Gateway: eng.Gateway(), MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = x.pod.Close() })
	if _, err := eng.AddPort(x.pod.Device(), engine.PortConfig{Name: "vpod", Kind: engine.KindPod, L2: true, PeerMAC: packet.MAC(x.pod.MAC()), MTU: 1450, Addrs: []netip.Addr{vpodAddr}}); err != nil {
		t.Fatal(err)
	}

	// nodeB learns podrouter's VTEP as flannel would from the Node
	// annotations: FDB entry, permanent neighbour, onlink route.
	vtep := x.u.VTEPMAC().String()
	b.Run(t, "bridge", "fdb", "append", vtep, "dev", "flannel.1", "dst", underA.String())
	b.Run(t, "ip", "neigh", "replace", "10.244.1.0", "lladdr", vtep, "dev", "flannel.1", "nud", "permanent")
	b.Run(t, "ip", "route", "add", cidrA.String(), "via", "10.244.1.0", "dev", "flannel.1", "onlink")
	return x
}

// exchange writes a message on c and expects it back (an echo server).
func exchange(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	want := bytes.Repeat([]byte("podrouter<->flannel "), 5000) // 100 kB: full-sized segments both ways
	go func() { _, _ = c.Write(want) }()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo differs")
	}
}

// echoServer accepts one connection, reports its remote address and
// echoes.
func echoServer(ln net.Listener) <-chan netip.Addr {
	ch := make(chan netip.Addr, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		defer c.Close()
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		ch <- ap.Addr().Unmap()
		_, _ = io.Copy(c, c)
	}()
	return ch
}

func TestKernelVXLANInterop(t *testing.T) {
	x := setupInterop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("ping podrouter to kernel", func(t *testing.T) {
		if _, err := x.pod.Ping(ctx, kpodAddr, 56); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ping kernel to podrouter", func(t *testing.T) {
		x.kpod.Run(t, "ping", "-c", "2", "-i", "0.2", "-W", "5", vpodAddr.String())
	})
	t.Run("tcp kernel to podrouter", func(t *testing.T) {
		ln, err := x.pod.ListenTCP(8080)
		if err != nil {
			t.Fatal(err)
		}
		from := echoServer(ln)
		var c net.Conn
		if err := x.kpod.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(vpodAddr, 8080).String(), 10*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c)
		if a := <-from; a != kpodAddr {
			t.Errorf("podrouter's pod sees the connection from %s, want %s (no NAT)", a, kpodAddr)
		}
	})
	t.Run("tcp podrouter to kernel", func(t *testing.T) {
		var ln net.Listener
		if err := x.kpod.Do(func() (err error) {
			ln, err = net.Listen("tcp4", ":8081")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		from := echoServer(ln)
		c, err := x.pod.DialTCP(ctx, netip.AddrPortFrom(kpodAddr, 8081))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c)
		if a := <-from; a != vpodAddr {
			t.Errorf("the kernel pod sees the connection from %s, want %s (no NAT)", a, vpodAddr)
		}
	})
	st := x.u.Stats()
	if st.RxPackets == 0 || st.TxPackets == 0 || st.TotalDrops() != 0 {
		t.Errorf("underlay stats %+v", st)
	}

	t.Run("unknown source not delivered", func(t *testing.T) {
		uc, err := x.pod.ListenUDP(9999)
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		frame := x.vxlanFrame(t, kpodAddr, []byte("injected"))
		before := x.u.Stats().Drops[underlay.DropUnknownSender]
		x.inject(t, underX, frame)
		deadline := time.Now().Add(5 * time.Second)
		for x.u.Stats().Drops[underlay.DropUnknownSender] == before {
			if time.Now().After(deadline) {
				t.Fatal("the stranger's datagram was not counted as unknown-sender")
			}
			time.Sleep(5 * time.Millisecond)
		}
		_ = uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 100)
		if n, _, err := uc.ReadFrom(buf); err == nil {
			t.Fatalf("delivered from an unknown underlay address: %q", buf[:n])
		}
		// The same datagram from the peer's address is delivered: the
		// drop above was the source check.
		x.inject(t, underB, frame)
		_ = uc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := uc.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "injected" {
			t.Fatalf("from the peer's address: %q, %v", buf[:n], err)
		}
	})

	t.Run("foreign inner source not delivered", func(t *testing.T) {
		uc, err := x.pod.ListenUDP(9999)
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		// The peer's endpoint, sending as a pod of ours (a spoof a peer
		// must not get through) and as a pod of a third node.
		for i, src := range []netip.Addr{netip.MustParseAddr("10.244.1.99"), netip.MustParseAddr("10.244.3.2")} {
			x.inject(t, underB, x.vxlanFrame(t, src, []byte("spoofed")))
			deadline := time.Now().Add(5 * time.Second)
			for {
				ps, _ := x.u.PeerStats("nodeB")
				if ps.Drops[underlay.DropForeignSource] == uint64(i+1) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("inner source %s: peer drops %v, want %d foreign-source", src, ps.Drops, i+1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		_ = uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 100)
		if n, _, err := uc.ReadFrom(buf); err == nil {
			t.Fatalf("delivered a foreign inner source: %q", buf[:n])
		}
	})
}

// vxlanFrame builds a VXLAN datagram from src (the kernel pod's address,
// or a spoofed one) to the virtual pod's UDP port 9999.
func (x *interop) vxlanFrame(t *testing.T, src netip.Addr, payload []byte) []byte {
	ip := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	h := header.IPv4(ip)
	h.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(ip)), TTL: 63, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(vpodAddr.As4()),
	})
	h.SetChecksum(^h.CalculateChecksum())
	u := header.UDP(ip[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: 5555, DstPort: 9999, Length: uint16(header.UDPMinimumSize + len(payload))})
	copy(u.Payload(), payload) // checksum 0: none, as IPv4 allows
	frame := make([]byte, underlay.VXLANLen+packet.EthernetLen, underlay.VXLANLen+packet.EthernetLen+len(ip))
	underlay.PutVXLAN(frame, 1)
	packet.Ethernet(frame[underlay.VXLANLen:]).Encode(x.u.VTEPMAC(), x.flannelMAC, packet.EtherTypeIPv4)
	return append(frame, ip...)
}

// inject sends a datagram to podrouter's underlay from nodeB, from a
// socket bound to src.
func (x *interop) inject(t *testing.T, src netip.Addr, frame []byte) {
	t.Helper()
	if err := x.nodeB.Do(func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDPAddrPort(frame, x.u.LocalAddr())
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
