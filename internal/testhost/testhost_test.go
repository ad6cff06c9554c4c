package testhost

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer serves one line-echo per connection on ln until it is closed.
func echoServer(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				io.WriteString(c, "echo: "+line)
			}
		}()
	}
}

// roundTrip dials addr from h, sends msg and returns the echoed line.
func roundTrip(ctx context.Context, h *Host, addr, msg string) (string, error) {
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestHostsReachEachOtherAndCutStopsTraffic(t *testing.T) {
	c := New(t, 2)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	require.Regexp(t, `^198\.1[89]\.\d+\.1$`, h1.IP)
	require.Regexp(t, `^198\.1[89]\.\d+\.2$`, h2.IP)

	// a server on host1's address, reached from host2 over the bridge
	ln, err := h1.Listen("tcp", h1.Addr(0))
	require.NoError(t, err)
	defer ln.Close()
	go echoServer(ln)
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	got, err := roundTrip(ctx, h2, addr, "hello")
	cancel()
	require.NoError(t, err)
	require.Equal(t, "echo: hello", got)

	bps, err := StreamTCP(context.Background(), h2, h1, 8<<20)
	require.NoError(t, err)
	require.Positive(t, bps)
	bps, err = StreamTCPKept(context.Background(), h2, h1, 8<<20+3) // counted to the byte
	require.NoError(t, err)
	require.Positive(t, bps)

	// host1's listener is not on the root namespace's loopback: the same port there is closed,
	// or (by chance) another process's, which does not answer as host1's echo server does
	if lc, err := net.DialTimeout("tcp", "127.0.0.1:"+strings.Split(addr, ":")[1], time.Second); err == nil {
		lc.SetDeadline(time.Now().Add(time.Second))
		io.WriteString(lc, "probe\n")
		line, _ := bufio.NewReader(lc).ReadString('\n')
		lc.Close()
		require.NotEqual(t, "echo: probe\n", line, "host1's listener is reachable on the root namespace's loopback")
	}
	// the test process reaches hosts through the bridge
	rc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	rc.Close()

	// an established connection stalls while the link is cut, and carries on after restore
	conn, err := h2.Dial(context.Background(), "tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	h1.Cut()
	ctx, cancel = context.WithTimeout(context.Background(), 1500*time.Millisecond)
	_, err = roundTrip(ctx, h2, addr, "while cut")
	cancel()
	require.Error(t, err, "a connection to a cut host must not succeed")
	_, err = io.WriteString(conn, "across the cut\n")
	require.NoError(t, err) // queued in the socket: TCP retransmits
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = bufio.NewReader(conn).ReadString('\n')
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "no answer may arrive through a cut link, got %v", err)

	h1.Restore()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	got, err = roundTrip(ctx, h2, addr, "back")
	cancel()
	require.NoError(t, err)
	require.Equal(t, "echo: back", got)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err, "the connection open across the cut carries on once the link is back")
	require.Equal(t, "echo: across the cut\n", line)
}

func TestProcessesRunInTheHost(t *testing.T) {
	c := New(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := c.Hosts[1]
	p := h.Start(ctx, "probe", []string{"sh", "-c", `hostname; echo "pid $$"; readlink /proc/self/ns/pid; ip -4 -o addr show dev eth0; ip -o link show lo; echo "env $TESTHOST_X"`},
		[]string{"TESTHOST_X=yes"})
	require.NoError(t, p.Wait(ctx), p.Output())
	out := p.Output()
	require.Equal(t, "host2", strings.SplitN(out, "\n", 2)[0], out)
	myNS, err := os.Readlink("/proc/self/ns/pid")
	require.NoError(t, err)
	require.NotContains(t, out, myNS, "the process must run in the host's own PID namespace")
	require.Regexp(t, regexp.MustCompile(`pid [2-9]\b`), out, "the host's processes are numbered from its own init")
	require.Contains(t, out, " "+h.IP+"/24 ")
	require.Regexp(t, `lo: <[^>]*\bUP\b`, out, "loopback must be up")
	require.Contains(t, out, "env yes")

	// Kill kills the process itself; Wait reports the signal
	s := h.Start(ctx, "sleeper", []string{"sleep", "60"}, nil)
	s.Kill()
	err = s.Wait(ctx)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, "signal: killed", ee.Error())

	// WaitOutput sees a line printed later, and reports a process that exits first
	w := h.Start(ctx, "late", []string{"sh", "-c", "sleep 0.2; echo ready at 42"}, nil)
	m, err := w.WaitOutput(ctx, regexp.MustCompile(`ready at (\d+)`))
	require.NoError(t, err)
	require.Equal(t, "42", m[1])
	q := h.Start(ctx, "quitter", []string{"sh", "-c", "echo bye; exit 3"}, nil)
	_, err = q.WaitOutput(ctx, regexp.MustCompile(`never`))
	require.ErrorContains(t, err, "exit status 3")
	require.ErrorContains(t, err, "bye")
}

func TestCleanupLeavesNothingBehind(t *testing.T) {
	var names []string
	var pids []int
	t.Run("cluster", func(t *testing.T) {
		c := New(t, 2)
		names = append(names, c.Bridge)
		for _, h := range c.Hosts {
			names = append(names, h.NetNS, h.Veth)
			p := h.Start(context.Background(), "sleeper", []string{"sleep", "600"}, nil)
			pids = append(pids, p.Pid(), h.init.Process.Pid)
			require.True(t, processAlive(p.Pid()) && processAlive(h.init.Process.Pid))
		}
	})
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	require.NoError(t, err)
	netns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	for _, n := range names {
		require.NotContains(t, string(links), n, "link left behind")
		require.NotContains(t, string(netns), n, "namespace left behind")
	}
	for _, pid := range pids {
		require.Eventually(t, func() bool { return !processAlive(pid) }, 5*time.Second, 10*time.Millisecond,
			"process %d outlived the cluster", pid)
	}
}

// processAlive tells whether pid is running (not gone, not a zombie).
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	return !strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
}

func itoa(i int) string { return strconv.Itoa(i) }

func strconvFormat36(i int) string { return strconv.FormatInt(int64(i), 36) }

func TestStaleLeftoversAreRemoved(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testhost: needs root")
	}
	// a leftover of a process that no longer exists: a pid above the kernel's maximum
	dead := "sh-" + "zzzz" + "-0"
	require.True(t, isStale(dead+"b"))
	require.False(t, isStale("sh-"+strconvFormat36(os.Getpid())+"-0b"), "this process's own names are not stale")
	require.False(t, isStale("eth0"))
	require.False(t, isStale("sh-1-0x1"), "an unknown suffix is not ours")

	// a real leftover namespace and bridge named after a dead process (pid 4194303 is above any
	// default pid_max below the 2^22 limit, and almost surely unused)
	base := "sh-" + strconvFormat36(4194303) + "-0"
	if processExists(4194303) {
		t.Skip("pid 4194303 exists")
	}
	require.NoError(t, ipCmd("link", "add", base+"b", "type", "bridge"))
	require.NoError(t, ipCmd("netns", "add", base+"h1"))
	t.Cleanup(func() { ipCmd("link", "del", base+"b"); ipCmd("netns", "del", base+"h1") })
	c := New(t, 1)
	require.NotNil(t, c)
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	netns, _ := exec.Command("ip", "netns", "list").Output()
	require.NotContains(t, string(links), base+"b")
	require.NotContains(t, string(netns), base+"h1")
}

// TestHelperCluster is run by TestCleanupAfterFailureAndCrash in a child test process: it
// builds a cluster, prints its names and a process id, then fails or waits to be killed.
func TestHelperCluster(t *testing.T) {
	mode := os.Getenv("TESTHOST_HELPER")
	if mode == "" {
		t.Skip("run by TestCleanupAfterFailureAndCrash")
	}
	c := New(t, 1)
	h := c.Hosts[0]
	p := h.Start(context.Background(), "sleeper", []string{"sleep", "600"}, nil)
	fmt.Printf("NAMES %s %s %s PID %d INIT %d\n", c.Bridge, h.NetNS, h.Veth, p.Pid(), h.init.Process.Pid)
	if mode == "fail" {
		t.Fatal("failing on purpose")
	}
	time.Sleep(time.Minute) // killed by the parent
}

func TestCleanupAfterFailureAndCrash(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testhost: needs root")
	}
	for _, mode := range []string{"fail", "crash"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCluster$", "-test.v")
			cmd.Env = append(os.Environ(), "TESTHOST_HELPER="+mode)
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			sc := bufio.NewScanner(out)
			var names [3]string
			var pid, initPid int
			for sc.Scan() {
				if _, err := fmt.Sscanf(sc.Text(), "NAMES %s %s %s PID %d INIT %d", &names[0], &names[1], &names[2], &pid, &initPid); err == nil {
					break
				}
			}
			require.NotZero(t, pid, "the helper printed no names")
			if mode == "crash" {
				cmd.Process.Kill() // no cleanup runs
			}
			go io.Copy(io.Discard, out)
			err = cmd.Wait()
			require.Error(t, err, "the helper fails or is killed")
			// the host's processes die with the test process, cleaned up or not
			for _, p := range []int{pid, initPid} {
				require.Eventually(t, func() bool { return !processAlive(p) }, 5*time.Second, 10*time.Millisecond,
					"process %d outlived the test process (%s)", p, mode)
			}
			links, _ := exec.Command("ip", "-o", "link", "show").Output()
			netns, _ := exec.Command("ip", "netns", "list").Output()
			if mode == "fail" {
				for _, n := range names {
					require.NotContains(t, string(links)+string(netns), n, "left behind by a failed test")
				}
				return
			}
			// a killed test process cannot clean up: its names are stale now (and another test
			// process's New may already have removed them)
			require.True(t, isStale(names[1]))
			New(t, 1) // removes what the dead process left
			links, _ = exec.Command("ip", "-o", "link", "show").Output()
			netns, _ = exec.Command("ip", "netns", "list").Output()
			for _, n := range names {
				require.NotContains(t, string(links)+string(netns), n, "a stale leftover was not removed")
			}
		})
	}
}

// BenchmarkStreamTCP measures a raw TCP stream of 200 MB between two test hosts.
// Run: go test ./internal/testhost -run '^$' -bench StreamTCP -benchtime 5x
func BenchmarkStreamTCP(b *testing.B) {
	c := New(b, 2)
	const n = 200 << 20
	b.SetBytes(n)
	for b.Loop() {
		if _, err := StreamTCP(context.Background(), c.Hosts[0], c.Hosts[1], n); err != nil {
			b.Fatal(err)
		}
	}
}
