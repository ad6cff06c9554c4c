package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type localFlags struct {
	schedFlags
	workers, nthreads int
	memoryLimit       string
	mem               memFractions
	python, readyFile string
	localDir          string
	noRestart         bool
	startPython       bool
	workerProfile     string
	workerHeapProfile string
	dataIdle          time.Duration
	shutdownGrace     time.Duration
	resources         string
}

func (f *localFlags) register(fs *flag.FlagSet) {
	f.schedFlags.register(fs)
	fs.IntVar(&f.workers, "workers", 2, "number of worker processes")
	fs.IntVar(&f.nthreads, "nthreads", 1, "tasks each worker runs at once")
	fs.StringVar(&f.memoryLimit, "memory-limit", "auto", "memory limit per worker and its Python executors (e.g. 2GiB); auto: total memory divided by --workers; 0: no limit (never spill or pause)")
	f.mem.register(fs)
	fs.StringVar(&f.python, "python", defaultPython(), "Python interpreter the workers use for Python tasks")
	fs.StringVar(&f.readyFile, "ready-file", "", "write JSON {scheduler, dashboard, gossip, workers} here once every worker has registered")
	fs.StringVar(&f.localDir, "local-dir", os.TempDir(), "directory for the workers' spilled data")
	fs.BoolVar(&f.noRestart, "no-restart", false, "do not restart a worker process that dies")
	fs.BoolVar(&f.startPython, "start-python", false, "workers: "+startPythonHelp)
	fs.DurationVar(&f.dataIdle, "data-idle-timeout", 10*time.Minute, "workers drop a data-port connection silent this long between requests (0: never)")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", 0, "how long each worker lets the tasks it is running finish when the cluster stops (0: it stops them at once; the scheduler stops next, so no one would get their results)")
	fs.StringVar(&f.resources, "resources", "", "abstract resources each worker offers, e.g. GPU=1,MEM=16e9 (tasks asking for them run only where they are free)")
	fs.StringVar(&f.workerProfile, "worker-cpu-profile", "", "write a Go CPU profile of each worker process to PREFIX.<worker name>.pprof")
	fs.StringVar(&f.workerHeapProfile, "worker-heap-profile", "", "write a Go heap profile of each worker process to PREFIX.<worker name>.heap.pprof when it exits (see --heap-profile)")
}

func runLocal(args []string) error {
	var f localFlags
	var parentPID int
	var parentDir string
	fs := newFlagSet("local", "", "Run a whole cluster on this machine: a scheduler in this process and --workers worker\nprocesses (each its own child process, restarted if it dies), all on real sockets.\nCtrl-C stops everything.")
	f.register(fs)
	fs.IntVar(&parentPID, "parent-pid", 0, "stop everything, as on SIGTERM, once process `PID` (the one that started this one, e.g. Python's LocalCluster) has exited")
	fs.StringVar(&parentDir, "parent-dir", "", "with --parent-pid: remove this `directory` (the parent's files for this cluster) after stopping because the parent exited")
	ctx, done, err := start(fs, &f.common, args)
	if err != nil {
		return err
	}
	defer done()
	if parentPID > 0 {
		var orphaned atomic.Bool
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go watchParent(ctx, parentPID, func() { orphaned.Store(true); cancel() })
		defer func() { // after lc.close: nothing is left to read the parent's files
			if orphaned.Load() && parentDir != "" {
				os.RemoveAll(parentDir)
			}
		}()
	}
	lc, err := startLocal(ctx, f)
	if err != nil {
		return err
	}
	defer lc.close()
	fmt.Printf("scheduler at %s, gossip at %s, %d workers\n", lc.sched.addr, lc.sched.gossip.Addr(), f.workers)
	if lc.sched.dashboard != "" {
		fmt.Printf("dashboard at %s\n", lc.sched.dashboard)
	}
	<-ctx.Done()
	return nil
}

// watchParent calls gone once process pid is no longer this process's parent: it exited and
// the kernel gave this process a new parent. It polls getppid, which names the parent process,
// rather than using PR_SET_PDEATHSIG, which fires when the parent's thread that started this
// process ends (a Python thread that created a LocalCluster, say) even though the parent lives.
func watchParent(ctx context.Context, pid int, gone func()) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if os.Getppid() != pid {
			fmt.Fprintf(os.Stderr, "shoal local: parent process %d exited; stopping\n", pid)
			gone()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// localCluster is a scheduler in this process and supervised worker child processes.
type localCluster struct {
	sched   *schedProc
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	procs   map[string]*exec.Cmd
	closing bool

	workerProfile     string // --worker-cpu-profile prefix
	workerHeapProfile string // --worker-heap-profile prefix

	// for Scale: the worker slots (base names, in start order) and the arguments to start more
	ctx     context.Context // ends when the cluster closes
	self    string
	base    []string
	restart bool
	slots   []string
	stopped map[string]bool // slots scaled away: their process is not restarted
	scaleMu sync.Mutex
}

func startLocal(ctx context.Context, f localFlags) (*localCluster, error) {
	if f.workers < 1 {
		return nil, fmt.Errorf("--workers %d: need at least 1", f.workers)
	}
	if f.nthreads < 1 {
		return nil, fmt.Errorf("--nthreads %d: need at least 1", f.nthreads)
	}
	if err := f.mem.validate(); err != nil {
		return nil, err
	}
	if _, err := parseResources(f.resources); err != nil {
		return nil, err
	}
	if err := checkShutdownGrace(f.shutdownGrace); err != nil {
		return nil, err
	}
	mem := f.memoryLimit
	if mem == "auto" {
		mem = strconv.FormatInt(totalMemory()/int64(f.workers), 10)
	} else if _, err := parseBytes(mem); err != nil {
		return nil, fmt.Errorf("--memory-limit: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	sp, err := startScheduler(sctx, f.schedFlags)
	if err != nil {
		cancel()
		return nil, err
	}
	lc := &localCluster{sched: sp, cancel: cancel, procs: map[string]*exec.Cmd{}, workerProfile: f.workerProfile,
		workerHeapProfile: f.workerHeapProfile,
		stopped:           map[string]bool{}, restart: !f.noRestart, ctx: sctx}
	self, err := os.Executable()
	if err != nil {
		lc.close()
		return nil, err
	}
	base := []string{"worker", "--join", sp.gossip.Addr(), "--host", f.host, "--nthreads", strconv.Itoa(f.nthreads),
		"--memory-limit", mem, "--python", f.python, "--local-dir", f.localDir, "--log-format", f.logFormat, "--log-level", f.logLevel}
	base = append(base, f.mem.args()...)
	if f.startPython {
		base = append(base, "--start-python")
	}
	for _, kv := range [][2]string{{"--token-file", f.tokenFile}, {"--tls-cert", f.tlsCert}, {"--tls-key", f.tlsKey}, {"--tls-ca", f.tlsCA},
		{"--gossip-key-file", f.gossipKeyFile}, {"--advertise-host", f.advertiseHost}, {"--message-timeout", f.messageTimeout.String()},
		{"--data-idle-timeout", f.dataIdle.String()}, {"--shutdown-grace", f.shutdownGrace.String()}, {"--resources", f.resources}} {
		if kv[1] != "" {
			base = append(base, kv[0], kv[1])
		}
	}
	lc.self, lc.base = self, base
	for i := 0; i < f.workers; i++ {
		lc.addSlot()
	}
	sp.srv.SetScaler(lc)
	if err := lc.waitWorkers(ctx, f.workers, 60*time.Second); err != nil {
		lc.close()
		return nil, err
	}
	if f.readyFile != "" {
		if err := lc.writeReady(f.readyFile); err != nil {
			lc.close()
			return nil, err
		}
	}
	return lc, nil
}

// addSlot starts supervising one more worker process.
func (lc *localCluster) addSlot() {
	lc.mu.Lock()
	name := fmt.Sprintf("local-%d", len(lc.slots))
	lc.slots = append(lc.slots, name)
	lc.mu.Unlock()
	lc.supervise(lc.self, lc.base, name, lc.restart)
}

// Scale starts or retires worker processes until n run (a client's scale request). Workers
// go newest first: each is retired through the scheduler (its unique results are copied to
// the others first), then exits and is not restarted.
func (lc *localCluster) Scale(n int) error {
	lc.scaleMu.Lock()
	defer lc.scaleMu.Unlock()
	lc.mu.Lock()
	var live []string
	for _, s := range lc.slots {
		if !lc.stopped[s] {
			live = append(live, s)
		}
	}
	lc.mu.Unlock()
	switch {
	case n > len(live):
		for i := len(live); i < n; i++ {
			lc.addSlot()
		}
		return lc.waitWorkers(lc.ctx, n, 60*time.Second)
	case n < len(live):
		drop := live[n:]
		lc.mu.Lock()
		for _, s := range drop {
			lc.stopped[s] = true
		}
		lc.mu.Unlock()
		var names []string
		for _, w := range lc.sched.srv.WorkerInfos() {
			base, _, _ := strings.Cut(w.Name, ".")
			if slices.Contains(drop, base) {
				names = append(names, w.Name)
			}
		}
		if len(names) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(lc.ctx, 3*time.Minute)
		defer cancel()
		return lc.sched.srv.Retire(ctx, names)
	}
	return nil
}

// supervise runs one worker process and restarts it (with a new name) when it dies, telling
// the scheduler how it ended so a killed-worker error can say why. A process that exits with
// code 0 was told to close (retired by the scheduler) and is not restarted.
func (lc *localCluster) supervise(self string, base []string, name string, restart bool) {
	lc.wg.Add(1)
	go func() {
		defer lc.wg.Done()
		quickFails := 0
		for gen := 0; ; gen++ {
			n := name
			if gen > 0 {
				n = fmt.Sprintf("%s.%d", name, gen)
			}
			args := append(append([]string{}, base...), "--name", n)
			if lc.workerProfile != "" {
				args = append(args, "--cpu-profile", lc.workerProfile+"."+n+".pprof")
			}
			if lc.workerHeapProfile != "" {
				args = append(args, "--heap-profile", lc.workerHeapProfile+"."+n+".heap.pprof")
			}
			cmd := exec.Command(self, args...)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			lc.mu.Lock()
			if lc.closing {
				lc.mu.Unlock()
				return
			}
			started := time.Now()
			err := cmd.Start()
			if err == nil {
				lc.procs[n] = cmd
			}
			lc.mu.Unlock()
			if err != nil {
				lc.sched.log.Error("cannot start worker", "err", err)
				return
			}
			err = cmd.Wait()
			lc.mu.Lock()
			delete(lc.procs, n)
			closing := lc.closing || lc.stopped[name]
			lc.mu.Unlock()
			if closing {
				return
			}
			if err == nil {
				lc.sched.log.Info("worker process exited after the scheduler closed it", "worker", n)
				return
			}
			reason := exitReason(cmd.ProcessState, err)
			lc.sched.log.Warn("worker process ended", "worker", n, "pid", cmd.Process.Pid, "how", reason)
			lc.sched.srv.ReportWorkerExit(n, reason)
			if !restart {
				return
			}
			// A worker that keeps dying right after it starts has a configuration problem
			// (bad TLS files, unreachable scheduler): stop restarting it rather than loop.
			if time.Since(started) < 5*time.Second {
				quickFails++
			} else {
				quickFails = 0
			}
			if quickFails >= maxQuickRestarts {
				lc.sched.log.Error("worker keeps failing at start; not restarting it again", "worker", name, "last", reason)
				return
			}
			time.Sleep(time.Duration(300*(1<<min(quickFails, 4))) * time.Millisecond)
		}
	}()
}

// maxQuickRestarts bounds restarts of a worker that dies within seconds of starting.
const maxQuickRestarts = 5

func exitReason(ps *os.ProcessState, err error) string {
	if ps == nil {
		return fmt.Sprintf("process failed: %v", err)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %s (%d)", ws.Signal(), int(ws.Signal()))
	}
	return fmt.Sprintf("exited with code %d", ps.ExitCode())
}

func (lc *localCluster) waitWorkers(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if len(lc.sched.srv.WorkerInfos()) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d workers registered within %v", len(lc.sched.srv.WorkerInfos()), n, timeout)
		}
		select {
		case <-ctx.Done():
			return errors.New("interrupted while waiting for workers")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (lc *localCluster) writeReady(path string) error {
	ws := lc.sched.srv.WorkerInfos()
	names := make([]string, len(ws))
	for i, w := range ws {
		names[i] = w.Address
	}
	return writeJSONFile(path, map[string]any{"scheduler": lc.sched.addr, "dashboard": lc.sched.dashboard,
		"gossip": lc.sched.gossip.Addr(), "workers": names, "pid": os.Getpid()})
}

// close stops the workers (SIGTERM, then SIGKILL after 10 s) and then the scheduler.
func (lc *localCluster) close() {
	lc.mu.Lock()
	lc.closing = true
	procs := make([]*exec.Cmd, 0, len(lc.procs))
	for _, p := range lc.procs {
		procs = append(procs, p)
	}
	lc.mu.Unlock()
	for _, p := range procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { lc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		for _, p := range procs {
			p.Process.Kill()
		}
		<-done
	}
	lc.cancel()
	lc.sched.close()
}
