package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// shoalBin is the real binary the end-to-end tests run: $SHOAL_BIN, or one built for the run.
var shoalBin string

func TestMain(m *testing.M) {
	shoalBin = os.Getenv("SHOAL_BIN")
	var tmp string
	if shoalBin == "" {
		var err error
		tmp, err = os.MkdirTemp("", "shoal-e2e-")
		if err != nil {
			panic(err)
		}
		shoalBin = filepath.Join(tmp, "shoal")
		out, err := exec.Command("go", "build", "-o", shoalBin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building shoal: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// testCluster is a `shoal local` process.
type testCluster struct {
	cmd       *exec.Cmd
	Scheduler string
	Dashboard string
	Gossip    string
	Workers   []string
	token     string
	log       *os.File
}

// startCluster runs `shoal local` with real sockets on 127.0.0.1 and waits for its ready file.
func startCluster(t testing.TB, workers int, extra ...string) *testCluster {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	logf, err := os.Create(filepath.Join(dir, "cluster.log"))
	require.NoError(t, err)
	args := append([]string{"local", "--workers", fmt.Sprint(workers), "--port", "0", "--gossip-port", "0",
		"--dashboard-port", "0", "--ready-file", ready, "--local-dir", dir, "--log-level", "warn"}, extra...)
	cmd := exec.Command(shoalBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	c := &testCluster{cmd: cmd, log: logf}
	t.Cleanup(func() { c.stop(t) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var r struct {
				Scheduler, Dashboard, Gossip string
				Workers                      []string
			}
			require.NoError(t, json.Unmarshal(b, &r))
			c.Scheduler, c.Dashboard, c.Gossip, c.Workers = r.Scheduler, r.Dashboard, r.Gossip, r.Workers
			return c
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("cluster did not become ready:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startTokenCluster is startCluster with --token-file: every connection, gossip and the
// dashboard need the token "s3cret", which c.connect presents.
func startTokenCluster(t testing.TB, workers int, extra ...string) *testCluster {
	t.Helper()
	tokFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokFile, []byte("s3cret\n"), 0o600))
	c := startCluster(t, workers, append([]string{"--token-file", tokFile}, extra...)...)
	c.token = "s3cret"
	return c
}

// stop sends SIGTERM and checks that `shoal local` exits cleanly and leaves no worker behind.
func (c *testCluster) stop(t testing.TB) {
	if c.cmd.ProcessState != nil {
		return
	}
	children := childPIDs(c.cmd.Process.Pid)
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-done
		t.Errorf("shoal local did not exit within 20 s of SIGTERM")
	}
	for _, pid := range children {
		if alive(pid) {
			t.Errorf("worker process %d outlived shoal local", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	c.log.Close()
}

func (c *testCluster) logs() string {
	b, _ := os.ReadFile(c.log.Name())
	return string(b)
}

func (c *testCluster) connect(t testing.TB) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Connect(ctx, c.Scheduler, client.Options{Token: c.token})
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// childPIDs lists the direct children of pid from /proc.
func childPIDs(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	re := regexp.MustCompile(`^\d+$`)
	for _, e := range entries {
		if !re.MatchString(e.Name()) {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		var ppid, child int
		fmt.Sscan(f[1], &ppid)
		fmt.Sscan(e.Name(), &child)
		if ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// handedOut holds the ports freePort gave, so that it never gives one twice in a test run.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// freePort returns a port free for TCP and UDP on 127.0.0.1, for a process the test starts
// (or starts again) on a fixed port. It is chosen below the kernel's ephemeral range
// (ip_local_port_range), so that no connection's source port nor any listener on port 0 can
// take it between this check and the process's bind, and never twice in one test run.
func freePort(t *testing.T) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const from = 10000
	if low <= from+1000 { // no room below the range: the kernel's pick, never one handed out
		for range 100 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			port := ln.Addr().(*net.TCPAddr).Port
			pc, perr := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)) // gossip takes both
			ln.Close()
			if perr != nil {
				continue
			}
			pc.Close()
			if !handedOut.ports[port] {
				handedOut.ports[port] = true
				return port
			}
		}
		t.Fatal("no port not handed out already in 100 tries")
	}
	for range 100 {
		port := from + rand.IntN(low-from)
		if handedOut.ports[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)) // gossip takes both
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		handedOut.ports[port] = true
		return port
	}
	t.Fatal("no free port below the ephemeral range in 100 tries")
	return 0
}

// startProc runs the binary with args, returning the process and a scanner over its stdout.
func startProc(t *testing.T, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(shoalBin, args...)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return cmd, bufio.NewScanner(out)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func ctxWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// logText is what the cluster's processes have logged so far.
func (c *testCluster) logText(t testing.TB) string {
	b, err := os.ReadFile(c.log.Name())
	require.NoError(t, err)
	return string(b)
}

// metric reads the value of an unlabelled metric from a Prometheus /metrics page.
func metric(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	require.NotNil(t, m, "no %s in %s:\n%s", name, url, body)
	return string(m[1])
}
