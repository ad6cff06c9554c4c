package worker

import (
	"fmt"
	"os"
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
	c := newExecConn(os.NewFile(uintptr(fd), "seceded-task"), w.cfg.limits())
	ts := r.ts
	w.send(&wire.Msg{Op: wire.OpLongRunning, Key: ts.t.Key, TaskID: ts.tid})
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
			res := pyResult(m, x, frames)
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
