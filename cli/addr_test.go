package cli

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type fakeNet struct {
	ifs        []iface
	def4, def6 string
}

func (f fakeNet) interfaces() ([]iface, error) { return f.ifs, nil }
func (f fakeNet) defaultRoute(v6 bool) string {
	if v6 {
		return f.def6
	}
	return f.def4
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// a machine with loopback, a management interface (first in order) and a data interface that
// carries the default route
var machine = fakeNet{
	ifs: []iface{
		{name: "lo", up: true, loopback: true, addrs: addrs("127.0.0.1", "::1")},
		{name: "mgmt0", up: true, addrs: addrs("fe80::1", "10.0.0.5")},
		{name: "eth0", up: true, addrs: addrs("fe80::2", "2001:db8::7", "198.18.0.2")},
		{name: "down0", up: false, addrs: addrs("192.0.2.9")},
		{name: "v6only", up: true, addrs: addrs("fe80::3", "2001:db8::9")},
	},
	def4: "eth0",
	def6: "v6only",
}

func TestResolveHost(t *testing.T) {
	noRoute := machine
	noRoute.def4, noRoute.def6 = "", ""
	for _, tc := range []struct {
		name              string
		ni                fakeNet
		host, adv         string
		bind, advertise   string
		howContains, errs string
	}{
		{name: "default loopback", ni: machine, host: "", bind: "127.0.0.1", advertise: "127.0.0.1"},
		{name: "an IP is advertised as is", ni: machine, host: "10.0.0.5", bind: "10.0.0.5", advertise: "10.0.0.5"},
		{name: "0.0.0.0 advertises the default route's interface", ni: machine, host: "0.0.0.0", bind: "0.0.0.0", advertise: "198.18.0.2", howContains: "default route"},
		{name: ":: prefers the IPv4 default route", ni: machine, host: "::", bind: "::", advertise: "198.18.0.2"},
		{name: "without a default route: first up non-loopback interface", ni: noRoute, host: "0.0.0.0", bind: "0.0.0.0", advertise: "10.0.0.5", howContains: "mgmt0"},
		{name: "--advertise-host wins over the default route", ni: machine, host: "0.0.0.0", adv: "10.0.0.5", bind: "0.0.0.0", advertise: "10.0.0.5"},
		{name: "--advertise-host takes an interface name", ni: machine, host: "0.0.0.0", adv: "mgmt0", bind: "0.0.0.0", advertise: "10.0.0.5"},
		{name: "--host takes an interface name: its IPv4", ni: machine, host: "eth0", bind: "198.18.0.2", advertise: "198.18.0.2"},
		{name: "an interface with only IPv6 gives its global address", ni: machine, host: "v6only", bind: "2001:db8::9", advertise: "2001:db8::9"},
		{name: "a wildcard advertise is refused", ni: machine, host: "0.0.0.0", adv: "0.0.0.0", errs: "--advertise-host 0.0.0.0: a wildcard"},
		{name: "an unknown name lists the interfaces", ni: machine, host: "eth9", errs: "--host eth9: neither an IP address nor an interface of this machine (interfaces: lo, mgmt0, eth0, down0, v6only)"},
		{name: "an unknown advertise name", ni: machine, host: "0.0.0.0", adv: "nope", errs: "--advertise-host nope: neither"},
		{name: "nothing routable", ni: fakeNet{ifs: machine.ifs[:1]}, host: "0.0.0.0", errs: "--host 0.0.0.0 listens on every interface, but there is no address to advertise"},
		{name: "the IPv6 default route serves a :: bind when no IPv4 one exists", ni: fakeNet{ifs: []iface{machine.ifs[0], machine.ifs[4]}, def6: "v6only"}, host: "::", bind: "::", advertise: "2001:db8::9"},
		{name: "0.0.0.0 never advertises IPv6", ni: fakeNet{ifs: []iface{machine.ifs[0], machine.ifs[4]}, def6: "v6only"}, host: "0.0.0.0", errs: "no address to advertise"},
		{name: "a down default-route interface is skipped", ni: fakeNet{ifs: machine.ifs, def4: "down0"}, host: "0.0.0.0", bind: "0.0.0.0", advertise: "10.0.0.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := resolveHostWith(tc.ni, tc.host, tc.adv)
			if tc.errs != "" {
				require.ErrorContains(t, err, tc.errs)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.bind, h.bind)
			require.Equal(t, tc.advertise, h.advertise)
			require.Contains(t, h.how, tc.howContains)
			require.NoError(t, checkAdvertised("x", h.join(8786)))
		})
	}
}

func TestParseRoutes(t *testing.T) {
	v4 := `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
wlan0	00000000	0101A8C0	0003	0	0	600	00000000	0	0	0
eth0	00000000	010200C0	0003	0	0	100	00000000	0	0	0
tun0	00000000	00000000	0000	0	0	1	00000000	0	0	0
eth0	000200C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
`
	require.Equal(t, "eth0", parseRoutes(strings.NewReader(v4), false), "lowest metric among default routes that are up")
	require.Equal(t, "", parseRoutes(strings.NewReader(v4[:strings.Index(v4, "\n")+1]), false))
	v6 := `fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth1
`
	require.Equal(t, "eth1", parseRoutes(strings.NewReader(v6), true), "the loopback unreachable default is not a route")
}

func TestCheckAdvertised(t *testing.T) {
	require.ErrorContains(t, checkAdvertised("the scheduler's control address", "[::]:8786"), "the scheduler's control address: \"[::]:8786\" is a wildcard")
	require.ErrorContains(t, checkAdvertised("data", "198.18.0.2:0"), "no valid port")
	require.NoError(t, checkAdvertised("data", "198.18.0.2:4000"))
}
