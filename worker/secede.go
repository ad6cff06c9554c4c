package worker

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// A Python task that waits on tasks it submitted (get_client, secede, worker_client) gives its
// thread back: the executor sends secede for its run; the worker answers seceded with one end
// of a new socket pair, tells the scheduler the task is long-running (its thread no longer
// counts), and reads that socket for the task's answer while the executor's own socket goes
// on serving other runs, in another thread of the executor (docs/protocol.md §3.5). The
// thread that ran the task is free at once.

// secede hands run r its own socket; the caller goes on reading ex's answers to the rest of
// its batch.
func (w *Worker) secede(ex *executor, r *pyRun) error {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair for a seceding task: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "seceded-task")
	err = ex.conn.sendMany(outMsg{m: &wire.Msg{Op: wire.OpSeceded, ID: r.m.ID}, fds: []int{fds[1]}})
	syscall.Close(fds[1]) // the executor has its own copy now (or is gone)
	if err != nil {
		mine.Close()
		return err
	}
	c := newExecConn(mine, w.cfg.limits())
	ts := r.ts
	w.send(&wire.Msg{Op: wire.OpLongRunning, Key: ts.t.Key, TaskID: ts.tid})
	w.stats.seceded.Add(1)
	lane := ex.lane
	if !w.goFunc(func() { w.serveSeceded(ex.pid, c, ts, lane) }) {
		c.close()
	}
	return nil
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
