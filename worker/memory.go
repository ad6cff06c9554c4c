package worker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// The memory monitor keeps the whole worker — its own process and its Python executors —
// within the memory limit, the way dask's worker memory manager does. The store's own
// accounting (SpillFraction) only sees result bytes; what it cannot see is the Go heap's
// garbage between collections, the values an executor holds while it runs a task, and the
// executors' interpreters. Every MemoryMonitorInterval the monitor reads the resident set
// of the worker process and of each executor from /proc, adds the shared-memory segments the
// store holds (memfds no process maps are in no resident set, yet they are memory), and:
//
//   - above ProcessSpillFraction×limit, first returns the Go heap's free memory to the
//     operating system, then spills least recently used results until the total is back
//     under SpillFraction×limit (or nothing is left in memory);
//   - above PauseFraction×limit, pauses the worker (no new task starts) while results are
//     left that spilling could still free, so that a high baseline cannot pause it forever;
//   - when the worker has gone idle (no task finished since the last check, none running)
//     and its process holds much more memory than its results (garbage after a graph
//     finished), returns it to the operating system once, so that an idle worker shrinks.
//
// Where /proc is not available the monitor does nothing and only the store's accounting
// applies.

// memState is what the monitor last saw.
type memState struct {
	process  atomic.Int64 // bytes resident in the worker process and its executors; -1: unknown
	paused   atomic.Bool  // process memory above the pause threshold
	lastFree time.Time    // last time memory was returned to the OS (monitor goroutine only)
	warned   bool         // logged that memory is high with nothing left to spill
	finished int64        // tasks finished at the last check
	trimmed  bool         // memory was returned to the OS since the last task finished
	// stuckSince: since when the worker is paused while it cannot spill (zero: it is not)
	stuckSince time.Time
	lastKill   time.Time // when the monitor last killed an executor over the terminate threshold
}

// idleSinceLastCheck tells whether no task finished since the last check and none is
// running or waiting, and memory was not returned to the OS since the last task: the idle
// trim runs once after a burst of work, never under load (where a forced collection of a
// large heap would cost real CPU; there the Go soft limit keeps garbage bounded).
func (w *Worker) idleSinceLastCheck() bool {
	n := w.stats.executed.Load() + w.stats.erred.Load()
	changed := n != w.mem.finished
	w.mem.finished = n
	if changed {
		w.mem.trimmed = false
		return false
	}
	if w.mem.trimmed {
		return false
	}
	w.mu.Lock()
	busy := w.mu.running > 0 || len(w.mu.ready) > 0 || len(w.mu.fetches) > 0
	w.mu.Unlock()
	return !busy
}

// unmanagedSlack is how much more than its results the worker process may hold before the
// idle trim returns memory to the operating system.
const unmanagedSlack = 256 << 20

var pageSize = int64(os.Getpagesize())

// rssOf returns the resident set size of process pid in bytes, or -1 if unknown.
func rssOf(pid int) int64 {
	rss, _ := statm(pid)
	return rss
}

// privateOf is a process's resident memory that is its own: its resident set less the shared
// pages (mapped files, and the shared-memory segments it maps, which the store counts).
func privateOf(pid int) int64 {
	rss, shared := statm(pid)
	if rss < 0 {
		return -1
	}
	return rss - shared
}

// unsharedOf is a process's resident set less its resident shared memory (RssShmem in
// /proc/PID/status: memfds and other tmpfs pages it maps), or -1 if unknown. Unlike privateOf
// it keeps the pages of mapped files, its binary's among them, as RSS counts them.
func unsharedOf(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	rss, shmem := int64(-1), int64(0)
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !(bytes.Equal(k, []byte("VmRSS")) || bytes.Equal(k, []byte("RssShmem"))) {
			continue
		}
		f := bytes.Fields(v) // "1234 kB"
		if len(f) != 2 || !bytes.Equal(f[1], []byte("kB")) {
			return -1
		}
		n, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return -1
		}
		if k[0] == 'V' {
			rss = n << 10
		} else {
			shmem = n << 10
		}
	}
	if rss < 0 {
		return -1
	}
	return rss - shmem
}

// statm reads a process's resident and resident-shared bytes from /proc; -1 when unknown.
func statm(pid int) (rss, shared int64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return -1, -1
	}
	f := bytes.Fields(b)
	if len(f) < 3 {
		return -1, -1
	}
	res, err1 := strconv.ParseInt(string(f[1]), 10, 64)
	sh, err2 := strconv.ParseInt(string(f[2]), 10, 64)
	if err1 != nil || err2 != nil {
		return -1, -1
	}
	return res * pageSize, sh * pageSize
}

// processMemory returns the bytes resident in the worker process and its live executors plus
// the store's segments, and in the worker process alone; -1, -1 where /proc cannot tell. The
// worker's own share is its resident set less the shared memory it maps: the executors'
// windows it copies into (executor_shm.go), which count in the resident set of an executor
// that has touched them, as they did when the worker wrote them with pwrite; a prefilled
// window the executor was not given yet is added (execWindows.unsent, which first frees the
// prefills whose values are gone or that waited too long). A
// segment an executor has mapped is counted twice while it runs (in its resident set too):
// that errs on the side of spilling early.
func (w *Worker) processMemory() (total, self int64) {
	self = unsharedOf(os.Getpid())
	if self < 0 {
		return -1, -1
	}
	total = self + w.store.Stats().Segments
	for _, ex := range w.py.executors() {
		total += ex.shm.unsent()
		if ex.isDead() {
			continue // its pid may be another process's once reaped
		}
		if r := rssOf(ex.pid); r > 0 {
			total += r
		}
	}
	return total, self
}

// executors lists the live executors.
func (p *executorPool) executors() []*executor {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*executor, 0, len(p.mu.all))
	for ex := range p.mu.all {
		out = append(out, ex)
	}
	return out
}

// ProcessMemory returns the bytes resident in the worker process and its executors as last
// measured by the memory monitor, or -1 if unknown.
func (w *Worker) ProcessMemory() int64 { return w.mem.process.Load() }

// memoryLoop runs the monitor until ctx ends.
func (w *Worker) memoryLoop(ctx context.Context) {
	if w.cfg.MemoryMonitorInterval <= 0 || w.cfg.ProcessSpillFraction <= 0 {
		w.mem.process.Store(-1)
		return
	}
	t, _ := w.processMemory()
	w.mem.process.Store(t) // known from the start, not only after the first tick
	if t < 0 {
		w.log.Info("memory monitor disabled: process memory is not readable from /proc")
		return
	}
	tick := time.NewTicker(w.cfg.MemoryMonitorInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.checkMemory(time.Now())
		}
	}
}

// releaseToOS collects garbage and returns free Go memory to the operating system, then
// measures the worker's memory again.
func (w *Worker) releaseToOS(now time.Time) (total int64) {
	debug.FreeOSMemory()
	w.mem.lastFree = now
	total, _ = w.processMemory()
	return total
}

// checkMemory is one pass of the monitor.
func (w *Worker) checkMemory(now time.Time) {
	limit := float64(w.memLimit)
	spillAt := int64(w.cfg.ProcessSpillFraction * limit)
	target := int64(w.cfg.SpillFraction * limit)
	if target <= 0 || target > spillAt {
		target = spillAt
	}
	total, self := w.processMemory()
	if total < 0 {
		return
	}
	st := w.store.Stats()
	stored := st.Memory
	if total > spillAt {
		// Garbage first: values already dropped or spilled may still occupy the Go heap.
		if now.Sub(w.mem.lastFree) >= w.cfg.MemoryMonitorInterval {
			total = w.releaseToOS(now)
		}
		if total > spillAt {
			if moved := w.store.SpillBytes(total - target); moved > 0 {
				w.log.Debug("spilled to keep worker memory under the limit", "bytes", moved,
					"process_memory", total, "limit", w.memLimit)
				total = w.releaseToOS(now)
			}
		}
		stored = w.store.Stats().Memory
	} else if w.idleSinceLastCheck() && self-(stored-st.Segments-st.Kept) > unmanagedSlack && now.Sub(w.mem.lastFree) >= time.Second {
		total = w.releaseToOS(now)
		w.mem.trimmed = true
	}
	w.mem.process.Store(total)

	pauseAt := int64(w.cfg.PauseFraction * limit)
	pause := w.cfg.PauseFraction > 0 && total > pauseAt && stored > 0
	if total > pauseAt && stored == 0 && !w.mem.warned {
		w.mem.warned = true
		w.log.Warn("worker memory is above the pause threshold with no result left in memory to spill: "+
			"tasks or executors hold it (unmanaged memory)", "process_memory", total, "limit", w.memLimit)
	} else if total <= pauseAt {
		w.mem.warned = false
	}
	if w.mem.paused.Swap(pause) != pause {
		if pause {
			w.log.Info("pausing: worker memory above the pause threshold", "process_memory", total,
				"pause_at", pauseAt)
		} else {
			w.log.Info("resuming: worker memory back under the pause threshold", "process_memory", total)
		}
		w.wake()
	}
	w.failIfStuck(now)
	if f := w.cfg.TerminateFraction; f > 0 && total > int64(f*limit) && now.Sub(w.mem.lastKill) >= killCooldown {
		if w.killBiggestExecutor(int64(f * limit)) {
			w.mem.lastKill = now
		}
	}
}

// killCooldown spaces the memory monitor's kills: the killed executor's memory must be seen
// gone before another is judged.
const killCooldown = time.Second

// killBiggestExecutor kills the executor holding the most memory of its own when the worker
// and its executors, counted without double counting what they share, are over the terminate
// threshold killAt: its task fails with executor-died and that reason, as dask's nanny kills a
// worker over memory.terminate (a task holding too much fails, instead of the limit being a
// number nobody enforces). The scheduler runs the task again, and after its third death fails
// it with killed-worker naming each cause, as dask does. It reports whether it killed.
func (w *Worker) killBiggestExecutor(killAt int64) bool {
	total := unsharedOf(os.Getpid()) + w.store.Stats().Segments
	var victim *executor
	var most int64
	kept := w.store.keptBy() // stored results, which spilling frees: not what makes a victim
	for _, ex := range w.py.executors() {
		total += ex.shm.unsent()
		if ex.isDead() {
			continue // its pid may be another process's once reaped
		}
		r := privateOf(ex.pid)
		total += max(r, 0)
		if r -= kept[ex]; r > most {
			victim, most = ex, r
		}
	}
	if total <= killAt {
		return false // over only by counting shared segments twice
	}
	if victim == nil || most < min(total-killAt, w.memLimit/4) {
		return false // the memory is not an executor's (the worker's own, or stored results)
	}
	why := fmt.Sprintf("killed by its worker: it exceeded the memory limit of the worker (%d MiB used of %d MiB; "+
		"the terminate threshold is %g of the limit; this executor held %d MiB)", total>>20, w.memLimit>>20,
		w.cfg.TerminateFraction, most>>20)
	victim.killedFor.Store(&why)
	w.log.Warn("killing the Python executor holding the most memory: the worker is over its memory limit",
		"pid", victim.pid, "executor_memory", most, "process_memory", total, "terminate_at", killAt)
	victim.cmd.Process.Kill()
	return true
}

// stuckAfter is how long a worker stays paused with spilling suspended (its spill directory
// cannot be written) before its ready tasks fail: memory it cannot free would otherwise hold
// them, silently, forever.
const stuckAfter = 5 * time.Second

func (w *Worker) failIfStuck(now time.Time) {
	w.mu.Lock()
	paused := w.pausedLocked()
	w.mu.Unlock()
	serr := w.store.SpillError()
	switch {
	case !paused || serr == nil:
		w.mem.stuckSince = time.Time{}
		return
	case w.mem.stuckSince.IsZero():
		w.mem.stuckSince = now
		return
	case now.Sub(w.mem.stuckSince) < stuckAfter:
		return
	}
	w.failReady(&wire.Error{Code: wire.CodeTaskError, Type: "MemoryError", Message: fmt.Sprintf(
		"worker %s cannot run this task: its memory is above the pause threshold (limit %d bytes) "+
			"and spilling to disk failed: %v", w.Name(), w.memLimit, serr)})
}

// failReady reports every task in the ready queue as erred with err.
func (w *Worker) failReady(err *wire.Error) {
	w.mu.Lock()
	var failed []*task
	for len(w.mu.ready) > 0 {
		ts := w.mu.ready[0]
		w.dropTaskLocked(ts)
		failed = append(failed, ts)
	}
	w.mu.Unlock()
	if len(failed) > 0 {
		w.log.Error("failing ready tasks: memory cannot be freed", "tasks", len(failed), "err", err.Message)
	}
	now := time.Now()
	for _, ts := range failed {
		w.report(0, ts, result{err: err}, now, now)
	}
}
