package cni

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podrouter/podrouter/router/api"
)

func TestParseConfErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conf  string
		code  uint
		field string // the message must name it
	}{
		{"not json", `{"cniVersion":`, types.ErrDecodingFailure, "decoding"},
		{"wrong type", `{"cniVersion":"1.0.0","name":"n","mtu":"big","ipam":{"type":"host-local"}}`, types.ErrDecodingFailure, "decoding"},
		{"no version", `{"name":"n","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "cniVersion"},
		{"no name", `{"cniVersion":"1.0.0","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "field name"},
		{"relative socket", `{"cniVersion":"1.0.0","name":"n","socket":"run/x.sock","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "field socket"},
		{"mtu", `{"cniVersion":"1.0.0","name":"n","mtu":100,"ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "field mtu"},
		{"no ipam", `{"cniVersion":"1.0.0","name":"n"}`, types.ErrInvalidNetworkConfig, "field ipam.type"},
		{"ipam dataDir", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","dataDir":"x"}}`, types.ErrInvalidNetworkConfig, "field ipam.dataDir"},
		{"mac", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"runtimeConfig":{"mac":"01:00:00:00:00:01"}}`, types.ErrInvalidNetworkConfig, "field runtimeConfig.mac"},
		{"port mapping sctp", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"sctp"}]}}`, types.ErrInvalidNetworkConfig, "field runtimeConfig.portMappings[0]"},
		{"port mapping port", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"tcp"},{"hostPort":70000,"containerPort":1}]}}`, types.ErrInvalidNetworkConfig, "field runtimeConfig.portMappings[1]"},
		{"port mapping host IP", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"hostIP":"node"}]}}`, types.ErrInvalidNetworkConfig, "field runtimeConfig.portMappings[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConf([]byte(tc.conf))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("err = %v, want a *types.Error", err)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg+te.Details, tc.field) {
				t.Fatalf("err = code %d %q, want code %d naming %q", te.Code, te.Error(), tc.code, tc.field)
			}
			// Every command reports the same error before touching
			// anything (no netns, no daemon needed).
			for name, f := range map[string]func(*skel.CmdArgs) error{"ADD": Add, "DEL": Del, "CHECK": Check, "STATUS": Status, "GC": GC} {
				err := f(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/none", StdinData: []byte(tc.conf)})
				if !errors.As(err, &te) || te.Code != tc.code {
					t.Errorf("%s: %v, want code %d", name, err, tc.code)
				}
			}
		})
	}
}

func TestParseConfDefaults(t *testing.T) {
	conf, ic, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"podrouter-cni","ipam":{"type":"host-local"},"runtimeConfig":{"mac":"0a:58:00:00:00:09"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != api.DefaultSocket || conf.MTU != 0 || ic.Type != "host-local" || conf.mac[5] != 9 {
		t.Fatalf("conf = %+v, ipam = %+v", conf, ic)
	}
}

func TestIPAMStdin(t *testing.T) {
	in := []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","dataDir":"/d"},"x":1}`)
	_, ic, err := ParseConf(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ipamStdin(in, ic, []netip.Prefix{netip.MustParsePrefix("10.250.3.0/24"), netip.MustParsePrefix("fd00:250:3::/64")})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		X    int `json:"x"`
		IPAM struct {
			DataDir string                `json:"dataDir"`
			Ranges  [][]map[string]string `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.X != 1 || got.IPAM.DataDir != "/d" || len(got.IPAM.Ranges) != 2 ||
		got.IPAM.Ranges[0][0]["subnet"] != "10.250.3.0/24" || got.IPAM.Ranges[0][0]["gateway"] != "10.250.3.1" ||
		got.IPAM.Ranges[1][0]["gateway"] != "fd00:250:3::1" {
		t.Fatalf("filled-in config: %s", out)
	}
	// An explicit subnet or ranges is left as it is.
	explicit := []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}}`)
	_, ic, _ = ParseConf(explicit)
	if out, _ := ipamStdin(explicit, ic, []netip.Prefix{netip.MustParsePrefix("10.250.3.0/24")}); string(out) != string(explicit) {
		t.Fatalf("explicit subnet rewritten: %s", out)
	}
	// No podCIDR known: a placeholder range, enough for a release.
	_, ic, _ = ParseConf(in)
	out, _ = ipamStdin(in, ic, nil)
	if !strings.Contains(string(out), "192.0.2.0/24") {
		t.Fatalf("placeholder range missing: %s", out)
	}
}

func TestPlan(t *testing.T) {
	st := api.Status{
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.250.3.0/24"), netip.MustParsePrefix("fd00:250:3::/64")},
		Gateway:  netip.MustParseAddr("10.250.3.1"), Gateway6: netip.MustParseAddr("fd00:250:3::1"), MTU: 1450,
	}
	parse := func(s string) *current.Result {
		r, err := current.NewResult([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	conf := &NetConf{}
	pi, addrs, err := plan(conf, "eth0", parse(`{"cniVersion":"1.0.0","ips":[{"address":"10.250.3.7/24","gateway":"10.250.3.1"},{"address":"fd00:250:3::7/64"}]}`), st)
	if err != nil {
		t.Fatal(err)
	}
	if pi.mtu != 1450 || pi.mac.String() != "0a:58:0a:fa:03:07" || len(addrs) != 2 || len(pi.routes) != 2 ||
		pi.routes[0].String() != "0.0.0.0/0" || pi.routes[1].String() != "::/0" {
		t.Fatalf("plan = %+v %v", pi, addrs)
	}
	for _, tc := range []struct{ name, res, want string }{
		{"outside", `{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.7/24"}]}`, "outside the node's podCIDRs"},
		{"two v4", `{"cniVersion":"1.0.0","ips":[{"address":"10.250.3.7/24"},{"address":"10.250.3.8/24"}]}`, "more than one IPv4"},
		{"gateway", `{"cniVersion":"1.0.0","ips":[{"address":"10.250.3.7/24","gateway":"10.250.3.254"}]}`, "gateway"},
		{"no v4", `{"cniVersion":"1.0.0","ips":[{"address":"fd00:250:3::7/64"}]}`, "no IPv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := plan(conf, "eth0", parse(tc.res), st)
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.want) {
				t.Fatalf("plan: %v, want code 7 with %q", err, tc.want)
			}
		})
	}
}

func TestStatusDaemonAbsent(t *testing.T) {
	conf := `{"cniVersion":"1.1.0","name":"n","socket":"` + t.TempDir() + `/absent.sock","ipam":{"type":"host-local"}}`
	err := Status(&skel.CmdArgs{StdinData: []byte(conf)})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without a daemon: %v, want code 50", err)
	}
	err = Add(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/none", StdinData: []byte(conf)})
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD without a daemon: %v, want code 11", err)
	}
}

// TestParsePortMappings: the runtime's portMappings become the attach
// request's, protocol lower-cased (default tcp), an unspecified host IP
// meaning all addresses.
func TestParsePortMappings(t *testing.T) {
	conf, _, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"podrouter-cni","ipam":{"type":"host-local"},
		"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},
		{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.1"},
		{"hostPort":9000,"containerPort":9000,"hostIP":"0.0.0.0"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []api.PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 5353, ContainerPort: 53, Protocol: "udp", HostIP: netip.MustParseAddr("192.0.2.1")},
		{HostPort: 9000, ContainerPort: 9000, Protocol: "tcp"},
	}
	if len(conf.portMappings) != len(want) {
		t.Fatalf("mappings %+v", conf.portMappings)
	}
	for i := range want {
		if conf.portMappings[i] != want[i] {
			t.Errorf("mapping %d: %+v, want %+v", i, conf.portMappings[i], want[i])
		}
	}
}

func TestPodFromArgs(t *testing.T) {
	for _, tc := range []struct {
		name, args string
		want       api.PodRef
		err        string
	}{
		{"kubelet", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f.x;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u", api.PodRef{Namespace: "shop", Name: "cart-7d9f.x"}, ""},
		{"none", "", api.PodRef{}, ""},
		{"other runtime", "FOO=bar", api.PodRef{}, ""},
		{"namespace only", "K8S_POD_NAMESPACE=shop", api.PodRef{}, ""},
		{"bad namespace", "K8S_POD_NAMESPACE=Shop_1;K8S_POD_NAME=a", api.PodRef{}, `pod namespace "Shop_1"`},
		{"bad name", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a..b", api.PodRef{}, `pod name "a..b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodFromArgs(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("PodFromArgs = %v, %v; want an error naming %s", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PodFromArgs = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
