package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// A result larger than the old 1 GiB frame limit is consumed on another worker: it moves
// whole (the consumer checks every byte) instead of failing to fetch forever.
func TestE2ELargeValueMovesBetweenWorkers(t *testing.T) {
	c := startCluster(t, 2, "--memory-limit", "0")
	cl := c.connect(t)
	ctx := ctxT(t, 5*time.Minute)
	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 2)
	const size = 1_500_000_000
	g := client.NewGraph()
	big := g.Add(graph.Task{Key: "big", Kind: graph.KindGo, Func: "bytes", Args: []graph.Arg{graph.Lit(size)},
		Workers: []string{infos[0].Address}})
	n := g.Add(graph.Task{Key: "n", Kind: graph.KindGo, Func: "checkbytes", Args: []graph.Arg{graph.Ref(string(big))},
		Workers: []string{infos[1].Address}})
	futs, err := cl.Submit(ctx, g, n)
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err, c.logs())
	require.Equal(t, int64(size), asInt(t, v))
}

// A spill directory that fills up: the worker logs an ERROR with the path and errno, and the
// tasks it cannot make room for fail with a MemoryError naming the cause, instead of waiting
// forever behind a silent pause.
func TestE2EFullSpillDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a 50 MB tmpfs as the spill directory")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=50m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	c := startCluster(t, 1, "--memory-limit", "200MB", "--local-dir", dir, "--log-level", "info")
	cl := c.connect(t)
	ctx := ctxT(t, 3*time.Minute)
	g := client.NewGraph()
	var keys []client.Key
	for i := range 24 {
		keys = append(keys, g.Go(fmt.Sprintf("blob-%d", i), "bytes", 30_000_000))
	}
	futs, err := cl.Submit(ctx, g, keys...)
	require.NoError(t, err)
	var ok, memErr int
	for _, f := range futs {
		err := f.Wait(ctx) // every one ends: none is left waiting on a pause
		var werr *wire.Error
		switch {
		case err == nil:
			ok++
		case errors.As(err, &werr) && werr.Type == "MemoryError":
			require.Contains(t, werr.Message, "spilling to disk failed")
			require.Contains(t, werr.Message, "no space left on device")
			memErr++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	t.Logf("%d results kept, %d tasks failed with MemoryError", ok, memErr)
	require.Positive(t, memErr, "a full disk must surface as task errors")
	require.Regexp(t, regexp.MustCompile(`level=ERROR msg="spilling to disk failed.*path=`+regexp.QuoteMeta(dir)+`.*errno=28`), c.logs())
}

// Connections beyond --max-clients are refused in the handshake with "busy"; a freed slot
// is used again.
func TestE2EConnectionCaps(t *testing.T) {
	c := startCluster(t, 1, "--max-clients", "3")
	ctx := ctxT(t, time.Minute)
	var conns []*client.Client
	for range 3 {
		cl, err := client.Connect(ctx, c.Scheduler, client.Options{})
		require.NoError(t, err)
		conns = append(conns, cl)
	}
	_, err := client.Connect(ctx, c.Scheduler, client.Options{})
	var herr *wire.HandshakeError
	require.ErrorAs(t, err, &herr)
	require.Equal(t, wire.CodeBusy, herr.Code())
	require.Contains(t, herr.Message, "too many client connections (limit 3)")
	conns[0].Close()
	require.Eventually(t, func() bool {
		cl, err := client.Connect(ctx, c.Scheduler, client.Options{})
		if err != nil {
			return false
		}
		conns[0] = cl
		return true
	}, 10*time.Second, 50*time.Millisecond)
	g := client.NewGraph()
	futs, err := conns[0].Submit(ctx, g, g.Go("", "inc", 1))
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), asInt(t, v))
	for _, cl := range conns {
		cl.Close()
	}
}

// forgedDead is a memberlist "dead" message about node, as anyone on the network could send.
func forgedDead(t *testing.T, node string) []byte {
	b, err := msgpack.Marshal(map[string]any{"Incarnation": 1 << 20, "Node": node, "From": "attacker"})
	require.NoError(t, err)
	return append([]byte{5}, b...) // deadMsg
}

// With a token, gossip is encrypted and authenticated: one forged datagram declaring a worker
// dead changes nothing. (Without a token the same datagram is believed by gossip — the control
// case shows that the datagram is well formed — but the scheduler keeps a worker whose control
// stream is alive, and says so.)
func TestE2EForgedGossipDatagram(t *testing.T) {
	for _, withToken := range []bool{false, true} {
		t.Run(fmt.Sprintf("token=%v", withToken), func(t *testing.T) {
			start := startCluster
			if withToken {
				start = startTokenCluster
			}
			c := start(t, 1)
			cl := c.connect(t)
			ctx := ctxT(t, time.Minute)
			infos, err := cl.Info(ctx)
			require.NoError(t, err)
			require.Len(t, infos, 1)
			u, err := net.Dial("udp", c.Gossip)
			require.NoError(t, err)
			defer u.Close()
			_, err = u.Write(forgedDead(t, "worker@"+infos[0].Address))
			require.NoError(t, err)
			gone := func() bool {
				infos, err := cl.Info(ctx)
				return err == nil && len(infos) == 0
			}
			const believed = "gossip says a worker is gone, but its control stream spoke recently"
			if !withToken {
				require.Eventually(t, func() bool { return strings.Contains(c.logText(t), believed) }, 10*time.Second,
					50*time.Millisecond, "the unauthenticated control: the forged datagram should be believed by gossip")
				require.False(t, gone(), "a worker whose control stream is alive was removed on gossip's word")
				return
			}
			require.Never(t, gone, 3*time.Second, 100*time.Millisecond, "a forged datagram removed a worker")
			require.NotContains(t, c.logText(t), believed)
			g := client.NewGraph()
			futs, err := cl.Submit(ctx, g, g.Go("", "inc", 41))
			require.NoError(t, err)
			v, err := futs[0].Result(ctx)
			require.NoError(t, err)
			require.Equal(t, int64(42), asInt(t, v))
		})
	}
}

// With a token the dashboard, its API and /metrics need it (a bearer header or the login
// cookie); /health does not.
func TestE2EDashboardAuth(t *testing.T) {
	c := startTokenCluster(t, 1)
	get := func(path, bearer string) *http.Response {
		req, err := http.NewRequest("GET", c.Dashboard+strings.TrimPrefix(path, "/"), nil)
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r, err := cl.Do(req)
		require.NoError(t, err)
		r.Body.Close()
		return r
	}
	require.Equal(t, 200, get("/health", "").StatusCode)
	for _, p := range []string{"/api/v1/workers", "/metrics"} {
		require.Equal(t, 401, get(p, "").StatusCode, p)
		require.Equal(t, 401, get(p, "wrong").StatusCode, p)
		require.Equal(t, 200, get(p, "s3cret").StatusCode, p)
	}
	r := get("/", "")
	require.Equal(t, 303, r.StatusCode)
	require.True(t, strings.HasPrefix(r.Header.Get("Location"), "/login"))
}

// A worker whose data port runs out of file descriptors keeps running, logs the failure once,
// and accepts connections again when descriptors are free: peers and clients are not left
// hanging on a socket nobody accepts from.
func TestE2EWorkerSurvivesEMFILE(t *testing.T) {
	dir := t.TempDir()
	sched, out := startProc(t, "scheduler", "--port", "0", "--gossip-port", "0", "--dashboard-port", "-1", "--log-level", "warn")
	_ = sched
	require.True(t, out.Scan(), "scheduler printed nothing")
	m := regexp.MustCompile(`scheduler at (\S+), gossip at (\S+)`).FindStringSubmatch(out.Text())
	require.NotNil(t, m, out.Text())
	logPath := filepath.Join(dir, "worker.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	defer logf.Close()
	w := exec.Command("sh", "-c", fmt.Sprintf("ulimit -n 48 && exec %s worker --join %s --nthreads 1 --local-dir %s --log-level info",
		shoalBin, m[2], dir))
	w.Stdout, w.Stderr = logf, logf
	w.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, w.Start())
	t.Cleanup(func() { w.Process.Signal(syscall.SIGTERM); w.Wait() })

	ctx := ctxT(t, 2*time.Minute)
	cl, err := client.Connect(ctx, m[1], client.Options{})
	require.NoError(t, err)
	defer cl.Close()
	var data string
	require.Eventually(t, func() bool {
		infos, err := cl.Info(ctx)
		if err == nil && len(infos) == 1 {
			data = infos[0].Address
			return true
		}
		return false
	}, 30*time.Second, 50*time.Millisecond)
	g := client.NewGraph()
	futs, err := cl.Submit(ctx, g, g.Go("kept", "bytes", 1000))
	require.NoError(t, err)
	require.NoError(t, futs[0].Wait(ctx))

	// use up the worker's descriptors with connections that never say hello
	var held []net.Conn
	for range 80 {
		nc, err := net.Dial("tcp", data)
		if err != nil {
			break
		}
		held = append(held, nc)
	}
	logs := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	require.Eventually(t, func() bool { return strings.Contains(logs(), "cannot accept connections") }, 10*time.Second, 50*time.Millisecond,
		"the worker never ran out of descriptors:\n%s", logs())
	for _, nc := range held {
		nc.Close()
	}
	require.True(t, alive(w.Process.Pid), "the worker died:\n%s", logs())
	// the data port serves again: the client reads the kept value from it
	v, err := futs[0].Result(ctx)
	require.NoError(t, err, logs())
	require.Len(t, v, 1000)
	require.Eventually(t, func() bool { return strings.Contains(logs(), "accepting connections again") }, 10*time.Second, 50*time.Millisecond)
	// logged once per episode of failures (descriptors freed and used up again make a new one),
	// not once per accept attempt: the loop backs off
	require.LessOrEqual(t, strings.Count(logs(), "cannot accept connections"), 5, logs())
	// and it still runs work
	g = client.NewGraph()
	futs, err = cl.Submit(ctx, g, g.Go("", "inc", 1))
	require.NoError(t, err)
	v, err = futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), asInt(t, v))
}

// A worker bound to a wildcard (--host 0.0.0.0) would advertise 0.0.0.0 or [::] as its data
// address; the scheduler records the address it connects from instead, where peers and clients
// can reach it. (A registration is sent by hand: a real worker bound to a wildcard would also
// gossip on the machine's other addresses, and tests keep their traffic on loopback.)
func TestE2EWildcardDataAddressResolved(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.connect(t)
	ctx := ctxT(t, time.Minute)
	for _, wildcard := range []string{"0.0.0.0:4242", "[::]:4243"} {
		w, _ := rawConn(t, c.Scheduler, wire.RoleWorker, "")
		require.NoError(t, w.Send(&wire.Msg{Op: wire.OpRegister, Name: "fake-" + wildcard, DataAddr: wildcard, NThreads: 1}))
		m, _, err := w.Recv()
		require.NoError(t, err)
		require.Equal(t, wire.OpRegistered, m.Op, "%s %s", m.Code, m.Message)
		_, port, _ := net.SplitHostPort(wildcard)
		require.Eventually(t, func() bool {
			infos, err := cl.Info(ctx)
			if err != nil {
				return false
			}
			for _, in := range infos {
				if in.Name == "fake-"+wildcard {
					return in.Address == "127.0.0.1:"+port
				}
			}
			return false
		}, 10*time.Second, 20*time.Millisecond)
		w.Abort()
	}
}
