// Package testhost builds small networks of test hosts on one Linux machine for tests that
// need several machines: each host is a network, UTS and PID namespace with its own address,
// hostname and process tree, and the hosts are joined by a bridge in the root namespace.
//
// Use it from any _test.go:
//
//	c := testhost.New(t, 3)                  // skips the test when not root or tools are missing
//	p := c.Hosts[0].Start(ctx, "sched", []string{bin, "scheduler", "--host", "0.0.0.0"}, nil)
//	m := p.WaitOutput(ctx, regexp.MustCompile(`scheduler at (\S+)`))
//	c.Hosts[1].Cut()                         // the host's link goes down: no traffic in or out
//	c.Hosts[1].Restore()
//
// Addresses come from 198.18.0.0/15 (RFC 2544, benchmark testing): every cluster takes one
// free /24 of it, hosts get .1, .2, ... and the bridge .254, so the test process itself (in
// the root namespace) reaches every host at Host.IP. The hosts have no default route and the
// root namespace is not asked to forward: nothing they send can leave for another address.
//
// Everything a cluster creates is named sh-<pid>-<n>... (pid and n in base 36, interface names
// at most 15 bytes) and removed by Cleanup, which New registers with t.Cleanup, so it runs when
// the test fails or panics too. A run that was killed before it could clean up leaves
// namespaces and links named after a process that no longer exists: New removes those.
//
// A host's processes are started by a goroutine locked to an OS thread that has entered the
// host's network namespace and created its UTS and PID namespaces, so they are direct children
// of the test process (Proc.Kill kills the process itself, not a wrapper). Each host's PID
// namespace has an init process that dies with the test process (parent-death signal), even
// when that is killed, and takes every process of the host with it.
package testhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Cluster is a set of test hosts on one bridge.
type Cluster struct {
	// Hosts are the test hosts, named host1, host2, ...
	Hosts []*Host
	// Bridge is the bridge's interface name (root namespace).
	Bridge string
	// GatewayIP is the bridge's own address: the test process's address as the hosts see it.
	GatewayIP string
	// Subnet is the cluster's /24, e.g. "198.18.7.0/24".
	Subnet string

	t       testing.TB
	base    string
	cleaned sync.Once
}

// Host is one test host.
type Host struct {
	// Name is the host's hostname (host1, host2, ...).
	Name string
	// NetNS is the name of its network namespace (ip netns).
	NetNS string
	// Veth is the root-namespace end of its link to the bridge (the host's end is eth0).
	Veth string
	// IP is the host's IPv4 address on eth0.
	IP string

	c    *Cluster
	reqs chan func()
	quit chan struct{}
	init *exec.Cmd // pid 1 of the host's PID namespace; killing it kills every process there

	mu    sync.Mutex
	procs []*Proc
}

// The address range test hosts take their /24s from (RFC 2544).
var testRange = netip4(198, 18, 0, 0)

const subnets = 512 // /24s in 198.18.0.0/15

// counter numbers the clusters of this process.
var counter atomic.Int64

// namePrefix starts every name this package gives a namespace or link.
const namePrefix = "sh-"

// staleName matches this package's names: sh-<pid base 36>-<n base 36> then b (bridge),
// v<i> (veth) or h<i> (namespace).
var staleName = regexp.MustCompile(`^sh-([0-9a-z]+)-([0-9a-z]+)[bvh][0-9]*$`)

// New builds n test hosts and registers their removal with t.Cleanup. It skips the test,
// saying why, when the process is not root, when ip(8) is missing, or when the kernel refuses
// to create a network namespace (a container without CAP_SYS_ADMIN or CAP_NET_ADMIN). It
// fails the test when anything else goes wrong. Call it from the test's goroutine.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("testhost: test hosts need Linux namespaces (this is %s)", runtime.GOOS)
	}
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("testhost: test hosts need root to create network namespaces and links (running as uid %d)", uid)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("testhost: test hosts need ip(8) from iproute2: %v", err)
	}
	for _, tool := range []string{"setpriv", "sleep"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("testhost: test hosts need %s (util-linux, coreutils) for each host's init process: %v", tool, err)
		}
	}
	if n < 1 || n > 250 {
		t.Fatalf("testhost: %d hosts: want 1 to 250", n)
	}
	removeStale(t)
	c := &Cluster{t: t, base: fmt.Sprintf("%s%s-%s", namePrefix, strconv.FormatInt(int64(os.Getpid()), 36),
		strconv.FormatInt(counter.Add(1)-1, 36))}
	c.Bridge = c.base + "b"
	if len(c.base)+1+len(strconv.Itoa(n)) > 15 {
		t.Fatalf("testhost: interface names from %q would exceed 15 bytes", c.base)
	}
	t.Cleanup(c.Cleanup)
	if err := ipCmd("link", "add", c.Bridge, "type", "bridge"); err != nil {
		if isPermission(err) {
			t.Skipf("testhost: the kernel refused to create a bridge (no CAP_NET_ADMIN?): %v", err)
		}
		t.Fatalf("testhost: %v", err)
	}
	sub, err := c.claimSubnet()
	if err != nil {
		t.Fatalf("testhost: %v", err)
	}
	c.Subnet = fmt.Sprintf("%s/24", ip4(sub, 0))
	c.GatewayIP = ip4(sub, 254)
	if err := ipCmd("link", "set", c.Bridge, "up"); err != nil {
		t.Fatalf("testhost: %v", err)
	}
	for i := 1; i <= n; i++ {
		h := &Host{Name: fmt.Sprintf("host%d", i), NetNS: fmt.Sprintf("%sh%d", c.base, i),
			Veth: fmt.Sprintf("%sv%d", c.base, i), IP: ip4(sub, byte(i)), c: c}
		c.Hosts = append(c.Hosts, h)
		if err := h.build(); err != nil {
			if i == 1 && isPermission(err) {
				t.Skipf("testhost: the kernel refused to create a network namespace: %v", err)
			}
			t.Fatalf("testhost: building %s: %v", h.Name, err)
		}
	}
	return c
}

// claimSubnet gives the bridge the .254 address of a /24 of the test range that no interface
// of the root namespace has an address in (another cluster's bridge, say), and returns the
// /24's first three bytes. A cluster made at the same moment by another process may claim the
// same one: the loser sees two interfaces in it and moves on.
func (c *Cluster) claimSubnet() ([3]byte, error) {
	start := int(os.Getpid()*31+int(counter.Load())*7) % subnets
	for k := range subnets {
		idx := (start + k) % subnets
		sub := [3]byte{testRange[0], testRange[1] + byte(idx/256), byte(idx % 256)}
		if subnetUsers(sub) > 0 {
			continue
		}
		if err := ipCmd("addr", "add", ip4(sub, 254)+"/24", "dev", c.Bridge); err != nil {
			return sub, err
		}
		if subnetUsers(sub) == 1 {
			return sub, nil
		}
		ipCmd("addr", "del", ip4(sub, 254)+"/24", "dev", c.Bridge)
	}
	return [3]byte{}, errors.New("no free /24 left in 198.18.0.0/15")
}

// subnetUsers counts the root namespace's interfaces with an address in sub.0/24.
func subnetUsers(sub [3]byte) int {
	ifs, _ := net.Interfaces()
	n := 0
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if v4 := ipn.IP.To4(); v4 != nil && v4[0] == sub[0] && v4[1] == sub[1] && v4[2] == sub[2] {
					n++
					break
				}
			}
		}
	}
	return n
}

// build creates the host's namespace, its link to the bridge and its spawner thread.
func (h *Host) build() error {
	c := h.c
	steps := [][]string{
		{"netns", "add", h.NetNS},
		{"link", "add", h.Veth, "type", "veth", "peer", "name", "eth0", "netns", h.NetNS},
		{"link", "set", h.Veth, "master", c.Bridge},
		{"link", "set", h.Veth, "up"},
		{"-n", h.NetNS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.NetNS, "link", "set", "lo", "up"},
		{"-n", h.NetNS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	h.reqs, h.quit = make(chan func()), make(chan struct{})
	ready := make(chan error, 1)
	go h.spawner(ready)
	if err := <-ready; err != nil {
		return err
	}
	// pid 1 of the host: the first process started in a new PID namespace is its init, and
	// when it dies the kernel kills every other process of the namespace. It dies with the
	// test process (or rather with the spawner thread, which lives as long): setpriv sets its
	// parent-death signal. (Go's SysProcAttr.Pdeathsig cannot be used in a new PID namespace:
	// the child checks its parent is still there by comparing getppid() with the parent's pid,
	// and there getppid() is 0, so the child kills itself at once.) Every other process of
	// the host dies with it.
	h.init = exec.Command("setpriv", "--pdeathsig", "KILL", "--", "sleep", "infinity")
	if err := h.spawn(h.init); err != nil {
		return fmt.Errorf("starting the init process: %w", err)
	}
	go h.init.Wait()
	// the death signal is armed once setpriv has executed sleep: until then a test process
	// that dies would leave the host behind (to the next run's stale-leftover removal)
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", h.init.Process.Pid))
		if err == nil && strings.TrimSpace(string(comm)) == "sleep" {
			return nil
		}
		if err != nil || time.Now().After(deadline) {
			return fmt.Errorf("the init process (setpriv, then sleep) did not start: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// spawner runs on an OS thread of its own that enters the host's network namespace and
// creates its UTS namespace (hostname) and PID namespace, then runs what the host asks on that
// thread: starting processes (a child inherits the namespaces of the thread that forks it) and
// opening sockets (a socket belongs to the network namespace it was created in). The thread
// is never unlocked, so Go never runs anything else on it, and it ends with the goroutine. It
// must outlive the processes it started: their parent-death signal fires when it exits.
func (h *Host) spawner(ready chan<- error) {
	runtime.LockOSThread()
	if err := h.enterNamespaces(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for {
		select {
		case f := <-h.reqs:
			f()
		case <-h.quit:
			return
		}
	}
}

func (h *Host) enterNamespaces() error {
	fd, err := unix.Open("/run/netns/"+h.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", h.NetNS, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", h.NetNS, err)
	}
	if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
		return fmt.Errorf("creating a UTS namespace: %w", err)
	}
	if err := unix.Sethostname([]byte(h.Name)); err != nil {
		return fmt.Errorf("setting hostname %s: %w", h.Name, err)
	}
	if err := unix.Unshare(unix.CLONE_NEWPID); err != nil {
		return fmt.Errorf("creating a PID namespace: %w", err)
	}
	return nil
}

// do runs f on the host's thread, in its namespaces.
func (h *Host) do(f func()) error {
	done := make(chan struct{})
	select {
	case h.reqs <- func() { defer close(done); f() }:
	case <-h.quit:
		return fmt.Errorf("host %s is cleaned up", h.Name)
	}
	<-done
	return nil
}

// spawn starts cmd in the host's namespaces.
func (h *Host) spawn(cmd *exec.Cmd) error {
	var err error
	if e := h.do(func() { err = cmd.Start() }); e != nil {
		return e
	}
	return err
}

// Listen opens a listener in the host's network namespace (for a test's own server on the
// host: the socket stays in that namespace whichever goroutine uses it afterwards).
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	var err error
	if e := h.do(func() { ln, err = net.Listen(network, addr) }); e != nil {
		return nil, e
	}
	return ln, err
}

// Dial connects from the host's network namespace, as a process on the host would.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	var d net.Dialer
	if e := h.do(func() { c, err = d.DialContext(ctx, network, addr) }); e != nil {
		return nil, e
	}
	return c, err
}

// Addr returns the host's IP joined with port.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// Start runs argv on the host, with the test process's environment plus env (later entries
// win), its stdout and stderr captured (Proc.Output; logged when the test fails). The process
// is killed when ctx ends, at Cleanup, and when the test process dies. name labels the
// process in logs. Start fails the test when the process cannot be started; call it from the
// test's goroutine.
func (h *Host) Start(ctx context.Context, name string, argv []string, env []string) *Proc {
	h.c.t.Helper()
	p, err := h.StartErr(ctx, name, argv, env)
	if err != nil {
		h.c.t.Fatalf("testhost: %v", err)
	}
	return p
}

// StartErr is Start returning its error instead of failing the test, for any goroutine.
func (h *Host) StartErr(ctx context.Context, name string, argv []string, env []string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("starting %s on %s: empty argv", name, h.Name)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	p := &Proc{Name: name, Host: h, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	cmd.WaitDelay = 5 * time.Second
	if err := h.spawn(cmd); err != nil {
		return nil, fmt.Errorf("starting %s on %s (%s): %w", name, h.Name, argv[0], err)
	}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Cut takes the host's link down: from now on nothing reaches it or leaves it (connections
// stay open and stall, as with a pulled cable), until Restore.
func (h *Host) Cut() {
	h.c.t.Helper()
	if err := ipCmd("link", "set", h.Veth, "down"); err != nil {
		h.c.t.Fatalf("testhost: cutting %s: %v", h.Name, err)
	}
}

// Restore brings the host's link back up after Cut.
func (h *Host) Restore() {
	h.c.t.Helper()
	if err := ipCmd("link", "set", h.Veth, "up"); err != nil {
		h.c.t.Fatalf("testhost: restoring %s: %v", h.Name, err)
	}
}

// Procs returns the processes started on the host so far.
func (h *Host) Procs() []*Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Proc(nil), h.procs...)
}

// Cleanup kills every process of every host and removes the namespaces, links and bridge. New
// registers it with t.Cleanup; calling it again does nothing. When the test failed, each
// process's output is logged first.
func (c *Cluster) Cleanup() {
	c.cleaned.Do(func() {
		var errs []error
		for _, h := range c.Hosts {
			for _, p := range h.Procs() {
				p.Kill()
				<-p.done
				if c.t.Failed() {
					c.t.Logf("testhost: %s on %s (%s): %s; output:\n%s", p.Name, h.Name, strings.Join(p.Cmd.Args, " "),
						p.state(), p.Output())
				}
			}
			if h.init != nil && h.init.Process != nil {
				h.init.Process.Kill()
			}
			if h.quit != nil {
				close(h.quit)
			}
			if err := ipCmd("netns", "del", h.NetNS); err != nil && !isNotFound(err) {
				errs = append(errs, err)
			}
			// deleting the namespace destroyed the pair; left over if it could not be deleted
			if err := ipCmd("link", "del", h.Veth); err != nil && !isNotFound(err) {
				errs = append(errs, err)
			}
		}
		if c.Bridge != "" {
			if err := ipCmd("link", "del", c.Bridge); err != nil && !isNotFound(err) {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			c.t.Errorf("testhost: cleanup: %v", err)
		}
	})
}

// removeStale removes the namespaces and links of clusters whose process is gone: a run that
// was killed before its cleanup. A namespace's processes are killed first (a namespace with
// processes in it outlives `ip netns del`).
func removeStale(t testing.TB) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || !isStale(f[0]) {
				continue
			}
			if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
				for _, s := range strings.Fields(string(pids)) {
					if pid, err := strconv.Atoi(s); err == nil && pid > 1 {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if err := ipCmd("netns", "del", f[0]); err != nil {
				t.Logf("testhost: removing stale namespace %s: %v", f[0], err)
			} else {
				t.Logf("testhost: removed stale namespace %s", f[0])
			}
		}
	}
	out, err = exec.Command("ip", "-o", "link", "show").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			// "12: sh-abc-0v1@if11: <...>"
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if !isStale(name) {
				continue
			}
			if err := ipCmd("link", "del", name); err != nil && !isNotFound(err) {
				t.Logf("testhost: removing stale link %s: %v", name, err)
			} else {
				t.Logf("testhost: removed stale link %s", name)
			}
		}
	}
}

// isStale tells whether name is one of this package's and the process that made it is gone.
func isStale(name string) bool {
	m := staleName.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.ParseInt(m[1], 36, 64)
	if err != nil || pid <= 0 || pid > 1<<22 {
		return false
	}
	if int(pid) == os.Getpid() {
		return false
	}
	return !processExists(int(pid))
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ipCmd runs ip(8) with args; its error carries the command and what ip printed.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return &ipError{args: args, out: strings.TrimSpace(string(out)), err: err}
	}
	return nil
}

type ipError struct {
	args []string
	out  string
	err  error
}

func (e *ipError) Error() string {
	return fmt.Sprintf("ip %s: %v: %s", strings.Join(e.args, " "), e.err, e.out)
}

func isPermission(err error) bool {
	var ie *ipError
	return errors.As(err, &ie) && (strings.Contains(ie.out, "Operation not permitted") ||
		strings.Contains(ie.out, "Permission denied")) || errors.Is(err, syscall.EPERM)
}

func isNotFound(err error) bool {
	var ie *ipError
	// "No such device": the link was found by name and gone by the time of the delete (a
	// namespace just deleted takes its veth pair down asynchronously)
	return errors.As(err, &ie) && (strings.Contains(ie.out, "Cannot find device") ||
		strings.Contains(ie.out, "No such device") || strings.Contains(ie.out, "No such file") ||
		strings.Contains(ie.out, "does not exist"))
}

func netip4(a, b, c, d byte) [4]byte { return [4]byte{a, b, c, d} }

func ip4(sub [3]byte, last byte) string {
	return net.IPv4(sub[0], sub[1], sub[2], last).String()
}

// Proc is a process running on a test host.
type Proc struct {
	// Name is the label given to Start.
	Name string
	// Host is the host it runs on.
	Host *Host
	// Cmd is the process (its Process field is the process itself, not a wrapper).
	Cmd *exec.Cmd

	out  outBuffer
	done chan struct{}
	err  error
}

// Pid is the process id in the test process's (root) PID namespace.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process (an error once it has exited).
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Kill kills the process with SIGKILL; it does nothing once the process has exited.
func (p *Proc) Kill() {
	select {
	case <-p.done:
	default:
		p.Cmd.Process.Kill()
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit, or for ctx to end, and returns how it exited (an
// *exec.ExitError for a non-zero status or a signal).
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s on %s: %w", p.Name, p.Host.Name, ctx.Err())
	}
}

// Output returns what the process wrote to stdout and stderr so far (the last 8 MiB).
func (p *Proc) Output() string { return p.out.String() }

// WaitOutput waits until the output matches re and returns the submatches of the first match.
// It fails when the process exits first or ctx ends, with the output so far in the error.
func (p *Proc) WaitOutput(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if m := re.FindStringSubmatch(p.Output()); m != nil {
			return m, nil
		}
		select {
		case <-p.done:
			if m := re.FindStringSubmatch(p.Output()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("%s on %s %s before printing %q; output:\n%s", p.Name, p.Host.Name, p.state(), re, p.Output())
		case <-ctx.Done():
			return nil, fmt.Errorf("%s on %s did not print %q: %w; output:\n%s", p.Name, p.Host.Name, re, ctx.Err(), p.Output())
		case <-tick.C:
		}
	}
}

// state describes whether and how the process exited.
func (p *Proc) state() string {
	select {
	case <-p.done:
		if p.err != nil {
			return "exited: " + p.err.Error()
		}
		return "exited with status 0"
	default:
		return "still running"
	}
}

// outBuffer is a goroutine-safe buffer that keeps the last outMax bytes written.
type outBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const outMax = 8 << 20

func (b *outBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.buf.Len() > outMax {
		b.buf.Next(b.buf.Len() - outMax/2)
	}
	return len(p), nil
}

func (b *outBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StreamTCP sends n bytes over one TCP connection from host from to host to (sockets opened in
// their namespaces by this process; 4 MiB writes, reads of up to 16 MiB, as large as a
// transfer's) and returns the throughput in bytes per second, timed from the first write until
// the receiver has read the last byte: the raw link speed a transfer between those hosts is
// measured against.
func StreamTCP(ctx context.Context, from, to *Host, n int64) (float64, error) {
	return streamTCP(ctx, from, to, n, false)
}

// StreamTCPKept is StreamTCP with a receiver that keeps what it reads: the bytes land in one
// buffer of n bytes, faulted in before the clock starts, as a transfer's value does (where
// StreamTCP's receiver reads every chunk into the same 16 MiB, which caches may hold).
func StreamTCPKept(ctx context.Context, from, to *Host, n int64) (float64, error) {
	return streamTCP(ctx, from, to, n, true)
}

func streamTCP(ctx context.Context, from, to *Host, n int64, keep bool) (float64, error) {
	var kept []byte
	if keep {
		kept = make([]byte, n)
		for i := 0; i < len(kept); i += 4096 {
			kept[i] = 1
		}
	}
	ln, err := to.Listen("tcp", to.Addr(0))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type result struct {
		n   int64
		end time.Time
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		buf := make([]byte, 16<<20)
		var r int64
		for {
			if keep {
				buf = kept[min(r, n):]
				if len(buf) == 0 {
					buf = make([]byte, 1) // only EOF (or a byte too many) is still to come
				}
			}
			k, err := c.Read(buf)
			r += int64(k)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				got <- result{n: r, end: time.Now(), err: err}
				return
			}
		}
	}()
	c, err := from.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close(); ln.Close() })
	defer stop()
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	start := time.Now()
	for left := n; left > 0; {
		k, err := c.Write(buf[:min(left, int64(len(buf)))])
		left -= int64(k)
		if err != nil {
			c.Close()
			return 0, fmt.Errorf("sending to %s: %w", to.Name, err)
		}
	}
	c.Close()
	r := <-got
	if r.err != nil {
		return 0, fmt.Errorf("receiving on %s: %w", to.Name, r.err)
	}
	if r.n != n {
		return 0, fmt.Errorf("received %d bytes of %d", r.n, n)
	}
	return float64(n) / r.end.Sub(start).Seconds(), nil
}
