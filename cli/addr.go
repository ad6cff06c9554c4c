package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Addresses: where a process listens and what it tells others.
//
// --host is an IP address or an interface name (eth0: that interface's address). A wildcard
// (0.0.0.0, ::) listens on every interface, and what the process then advertises (the
// scheduler's control address in gossip and to clients, a worker's data address, gossip's own
// address, the dashboard URL) cannot be the wildcard, which nobody can dial: it is the address
// of the interface the default route uses, or, without a default route, of the first
// interface that is up and not loopback. --advertise-host (an IP address or interface name)
// says which address to advertise instead: behind NAT, on a machine with several networks.

// hostHelp is --host's help, for a process listening with the ports named by what.
func hostHelp(what string) string {
	return "IP address or interface name (e.g. eth0) " + what + " listen on; 0.0.0.0 or :: listens on every interface and advertises the address of the interface the default route uses (see --advertise-host). Anything but loopback: use --token-file and TLS"
}

const (
	advertiseHelp = "IP address or interface name other machines reach this process at (default: --host, or for a wildcard --host the default route's interface); advertised in gossip, to clients and in the dashboard URL"
)

// hostAddr is where a process binds and the address it advertises.
type hostAddr struct {
	bind      string // IP address to listen on, maybe a wildcard
	advertise string // IP address others dial
	how       string // how advertise was chosen, for logs
}

// join returns the advertised address with port.
func (h hostAddr) join(port int) string { return net.JoinHostPort(h.advertise, strconv.Itoa(port)) }

// iface is what address selection needs to know of a network interface.
type iface struct {
	name     string
	up       bool
	loopback bool
	addrs    []netip.Addr
}

// netInfo is the machine's interfaces and default routes (sysNet; a fake in tests).
type netInfo interface {
	interfaces() ([]iface, error)
	// defaultRoute returns the interface of the IPv4 (v6 false) or IPv6 default route with
	// the lowest metric, or "" when there is none.
	defaultRoute(v6 bool) string
}

// resolveHost turns --host and --advertise-host into the address to bind and the one to
// advertise, from the machine's interfaces and routes.
func resolveHost(host, advertise string) (hostAddr, error) {
	return resolveHostWith(sysNet{}, host, advertise)
}

func resolveHostWith(ni netInfo, host, advertise string) (hostAddr, error) {
	if host == "" {
		host = "127.0.0.1"
	}
	var h hostAddr
	if ip, err := netip.ParseAddr(host); err == nil {
		h.bind = ip.String()
		if !ip.IsUnspecified() {
			h.advertise, h.how = h.bind, "--host"
		}
	} else {
		ip, err := ifaceAddr(ni, host)
		if err != nil {
			return h, fmt.Errorf("--host %s: %w", host, err)
		}
		h.bind, h.advertise, h.how = ip.String(), ip.String(), "interface "+host
	}
	if advertise != "" {
		ip, err := netip.ParseAddr(advertise)
		if err != nil {
			if ip, err = ifaceAddr(ni, advertise); err != nil {
				return h, fmt.Errorf("--advertise-host %s: %w", advertise, err)
			}
			h.advertise, h.how = ip.String(), "--advertise-host interface "+advertise
		} else {
			h.advertise, h.how = ip.String(), "--advertise-host"
		}
		if ip.IsUnspecified() {
			return h, fmt.Errorf("--advertise-host %s: a wildcard address cannot be dialled: give this machine's address or an interface name", advertise)
		}
	}
	if h.advertise == "" {
		ip, how, err := routableAddr(ni, netip.MustParseAddr(h.bind).Is6())
		if err != nil {
			return h, fmt.Errorf("--host %s listens on every interface, but there is no address to advertise: %w; give --advertise-host", host, err)
		}
		h.advertise, h.how = ip.String(), how
	}
	return h, nil
}

// ifaceAddr is the address of the interface named name: its first IPv4 address, else its
// first global IPv6 address (link-local addresses need a zone to be dialled, and are skipped).
func ifaceAddr(ni netInfo, name string) (netip.Addr, error) {
	ifs, err := ni.interfaces()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing network interfaces: %w", err)
	}
	i := slices.IndexFunc(ifs, func(f iface) bool { return f.name == name })
	if i < 0 {
		names := make([]string, len(ifs))
		for j, f := range ifs {
			names[j] = f.name
		}
		return netip.Addr{}, fmt.Errorf("neither an IP address nor an interface of this machine (interfaces: %s)", strings.Join(names, ", "))
	}
	if ip, ok := pickAddr(ifs[i], false); ok {
		return ip, nil
	}
	if ip, ok := pickAddr(ifs[i], true); ok {
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no usable IPv4 or global IPv6 address", name)
}

// pickAddr returns f's first IPv4 (v6 false) or IPv6 address that others can dial.
func pickAddr(f iface, v6 bool) (netip.Addr, bool) {
	for _, a := range f.addrs {
		a = a.Unmap()
		if a.Is4() == v6 || a.IsUnspecified() || a.IsLinkLocalUnicast() || a.IsMulticast() {
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

// routableAddr is the address a wildcard bind advertises: the address of the default route's
// interface, else of the first interface that is up and not loopback. A 0.0.0.0 bind takes
// IPv4 addresses only; a :: bind (which accepts both on Linux) prefers IPv4, then IPv6.
func routableAddr(ni netInfo, v6bind bool) (netip.Addr, string, error) {
	ifs, err := ni.interfaces()
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("listing network interfaces: %w", err)
	}
	families := []bool{false}
	if v6bind {
		families = append(families, true)
	}
	for _, v6 := range families {
		if name := ni.defaultRoute(v6); name != "" {
			if i := slices.IndexFunc(ifs, func(f iface) bool { return f.name == name }); i >= 0 && ifs[i].up {
				if ip, ok := pickAddr(ifs[i], v6); ok {
					return ip, "the default route's interface " + name, nil
				}
			}
		}
	}
	for _, v6 := range families {
		for _, f := range ifs {
			if !f.up || f.loopback {
				continue
			}
			if ip, ok := pickAddr(f, v6); ok {
				return ip, "interface " + f.name + " (no default route)", nil
			}
		}
	}
	return netip.Addr{}, "", errors.New("no default route and no interface up other than loopback has an address")
}

// checkAdvertised checks that addr (host:port), advertised as what, is one other machines could
// dial: not a wildcard, a valid port.
func checkAdvertised(what, addr string) error {
	if err := wire.CheckDialable(addr); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// sysNet reads this machine's interfaces (net.Interfaces) and default routes (/proc/net/route,
// /proc/net/ipv6_route; none where those do not exist).
type sysNet struct{}

func (sysNet) interfaces() ([]iface, error) {
	nifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]iface, 0, len(nifs))
	for _, n := range nifs {
		f := iface{name: n.Name, up: n.Flags&net.FlagUp != 0, loopback: n.Flags&net.FlagLoopback != 0}
		addrs, err := n.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					f.addrs = append(f.addrs, ip.Unmap())
				}
			}
		}
		out = append(out, f)
	}
	return out, nil
}

func (sysNet) defaultRoute(v6 bool) string {
	if v6 {
		f, err := os.Open("/proc/net/ipv6_route")
		if err != nil {
			return ""
		}
		defer f.Close()
		return parseRoutes(f, true)
	}
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return ""
	}
	defer f.Close()
	return parseRoutes(f, false)
}

// parseRoutes returns the interface of the default route with the lowest metric in the text
// of /proc/net/route ("Iface Destination Gateway Flags RefCnt Use Metric Mask ...", v6 false)
// or /proc/net/ipv6_route ("dest prefixlen src srcprefixlen nexthop metric refcnt use flags
// iface", hex). Routes that are not up, and IPv6 routes through loopback (the kernel's
// unreachable defaults), are skipped.
func parseRoutes(r io.Reader, v6 bool) string {
	sc := bufio.NewScanner(r)
	const rtfUp = 0x1
	best, bestMetric := "", uint64(1<<63)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var name, metric, flags string
		metricBase := 16
		if v6 {
			if len(f) < 10 || f[0] != strings.Repeat("0", 32) || f[1] != "00" {
				continue
			}
			name, metric, flags = f[9], f[5], f[8]
			if name == "lo" {
				continue
			}
		} else {
			if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
				continue
			}
			name, metric, flags, metricBase = f[0], f[6], f[3], 10
		}
		if parseUint(flags, 16)&rtfUp == 0 {
			continue
		}
		if m := parseUint(metric, metricBase); m < bestMetric {
			best, bestMetric = name, m
		}
	}
	return best
}

func parseUint(s string, base int) uint64 {
	v, _ := strconv.ParseUint(s, base, 64)
	return v
}

// portOf is the port of a host:port address (0 when it has none).
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}
