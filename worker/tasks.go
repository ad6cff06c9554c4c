package worker

import (
	"container/heap"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// taskState is where a compute request is on this worker. Every change goes through
// setStateLocked (under w.mu), which checks it against legalTask, as the scheduler checks its
// own transitions: an illegal one is a bug, a panic under `go test` and an error in the log
// otherwise.
type taskState uint8

const (
	stateNew      taskState = iota // received, not yet queued
	stateFetching                  // waiting for dependencies from peers
	stateReady                     // in the ready queue
	stateRunning                   // executing on a thread (or seceded from it)
	stateDone                      // finished, dropped or freed: no longer held
	numTaskStates
)

var taskStateNames = [numTaskStates]string{"new", "fetching", "ready", "running", "done"}

func (s taskState) String() string {
	if s < numTaskStates {
		return taskStateNames[s]
	}
	return "unknown"
}

// legalTask[from][to] lists the transitions a task may make.
var legalTask = func() (t [numTaskStates][numTaskStates]bool) {
	for _, e := range [][2]taskState{
		{stateNew, stateFetching}, {stateNew, stateReady}, // inputs missing, or all there
		{stateFetching, stateReady},                         // the last input arrived
		{stateReady, stateRunning},                          // a thread (or an executor batch) took it
		{stateRunning, stateReady},                          // a batch that could not start hands it back
		{stateRunning, stateDone},                           // it ran (or ran and was freed)
		{stateFetching, stateDone}, {stateReady, stateDone}, // freed, stolen, or the scheduler was lost
	} {
		t[e[0]][e[1]] = true
	}
	return t
}()

// strictTransitions makes an illegal transition panic (under go test).
var strictTransitions = testing.Testing()

// setStateLocked moves ts to state to, checking that the move is legal.
func (w *Worker) setStateLocked(ts *task, to taskState) {
	if !legalTask[ts.state][to] {
		msg := fmt.Sprintf("worker: task %s: illegal transition %s → %s", ts.t.Key, ts.state, to)
		if strictTransitions {
			panic(msg)
		}
		w.log.Error(msg)
	}
	ts.state = to
}

// task is a compute request the worker holds until it has run.
type task struct {
	t       graph.Task
	tid     uint64 // the scheduler's task handle from its latest compute, echoed in the report (w.mu)
	order   int64
	seq     uint64
	state   taskState
	waiting map[string]struct{} // dependencies not yet in the store (nil when none were missing)
	index   int                 // position in the ready heap
	freed   bool                // freed while running: discard the result
	// next: a compute of the same key with another definition, received while this freed run
	// went on; handled when the run ends (w.mu)
	next *wire.Msg
	solo bool // was in a batch whose executor died: runs alone from now on
	// sendFailures counts executors its run could not be sent to (sendFailed)
	sendFailures int
	keep         bool         // its result has dependents: its executor may keep it (resident.go)
	seceded      bool         // a Go task that gave its thread back (TaskEnv.Secede)
	execPID      atomic.Int32 // a Python task: the executor it was sent to (stack.go)
	// longRunning: it gave its thread back (Go or Python), as told to the scheduler
	longRunning bool
}

// taskHeap orders ready tasks by order (lower first), then arrival.
type taskHeap []*task

func (h taskHeap) Len() int { return len(h) }
func (h taskHeap) Less(i, j int) bool {
	if h[i].order != h[j].order {
		return h[i].order < h[j].order
	}
	return h[i].seq < h[j].seq
}
func (h taskHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *taskHeap) Push(x any) {
	t := x.(*task)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *taskHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

// taskDeps returns the keys a task needs: its deps plus, for Go tasks, its argument refs,
// each once, in a new slice (the message's task goes back to the decoder's pool).
func taskDeps(t *graph.Task) []string {
	if len(t.Deps) == 0 && len(t.Args) == 0 {
		return nil
	}
	deps := append([]string(nil), t.Deps...)
	if len(deps)+len(t.Args) <= depsScanMax {
		// (A map per task: 122–147 ns for a tree reduction's sum, two deps and no refs among
		// a Python task's arguments, against 74–85 by scanning; BenchmarkTaskDeps.)
		for _, a := range t.Args {
			if a.Ref != "" && !slices.Contains(deps, a.Ref) {
				deps = append(deps, a.Ref)
			}
		}
		return deps
	}
	seen := make(map[string]bool, len(deps))
	for _, d := range deps {
		seen[d] = true
	}
	for _, a := range t.Args {
		if a.Ref != "" && !seen[a.Ref] {
			seen[a.Ref] = true
			deps = append(deps, a.Ref)
		}
	}
	return deps
}

// takeNextLocked hands over the compute that waited on this run (ts.next), once, when the run
// ends (w.mu held).
func (ts *task) takeNextLocked() *wire.Msg {
	next := ts.next
	ts.next = nil
	return next
}

// sameTask reports whether def, a compute's task, is the definition ts runs (whose Deps
// taskDeps rewrote).
func sameTask(ts *task, def *graph.Task) bool {
	cp := *def
	cp.Deps = taskDeps(def)
	return graph.Same(&ts.t, &cp)
}

// depsScanMax: up to this many deps and arguments, taskDeps finds repeats by scanning.
const depsScanMax = 16

// handleCompute queues a task, starting fetches for missing dependencies.
func (w *Worker) handleCompute(m *wire.Msg) {
	t := m.Task
	if t == nil || t.Key == "" {
		w.log.Warn("compute without a task key")
		return
	}
	w.mu.Lock()
	if t.Kind == graph.KindPy && len(m.FuncData) > 0 {
		w.mu.funcData[t.Func] = m.FuncData // sent once per worker, whatever this compute turns out to be
	}
	if ts, dup := w.mu.tasks[t.Key]; dup {
		if ts.freed && !sameTask(ts, t) {
			// the key was forgotten and given to another definition: its turn comes when the
			// cancelled run ends (finish). A copy: the control loop recycles m and m.Task once
			// this returns (what they refer to stays valid).
			cp, task := *m, *t
			cp.Task = &task
			ts.next = &cp
			w.mu.Unlock()
			return
		}
		// Asked again for a task it has: the latest handle is the one to report. A run the
		// scheduler cancelled (freed) and now wants again is that run: its result is kept and
		// reported under the new handle (the scheduler ignores reports of cancelled runs,
		// so dropping it and skipping this compute as a repeat left the task with no run). A
		// run that gave its thread back says so again, under the new handle.
		ts.tid, ts.freed = m.TaskID, false
		again := ts.longRunning
		w.mu.Unlock()
		if again {
			w.send(&wire.Msg{Op: wire.OpLongRunning, Key: t.Key, TaskID: m.TaskID})
		}
		return
	}
	// (under w.mu: a freed run's result leaves the store as its task leaves the table, under
	// w.mu in finish, so a value seen here with no task above is one that stays)
	if enc, nbytes, ok := w.store.Info(t.Key); ok {
		w.mu.Unlock()
		now := time.Now().UnixNano()
		w.send(&wire.Msg{Op: wire.OpTaskFinished, Key: t.Key, TaskID: m.TaskID, NBytes: nbytes, Encoding: enc, Start: now, Stop: now})
		return
	}
	defer w.mu.Unlock()
	if w.mu.draining || w.mu.closed {
		w.send(&wire.Msg{Op: wire.OpReschedule, Keys: []string{t.Key}})
		return
	}
	w.mu.seq++
	ts := &task{t: *t, tid: m.TaskID, order: m.Order, seq: w.mu.seq, index: -1, keep: m.Keep}
	ts.t.Deps = taskDeps(t)
	w.mu.tasks[t.Key] = ts
	for _, dep := range ts.t.Deps {
		if !w.store.Has(dep) {
			if ts.waiting == nil {
				ts.waiting = make(map[string]struct{}, len(ts.t.Deps))
			}
			ts.waiting[dep] = struct{}{}
		}
	}
	if len(ts.waiting) == 0 {
		w.pushReadyLocked(ts)
		return
	}
	w.setStateLocked(ts, stateFetching)
	whoHas := make(map[string]wire.Dep, len(m.Deps)) // (only here: most tasks have their inputs)
	for _, d := range m.Deps {
		whoHas[d.Key] = d
	}
	for dep := range ts.waiting {
		w.needLocked(dep, whoHas[dep], ts)
	}
	w.pumpFetchesLocked()
	if ts.t.Kind == graph.KindPy {
		w.py.warm(w.ctx, false) // its executor starts while its inputs arrive
	}
}

func (w *Worker) pushReadyLocked(ts *task) {
	w.setStateLocked(ts, stateReady)
	heap.Push(&w.mu.ready, ts)
	w.mu.cond.Signal()
}

// dropTaskLocked forgets a task that has not started.
func (w *Worker) dropTaskLocked(ts *task) {
	delete(w.mu.tasks, ts.t.Key)
	from := ts.state
	w.setStateLocked(ts, stateDone)
	switch from {
	case stateReady:
		heap.Remove(&w.mu.ready, ts.index)
	case stateFetching:
		for dep := range ts.waiting {
			if f := w.mu.fetches[dep]; f != nil {
				delete(f.dependents, ts.t.Key)
				if len(f.dependents) == 0 && !f.inFlight {
					w.forgetFetchLocked(f)
				}
			}
		}
	}
}

// handleFreeKeys drops stored results and forgets queued tasks; a running task's result will
// be discarded when it finishes.
func (w *Worker) handleFreeKeys(keys []string) {
	w.mu.Lock()
	for _, k := range keys {
		ts := w.mu.tasks[k]
		if ts == nil {
			continue
		}
		if ts.state == stateRunning {
			ts.freed = true
		} else {
			w.dropTaskLocked(ts)
		}
	}
	w.mu.Unlock()
	w.store.DeleteAsync(keys...) // freeing segments' pages must not hold up the receive loop
	w.wake()
}

// handleSteal gives a task back if it has not started.
func (w *Worker) handleSteal(key string) {
	w.mu.Lock()
	ts := w.mu.tasks[key]
	ok := ts != nil && ts.state != stateRunning
	if ok {
		w.dropTaskLocked(ts)
	}
	w.mu.Unlock()
	w.send(&wire.Msg{Op: wire.OpStealResponse, Key: key, Accepted: ok})
}

// wake re-evaluates whether threads may start tasks (memory fell, state changed).
func (w *Worker) wake() {
	w.mu.Lock()
	w.mu.cond.Broadcast()
	w.mu.Unlock()
}

func (w *Worker) pausedLocked() bool {
	return w.pauseAt > 0 && w.store.Stats().Memory > w.pauseAt || w.mem.paused.Load()
}

// thread is one task slot: it runs ready tasks, lowest order first.
func (w *Worker) thread(i int) {
	for {
		w.mu.Lock()
		for !w.mu.closed && (w.mu.draining || len(w.mu.ready) == 0 || w.pausedLocked()) {
			w.mu.cond.Wait()
		}
		if w.mu.closed {
			w.mu.Unlock()
			return
		}
		ts := heap.Pop(&w.mu.ready).(*task)
		w.setStateLocked(ts, stateRunning)
		w.mu.running++
		w.mu.Unlock()
		w.execute(i, ts)
		w.mu.Lock()
		seceded := ts.seceded
		w.mu.Unlock()
		if seceded {
			return // a Go task that seceded: another goroutine took this thread's place
		}
	}
}

// execute runs one task, stores its result and reports to the scheduler.
func (w *Worker) execute(thread int, ts *task) {
	start := time.Now()
	var r result
	if ts.t.Kind == graph.KindPy {
		r = w.runPy(ts)
	} else {
		r = w.runGo(ts, thread)
	}
	if r.seceded {
		return // serveSeceded finishes it
	}
	stop := time.Now()
	if !r.ranFrom.IsZero() {
		start, stop = r.ranFrom, r.ranTo
	}
	w.finish(thread, ts, r, start, stop)
}

// report sends task_finished or task_erred.
func (w *Worker) report(thread int, ts *task, r result, start, stop time.Time) {
	key := ts.t.Key
	m := &wire.Msg{Key: key, TaskID: ts.tid, Start: start.UnixNano(), Stop: stop.UnixNano(), Thread: thread}
	if r.err != nil {
		w.stats.erred.Add(1)
		m.Op, m.Error = wire.OpTaskErred, r.err
		w.log.Debug("task erred", "task", key, "code", r.err.Code, "message", r.err.Message)
	} else {
		w.stats.executed.Add(1)
		m.Op, m.NBytes, m.Encoding, m.Keys = wire.OpTaskFinished, r.nbytes, r.enc, r.holds
	}
	w.send(m)
}

// result is what running a task produced.
type result struct {
	enc    string
	frames [][]byte
	seg    *Segment  // the memfd holding the large frames (empty in frames), or nil
	res    *resident // the executor keeping the large frames (empty in frames), or nil
	holds  []string  // keys of the futures the result holds (a Python task returned them)
	obj    any
	nbytes int64
	err    *wire.Error
	// when the Python executor says it ran the task (zero: the worker's own times count)
	ranFrom, ranTo time.Time
	// seceded: the task gave its thread back and goes on elsewhere (secede.go): the thread
	// neither stores nor reports anything for it
	seceded bool
}
