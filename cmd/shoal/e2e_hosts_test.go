package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/testhost"
	"github.com/stretchr/testify/require"
)

// End-to-end tests across test hosts (internal/testhost: network+UTS+PID namespaces on a
// bridge, addresses in 198.18.0.0/15): the scheduler on host1, a worker on each other host,
// every process bound to 0.0.0.0, the test itself a client reaching them over the bridge.
// They need root and skip, saying so, without it.

// hostCluster is a scheduler on Hosts[0] and one worker on each other host.
type hostCluster struct {
	*testhost.Cluster
	Sched     *testhost.Proc
	Scheduler string // control address, as printed by the scheduler
	Gossip    string
	Dashboard string
	Workers   []*testhost.Proc // Workers[i] runs on Hosts[i+1], named w<i+2>
	dir       string
	schedArgs []string
}

const (
	hostControlPort   = 8786
	hostGossipPort    = 7946
	hostDashboardPort = 8787
)

// startHostCluster builds hosts test hosts and starts the scheduler on host1 and a worker
// named w<i> on every host i > 1, all with --host 0.0.0.0; it returns once every worker has
// registered. workerArgs(i), when not nil, are added to Hosts[i]'s worker's command line.
func startHostCluster(t testing.TB, hosts int, workerArgs func(i int) []string) *hostCluster {
	t.Helper()
	c := &hostCluster{Cluster: testhost.New(t, hosts), dir: t.TempDir()}
	ctx := ctxT(t, time.Minute)
	h1 := c.Hosts[0]
	c.schedArgs = []string{shoalBin, "scheduler", "--host", "0.0.0.0", "--port", fmt.Sprint(hostControlPort),
		"--gossip-port", fmt.Sprint(hostGossipPort), "--dashboard-port", fmt.Sprint(hostDashboardPort),
		"--journal", filepath.Join(c.dir, "journal")}
	c.Sched = h1.Start(ctxT(t, time.Hour), "scheduler", c.schedArgs, nil) // lives as long as the test
	m, err := c.Sched.WaitOutput(ctx, regexp.MustCompile(`scheduler at (\S+), gossip at (\S+)\n(?s:.*)dashboard at (\S+)`))
	require.NoError(t, err)
	c.Scheduler, c.Gossip, c.Dashboard = m[1], m[2], m[3]
	for i := 1; i < hosts; i++ {
		var extra []string
		if workerArgs != nil {
			extra = workerArgs(i)
		}
		c.Workers = append(c.Workers, c.StartWorker(t, i, extra...))
	}
	cl := c.Connect(t)
	require.Eventually(t, func() bool {
		infos, err := cl.Info(ctx)
		return err == nil && len(infos) == hosts-1
	}, 30*time.Second, 50*time.Millisecond, "the workers did not all register")
	return c
}

// StartWorker starts worker w<i+1> on Hosts[i], bound to 0.0.0.0 and joining the scheduler's
// gossip address.
func (c *hostCluster) StartWorker(t testing.TB, i int, extra ...string) *testhost.Proc {
	t.Helper()
	h := c.Hosts[i]
	args := append([]string{shoalBin, "worker", "--host", "0.0.0.0", "--join", c.Hosts[0].Addr(hostGossipPort),
		"--name", fmt.Sprintf("w%d", i+1), "--nthreads", "1", "--local-dir", c.dir}, extra...)
	if more := os.Getenv("SHOAL_HOSTS_WORKER_ARGS"); more != "" { // e.g. "--log-level debug"
		args = append(args, strings.Fields(more)...)
	}
	return h.Start(ctxT(t, time.Hour), fmt.Sprintf("worker w%d", i+1), args, nil)
}

// Connect returns a Go client connected from the test process (the root namespace, through
// the bridge) to the scheduler's advertised address; it is closed at the end of the test.
func (c *hostCluster) Connect(t testing.TB) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Connect(ctx, c.Scheduler, client.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// inTestRange tells whether addr (host:port, or a URL's host) is a test host's address.
func inTestRange(t testing.TB, hostport string) bool {
	t.Helper()
	host, _, err := net.SplitHostPort(hostport)
	require.NoError(t, err, hostport)
	ip := net.ParseIP(host)
	_, testNet, _ := net.ParseCIDR("198.18.0.0/15")
	return ip != nil && testNet.Contains(ip)
}

func TestE2EHostsWildcardCluster(t *testing.T) {
	c := startHostCluster(t, 3, nil)
	ctx := ctxT(t, 2*time.Minute)
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	// --host 0.0.0.0 advertises the host's own address, never the wildcard or loopback
	require.Equal(t, h1.Addr(hostControlPort), c.Scheduler)
	require.Equal(t, h1.Addr(hostGossipPort), c.Gossip)
	require.Equal(t, "http://"+h1.Addr(hostDashboardPort)+"/", c.Dashboard)
	cl := c.Connect(t)
	require.Equal(t, c.Dashboard, cl.DashboardURL(), "the dashboard URL given to clients")

	infos, err := cl.Info(ctx)
	require.NoError(t, err)
	addrs := map[string]string{}
	for _, in := range infos {
		addrs[in.Name] = in.Address
		require.True(t, inTestRange(t, in.Address), "worker %s registered at %s", in.Name, in.Address)
	}
	require.Equal(t, h2.IP, strings.Split(addrs["w2"], ":")[0], "w2's data address is host2's")
	require.Equal(t, h3.IP, strings.Split(addrs["w3"], ":")[0], "w3's data address is host3's")

	// a value made on host2 and checked on host3: it crosses the bridge worker to worker
	const size = 24 << 20
	g := client.NewGraph()
	b := g.Add(graph.Task{Key: "made-on-host2", Kind: graph.KindGo, Func: "bytes", Args: []graph.Arg{graph.Lit(size)}, Workers: []string{"w2"}})
	n := g.Add(graph.Task{Key: "checked-on-host3", Kind: graph.KindGo, Func: "checkbytes", Args: []graph.Arg{graph.Ref(string(b))}, Workers: []string{"w3"}})
	s := g.Add(graph.Task{Key: "sum-on-host2", Kind: graph.KindGo, Func: "add", Args: []graph.Arg{graph.Ref(string(n)), graph.Lit(1)}, Workers: []string{"w2"}})
	futs, err := cl.Submit(ctx, g, n, s)
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.EqualValues(t, size, v, "host3 received host2's value whole")
	v, err = futs[1].Result(ctx)
	require.NoError(t, err)
	require.EqualValues(t, size+1, v, "and host2 host3's result")

	// the client fetches a result from the worker that holds it, across the bridge
	g = client.NewGraph()
	small := g.Add(graph.Task{Key: "inc-on-host3", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(41)}, Workers: []string{"w3"}})
	futs, err = cl.Submit(ctx, g, small)
	require.NoError(t, err)
	v, err = futs[0].Result(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 42, v)

	// shoal status, run on host3, shows both workers at their test-host addresses
	st := h3.Start(ctx, "status", []string{shoalBin, "status", "--scheduler", c.Scheduler}, nil)
	require.NoError(t, st.Wait(ctx), st.Output())
	out := st.Output()
	require.Contains(t, out, c.Dashboard)
	require.Regexp(t, regexp.MustCompile(`(?m)^scheduler\s+`+regexp.QuoteMeta(c.Scheduler)+`$`), out,
		"the scheduler's advertised address, not its wildcard bind")
	for name, addr := range addrs {
		require.Regexp(t, regexp.MustCompile(`(?m)^`+name+`\s+`+regexp.QuoteMeta(addr)+`\s`), out)
	}
}

// A numpy array made by a Python task on host2 reaches a Python task on host3 whole, through
// the peer transfer over the bridge, and the fetch copied it into w3's executor as it arrived
// (prefill: the run took it from there, as w3's metrics count).
func TestE2EHostsPythonValuePrefilled(t *testing.T) {
	py := os.Getenv("SHOAL_PYTHON")
	if py == "" {
		t.Skip("SHOAL_PYTHON is not set (make exports it: the .venv interpreter with the shoal package)")
	}
	const metricsPort = 9101
	c := startHostCluster(t, 3, func(i int) []string {
		if i == 2 {
			return []string{"--metrics-port", fmt.Sprint(metricsPort)}
		}
		return nil
	})
	ctx := ctxT(t, 2*time.Minute)
	script := `
import sys
import numpy as np
from shoal import Client

def make(n):
    return np.arange(n, dtype=np.uint32) * np.uint32(2654435761)

def digest(a):
    return int(a.sum(dtype=np.uint64)), int(a[-1]), a.nbytes

with Client(sys.argv[1]) as client:
    client.submit(int, 0, workers=["w3"]).result()  # w3's executor, which a prefill needs
    n = 3 << 20  # 12 MiB
    made = client.submit(make, n, workers=["w2"])
    got = client.submit(digest, made, workers=["w3"]).result()
    want = digest(make(n))
    assert got == want, (got, want)
    print("ok", got[2])
`
	out, err := exec.CommandContext(ctx, py, "-c", script, c.Scheduler).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "ok 12582912")

	got := metric(t, "http://"+c.Hosts[2].Addr(metricsPort)+"/metrics", "shoal_worker_prefilled_frames_total")
	require.NotEqual(t, "0", got, "the run took the frame its fetch prefilled")
}

// An interface name works as --host, and --advertise-host overrides what is advertised.
func TestE2EHostsInterfaceNameAndAdvertiseHost(t *testing.T) {
	c := testhost.New(t, 1)
	h := c.Hosts[0]
	ctx := ctxT(t, time.Minute)
	p := h.Start(ctx, "scheduler", []string{shoalBin, "scheduler", "--host", "eth0", "--port", "0", "--gossip-port", "0",
		"--dashboard-port", "0"}, nil)
	m, err := p.WaitOutput(ctx, regexp.MustCompile(`scheduler at (\S+), gossip at (\S+)\n(?s:.*)dashboard at http://(\S+)/`))
	require.NoError(t, err)
	for _, a := range m[1:] {
		require.Equal(t, h.IP, strings.Split(a, ":")[0], p.Output())
	}
	p.Kill()

	// advertise loopback while listening everywhere (what a NAT'd machine would do with its
	// public address): the advertised address is used everywhere
	p = h.Start(ctx, "scheduler", []string{shoalBin, "scheduler", "--host", "0.0.0.0", "--advertise-host", "lo",
		"--port", "0", "--gossip-port", "0", "--dashboard-port", "0"}, nil)
	m, err = p.WaitOutput(ctx, regexp.MustCompile(`scheduler at (\S+), gossip at (\S+)\n(?s:.*)dashboard at http://(\S+)/`))
	require.NoError(t, err)
	for _, a := range m[1:] {
		require.Equal(t, "127.0.0.1", strings.Split(a, ":")[0], p.Output())
	}

	// a name that is neither an address nor an interface is refused, naming the interfaces
	bad := h.Start(ctx, "worker", []string{shoalBin, "worker", "--host", "eth7"}, nil)
	require.Error(t, bad.Wait(ctx))
	require.Contains(t, bad.Output(), "--host eth7: neither an IP address nor an interface of this machine (interfaces: lo, eth0)")
}

// BenchmarkHostsTransfer measures, in the same run and on the same link (host2 → host3), a raw
// TCP stream and a 200 MB worker-to-worker transfer through Shoal: an Arrow table made on w2
// whose rows are counted on w3 (the timed part is w3's task, whose input moves peer to peer,
// from submit to result). Each iteration times one raw stream and one transfer, one after the
// other, so that both see the same load on the machine; it reports the medians of both and of
// their ratio (Shoal's throughput over the raw stream's).
//
//	go test ./cmd/shoal -run '^$' -bench HostsTransfer -benchtime 10x
//
// SHOAL_BENCH_PROFILE=DIR writes the workers' CPU profiles to DIR/w2.pprof (sender) and
// DIR/w3.pprof (receiver) when the benchmark ends; SHOAL_HOSTS_WORKER_ARGS adds arguments to
// every worker ("--log-level debug" logs each fetch's duration) and SHOAL_HOSTS_LOG=1 logs
// w3's output at the end (with -v).
func BenchmarkHostsTransfer(b *testing.B) {
	c := startBenchHosts(b, "")
	cl := c.Connect(b)
	ctx := ctxT(b, 10*time.Minute)
	const size = 200 << 20
	transfer := func(i int) time.Duration {
		g := client.NewGraph()
		tbl := g.Add(graph.Task{Key: fmt.Sprintf("t-%d", i), Kind: graph.KindGo, Func: "arrow_bytes_table", Args: []graph.Arg{graph.Lit(size)}, Workers: []string{"w2"}})
		futs, err := cl.Submit(ctx, g, tbl)
		if err != nil || futs[0].Wait(ctx) != nil {
			b.Fatal(err)
		}
		start := time.Now()
		g = client.NewGraph()
		cnt := g.Add(graph.Task{Key: fmt.Sprintf("n-%d", i), Kind: graph.KindGo, Func: "row_count", Args: []graph.Arg{graph.Ref(string(tbl))}, Workers: []string{"w3"}})
		f2, err := cl.Submit(ctx, g, cnt)
		if err != nil {
			b.Fatal(err)
		}
		if v, err := f2[0].Result(ctx); err != nil || v == nil {
			b.Fatalf("row_count: %v, %v", v, err)
		}
		d := time.Since(start)
		f2[0].Release()
		futs[0].Release()
		return d
	}
	transfer(-1) // warm-up: first connections, the first 200 MB allocations fault in pages
	stream(ctx, b, c, size)
	var raw, kept, shoal []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw = append(raw, stream(ctx, b, c, size))
		kept = append(kept, streamKept(ctx, b, c, size))
		shoal = append(shoal, transfer(i))
	}
	b.StopTimer()
	reportTransfers(b, c, size, raw, kept, shoal)
}

// startBenchHosts starts the three-host cluster of the transfer benchmarks, with the workers'
// CPU profiles written to $SHOAL_BENCH_PROFILE/<prefix>w<N>.pprof when that is set.
func startBenchHosts(b *testing.B, prefix string) *hostCluster {
	var args func(int) []string
	dir := os.Getenv("SHOAL_BENCH_PROFILE")
	if dir != "" {
		args = func(i int) []string {
			return []string{"--cpu-profile", filepath.Join(dir, fmt.Sprintf("%sw%d.pprof", prefix, i+1))}
		}
	}
	c := startHostCluster(b, 3, args)
	if dir != "" {
		b.Cleanup(func() {
			for _, w := range c.Workers {
				w.Signal(os.Interrupt) // the profile is written at exit
				w.Wait(context.Background())
			}
		})
	}
	return c
}

// reportTransfers reports the medians of the raw streams' and Shoal's throughput and of their
// per-iteration ratio (ratio: against the raw stream, the measure; ratio-kept: against
// the stream whose receiver keeps the bytes, as a transfer does).
func reportTransfers(b *testing.B, c *hostCluster, size int64, raw, kept, shoal []time.Duration) {
	gbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e9 }
	ratios := make([]float64, len(raw))
	keptRatios := make([]float64, len(raw))
	for i := range raw {
		ratios[i] = raw[i].Seconds() / shoal[i].Seconds()
		keptRatios[i] = kept[i].Seconds() / shoal[i].Seconds()
	}
	b.ReportMetric(gbps(medianDuration(raw)), "raw-GB/s")
	b.ReportMetric(gbps(medianDuration(kept)), "raw-kept-GB/s")
	b.ReportMetric(gbps(medianDuration(shoal)), "shoal-GB/s")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(median(keptRatios), "ratio-kept")
	b.ReportMetric(0, "ns/op")
	if os.Getenv("SHOAL_HOSTS_LOG") != "" {
		b.Logf("w3's log:\n%s", c.Workers[1].Output())
	}
}

func medianDuration(ds []time.Duration) time.Duration {
	fs := make([]float64, len(ds))
	for i, d := range ds {
		fs[i] = float64(d)
	}
	return time.Duration(median(fs))
}

func median(fs []float64) float64 {
	fs = slices.Clone(fs)
	slices.Sort(fs)
	if len(fs)%2 == 1 {
		return fs[len(fs)/2]
	}
	return (fs[len(fs)/2-1] + fs[len(fs)/2]) / 2
}

// BenchmarkHostsTransferPython is BenchmarkHostsTransfer with Python tasks: a 200 MB numpy
// array or bytes object made by a Python task on w2 and passed to a task on w3 that returns
// its size, driven by the Python client (benchmarks/hosts_transfer.py, SHOAL_PYTHON), one
// transfer after each raw stream. It also reports the median time the same task takes on w2,
// where the value is (ms-same-worker: what a Python task with that input costs anyway), and
// the median ratio of the raw stream to the difference (ratio-transfer: the transfer alone).
//
//	go test ./cmd/shoal -run '^$' -bench HostsTransferPython -benchtime 10x
func BenchmarkHostsTransferPython(b *testing.B) {
	for _, kind := range []string{"numpy", "bytes"} {
		b.Run(kind, func(b *testing.B) { benchPythonTransfer(b, kind) })
	}
}

func benchPythonTransfer(b *testing.B, kind string) {
	py := os.Getenv("SHOAL_PYTHON")
	if py == "" {
		b.Skip("SHOAL_PYTHON is not set (make exports it: the .venv interpreter with the shoal package)")
	}
	c := startBenchHosts(b, "py-"+kind+"-")
	ctx := ctxT(b, 10*time.Minute)
	const size = 200 << 20
	cmd := exec.CommandContext(ctx, py, "../../benchmarks/hosts_transfer.py", c.Scheduler, fmt.Sprint(b.N), fmt.Sprint(size), kind)
	stdin, err := cmd.StdinPipe()
	require.NoError(b, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(b, cmd.Start())
	defer cmd.Wait()
	defer stdin.Close()
	lines := bufio.NewScanner(stdout)
	next := func() (remote, local float64) {
		fmt.Fprintln(stdin, "go")
		if !lines.Scan() {
			b.Fatalf("hosts_transfer.py ended: %v\n%s", cmd.Wait(), stderr.String())
		}
		if _, err := fmt.Sscan(lines.Text(), &remote, &local); err != nil {
			b.Fatalf("hosts_transfer.py printed %q: %v", lines.Text(), err)
		}
		return remote, local
	}
	next() // warm-up
	stream(ctx, b, c, size)
	var raw, kept, shoal, same []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw = append(raw, stream(ctx, b, c, size))
		kept = append(kept, streamKept(ctx, b, c, size))
		remote, local := next()
		shoal = append(shoal, time.Duration(remote*float64(time.Second)))
		same = append(same, time.Duration(local*float64(time.Second)))
	}
	b.StopTimer()
	b.ReportMetric(float64(medianDuration(same).Microseconds())/1e3, "ms-same-worker")
	// the transfer's own share: a task on w3 less the same task on w2, where no byte moves
	// (for a bytes value that is the executor's copy out of pickle's in-band buffer, which
	// the task pays on any worker)
	var moved []float64
	for i := range raw {
		if d := shoal[i] - same[i]; d > 0 { // an iteration whose far task was not the slower one says nothing
			moved = append(moved, raw[i].Seconds()/d.Seconds())
		}
	}
	if len(moved) > 0 {
		b.ReportMetric(median(moved), "ratio-transfer")
	}
	reportTransfers(b, c, size, raw, kept, shoal)
}

// stream times a raw TCP stream of size bytes from host2 to host3.
func stream(ctx context.Context, b *testing.B, c *hostCluster, size int64) time.Duration {
	return timed(b, size)(testhost.StreamTCP(ctx, c.Hosts[1], c.Hosts[2], size))
}

// streamKept is stream with a receiver that keeps the bytes (testhost.StreamTCPKept).
func streamKept(ctx context.Context, b *testing.B, c *hostCluster, size int64) time.Duration {
	return timed(b, size)(testhost.StreamTCPKept(ctx, c.Hosts[1], c.Hosts[2], size))
}

func timed(b *testing.B, size int64) func(float64, error) time.Duration {
	return func(bps float64, err error) time.Duration {
		if err != nil {
			b.Fatal(err)
		}
		return time.Duration(float64(size) / bps * float64(time.Second))
	}
}
