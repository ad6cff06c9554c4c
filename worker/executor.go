package worker

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// exitWait bounds how long a dead or shut-down executor gets to exit before it is killed.
const exitWait = 3 * time.Second

// executor is one Python process speaking §3.5 of docs/protocol.md over a socketpair.
type executor struct {
	pid    int
	cmd    *exec.Cmd
	conn   *execConn
	funcs  map[string]bool // callables this process has received
	exited chan struct{}   // closed once the process has been waited for
	seq    uint64
	lane   int         // the thread number reported for tasks it ran as part of a batch
	shm    execWindows // shared-memory windows for large frames (executor_shm.go)
	seg    bool        // it takes segment-backed dependencies as descriptors (segment.go)
	batch  bool        // it takes a batch of runs as one runs message (runsMsg)
	loaded uint64      // the preloads generation it has (preload.go)
	// killedFor says why the worker killed it (the memory monitor), for its task's error.
	killedFor atomic.Pointer[string]
	keeps     bool         // it keeps large results in its memory (resident.go)
	runs      runsScratch  // what its batches' messages are made of (used by its holder only)
	log       *slog.Logger // the worker's
	// mem: dead is set once the process has exited and before its pid is freed; reading its
	// memory (resident.go) holds the lock for reading
	mem struct {
		sync.RWMutex
		dead bool
	}
	// forgets: the socket kept results are forgotten through (resident.go)
	forgets struct {
		sync.Mutex
		f *os.File
	}
}

// executorPool starts executors lazily, at most NProcsPython, and restarts dead ones on
// demand.
type executorPool struct {
	w       *Worker
	slots   chan struct{} // one token per executor in use or being started
	deaths  atomic.Int64
	lanes   atomic.Int64
	batched atomic.Int64 // tasks that ran behind another one in a batch
	// runsOut counts batches sent as one runs message; donesIn answers that came in a dones
	runsOut, donesIn atomic.Int64
	warming          atomic.Bool // warm is starting an executor
	// shmFrames counts payload frames sent through shared-memory windows
	shmFrames atomic.Int64
	// prefillsTaken counts those a fetch had copied into the window already (prefill.go)
	prefillsTaken atomic.Int64
	// segsOut counts segments passed to executors for runs; segsIn results that came back in one
	segsOut, segsIn atomic.Int64
	// kept counts results executors kept; keptUsed dependencies runs took from them; and
	// keptExported kept results copied out (resident.go)
	kept, keptUsed, keptExported atomic.Int64
	preloads                     preloads // uploaded files and worker plugins for every executor

	groups struct {
		sync.Mutex
		m map[string]*groupRuns
	}
	mu struct {
		sync.Mutex
		idle   []*executor
		all    map[*executor]struct{}
		closed bool
	}
}

func newExecutorPool(w *Worker) *executorPool {
	p := &executorPool{w: w, slots: make(chan struct{}, w.cfg.NProcsPython)}
	p.mu.all = make(map[*executor]struct{})
	p.groups.m = make(map[string]*groupRuns)
	return p
}

// groupRuns is how long a task group's Python runs took lately.
type groupRuns struct {
	avg time.Duration // moving average
	n   int
}

// observe records that a task of group g ran for d.
func (p *executorPool) observe(g string, d time.Duration) {
	p.groups.Lock()
	defer p.groups.Unlock()
	st := p.groups.m[g]
	if st == nil {
		if len(p.groups.m) >= 4096 {
			clear(p.groups.m)
		}
		p.groups.m[g] = &groupRuns{avg: d, n: 1}
		return
	}
	st.avg += (d - st.avg) / 4
	st.n++
}

// short tells whether tasks of group g are known to run for less than pyShortRun, and how
// long they took lately.
func (p *executorPool) short(g string) (time.Duration, bool) {
	p.groups.Lock()
	defer p.groups.Unlock()
	st := p.groups.m[g]
	if st == nil || st.n < 2 || st.avg >= pyShortRun {
		return 0, false
	}
	return st.avg, true
}

func (p *executorPool) live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.all)
}

// acquire returns an idle executor, one prefer says yes to if any (nil: the last one made
// idle), starting one when none is idle and the limit allows.
func (p *executorPool) acquire(ctx context.Context, prefer func(*executor) bool) (*executor, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	for n := len(p.mu.idle); n > 0; n = len(p.mu.idle) {
		i := n - 1
		if prefer != nil {
			for j, ex := range p.mu.idle {
				if prefer(ex) {
					i = j
					break
				}
			}
		}
		ex := p.mu.idle[i]
		p.mu.idle = slices.Delete(p.mu.idle, i, i+1)
		p.mu.Unlock()
		if !ex.isDead() {
			return ex, nil
		}
		// it died while idle (the memory monitor killed it, or it crashed): no task is to
		// blame, and none is sent to it
		how := p.dispose(ex)
		p.w.log.Warn("a Python executor died while idle", "pid", ex.pid, "how", how)
		p.mu.Lock()
	}
	p.mu.Unlock()
	ex, err := p.start(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return ex, nil
}

// warm starts an executor in the background when none is running: a worker's first Python
// task that waits for inputs from peers then has its executor (~0.1 s of Python start-up
// and imports) ready when they arrive, rather than starting it after them, and a fetch can
// copy those inputs into it as they come (prefill.go). It starts only what the task's run
// would have started. asked: the worker was told to start Python (Config.StartPython), so a
// failure is a warning rather than a note (a task's run would report it too).
func (p *executorPool) warm(ctx context.Context, asked bool) {
	if p.live() > 0 || !p.warming.CompareAndSwap(false, true) {
		return
	}
	started := p.w.goFunc(func() {
		defer p.warming.Store(false)
		if p.live() > 0 {
			return
		}
		ex, err := p.acquire(ctx, nil)
		if err != nil {
			log := p.w.log.Debug
			if asked && ctx.Err() == nil {
				log = p.w.log.Warn
			}
			log("could not start a Python executor ahead of a task", "err", err)
			return // the task's run starts one, or reports why it cannot
		}
		p.release(ex)
	})
	if !started { // the worker is closing
		p.warming.Store(false)
	}
}

// prefillTarget returns the executor a fetched value's frames are best copied to ahead of its
// task (prefill.go): the one acquire hands out next, else any; nil when there is none yet.
func (p *executorPool) prefillTarget() *executor {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.mu.idle); n > 0 {
		return p.mu.idle[n-1]
	}
	for ex := range p.mu.all {
		return ex
	}
	return nil
}

// release returns a healthy executor to the pool.
func (p *executorPool) release(ex *executor) {
	p.mu.Lock()
	closed := p.mu.closed
	if !closed {
		p.mu.idle = append(p.mu.idle, ex)
	}
	p.mu.Unlock()
	if closed {
		p.stop(ex)
	}
	<-p.slots
}

// releaseAnswered gives back an executor whose batch is answered; one that sent answers to
// runs it never had (a dones with more replies than runs) is killed instead.
func (p *executorPool) releaseAnswered(ex *executor) {
	if n := ex.conn.queuedAnswers(); n > 0 {
		p.w.log.Warn("Python executor sent more answers than it had runs; replacing it", "pid", ex.pid, "extra", n)
		ex.cmd.Process.Kill()
		p.discard(ex)
		return
	}
	p.release(ex)
}

// discard removes a dead executor and returns how it ended.
func (p *executorPool) discard(ex *executor) string {
	how := p.dispose(ex)
	<-p.slots
	return how
}

// dispose is discard for an executor that holds no slot (an idle one).
func (p *executorPool) dispose(ex *executor) string {
	p.deaths.Add(1)
	select {
	case <-ex.exited:
	case <-time.After(exitWait):
		ex.cmd.Process.Kill()
		<-ex.exited
	}
	ex.conn.close()
	ex.shm.closeAll()
	p.mu.Lock()
	delete(p.mu.all, ex)
	p.mu.Unlock()
	return ex.cmd.ProcessState.String()
}

// stop asks an executor to exit, killing it if it does not.
func (p *executorPool) stop(ex *executor) {
	ex.conn.send(&wire.Msg{Op: wire.OpShutdown})
	ex.conn.close()
	select {
	case <-ex.exited:
	case <-time.After(exitWait):
		ex.cmd.Process.Kill()
		<-ex.exited
	}
	ex.shm.closeAll()
	p.mu.Lock()
	delete(p.mu.all, ex)
	p.mu.Unlock()
}

// killAll kills every executor at once (a restart discards them: waiting for Python to exit
// cleanly took a third of a second).
func (p *executorPool) killAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ex := range p.mu.all {
		ex.cmd.Process.Kill()
	}
}

// closeAll shuts every executor down: idle ones are asked to exit, busy ones are killed.
func (p *executorPool) closeAll() {
	p.mu.Lock()
	p.mu.closed = true
	idle := p.mu.idle
	p.mu.idle = nil
	var busy []*executor
	for ex := range p.mu.all {
		busy = append(busy, ex)
	}
	p.mu.Unlock()
	for _, ex := range busy {
		isIdle := false
		for _, i := range idle {
			isIdle = isIdle || i == ex
		}
		if !isIdle {
			ex.cmd.Process.Kill()
		}
	}
	for _, ex := range idle {
		p.stop(ex)
	}
}

// executorEnv is what an executor's environment gets unless the worker's already says
// otherwise: a task slot is one core, so numerical libraries run one thread each (as dask's
// nanny does: each executor's BLAS using every core oversubscribed them, a matrix product took
// twice as long).
//
// Unlike dask's nanny, MALLOC_TRIM_THRESHOLD_ is not set to 65536: that fixes glibc's mmap
// threshold at 128 KiB, so every allocation above that (a pandas column of a partition, a
// msgpack buffer) became an mmap, page faults on first touch and a munmap at its free. TPC-H
// SF 1 on 2 workers, alternated runs: Q3 0.95 → 0.67 s, Q9 1.41 → 1.11 s, Q18 0.62 → 0.49 s
// without it (docs/performance.md). The glibc variables executors do get are heapKeep's.
var executorEnv = [][2]string{
	{"OMP_NUM_THREADS", "1"},
	{"MKL_NUM_THREADS", "1"},
	{"OPENBLAS_NUM_THREADS", "1"},
}

func executorDefaults() []string {
	var out []string
	for _, kv := range executorEnv {
		if _, set := os.LookupEnv(kv[0]); !set {
			out = append(out, kv[0]+"="+kv[1])
		}
	}
	return out
}

// heapKeep is the freed memory each executor's C heap keeps for its next allocations, and the
// environment that has glibc do so, unless the worker's environment sets any of glibc's
// malloc variables itself (then it is left to them: nil).
//
// By default glibc maps each block of 32 MiB or more on its own and unmaps it when freed, so a
// numpy array of that size is fresh memory every time: the kernel zeroes it page by page as it
// is first touched. On this project's VMs that zeroing ran at a fraction of memory speed and
// varied from run to run; it was most of an array rechunk's time (dask's task-based rechunk,
// a 12,000² array rows → columns: 1.3–1.4 s with the memory kept against 2.6–4.5 s without,
// the executors' system time 0.2–0.5 s against 2–5 s; docs/performance.md, "Arrays: freed
// memory kept"). So large blocks come from the heap (MALLOC_MMAP_MAX_=0), and a trim keeps
// heapKeep bytes at its top (MALLOC_TOP_PAD_, MALLOC_TRIM_THRESHOLD_): an eighth of the
// worker's memory limit shared by its executors, at most 2 GiB each. The worker counts that
// memory as the executor's (its RSS) against the limit, so an executor idle for trimIdle
// gives it back, and a busy one returns every 10 s what lies in holes below live blocks
// (malloc_trim; SHOAL_EXECUTOR_TRIM_IDLE: shoal.executor.trim_when_idle and its
// TRIM_HOLES_EVERY). Large blocks that a thread other than the executor's main one allocates
// beyond its arena's 64 MiB heaps are still mapped by glibc.
func heapKeep(limit int64, executors int) (int64, []string) {
	for _, v := range os.Environ() {
		if strings.HasPrefix(v, "MALLOC_") || strings.HasPrefix(v, "GLIBC_TUNABLES=") && strings.Contains(v, "glibc.malloc.") {
			return 0, nil
		}
	}
	if limit <= 0 {
		limit = DefaultMemoryLimit
	}
	keep := min(limit/8/int64(max(executors, 1)), 2<<30)
	if keep < minHeapKeep {
		return 0, nil // too little to keep a large array: glibc's own way
	}
	k := strconv.FormatInt(keep, 10)
	env := []string{"MALLOC_MMAP_MAX_=0", "MALLOC_TOP_PAD_=" + k, "MALLOC_TRIM_THRESHOLD_=" + k,
		"SHOAL_EXECUTOR_HEAP_KEEP=" + k} // (the executor takes these out of its tasks' environment)
	if _, set := os.LookupEnv("SHOAL_EXECUTOR_TRIM_IDLE"); !set {
		env = append(env, "SHOAL_EXECUTOR_TRIM_IDLE="+strconv.FormatFloat(trimIdle.Seconds(), 'g', -1, 64))
	}
	return keep, env
}

// minHeapKeep: below this (a small memory limit shared by many executors), executors keep
// nothing and glibc maps large blocks as it does by default.
const minHeapKeep = 64 << 20

// trimIdle is how long an executor runs nothing before it gives its kept heap back
// (SHOAL_EXECUTOR_TRIM_IDLE in seconds overrides it). A minute, so that work arriving tens of
// seconds apart — a user looking at one result before asking for the next — finds its memory:
// with 10 s (jemalloc's default decay), a rechunk run after 16 s of other work took 3.8–4.3 s
// against 1.9 s with its memory kept (docs/performance.md, "Rechunk: memory given back is
// cold").
const trimIdle = time.Minute

// start launches `<Python> <PythonArgs>` with one end of a socketpair as fd 3, accepts its
// handshake and waits for ready.
func (p *executorPool) start(ctx context.Context) (*executor, error) {
	cfg := p.w.cfg
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	// Both ends stay in blocking mode: see execConn.
	mine, theirs := os.NewFile(uintptr(fds[0]), "executor-worker-end"), os.NewFile(uintptr(fds[1]), "executor-end")
	defer theirs.Close()
	nc := newExecConn(mine, cfg.limits())
	var tok [16]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])

	ex := &executor{funcs: make(map[string]bool), exited: make(chan struct{}),
		lane: int(p.lanes.Add(1)-1) % max(cfg.NThreads, 1), log: p.w.log}
	forgetEnd, err := ex.openForgets()
	if err != nil {
		nc.close()
		return nil, err
	}
	defer forgetEnd.Close()
	cmd := exec.Command(cfg.Python, cfg.PythonArgs...)
	cmd.ExtraFiles = []*os.File{theirs, forgetEnd} // fds 3 and 4
	// an executor dies with its worker, even one killed with SIGKILL: left running, it kept
	// its task going and a lock that task held (the scheduler then waited out its lease)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "SHOAL_EXECUTOR_FD=3", "SHOAL_EXECUTOR_TOKEN="+token, "SHOAL_EXECUTOR_FORGET_FD=4")
	cmd.Env = append(cmd.Env, executorDefaults()...)
	_, heapEnv := heapKeep(cfg.MemoryLimit, cfg.NProcsPython)
	cmd.Env = append(cmd.Env, heapEnv...)
	cmd.Env = append(cmd.Env, "SHOAL_STACK_DIR="+p.w.scratch.path, // call stacks (stack.go)
		"SHOAL_UPLOAD_DIR="+filepath.Join(p.w.scratch.path, "uploads"),
		"SHOAL_WORKER_ADDRESS="+p.w.dataAddr, "SHOAL_WORKER_NAME="+cfg.Name)
	// for a task's own client (get_client): where the worker writes the scheduler's address
	// once it has one (executors may start before), and the token, which the executor takes
	// out of its environment before any task runs
	cmd.Env = append(cmd.Env, "SHOAL_SCHEDULER_FILE="+filepath.Join(p.w.scratch.path, "scheduler"),
		"SHOAL_CLUSTER_TOKEN="+cfg.Token)
	if _, set := os.LookupEnv("SHOAL_EXECUTOR_SHM_IDLE"); !set {
		cmd.Env = append(cmd.Env, "SHOAL_EXECUTOR_SHM_IDLE="+strconv.FormatInt(shmIdleBytes(cfg.MemoryLimit), 10))
	}
	if shmEnabled {
		// this worker takes results in segments (an executor writes them only when told so)
		cmd.Env = append(cmd.Env, "SHOAL_EXECUTOR_SEGMENTS=1")
	} else {
		cmd.Env = append(cmd.Env, "SHOAL_EXECUTOR_SHM=0") // the last value of a variable wins
	}
	log := p.w.log.With("python", cfg.Python)
	cmd.Stdout = &lineLogger{log: log, stream: "stdout"}
	cmd.Stderr = &lineLogger{log: log, stream: "stderr"}
	cmd.WaitDelay = exitWait // a grandchild holding our pipes must not block Wait

	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		nc.close()
		ex.closeForgets()
		return nil, ErrClosed
	}
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		nc.close()
		ex.closeForgets()
		return nil, fmt.Errorf("starting %s: %w", cfg.Python, err)
	}
	ex.pid, ex.cmd = cmd.Process.Pid, cmd
	p.mu.all[ex] = struct{}{}
	p.mu.Unlock()
	reap := func() {
		// wait for the exit without reaping: its pid stays taken until cmd.Wait, and nothing
		// may read its memory (resident.go) after that
		var info unix.Siginfo
		for unix.Waitid(unix.P_PID, ex.pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
		}
		ex.mem.Lock()
		ex.mem.dead = true
		ex.mem.Unlock()
		// before anything waits on its exit (a retry of its task reads the store again)
		p.w.residentsLost(ex)
		ex.closeForgets()
		cmd.Wait()
		close(ex.exited)
	}
	if !p.w.goFunc(reap) { // the worker is closing
		cmd.Process.Kill()
		reap()
		nc.close()
		p.mu.Lock()
		delete(p.mu.all, ex)
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if err := p.handshake(ctx, ex, nc, token); err != nil {
		nc.close()
		cmd.Process.Kill()
		<-ex.exited
		p.mu.Lock()
		delete(p.mu.all, ex)
		p.mu.Unlock()
		return nil, fmt.Errorf("the Python executor (pid %d) did not start: %w (%s)", ex.pid, err, cmd.ProcessState)
	}
	p.w.log.Info("Python executor started", "pid", ex.pid)
	return ex, nil
}

// handshake accepts the executor's handshake (role executor, its token) and waits for ready,
// for at most wire.HandshakeTimeout; an executor that dies first, or a cancelled ctx, ends
// the wait at once.
func (p *executorPool) handshake(ctx context.Context, ex *executor, c *execConn, token string) error {
	done := make(chan struct{})
	defer close(done)
	timedOut := make(chan struct{})
	go func() {
		t := time.NewTimer(wire.HandshakeTimeout)
		defer t.Stop()
		select {
		case <-ex.exited:
		case <-ctx.Done():
		case <-t.C:
			close(timedOut)
		case <-done:
			return
		}
		c.close() // wakes the blocked read below
	}()
	err := func() error {
		h, err := wire.ReadHello(c)
		var herr *wire.HandshakeError
		if errors.As(err, &herr) {
			wire.WriteAnswer(c, herr.Status, herr.Message)
			return herr
		}
		if err != nil {
			return err
		}
		if herr := wire.CheckHello(h, token, wire.RoleExecutor); herr != nil {
			wire.WriteAnswer(c, herr.Status, herr.Message)
			return herr
		}
		if err := wire.WriteAnswer(c, wire.StatusOK, ""); err != nil {
			return err
		}
		m, x, _, err := c.recvExt()
		if err != nil {
			return err
		}
		if m.Op != wire.OpReady {
			return fmt.Errorf("expected ready, got %q", m.Op)
		}
		ex.shm.setUsable(shmEnabled && x.SHM == 1)
		ex.seg = shmEnabled && x.Segments == 1
		ex.batch = batchRunsEnabled && x.Batch == 1
		if ex.seg && keepEnabled && ex.probeKeep(x.Keep) {
			if err := c.send(&wire.Msg{Op: "keep"}); err != nil {
				return err
			}
			ex.keeps = true
		}
		return nil
	}()
	if err != nil {
		select {
		case <-timedOut:
			return fmt.Errorf("no handshake within %v: %w", wire.HandshakeTimeout, err)
		default:
		}
		return err
	}
	ex.conn = c
	return nil
}

// Short Python tasks are sent to an executor in batches: while the executor runs one, the
// next run messages already wait in its socket, so it goes from one task to the next without
// a round trip through the worker, and the worker writes several runs with one write(2).
// A task joins a batch only when its group is known to be short (its recent runs took less
// than pyShortRun on average). The task the thread popped runs last in its batch, behind the
// next ready Python tasks: every task of a batch is then reported as soon as it is done (the
// popped one by execute, when runPy returns; the others by finish).
//
// A batch holds at most pyBatch tasks, and only as many as are expected to run for pyBatchTime
// in all (by their groups' recent averages): the executor answers a batch with one write once
// it has run all of it, so a task's report may wait that long, like the reports a dask worker
// sends every 2 ms. Measured on the tree reduction (2^15 leaves, 2 workers × 1 thread,
// alternated runs of 5 repetitions each): batches of at most 4 tasks took 44–63 µs of CPU per
// task over all processes (least per run), at most 64 within 2 ms took 32–38 µs; the answers
// and reports of a batch then cost one write(2) and one read(2) on each side for up to 64
// tasks.
//
// A batch is written with one write(2) before its answers are read, so it must fit in the
// socket's buffer: were the worker blocked writing runs while the executor is blocked writing
// a large answer, neither would read. The socket is empty when a batch is written (every
// earlier run was read by the executor before it answered), so a batch of at most
// pyBatchBytes never blocks the writer; a task whose run alone is bigger is not batched.
const pyBatchBytes = 64 << 10

// A batch goes to an executor that announced `batch: 1` as one `runs` message (runsMsg), and
// its answers come back as `dones` messages: one header to decode and one frame prefix to
// parse for the whole batch instead of one per run, which is most of what an executor spends
// on a short run besides the run itself. Measured with benchmarks/executor_loop.py (batches
// of 20 runs like the million-task graph's adds): see docs/performance.md.
//
// variables for tests
var (
	batchRunsEnabled = os.Getenv("SHOAL_EXECUTOR_BATCH") != "0"
	pyShortRun       = time.Millisecond
	pyBatch          = 64
	pyBatchTime      = 2 * time.Millisecond
)

// pyRun is one task's run message.
type pyRun struct {
	ts     *task
	msg    wire.Msg // the run message (a run's pyRun comes from a pool: recycle)
	frames [][]byte
	fdata  []byte   // the pickled function, in case this executor has not seen it
	segs   []runSeg // segment-backed dependencies, whose frames are empty in frames
	res    []runRes // dependencies kept in an executor, whose frames are empty in frames
	keep   bool     // the executor may keep the result (the task has dependents, and it keeps)
}

// runRes is a dependency kept in an executor (resident.go): item Item of the run.
type runRes struct {
	res  *resident
	item int
}

// pyRuns keeps the runs runPyOnce has finished with: a run message is a whole wire.Msg (most
// of a kilobyte), and the million-task graph's worker made one per task, a third of all it
// allocated.
var pyRuns = sync.Pool{New: func() any { return new(pyRun) }}

// recycle gives r to pyRunFor again, once its run was answered and nothing refers to it any
// more (runPyOnce reads only the unanswered runs of a batch after that).
func (r *pyRun) recycle() {
	r.reset()
	pyRuns.Put(r)
}

// reset empties r, keeping its item and frame lists' arrays, cleared: they referred to the
// store's values.
func (r *pyRun) reset() {
	items, frames := r.msg.Items, r.frames
	clear(items)
	clear(frames)
	*r = pyRun{}
	r.msg.Items, r.frames = items[:0], frames[:0]
}

// unuse ends the uses of the run's kept dependencies (resident.use: made by pyRunFor for an
// executor), once the run was answered or will not be sent.
func (r *pyRun) unuse() {
	for _, rr := range r.res {
		rr.res.unuse()
	}
}

// keptIn reports whether ex keeps a dependency of the run.
func (r *pyRun) keptIn(ex *executor) bool {
	for _, rr := range r.res {
		if rr.res.ex == ex {
			return true
		}
	}
	return false
}

// header encodes the run's header, with the dependencies its executor keeps (`res`: item
// index and the id it keeps the value under), and whether it may keep the result (`keep`).
func (r *pyRun) header() ([]byte, error) {
	hdr, err := wire.EncodeHeader(&r.msg)
	if err != nil {
		return nil, err
	}
	if r.keep { // "keep": 1, written out: most runs carry it (appendExt's encoding is generic)
		if len(hdr) >= 3 && hdr[0] == 0xde && binary.BigEndian.Uint16(hdr[1:]) < 0xffff {
			// EncodeHeader's map16, ours: counted in place rather than copied
			binary.BigEndian.PutUint16(hdr[1:], binary.BigEndian.Uint16(hdr[1:])+1)
		} else if hdr, err = growMap(hdr, 1); err != nil {
			return nil, err
		}
		hdr = append(hdr, 0xa4, 'k', 'e', 'e', 'p', 0x01)
	}
	if len(r.res) == 0 {
		return hdr, nil
	}
	pairs := make([][2]uint64, len(r.res))
	for i, rr := range r.res {
		pairs[i] = [2]uint64{uint64(rr.item), rr.res.id}
	}
	return appendExt(hdr, "res", pairs)
}

// runSeg is a dependency's segment in a run: its placements are those of the dependency's
// frames, which start at frames[base].
type runSeg struct {
	seg  *Segment
	base int
}

// size bounds the bytes of the run message for ex.
func (r *pyRun) size(ex *executor) int {
	n := 512 + len(r.msg.Key) + len(r.msg.FuncHash) + len(r.msg.Payload)
	for _, it := range r.msg.Items {
		n += 64 + len(it.Key)
	}
	for _, f := range r.frames {
		n += 8 + len(f)
	}
	if !ex.funcs[r.ts.t.Func] {
		n += len(r.fdata)
	}
	return n
}

// pyRunFor builds a task's run message from its dependencies in the store, for executor on:
// a dependency kept in another executor is exported (resident.go). With on nil, dependencies
// kept in executors stay where they are (the run says which, to choose its executor).
func (w *Worker) pyRunFor(ts *task, on *executor) (*pyRun, *wire.Error) {
	w.mu.Lock()
	fdata := w.mu.funcData[ts.t.Func]
	w.mu.Unlock()
	r := pyRuns.Get().(*pyRun)
	items := slices.Grow(r.msg.Items, len(ts.t.Deps))
	frames := r.frames
	var segs []runSeg
	var res []runRes
	for _, dep := range ts.t.Deps {
		e, err := w.store.GetRun(dep)
		if err == nil && e.Res != nil && on != nil && (e.Res.ex != on || !e.Res.use()) {
			// kept elsewhere (exported for on), or dropped since the lookup (exported, or gone)
			e, err = w.store.GetRef(dep, true)
		}
		if err != nil {
			if on != nil {
				(&pyRun{res: res}).unuse()
			}
			return nil, depError(dep, err)
		}
		if e.Res != nil {
			res = append(res, runRes{res: e.Res, item: len(items)})
		}
		items = append(items, wire.Item{Key: dep, Encoding: e.Encoding, NFrames: len(e.Frames), NBytes: e.NBytes})
		if e.Seg != nil {
			segs = append(segs, runSeg{seg: e.Seg, base: len(frames)})
		}
		frames = append(frames, e.Frames...)
	}
	r.msg = wire.Msg{Op: wire.OpRun, Key: ts.t.Key, FuncHash: ts.t.Func, Payload: ts.t.Payload, Items: items}
	r.ts, r.frames, r.fdata, r.segs, r.res = ts, frames, fdata, segs, res
	return r, nil
}

// runsMaxFrames bounds the frames of a runs message, well inside an executor's limit of 4096
// per message (a batch is bounded by its bytes, and a value may be many small frames): a
// batch with more goes as separate run messages. A variable for tests.
var runsMaxFrames = 1024

// runsMsg makes the runs of a batch one runs message (docs/protocol.md §3.5), their frames in
// order, from the runs themselves (msgs[i] is batch[i]'s message: its payload, and no
// descriptors, since a run that passes some is never batched).
func runsMsg(batch []*pyRun, msgs []outMsg, sc *runsScratch) (outMsg, error) {
	entries := slices.Grow(sc.entries[:0], len(batch))
	for i, r := range batch {
		if len(msgs[i].fds) > 0 || len(r.res) > 0 {
			return outMsg{}, errors.New("a run passing descriptors or kept values in a runs message")
		}
		entries = append(entries, wire.RunEntry{Msg: &r.msg, Keep: r.keep, NFrames: len(msgs[i].payload)})
	}
	payload := sc.payload[:0]
	for _, om := range msgs {
		payload = append(payload, om.payload...)
	}
	sc.hdr = wire.AppendRunsHeader(slices.Grow(sc.hdr[:0], 256*len(batch)), entries)
	sc.entries, sc.payload = entries, payload
	return outMsg{hdr: sc.hdr, payload: payload}, nil
}

// runsScratch is what runPyOnce and runsMsg make a batch's messages of, kept by an executor
// for its holder between batches: the messages are written before runPyOnce reads the
// answers, and done with then.
type runsScratch struct {
	msgs    []outMsg // each run's message (runPyOnce)
	entries []wire.RunEntry
	payload [][]byte
	hdr     []byte
}

// msgsFor is a list of n messages, for a batch of n runs.
func (sc *runsScratch) msgsFor(n int) []outMsg {
	sc.msgs = slices.Grow(sc.msgs[:0], n)[:n]
	return sc.msgs
}

// sent lets go of what the last messages referred to (runs, and the store's values).
func (sc *runsScratch) sent() {
	clear(sc.msgs)
	clear(sc.entries)
	clear(sc.payload)
}

// segMaxPerRun bounds the segments passed with one run: descriptors in one message are
// limited (253 by Linux, 64 by the executor's receive buffer, windows included). The frames of
// further segment-backed dependencies are read into memory and go the ordinary way.
const segMaxPerRun = 32

// inline reads the frames of the segment-backed dependencies from the keep-th on into memory
// (all of them with keep 0: for an executor that does not take segments).
func (r *pyRun) inline(keep int, alloc func(int) []byte) error {
	if len(r.segs) <= keep {
		return nil
	}
	frames := append([][]byte(nil), r.frames...)
	for _, rs := range r.segs[keep:] {
		if err := rs.seg.fill(frames, rs.base, alloc); err != nil {
			return err
		}
	}
	r.frames, r.segs = frames, r.segs[:keep:keep]
	return nil
}

// runPy runs a Python task on an executor, behind a batch of short ready Python tasks when
// there are some.
func (w *Worker) runPy(ts *task) result {
	for {
		if r, retry := w.runPyOnce(ts); !retry {
			return r
		}
		// the executor died running a task batched ahead of ts, or could not be sent the
		// batch, or a dependency's segment went away before the run was sent: ts never started
	}
}

func (w *Worker) runPyOnce(ts *task) (result, bool) {
	mine, taskErr := w.pyRunFor(ts, nil)
	if taskErr != nil {
		return result{err: taskErr}, false
	}
	var prefer func(*executor) bool
	if len(mine.frames) > 0 {
		// the executor keeping a dependency, else one holding a prefilled copy (prefill.go)
		prefer = func(ex *executor) bool { return mine.keptIn(ex) || ex.shm.holds(mine.frames) }
	}
	ex, err := w.py.acquire(w.ctx, prefer)
	if err != nil {
		return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorError",
			Message: fmt.Sprintf("cannot start a Python executor: %v", err)}}, false
	}
	if err := w.syncPreloads(ex); err != nil {
		// an executor that dies taking the uploads and plugins (a plugin's setup exits, say)
		// fails the task as an executor death: the scheduler retries it, at most
		// KilledWorkerThreshold times, and says why
		how := w.py.discard(ex)
		w.log.Warn("Python executor failed while taking preloads", "pid", ex.pid, "how", how, "err", err)
		return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied", Message: fmt.Sprintf(
			"Python executor (pid %d) died while taking the uploaded files and worker plugins: %s", ex.pid, how)}}, false
	}
	unusing := false // a deferred mine.unuse() will read mine
	if len(mine.res) > 0 {
		// Looked up again now that ex is held, each value kept there marked in use (forgotten
		// only once the run is answered); dependencies kept in another executor are exported
		// for this one.
		if mine, taskErr = w.pyRunFor(ts, ex); taskErr != nil {
			w.py.release(ex)
			return result{err: taskErr}, false
		}
		defer mine.unuse()
		unusing = true // (mine.res may be empty now: all exported; mine is not recycled)
	}
	if !ex.funcs[ts.t.Func] && mine.fdata == nil {
		w.py.release(ex)
		return result{err: &wire.Error{Code: wire.CodeTaskError, Type: "MissingFunction",
			Message: fmt.Sprintf("the pickled function %s was never sent to this worker", ts.t.Func)}}, false
	}
	keep := segMaxPerRun
	if !ex.seg {
		keep = 0
	}
	if len(mine.segs) > keep {
		if err := mine.inline(keep, w.peers.bufs.get); err != nil {
			return w.segmentFailed(ex, "reading a dependency", err)
		}
	}
	var batch []*pyRun
	if budget := pyBatchBytes - mine.size(ex); budget > 0 && len(mine.segs) == 0 && len(mine.res) == 0 && !ts.solo {
		if took, ok := w.py.short(graph.GroupOf(&ts.t)); ok {
			batch = w.shortRuns(ex, budget, pyBatchTime-took)
		}
	}
	batch = append(batch, mine)
	msgs := ex.runs.msgsFor(len(batch))
	roomy := w.roomToKeep()
	for i, r := range batch {
		r.ts.execPID.Store(int32(ex.pid))
		ex.seq++
		r.msg.ID = ex.seq
		if !ex.funcs[r.ts.t.Func] {
			r.msg.FuncData = r.fdata
		}
		msgs[i] = outMsg{m: &r.msg, payload: r.frames}
		r.keep = r.ts.keep && ex.keeps && roomy
	}
	w.profileRuns(msgs) // the profiler (profile.go): marks the runs while it is on
	// cannot happen with headers we made: the batch's other tasks go back to the queue
	encodingFailed := func(err error) (result, bool) {
		w.unbatch(tasksOf(batch[:len(batch)-1]))
		w.py.release(ex)
		return result{err: wire.Errorf(wire.CodeProtocol, err.Error())}, false
	}
	nframes := 0
	for _, r := range batch {
		nframes += 1 + len(r.frames)
	}
	if len(batch) > 1 && ex.batch && nframes <= runsMaxFrames {
		om, err := runsMsg(batch, msgs, &ex.runs)
		if err != nil {
			return encodingFailed(err)
		}
		msgs = []outMsg{om}
	} else {
		for i, r := range batch {
			if len(r.res) > 0 || r.keep {
				hdr, err := r.header()
				if err != nil {
					return encodingFailed(err)
				}
				msgs[i].hdr = hdr
			}
		}
	}
	var passed []int
	if len(batch) == 1 && (len(mine.segs) > 0 || ex.shm.usable()) {
		var err error
		if passed, err = w.placeShm(ex, &msgs[0], mine); err != nil {
			if len(mine.segs) > 0 && passed == nil {
				return w.segmentFailed(ex, "passing a dependency to the executor", err)
			}
			w.log.Warn("shared memory for the Python executor failed; large values go through its socket",
				"pid", ex.pid, "err", err)
		}
	}
	for _, r := range batch {
		w.py.keptUsed.Add(int64(len(r.res)))
	}
	sent := time.Now()
	last := sent
	err = ex.conn.sendMany(msgs...)
	ex.runs.sent()
	closeFds(passed) // the executor has its own now (or is gone)
	if err != nil {
		return w.sendFailed(ex, batch, err)
	}
	if len(msgs) == 1 && len(batch) > 1 {
		w.py.runsOut.Add(1)
	}
	// Let the goroutines waiting for this P (GOMAXPROCS is --nthreads) send what they have, the
	// reports of the tasks before these above all, before this one blocks in read(2): a goroutine
	// in a system call keeps its P until the runtime's monitor takes it away, 20 µs to 10 ms
	// later, and until then a task_finished queued for the scheduler waits. Measured on the tree
	// reduction in five alternated pairs of 4-repetition runs: median 21.3k tasks/s without,
	// 25.7k with (averages over the pairs).
	runtime.Gosched()
	for i, r := range batch {
		reply, x, rframes, err := ex.conn.recvExt()
		if err == nil {
			ex.shm.update(x)
		}
		if err == nil && reply.ID != r.msg.ID {
			err = fmt.Errorf("%w: executor answered id %d to run %d", wire.ErrProtocol, reply.ID, r.msg.ID)
		}
		if err != nil {
			return w.executorDied(ex, batch, i, err)
		}
		w.profileTake(r.ts, reply) // the profiler (profile.go): the run's samples, if any
		if x.batched {
			w.py.donesIn.Add(1)
		}
		now := time.Now()
		if reply.Op == wire.OpSecede {
			// the task waits on tasks it submitted: it goes on with its own socket, and this
			// one goes on serving the rest of the batch (and later runs)
			ex.funcs[r.ts.t.Func] = true
			if len(x.fds) != 1 {
				closeFds(x.fds)
				return w.executorDied(ex, batch, i, fmt.Errorf("%w: secede came with %d descriptors", wire.ErrProtocol, len(x.fds)))
			}
			w.secede(ex, r, x.fds[0])
			if r == mine {
				w.py.releaseAnswered(ex)
				return result{seceded: true}, false
			}
			last = now
			continue
		}
		if reply.Op == wire.OpDone {
			ex.funcs[r.ts.t.Func] = true
		}
		from, to := ranBetween(reply, sent, last, now)
		w.py.observe(graph.GroupOf(&r.ts.t), to.Sub(from))
		res := pyResult(reply, x, rframes, w.py, ex)
		wire.ReleaseMsg(reply) // res holds what it needs of it (its slices and strings stay valid)
		if res.seg != nil {
			w.py.segsIn.Add(1)
		}
		if res.res != nil {
			w.py.kept.Add(1)
		}
		if r == mine {
			w.py.releaseAnswered(ex)
			res.ranFrom, res.ranTo = from, to
			if !unusing { // (else the deferred unuse still reads it)
				mine.recycle()
			}
			return res, false
		}
		w.finish(ex.lane, r.ts, res, from, to)
		r.recycle()
		last = now
	}
	panic("unreachable: the popped task is the last of its batch")
}

// segmentFailed ends a run that could not use a dependency's segment before it started: it
// gives ex back, and retries when the segment went away (spilled or dropped since pyRunFor:
// the store is read again, and a dropped dependency is then reported as such); any other
// error fails the task, saying what was being done.
func (w *Worker) segmentFailed(ex *executor, doing string, err error) (result, bool) {
	w.py.release(ex)
	if errors.Is(err, errSegmentGone) {
		return result{}, true
	}
	return result{err: &wire.Error{Code: wire.CodeTaskError, Type: "ArgumentError",
		Message: fmt.Sprintf("%s: %v", doing, err)}}, false
}

// placeShm moves the large payload frames of om into ex's shared-memory windows, and passes
// the segments of r's segment-backed dependencies. It returns the descriptors passed with the
// message (the windows' and the segments', duplicated for it), which the caller closes once it
// is sent; when the segments cannot be passed (one was dropped from the store meanwhile) it
// returns nil and an error, and om is unchanged.
func (w *Worker) placeShm(ex *executor, om *outMsg, r *pyRun) (passed []int, err error) {
	var segFds []int
	var segs []runSegPlace
	for n, rs := range r.segs {
		fd, err := rs.seg.dup()
		if err != nil {
			closeFds(segFds)
			return nil, err
		}
		segFds = append(segFds, fd)
		for _, p := range rs.seg.at {
			segs = append(segs, runSegPlace{Frame: rs.base + p.Frame, N: n, Off: p.Off, Len: p.Len})
		}
	}
	frames, at, news, fds, err := ex.shm.place(om.payload)
	if len(at) == 0 && len(segs) == 0 {
		return nil, err
	}
	hdr, herr := r.header()
	if herr == nil {
		hdr, herr = appendRunExt(hdr, at, news, segs)
	}
	if herr != nil { // cannot happen with a header we made
		ex.shm.unplace(at, news)
		closeFds(fds)
		closeFds(segFds)
		return nil, herr
	}
	// the windows' descriptors first (shm_new order), then the segments' (docs/protocol.md §3.5)
	om.hdr, om.payload, om.fds = hdr, frames, append(fds, segFds...)
	w.py.shmFrames.Add(int64(len(at)))
	for _, p := range at {
		if p.prefilled {
			w.py.prefillsTaken.Add(1)
		}
	}
	w.py.segsOut.Add(int64(len(segFds)))
	return om.fds, err
}

// shortRuns takes the next ready Python tasks of short groups whose function this executor
// has or can be sent (leaving enough for the worker's idle threads), at most pyBatch-1 of them
// and as many as are expected to run within left, marking them running, and returns their run
// messages.
func (w *Worker) shortRuns(ex *executor, budget int, left time.Duration) []*pyRun {
	var more []*task
	w.mu.Lock()
	// leave one ready task for each idle thread: batching must not take parallelism away
	idle := max(w.cfg.NThreads-w.mu.running, 0)
	for len(more) < pyBatch-1 && len(w.mu.ready) > idle && !w.mu.closed && !w.mu.draining {
		next := w.mu.ready[0]
		if next.t.Kind != graph.KindPy || (!ex.funcs[next.t.Func] && w.mu.funcData[next.t.Func] == nil) ||
			next.solo || w.pausedLocked() {
			break
		}
		took, ok := w.py.short(graph.GroupOf(&next.t))
		if left -= took; !ok || left < 0 {
			break
		}
		heap.Pop(&w.mu.ready)
		w.setStateLocked(next, stateRunning)
		w.mu.running++
		more = append(more, next)
	}
	w.mu.Unlock()
	var runs []*pyRun
	var back []*task
	for i, ts := range more {
		r, taskErr := w.pyRunFor(ts, nil) // nil: a dependency kept anywhere stops the batch, unexported
		if taskErr != nil {
			now := time.Now()
			w.finish(ex.lane, ts, result{err: taskErr}, now, now)
			continue
		}
		if budget -= r.size(ex); budget < 0 || len(r.segs) > 0 || len(r.res) > 0 {
			// too big to batch, or its descriptors must go alone (as windows do): back to
			// the queue, in their order
			back = more[i:]
			break
		}
		runs = append(runs, r)
		w.py.batched.Add(1)
	}
	w.unbatch(back)
	return runs
}

// unbatch puts tasks taken for a batch that did not start back in the ready queue (in their
// old place: their order and sequence number are kept), or forgets them if they were freed
// meanwhile.
func (w *Worker) unbatch(tasks []*task) {
	if len(tasks) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ts := range tasks {
		w.mu.running--
		if ts.freed || w.mu.tasks[ts.t.Key] != ts {
			if w.mu.tasks[ts.t.Key] == ts {
				delete(w.mu.tasks, ts.t.Key)
			}
			w.setStateLocked(ts, stateDone)
			if next := ts.takeNextLocked(); next != nil {
				w.goFunc(func() { w.handleCompute(next) }) // (w.mu is held here)
			}
			continue
		}
		w.pushReadyLocked(ts)
	}
	w.mu.cond.Broadcast()
}

// finish ends a task run (popped by its thread, or run as part of an executor batch): store
// the result, forget the task, report it, and only then count it as no longer running, so a
// draining Run sends goodbye after the report.
func (w *Worker) finish(thread int, ts *task, r result, start, stop time.Time) {
	key := ts.t.Key
	switch {
	case r.err == nil && r.seg != nil:
		r.nbytes = w.store.PutSegment(key, r.enc, r.frames, r.seg)
	case r.err == nil && r.res != nil:
		var ok bool
		if r.nbytes, ok = w.store.PutResident(key, r.enc, r.frames, r.res); !ok {
			// its executor died after answering: the result went with it
			r.err = &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied", Message: fmt.Sprintf(
				"Python executor (pid %d) died after running the task, with its result", r.res.ex.pid)}
		}
	case r.err == nil:
		r.nbytes = w.store.Put(key, r.enc, r.frames, r.obj)
	}
	w.mu.Lock()
	if w.mu.tasks[key] == ts {
		delete(w.mu.tasks, key)
	}
	w.setStateLocked(ts, stateDone)
	if ts.freed && r.err == nil {
		// under w.mu, as the task leaves the table: a compute of the key handled after this
		// finds neither (and runs it again); one handled before un-freed it
		w.store.DeleteAsync(key)
	}
	next := ts.takeNextLocked()
	w.mu.Unlock()
	w.report(thread, ts, r, start, stop)
	if next != nil {
		w.handleCompute(next) // another definition of the key, received while this run went on
	}
	w.mu.Lock()
	w.mu.running--
	w.mu.cond.Broadcast()
	w.mu.Unlock()
}

// ranBetween is when a run of a batch sent at sent ran: the executor's own start and stop
// (Unix ns, the same clock), which must lie between sent and read (when its answer was read);
// otherwise, or when it gave none, [prev, read], prev being when the answer before it was read.
// The executor holds a batch's answers until it has run all of them, so the worker reads them
// together and its own clock would give the first the whole batch and the others nothing.
func ranBetween(reply *wire.Msg, sent, prev, read time.Time) (time.Time, time.Time) {
	if reply.Start >= sent.UnixNano() && reply.Start <= reply.Stop && reply.Stop <= read.UnixNano() {
		return time.Unix(0, reply.Start), time.Unix(0, reply.Stop)
	}
	return prev, read
}

// executorDied handles a broken executor in the middle of a batch whose runs before batch[i]
// were answered. When batch[i] is the popped task (the last), it fails with executor-died.
// Otherwise the task that killed the executor is not known: the unanswered batched tasks go
// back to the ready queue and, like the popped one (retry), run alone from now on.
func (w *Worker) executorDied(ex *executor, batch []*pyRun, i int, err error) (result, bool) {
	how := w.py.discard(ex)
	culprit, mine := batch[i], batch[len(batch)-1]
	if culprit != mine {
		// The executor holds the answers of a batch until it has run all of it, so any of
		// the unanswered runs may have killed it: they all run again, each alone, and the one
		// that kills an executor then is the one blamed.
		w.log.Warn("Python executor died running a batch; its unanswered tasks run again one at a time",
			"pid", ex.pid, "tasks", len(batch)-i, "how", how, "err", err)
		rest := tasksOf(batch[i : len(batch)-1])
		for _, ts := range rest {
			ts.solo = true
		}
		mine.ts.solo = true
		w.unbatch(rest)
		return result{}, true
	}
	w.log.Warn("Python executor died", "pid", ex.pid, "task", culprit.ts.t.Key, "how", how, "err", err)
	if why := ex.killedFor.Load(); why != nil && diedOfSIGKILL(ex.cmd.ProcessState) {
		// the memory monitor's kill, not a death of its own at the same moment (a crash, an
		// exit) that the monitor's signal found already under way
		how = *why
	}
	return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied",
		Message: fmt.Sprintf("Python executor (pid %d) died while running the task: %s", ex.pid, how)}}, false
}

// diedOfSIGKILL reports whether a process that has been waited for was killed by SIGKILL.
func diedOfSIGKILL(ps *os.ProcessState) bool {
	if ps == nil {
		return false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// tasksOf is the tasks of runs, in order.
func tasksOf(runs []*pyRun) []*task {
	out := make([]*task, len(runs))
	for i, r := range runs {
		out[i] = r.ts
	}
	return out
}

// maxSendFailures bounds how many executors a task's runs may fail to be sent to before the
// task fails: an executor that cannot be written to at all is otherwise retried forever.
const maxSendFailures = 3

// sendFailed ends a batch that could not be written to its executor (its socket was closed:
// it died, or was killed, before it had any run of the batch whole). None of the runs started,
// so none is blamed: the others go back to the queue as they were, and the popped one is
// retried (runPy), failing with executor-died after maxSendFailures such executors.
func (w *Worker) sendFailed(ex *executor, batch []*pyRun, err error) (result, bool) {
	how := w.py.discard(ex)
	w.log.Warn("could not send runs to a Python executor; they go to another", "pid", ex.pid, "how", how, "err", err)
	w.unbatch(tasksOf(batch[:len(batch)-1]))
	mine := batch[len(batch)-1].ts
	if mine.sendFailures++; mine.sendFailures < maxSendFailures {
		return result{}, true
	}
	return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied", Message: fmt.Sprintf(
		"could not send the task to %d Python executors in a row; the last (pid %d, %s): %v", maxSendFailures, ex.pid, how, err)}}, false
}

// pyResult turns an executor's answer, and the segment passed with it (x), into a result. A
// result ex keeps (x.Res) becomes a resident of p (resident.go).
func pyResult(reply *wire.Msg, x execExt, frames [][]byte, p *executorPool, ex *executor) (r result) {
	var segFile *os.File
	if len(x.fds) > 0 {
		segFile = os.NewFile(uintptr(x.fds[0]), "shoal-result")
		closeFds(x.fds[1:]) // cannot happen: recvExt takes what the message declares
	}
	if segFile != nil && reply.Op != wire.OpDone {
		segFile.Close()
		segFile = nil
	}
	switch reply.Op {
	case wire.OpDone:
		if len(reply.Items) != 1 || reply.Items[0].NFrames != len(frames) || len(frames) == 0 ||
			!validEncoding(reply.Items[0].Encoding) {
			if segFile != nil {
				segFile.Close()
			}
			return result{err: wire.Errorf(wire.CodeProtocol, "the Python executor sent a malformed done message")}
		}
		if len(x.Res) > 0 {
			if ex != nil && ex.keeps {
				defer func() {
					if r.res == nil { // refused: the executor must not hold it for ever
						ex.forget(reply.ID)
					}
				}()
			}
			if segFile != nil || ex == nil || !ex.keeps {
				if segFile != nil {
					segFile.Close()
				}
				return result{err: wire.Errorf(wire.CodeProtocol, "the Python executor kept a result it was not asked to keep")}
			}
			res, err := newResident(p, ex, reply.ID, x.Res, frames, p.w.cfg.limits().MaxFrame)
			if err != nil {
				return result{err: wire.Errorf(wire.CodeProtocol, "the Python executor kept a result badly: "+err.Error())}
			}
			return result{enc: reply.Items[0].Encoding, frames: frames, res: res, holds: reply.Keys}
		}
		if segFile != nil {
			seg, err := newSegment(segFile, x.Seg, frames)
			if err != nil {
				segFile.Close()
				return result{err: wire.Errorf(wire.CodeProtocol, "the Python executor sent a bad result segment: "+err.Error())}
			}
			return result{enc: reply.Items[0].Encoding, frames: frames, seg: seg, holds: reply.Keys}
		}
		return result{enc: reply.Items[0].Encoding, frames: frames, holds: reply.Keys}
	case wire.OpError:
		if reply.Error != nil {
			if reply.Error.Code == "" {
				reply.Error.Code = wire.CodeTaskError
			}
			return result{err: reply.Error}
		}
		code := reply.Code
		if code == "" {
			code = wire.CodeTaskError
		}
		return result{err: wire.Errorf(code, reply.Message)}
	}
	return result{err: wire.Errorf(wire.CodeProtocol, fmt.Sprintf("the Python executor answered run with %q", reply.Op))}
}

// lineLogger turns an executor's output into log lines.
type lineLogger struct {
	log    *slog.Logger
	stream string
	buf    []byte
}

func (l *lineLogger) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.log.Info("python executor: "+string(l.buf[:i]), "stream", l.stream)
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 {
		l.log.Info("python executor: "+string(l.buf), "stream", l.stream)
		l.buf = l.buf[:0]
	}
	return len(b), nil
}
