package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/internal/member"
	"github.com/shoal-dev/shoal/worker"
)

type workerFlags struct {
	common
	join, host, name, localDir, memoryLimit, python, resources string
	advertiseHost                                              string
	nthreads, dataPort, gossipPort, nprocsPython, metricsPort  int
	gomaxprocs, maxDataConns                                   int
	startPython                                                bool
	dataIdle, deathTimeout, shutdownGrace                      time.Duration
	mem                                                        memFractions
}

const startPythonHelp = "start one Python executor as soon as the worker has registered, so that the first Python task does not wait for Python to start; off, executors start at the first Python task and a worker that runs only Go tasks starts none"

// memFractions are the worker's memory thresholds, fractions of --memory-limit (dask's
// distributed.worker.memory.target/spill/pause/terminate).
type memFractions struct{ target, spill, pause, terminate float64 }

func (m *memFractions) register(fs *flag.FlagSet) {
	fs.Float64Var(&m.target, "memory-target", 0.6, "spill results to disk when they exceed this fraction of --memory-limit (0: never)")
	fs.Float64Var(&m.spill, "memory-spill", 0.7, "spill results when the worker process and its executors use more than this fraction of --memory-limit, until back under --memory-target (0: off)")
	fs.Float64Var(&m.pause, "memory-pause", 0.8, "start no new task while memory is above this fraction of --memory-limit (0: never pause)")
	fs.Float64Var(&m.terminate, "memory-terminate", 0.95, "kill the Python executor using the most memory when the worker and its executors use more than this fraction of --memory-limit; its task fails (0: never)")
}

// validate names the first flag outside [0, 1].
func (m memFractions) validate() error {
	for _, v := range []struct {
		name string
		v    float64
	}{{"--memory-target", m.target}, {"--memory-spill", m.spill}, {"--memory-pause", m.pause}, {"--memory-terminate", m.terminate}} {
		if v.v < 0 || v.v > 1 {
			return fmt.Errorf("%s %g: must be a fraction of --memory-limit between 0 and 1", v.name, v.v)
		}
	}
	return nil
}

// args passes the thresholds on to a worker process.
func (m memFractions) args() []string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	return []string{"--memory-target", f(m.target), "--memory-spill", f(m.spill), "--memory-pause", f(m.pause),
		"--memory-terminate", f(m.terminate)}
}

func (f *workerFlags) register(fs *flag.FlagSet) {
	f.common.register(fs)
	fs.StringVar(&f.join, "join", "127.0.0.1:7946", "gossip address of any cluster member (the scheduler or another worker); comma-separated for several")
	fs.StringVar(&f.host, "host", "127.0.0.1", hostHelp("the data, gossip and metrics ports"))
	fs.StringVar(&f.advertiseHost, "advertise-host", "", advertiseHelp)
	fs.StringVar(&f.name, "name", "", "unique worker name (default: the data address)")
	fs.IntVar(&f.nthreads, "nthreads", runtime.NumCPU(), "how many tasks run at once")
	fs.StringVar(&f.memoryLimit, "memory-limit", "auto", "memory budget of the worker and its Python executors (e.g. 4GiB); auto: total memory; 0: no limit (the machine's memory, never spill or pause)")
	f.mem.register(fs)
	fs.StringVar(&f.localDir, "local-dir", os.TempDir(), "directory for spilled data (a private subdirectory is made and removed on exit)")
	fs.IntVar(&f.dataPort, "data-port", 0, "port serving results to peers and clients (0 picks a free port)")
	fs.IntVar(&f.gossipPort, "gossip-port", 0, "gossip port (0 picks a free port)")
	fs.StringVar(&f.python, "python", defaultPython(), "Python interpreter for Python tasks (runs -m shoal.executor); env SHOAL_PYTHON")
	fs.IntVar(&f.nprocsPython, "nprocs-python", 0, "Python executor processes, started lazily (default: --nthreads)")
	fs.BoolVar(&f.startPython, "start-python", false, startPythonHelp)
	fs.IntVar(&f.maxDataConns, "max-data-conns", 1024, "most data-port connections open at once, per role (peers, clients); more are refused as busy")
	fs.DurationVar(&f.dataIdle, "data-idle-timeout", 10*time.Minute, "drop a data-port connection silent this long between requests (0: never)")
	fs.IntVar(&f.metricsPort, "metrics-port", -1, "serve this worker's Prometheus /metrics on this port (-1: off)")
	fs.StringVar(&f.resources, "resources", "", "abstract resources this worker offers, e.g. GPU=1,MEM=16e9")
	fs.DurationVar(&f.deathTimeout, "death-timeout", 10*time.Minute, "after losing the scheduler (a cut link, a restart), keep results and executors and try to register again for this long, finding it through gossip; then exit (0: exit at once)")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long tasks already running may finish before the worker says goodbye and exits (queued ones go back to the scheduler at once; 0: stop them at once)")
	fs.IntVar(&f.gomaxprocs, "gomaxprocs", 0, "Go threads running at once in this worker process (0: --nthreads, at most the CPU count; env GOMAXPROCS wins)")
}

// goProcs is the GOMAXPROCS the worker process sets, or 0 to leave the runtime's.
//
// The Go side of a worker runs Go tasks (at most --nthreads at once) and otherwise moves
// messages: Python tasks run in executor processes. Go's default, one P per CPU, makes a
// worker that runs one tiny task at a time hand every wake-up (a message to send, an answer
// read) to another OS thread, which spins looking for work before it sleeps again; with
// several workers and their executors sharing a few cores, that spinning takes the CPU the
// tasks need. Measured on 2 cores with 2 workers × 1 thread (tree reduction of 2^15 leaves):
// 17–20k tasks/s and ~18 µs of worker CPU per task at GOMAXPROCS=2, 30–37k tasks/s and
// ~8 µs at 1.
func (f *workerFlags) goProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return 0
	}
	if f.gomaxprocs > 0 {
		return f.gomaxprocs
	}
	return min(max(f.nthreads, 1), runtime.NumCPU())
}

func defaultPython() string {
	if p := os.Getenv("SHOAL_PYTHON"); p != "" {
		return p
	}
	return "python3"
}

func runWorker(args []string) error {
	var f workerFlags
	fs := newFlagSet("worker", "", "Run a worker. It joins the cluster through any member's gossip address, learns the\nscheduler's control address from gossip, runs tasks and serves results to peers.")
	f.register(fs)
	ctx, done, err := start(fs, &f.common, args)
	if err != nil {
		return err
	}
	err = serveWorker(ctx, f)
	done()
	if errors.Is(err, worker.ErrRestart) {
		return restartProcess()
	}
	return err
}

// restartProcess starts this process again from scratch, with the same arguments and
// environment and the same pid (a client's restart): the worker and its executors are already
// closed, and a supervisor (`shoal local`, systemd) sees no exit.
func restartProcess() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return fmt.Errorf("restart: %w", syscall.Exec(exe, os.Args, os.Environ()))
}

func (f *workerFlags) config() (worker.Config, error) {
	log, err := f.logger()
	if err != nil {
		return worker.Config{}, err
	}
	token, err := f.token()
	if err != nil {
		return worker.Config{}, err
	}
	serverTLS, clientTLS, err := f.tlsConfigs()
	if err != nil {
		return worker.Config{}, err
	}
	res, err := parseResources(f.resources)
	if err != nil {
		return worker.Config{}, err
	}
	if err := f.mem.validate(); err != nil {
		return worker.Config{}, err
	}
	if f.gomaxprocs < 0 {
		return worker.Config{}, fmt.Errorf("--gomaxprocs %d: must be at least 1 (or 0 for the default)", f.gomaxprocs)
	}
	mem, fr := totalMemory(), f.mem
	if f.memoryLimit != "auto" {
		if mem, err = parseBytes(f.memoryLimit); err != nil {
			return worker.Config{}, fmt.Errorf("--memory-limit: %w", err)
		}
		if mem == 0 {
			// no limit, as in dask: the whole machine, and no threshold acts
			mem, fr = totalMemory(), memFractions{}
		}
	}
	ha, err := resolveHost(f.host, f.advertiseHost)
	if err != nil {
		return worker.Config{}, err
	}
	cfg := worker.DefaultConfig()
	cfg.Name, cfg.Host, cfg.DataPort, cfg.NThreads, cfg.MemoryLimit = f.name, ha.bind, f.dataPort, f.nthreads, mem
	cfg.AdvertiseHost = ha.advertise
	cfg.LocalDir, cfg.Token, cfg.Python, cfg.Resources, cfg.Logger = f.localDir, token, f.python, res, log
	cfg.Logs = logs.Last
	cfg.ServerTLS, cfg.ClientTLS = serverTLS, clientTLS
	cfg.SpillFraction, cfg.ProcessSpillFraction, cfg.PauseFraction = fr.target, fr.spill, fr.pause
	cfg.TerminateFraction = fr.terminate
	cfg.NProcsPython, cfg.StartPython = f.nprocsPython, f.startPython
	if cfg.NProcsPython == 0 {
		cfg.NProcsPython = f.nthreads
	}
	cfg.Version = version
	cfg.MaxDataConns, cfg.DataIdleTimeout, cfg.MessageTimeout = f.maxDataConns, f.dataIdle, f.messageTimeout
	cfg.Reconnect = f.deathTimeout
	if err := checkShutdownGrace(f.shutdownGrace); err != nil {
		return worker.Config{}, err
	}
	cfg.ShutdownGrace = f.shutdownGrace
	return cfg, cfg.Validate()
}

func serveWorker(ctx context.Context, f workerFlags) (err error) {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	gkey, err := f.gossipKey(cfg.Host, cfg.Token)
	if err != nil {
		return err
	}
	// After a loss the scheduler is sought through gossip (set once gossip runs, below).
	var locate func(context.Context) (string, error)
	cfg.Locate = func(ctx context.Context) (string, error) {
		if locate == nil {
			return "", errors.New("gossip is not running yet")
		}
		return locate(ctx)
	}
	w, err := worker.New(cfg)
	if err != nil {
		return err
	}
	defer w.Close()
	if err := checkAdvertised("the worker's data address", w.DataAddr()); err != nil {
		return err
	}
	if procs := f.goProcs(); procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
	log := cfg.Logger.With("worker", w.Name())
	// Keep the Go heap's garbage from growing past what the memory monitor tolerates for the
	// whole worker: the GC then runs (cheaply: results are pointer-free byte slices) before
	// freed results pile up. GOMEMLIMIT, when set, wins.
	if os.Getenv("GOMEMLIMIT") == "" && cfg.ProcessSpillFraction > 0 {
		debug.SetMemoryLimit(int64(cfg.ProcessSpillFraction * float64(w.MemoryLimit())))
	}
	ballast := make([]byte, gcBallast(debug.SetMemoryLimit(-1))) // the limit in force, GOMEMLIMIT's too
	defer runtime.KeepAlive(ballast)
	stopMetrics, err := serveWorkerMetrics(w, cfg.Host, f.metricsPort, cfg.Token, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	mc := member.DefaultConfig()
	mc.Name = "worker@" + w.DataAddr()
	mc.BindAddr, mc.AdvertiseAddr, mc.BindPort, mc.Token, mc.Logger = cfg.Host, cfg.AdvertiseHost, f.gossipPort, gkey, cfg.Logger
	mc.Meta = member.Meta{Role: "worker", Name: w.Name(), Data: w.DataAddr(), NThreads: cfg.NThreads, Resources: cfg.Resources, Version: version}
	g, err := member.New(mc)
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	if err := checkAdvertised("the worker's gossip address", g.Addr()); err != nil {
		g.Shutdown()
		return err
	}
	defer func() {
		// Leave waits for the news to spread; a restarting worker does not (it took a third of
		// a second of client.restart()): the scheduler has already dropped it, and its old
		// gossip identity (named after its old data port) is declared dead in time.
		wait := time.Second
		if errors.Is(err, worker.ErrRestart) {
			wait = 20 * time.Millisecond
		}
		g.Leave(wait)
		g.Shutdown()
	}()
	seeds := strings.Split(f.join, ",")
	joinCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var sched member.Node
	for {
		if _, err = g.Join(seeds); err == nil {
			if sched, err = g.WaitFor(joinCtx, func(n member.Node) bool { return n.Meta.Role == "scheduler" && n.Meta.Control != "" }); err == nil {
				break
			}
		}
		select {
		case <-joinCtx.Done():
			return fmt.Errorf("could not join the cluster through %s: %v", f.join, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	log.Info("joined cluster", "scheduler", sched.Meta.Control, "data", w.DataAddr(), "gossip", g.Addr())
	go watchPeers(g, w)
	locate = locateScheduler(g, seeds)
	return w.Run(ctx, sched.Meta.Control)
}

// locateScheduler finds the scheduler's control address through gossip after the worker lost
// it: a scheduler that restarted is a new gossip member (perhaps elsewhere), which the worker
// meets by joining its seeds again.
func locateScheduler(g *member.Member, seeds []string) func(context.Context) (string, error) {
	isSched := func(n member.Node) bool { return n.Meta.Role == "scheduler" && n.Meta.Control != "" }
	return func(ctx context.Context) (string, error) {
		g.Join(seeds) // an error only means no seed answered yet: gossip may still know one
		n, err := g.WaitFor(ctx, isSched)
		if err != nil {
			return "", err
		}
		return n.Meta.Control, nil
	}
}

// watchPeers tells w about peers that leave or die (gossip), so that fetches from them are cut
// off at once. It ends when g shuts down and closes its events.
func watchPeers(g *member.Member, w *worker.Worker) {
	for ev := range g.Events() {
		if (ev.Type == member.EventDead || ev.Type == member.EventLeave) && ev.Node.Meta.Role == member.RoleWorker &&
			ev.Node.Meta.Data != "" && ev.Node.Meta.Data != w.DataAddr() {
			w.PeerGone(ev.Node.Meta.Data)
		}
	}
}

// gcBallast is the size of a worker's GC ballast: a pointer-free allocation that is never
// touched (so never resident, and never scanned) and lives as long as the worker, putting a
// floor under the collector's goal (twice the live heap). A worker's own live heap is a few MB
// while its values sit in segments and executors, so the collector ran after every ~2 MB of
// allocation, hundreds of times a second under small tasks: with GOGC=1000 the workers of the
// million-task graph took 23 % less CPU (docs/performance.md). The ballast is 32 MiB, or an
// eighth of the Go heap's soft limit (softLimit, math.MaxInt64 when none) when that is smaller:
// it counts against the limit.
func gcBallast(softLimit int64) int {
	const most = 32 << 20
	return int(min(most, max(softLimit, 0)/8))
}

// checkShutdownGrace refuses a negative --shutdown-grace (shoal worker, and shoal local before it
// starts any worker).
func checkShutdownGrace(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--shutdown-grace %v: must not be negative", d)
	}
	return nil
}
