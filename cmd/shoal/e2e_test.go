package main

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

func asInt(t *testing.T, v any) int64 {
	t.Helper()
	var n int64
	_, err := fmt.Sscan(fmt.Sprint(v), &n)
	require.NoError(t, err, "value %v (%T) is not an integer", v, v)
	return n
}

// A 10,000-task graph over 3 worker processes: every result is fetched and checked.
func TestE2ETenThousandTasks(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.connect(t)
	ctx := ctxT(t, 120*time.Second)
	g := client.NewGraph()
	keys := make([]client.Key, 0, 10000)
	for i := 0; i < 5000; i++ {
		a := g.Go(fmt.Sprintf("inc-%d", i), "inc", i)
		keys = append(keys, a, g.Go(fmt.Sprintf("add-%d", i), "add", a, i))
	}
	futs, err := cl.Submit(ctx, g, keys...)
	require.NoError(t, err)
	vals, err := cl.Gather(ctx, futs...)
	require.NoError(t, err)
	for i := 0; i < 5000; i++ {
		require.Equal(t, int64(i+1), asInt(t, vals[2*i]), "inc-%d", i)
		require.Equal(t, int64(2*i+1), asInt(t, vals[2*i+1]), "add-%d", i)
	}
	// the work was spread over all three workers
	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 3)
	seen := map[string]bool{}
	for _, f := range futs {
		seen[f.Worker()] = true
	}
	require.Len(t, seen, 3, "results should live on every worker")
}

// An Arrow table made on worker A is consumed by a task pinned to worker B: the batches move
// peer to peer (B's received bytes grow by at least the table's size; the scheduler carries
// none of it).
func TestE2EArrowPeerToPeer(t *testing.T) {
	c := startCluster(t, 2)
	cl := c.connect(t)
	ctx := ctxT(t, 60*time.Second)
	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 2)
	a, b := infos[0], infos[1]
	g := client.NewGraph()
	g.Add(graph.Task{Key: "table", Kind: graph.KindGo, Func: "arrow_bytes_table", Args: []graph.Arg{graph.Lit(50 << 20)}, Workers: []string{a.Name}})
	count := g.Add(graph.Task{Key: "rows", Kind: graph.KindGo, Func: "row_count", Args: []graph.Arg{graph.Ref("table")}, Workers: []string{b.Name}})
	futs, err := cl.Submit(ctx, g, count, "table")
	require.NoError(t, err)
	n, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, a.Address, futs[1].Worker(), "the table must be made on worker A")
	require.Equal(t, b.Address, futs[0].Worker(), "the count must run on worker B")
	tbl, err := futs[1].Arrow(ctx)
	require.NoError(t, err)
	defer tbl.Release()
	require.Equal(t, tbl.NumRows(), asInt(t, n), "row count computed on B matches the table fetched from A")
	// wait for heartbeats to report the transfer
	require.Eventually(t, func() bool {
		infos, err := cl.Info(ctx)
		if err != nil {
			return false
		}
		for _, w := range infos {
			if w.Name == b.Name && w.BytesRecv >= 50<<20 {
				return true
			}
		}
		return false
	}, 10*time.Second, 100*time.Millisecond, "worker B should report having received the table from A")
	col := tbl.Column(0).Data().Chunk(0).(*array.Float64)
	require.Greater(t, col.Len(), 0)
}

// A worker killed with SIGKILL in the middle of a graph: the graph still completes correctly.
func TestE2EWorkerKilledMidGraph(t *testing.T) {
	c := startCluster(t, 3, "--no-restart")
	cl := c.connect(t)
	ctx := ctxT(t, 120*time.Second)
	g := client.NewGraph()
	var layer []any
	for i := 0; i < 300; i++ {
		layer = append(layer, g.Go(fmt.Sprintf("slow-%d", i), "sleep", 0.01, i))
	}
	var sums []client.Key
	for i := 0; i < len(layer); i += 10 {
		sums = append(sums, g.Go(fmt.Sprintf("part-%d", i), "sum", layer[i:i+10]...))
	}
	total := g.Go("total", "sum", toAny(sums)...)
	futs, err := cl.Submit(ctx, g, total)
	require.NoError(t, err)
	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond) // let work and results pile up on every worker
	victim := infos[1]
	require.NotZero(t, victim.PID)
	require.NoError(t, syscall.Kill(victim.PID, syscall.SIGKILL))
	v, err := futs[0].Result(ctx)
	require.NoError(t, err, c.logs())
	require.Equal(t, int64(299*300/2), asInt(t, v))
	infos, err = cl.Info(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 2, "the killed worker is gone")
}

func toAny(keys []client.Key) []any {
	out := make([]any, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out
}

// A task that kills every worker it runs on fails as killed-worker after three deaths, and the
// error says how the workers died.
func TestE2EKilledWorker(t *testing.T) {
	c := startCluster(t, 2)
	cl := c.connect(t)
	ctx := ctxT(t, 60*time.Second)
	g := client.NewGraph()
	k := g.Go("crasher", "crash")
	futs, err := cl.Submit(ctx, g, k)
	require.NoError(t, err)
	err = futs[0].Wait(ctx)
	var werr *wire.Error
	require.True(t, errors.As(err, &werr), "%v", err)
	require.Equal(t, wire.CodeKilledWorker, werr.Code)
	require.Contains(t, werr.Message, "killed", werr.Message)
	require.Equal(t, 3, strings.Count(werr.Message, "signal"), werr.Message)
	// the cluster keeps serving
	g = client.NewGraph()
	futs, err = cl.Submit(ctx, g, g.Go("after", "inc", 41))
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(42), asInt(t, v))
}

// A worker that knows only another worker's gossip address still joins and gets work.
func TestE2EJoinThroughWorker(t *testing.T) {
	g0, g1, g2, mp, mp0 := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	_, out := startProc(t, "scheduler", "--port", "0", "--gossip-port", fmt.Sprint(g0), "--dashboard-port", "-1", "--log-level", "warn")
	require.True(t, out.Scan())
	addr := strings.TrimSuffix(strings.Fields(out.Text())[2], ",")
	startProc(t, "worker", "--join", fmt.Sprintf("127.0.0.1:%d", g0), "--gossip-port", fmt.Sprint(g1), "--name", "first", "--nthreads", "1", "--log-level", "warn", "--metrics-port", fmt.Sprint(mp0), "--memory-limit", "0")
	startProc(t, "worker", "--join", fmt.Sprintf("127.0.0.1:%d", g1), "--gossip-port", fmt.Sprint(g2), "--name", "second", "--nthreads", "1", "--log-level", "warn", "--metrics-port", fmt.Sprint(mp), "--memory-limit", "1GiB")
	ctx := ctxT(t, 60*time.Second)
	cl, err := client.Connect(ctx, addr, client.Options{})
	require.NoError(t, err)
	defer cl.Close()
	require.Eventually(t, func() bool {
		infos, err := cl.Info(ctx)
		return err == nil && len(infos) == 2
	}, 30*time.Second, 50*time.Millisecond)
	g := client.NewGraph()
	k := g.Add(graph.Task{Key: "on-second", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(1)}, Workers: []string{"second"}})
	futs, err := cl.Submit(ctx, g, k)
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), asInt(t, v))
	infos, _ := cl.Info(ctx)
	var second string
	for _, w := range infos {
		if w.Name == "second" {
			second = w.Address
		}
	}
	require.Equal(t, second, futs[0].Worker())

	// the worker's own Prometheus endpoint (--metrics-port) counts the task it ran
	scrape := func(port int) string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(body)
	}
	body := scrape(mp)
	require.Contains(t, body, "shoal_worker_")
	require.Regexp(t, `shoal_worker_tasks_\w+ [1-9]`, body)
	valueIn := func(body, name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body)
		require.NotNil(t, m, "no %s in /metrics", name)
		f, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		return f
	}
	metric := func(name string) float64 { return valueIn(body, name) }
	// the Go soft limit follows --memory-limit (0.7 of it, the spill threshold)
	require.Equal(t, float64(1<<30), metric("shoal_worker_memory_limit_bytes"))
	require.InDelta(t, 0.7*float64(1<<30), metric("go_gc_gomemlimit_bytes"), 1)
	// --memory-limit 0 is no limit, as in dask: the machine's memory, and no soft limit
	first := scrape(mp0)
	require.Equal(t, float64(memTotal(t)), valueIn(first, "shoal_worker_memory_limit_bytes"))
	require.Equal(t, float64(math.MaxInt64), valueIn(first, "go_gc_gomemlimit_bytes"))
	require.Greater(t, metric("shoal_worker_process_memory_bytes"), float64(1<<20))
	// a one-thread worker runs its Go side on one P (see goProcs in cli/worker.go), unless
	// GOMAXPROCS was set for the test run
	if os.Getenv("GOMAXPROCS") == "" {
		require.Equal(t, 1.0, metric("go_sched_gomaxprocs_threads"))
	}
}

// memTotal is the machine's memory (MemTotal in /proc/meminfo), in bytes.
func memTotal(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^MemTotal:\s+(\d+) kB$`).FindStringSubmatch(string(b))
	require.NotNil(t, m, "no MemTotal in /proc/meminfo")
	kb, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	return kb << 10
}

func TestCLIHelp(t *testing.T) {
	for _, cmd := range []string{"scheduler", "worker", "local", "status", "version", "demo"} {
		out, err := exec.Command(shoalBin, cmd, "--help").CombinedOutput()
		require.NoError(t, err, "%s --help: %s", cmd, out)
		require.Contains(t, string(out), "Usage: shoal "+cmd)
	}
	out, _ := exec.Command(shoalBin, "worker", "--help").CombinedOutput()
	for _, flag := range []string{"--join", "--nthreads", "--gomaxprocs", "--memory-limit", "--memory-target", "--memory-spill", "--memory-pause", "--local-dir", "--name", "--data-port", "--token-file", "--log-format"} {
		require.Contains(t, string(out), strings.TrimPrefix(flag, "-"), "worker --help lists %s", flag)
	}
	out, err := exec.Command(shoalBin, "nonsense").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "unknown command")
	out, err = exec.Command(shoalBin, "local", "--workers", "0").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "need at least 1")
	// refused before any process starts, as shoal worker refuses it
	out, err = exec.Command(shoalBin, "local", "--shutdown-grace", "-1s", "--dashboard-port", "-1").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "--shutdown-grace -1s: must not be negative")
}

func TestE2EStatus(t *testing.T) {
	c := startCluster(t, 2)
	out, err := exec.Command(shoalBin, "status", "--scheduler", c.Scheduler, "--json").CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), c.Workers[0])
	require.Contains(t, string(out), c.Workers[1])
	out, err = exec.Command(shoalBin, "status", "--scheduler", c.Scheduler).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "local-0")
	get := func(path string) string {
		resp, err := http.Get(c.Dashboard + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode, path)
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	metrics := get("metrics")
	for _, m := range []string{`shoal_scheduler_tasks{state="memory"}`, "shoal_scheduler_workers 2", "shoal_scheduler_loop_busy_seconds_total",
		"shoal_scheduler_messages_received_total", "shoal_scheduler_transitions_total", "shoal_worker_memory_bytes"} {
		require.Contains(t, metrics, m)
	}
	require.Contains(t, get("api/v1/workers"), c.Workers[1])
	require.Contains(t, get("health"), "ok")
	out, err = exec.Command(shoalBin, "status", "--scheduler", "127.0.0.1:1").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "cannot reach the scheduler")
}

// SIGTERM on a worker mid-graph: it hands back what it has not started, finishes what it
// runs, says goodbye, and the graph completes on the others.
func TestE2EWorkerGracefulShutdown(t *testing.T) {
	c := startCluster(t, 3, "--no-restart")
	cl := c.connect(t)
	ctx := ctxT(t, 120*time.Second)
	g := client.NewGraph()
	var keys []client.Key
	for i := 0; i < 60; i++ {
		keys = append(keys, g.Go(fmt.Sprintf("nap-%d", i), "sleep", 0.1, i))
	}
	total := g.Go("naps", "sum", toAny(keys)...)
	futs, err := cl.Submit(ctx, g, total)
	require.NoError(t, err)
	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	victim := infos[0]
	require.NoError(t, syscall.Kill(victim.PID, syscall.SIGTERM))
	v, err := futs[0].Result(ctx)
	require.NoError(t, err, c.logs())
	require.Equal(t, int64(59*60/2), asInt(t, v))
	require.Eventually(t, func() bool { return !alive(victim.PID) }, 20*time.Second, 50*time.Millisecond, "the worker exits")
	resp, err := http.Get(c.Dashboard + "api/v1/events")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "worker closed", "the departure is recorded as a goodbye, not a crash")
}

// Gathering more keys from one worker than a message may carry frames (4096) works: the
// client splits its get_data requests.
func TestE2EGatherManyKeysFromOneWorker(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.connect(t)
	ctx := ctxT(t, 60*time.Second)
	g := client.NewGraph()
	keys := make([]client.Key, 5000)
	for i := range keys {
		keys[i] = g.Go(fmt.Sprintf("one-%d", i), "inc", i)
	}
	futs, err := cl.Submit(ctx, g, keys...)
	require.NoError(t, err)
	vals, err := cl.Gather(ctx, futs...)
	require.NoError(t, err)
	for i, v := range vals {
		require.Equal(t, int64(i+1), asInt(t, v))
	}
}

// --heap-profile and --worker-heap-profile write each process's Go heap profile when it exits
// cleanly: what it allocated since it started and what was still in use; a path that cannot
// be written is refused at start, naming the flag.
func TestE2EHeapProfiles(t *testing.T) {
	dir := t.TempDir()
	c := startCluster(t, 2, "--heap-profile", filepath.Join(dir, "sched.pprof"),
		"--worker-heap-profile", filepath.Join(dir, "w"))
	cl := c.connect(t)
	ctx := ctxT(t, 60*time.Second)
	g := client.NewGraph()
	var keys []client.Key
	for i := range 200 {
		keys = append(keys, g.Go(fmt.Sprintf("inc-%d", i), "inc", i))
	}
	futs, err := cl.Submit(ctx, g, g.Go("total", "sum", toAny(keys)...))
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(200*201/2), asInt(t, v))
	c.stop(t)

	workers, err := filepath.Glob(filepath.Join(dir, "w.*.heap.pprof"))
	require.NoError(t, err)
	require.Len(t, workers, 2, "one profile per worker")
	for _, file := range append(workers, filepath.Join(dir, "sched.pprof")) {
		f, err := os.Open(file)
		require.NoError(t, err)
		zr, err := gzip.NewReader(f)
		require.NoError(t, err, "%s is a gzipped profile", file)
		raw, err := io.ReadAll(zr)
		f.Close()
		require.NoError(t, err)
		// Shoal's own frames: which of its packages the sampled allocations (one per 512 KiB)
		// land in varies; a run whose scheduler samples held no cli frame failed here
		for _, want := range []string{"alloc_space", "inuse_space", "github.com/shoal-dev/shoal/"} {
			require.Contains(t, string(raw), want, "%s names %s", file, want)
		}
	}

	out, err := exec.Command(shoalBin, "scheduler", "--port", "0", "--heap-profile",
		filepath.Join(dir, "missing", "x.pprof")).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "--heap-profile")
}
