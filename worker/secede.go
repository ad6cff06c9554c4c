package worker

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// A Python task that waits on tasks it submitted (get_client, secede, worker_client) gives its
// thread back: instead of its run's answer the executor sends secede, passing one end of a
// socket pair it made (SCM_RIGHTS). The task's answer will come on that socket; the executor's
// own socket goes on serving other runs, from another thread of the executor (docs/protocol.md
// §3.5). The worker tells the scheduler the task is long-running (its thread no longer counts)
// and frees the thread that ran it at once.

// secede takes run r's own socket (fd, now the worker's) and waits on it in a goroutine; the
// caller goes on reading ex's answers to the rest of its batch.
func (w *Worker) secede(ex *executor, r *pyRun, fd int) {
	// non-blocking, so that waiting on it parks a goroutine in the poller rather than holding
	// an OS thread per seceded task (Go aborts past 10,000 threads)
	syscall.SetNonblock(fd, true)
	c := newExecConn(os.NewFile(uintptr(fd), "seceded-task"), w.cfg.limits())
	ts := r.ts
	w.mu.Lock()
	ts.longRunning = true
	tid := ts.tid
	w.mu.Unlock()
	w.send(&wire.Msg{Op: wire.OpLongRunning, Key: ts.t.Key, TaskID: tid})
	w.stats.seceded.Add(1)
	lane := ex.lane
	if !w.goFunc(func() { w.serveSeceded(ex.pid, c, ts, lane) }) {
		c.close()
	}
}

// serveSeceded waits for a seceded task's answer on its own socket, answering rejoin on the
// way, and finishes the task. A broken socket means its executor died: the task fails as
// executor-died, which the scheduler runs again elsewhere.
func (w *Worker) serveSeceded(pid int, c *execConn, ts *task, lane int) {
	defer c.close()
	start := time.Now()
	for {
		m, x, frames, err := c.recvExt()
		if err != nil {
			w.finish(lane, ts, result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied",
				Message: fmt.Sprintf("Python executor (pid %d) died while running the task (seceded): %v", pid, err)}},
				start, time.Now())
			return
		}
		switch m.Op {
		case wire.OpRejoin:
			// the task runs on; it takes no thread slot here, and the scheduler keeps counting
			// it as long-running until it ends
			if err := c.send(&wire.Msg{Op: wire.OpRejoined, ID: m.ID}); err != nil {
				continue // the next read reports the broken socket
			}
		case wire.OpDone, wire.OpError:
			res := pyResult(m, x, frames, w.py, nil)
			from, to := start, time.Now()
			if m.Start > 0 && m.Stop >= m.Start {
				from, to = time.Unix(0, m.Start), time.Unix(0, m.Stop)
			}
			w.finish(lane, ts, res, from, to)
			return
		default:
			w.finish(lane, ts, result{err: &wire.Error{Code: wire.CodeProtocol, Type: "ProtocolError",
				Message: fmt.Sprintf("a seceded task's executor sent %q", m.Op)}}, start, time.Now())
			return
		}
	}
}

// TaskEnv is what a Go task learns from its context about where it runs (TaskEnvFrom): how to
// reach the scheduler for a client of its own (the Go client's TaskClient) and how to give its
// thread back while it waits on tasks it submitted (Secede).
type TaskEnv struct {
	Scheduler string      // the scheduler's control address ("" before the worker registered)
	Token     string      // the cluster's token
	TLS       *tls.Config // as a client, when the cluster uses TLS
	Key       string      // the running task's key

	once   sync.Once
	secede func()
}

// Secede gives the task's thread back to its worker, as Python's shoal.secede does: the worker
// starts another thread in its place, and the scheduler stops counting the task against the
// worker's threads. Call it before waiting on tasks the task submitted; later calls do nothing.
func (e *TaskEnv) Secede() { e.once.Do(e.secede) }

type taskEnvKey struct{}

// TaskEnvFrom returns the environment of the Go task whose context ctx is.
func TaskEnvFrom(ctx context.Context) (*TaskEnv, bool) {
	e, ok := ctx.Value(taskEnvKey{}).(*TaskEnv)
	return e, ok
}

// taskContext is the context a Go task runs with: the worker's, and its TaskEnv.
func (w *Worker) taskContext(ts *task, thread int) context.Context {
	env := &TaskEnv{Token: w.cfg.Token, TLS: w.cfg.ClientTLS, Key: ts.t.Key}
	if a := w.schedAddr.Load(); a != nil {
		env.Scheduler = *a
	}
	env.secede = func() { w.secedeGo(ts, thread) }
	return context.WithValue(w.ctx, taskEnvKey{}, env)
}

// secedeGo frees the thread running Go task ts: another thread goroutine takes its place, and
// the one running ts ends once ts is done (thread sees ts.seceded).
func (w *Worker) secedeGo(ts *task, thread int) {
	w.mu.Lock()
	if w.mu.tasks[ts.t.Key] != ts || ts.state != stateRunning {
		w.mu.Unlock()
		return // called after the task returned (a goroutine it left behind): nothing to free
	}
	ts.seceded, ts.longRunning = true, true
	tid := ts.tid
	w.mu.Unlock()
	w.send(&wire.Msg{Op: wire.OpLongRunning, Key: ts.t.Key, TaskID: tid})
	w.stats.seceded.Add(1)
	w.goFunc(func() { w.thread(thread) })
}
