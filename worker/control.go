package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// errSchedulerClose is returned by recvLoop when the scheduler sent close.
var errSchedulerClose = errors.New("scheduler asked the worker to close")

// ErrRestart is returned by Run when the scheduler asked the worker to restart (a client's
// restart): the scheduler has already forgotten this worker and its work. The caller closes
// the worker and starts its process again (the shoal binary re-executes itself).
var ErrRestart = errors.New("the scheduler asked the worker to restart")

// Run connects to the scheduler's control port, registers, and serves it until ctx ends
// (then shuts down gracefully: queued tasks are handed back with reschedule, running tasks
// get Config.ShutdownGrace to finish, goodbye is sent), the scheduler sends close (same
// graceful path, Run returns nil), or the scheduler is lost. A lost scheduler — the
// connection broke, or nothing arrived for Config.SchedulerTimeout — is sought again for
// Config.Reconnect (at the address Config.Locate finds, or the last one) while the worker
// keeps its results, executors and running tasks; it registers again with the results it
// holds. Run returns the error when that time runs out (or at once when Reconnect is 0). Run
// may be called once; call Close afterwards.
func (w *Worker) Run(ctx context.Context, schedulerAddr string) error {
	if w.closed.Load() {
		return ErrClosed
	}
	conn, reg, err := w.register(ctx, schedulerAddr)
	if err != nil {
		return err
	}
	for {
		lost := w.serve(ctx, conn, reg, schedulerAddr)
		var le *lostError
		if !errors.As(lost, &le) {
			return lost
		}
		if ctx.Err() != nil {
			return nil // told to stop while the scheduler was gone: nothing to hand back
		}
		if w.cfg.Reconnect <= 0 {
			return lost
		}
		n := w.forgetQueued()
		w.log.Warn("lost the scheduler: keeping results and executors, and connecting again", "scheduler", schedulerAddr,
			"cause", le.cause, "tasks_handed_back", n, "held", w.store.Stats().Keys, "for_up_to", w.cfg.Reconnect)
		if conn, reg, schedulerAddr, err = w.reconnect(ctx, schedulerAddr, le); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// lostError: the scheduler connection broke or went silent.
type lostError struct {
	addr  string
	cause error
}

func (e *lostError) Error() string {
	return fmt.Sprintf("worker: lost the scheduler at %s: %v", e.addr, e.cause)
}

func (e *lostError) Unwrap() error { return e.cause }

// serve runs one registered session on conn until it ends: nil (closed by the scheduler or
// ctx), ErrRestart, ErrClosed, or a *lostError.
func (w *Worker) serve(ctx context.Context, conn *wire.Conn, reg *wire.Msg, schedulerAddr string) error {
	w.schedAddr.Store(&schedulerAddr)
	if err := os.WriteFile(filepath.Join(w.scratch.path, "scheduler"), []byte(schedulerAddr), 0o600); err != nil {
		w.log.Warn("cannot tell the Python executors the scheduler's address: get_client in tasks will fail", "err", err)
	}
	w.log.Info("registered with the scheduler", "scheduler", schedulerAddr, "worker_id", reg.WorkerID)
	w.sched.Store(conn)

	runCtx, stopRun := context.WithCancel(w.ctx)
	defer stopRun()
	recvDone := make(chan error, 1)
	w.lastRecv.Store(time.Now().UnixNano())
	// a new session: what this scheduler asks for in its registered answer (a large cluster:
	// docs/protocol.md), else nothing yet
	w.askedInterval.Store(0)
	if reg.Interval > 0 && reg.Interval < 3600 {
		w.askedInterval.Store(int64(reg.Interval * float64(time.Second)))
	}
	w.goFunc(func() { recvDone <- w.recvLoop(conn) })
	w.goFunc(func() { w.heartbeatLoop(runCtx) })
	silent := make(chan time.Duration, 1)
	w.goFunc(func() { w.watchScheduler(runCtx, silent) })
	if w.cfg.StartPython {
		w.py.warm(w.ctx, true) // (none when one runs already: a session after the first)
	}

	select {
	case <-ctx.Done():
		w.drain(conn, "worker shutting down")
		return nil
	case err := <-recvDone:
		if errors.Is(err, errSchedulerClose) {
			w.drain(conn, "closed by the scheduler")
			return nil
		}
		if errors.Is(err, ErrRestart) {
			w.sched.CompareAndSwap(conn, nil)
			conn.Abort()
			w.py.killAll() // their work is cancelled; the restarted process starts new ones
			return ErrRestart
		}
		w.sched.CompareAndSwap(conn, nil)
		conn.Abort()
		if w.closed.Load() {
			return ErrClosed
		}
		select {
		case d, ok := <-silent:
			if ok {
				err = fmt.Errorf("nothing arrived for %v (%w)", d.Round(time.Millisecond), err)
			}
		default:
		}
		return &lostError{addr: schedulerAddr, cause: err}
	case <-w.ctx.Done():
		return ErrClosed
	}
}

// schedulerTimeout is how long the scheduler may stay silent.
func (w *Worker) schedulerTimeout() time.Duration {
	if w.cfg.SchedulerTimeout > 0 { // but never under five of the intervals the scheduler asked for
		return max(w.cfg.SchedulerTimeout, 5*time.Duration(w.askedInterval.Load()))
	}
	return max(5*w.heartbeatEvery(), 5*time.Second) // the scheduler answers every ~2 s
}

// heartbeatEvery is the interval between heartbeats: the configured one, or longer when the
// scheduler asked for it (a large cluster: heartbeatInterval in the scheduler).
func (w *Worker) heartbeatEvery() time.Duration {
	return max(w.cfg.HeartbeatInterval, time.Duration(w.askedInterval.Load()))
}

// watchScheduler aborts the session's connection when nothing has arrived on it for the
// scheduler timeout (the scheduler answers every heartbeat); it says how long in silent.
func (w *Worker) watchScheduler(ctx context.Context, silent chan<- time.Duration) {
	defer close(silent)
	limit := w.schedulerTimeout()
	t := time.NewTicker(min(limit/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			limit := w.schedulerTimeout() // longer once the scheduler asks for rarer heartbeats
			if d := now.Sub(time.Unix(0, w.lastRecv.Load())); d > limit {
				silent <- d
				if c := w.sched.Load(); c != nil {
					c.Abort()
				}
				return
			}
		}
	}
}

// forgetQueued drops the tasks that have not started (the scheduler gives them out again);
// running ones go on, and their results are reported when the worker registers again.
func (w *Worker) forgetQueued() int {
	w.mu.Lock()
	n := 0
	for _, ts := range w.mu.tasks {
		if ts.state != stateRunning {
			w.dropTaskLocked(ts)
			n++
		}
	}
	w.mu.Unlock()
	return n
}

// reconnect registers again, with backoff, until Config.Reconnect has passed.
func (w *Worker) reconnect(ctx context.Context, last string, lost *lostError) (*wire.Conn, *wire.Msg, string, error) {
	deadline := time.Now().Add(w.cfg.Reconnect)
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		addr := last
		if w.cfg.Locate != nil {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			if a, err := w.cfg.Locate(lctx); err == nil && a != "" {
				addr = a
			}
			cancel()
		}
		dctx, cancel := context.WithTimeout(ctx, reconnectDialTimeout)
		conn, reg, err := w.register(dctx, addr)
		cancel()
		if err == nil {
			w.log.Info("registered with the scheduler again", "scheduler", addr, "attempts", attempt,
				"held", w.store.Stats().Keys)
			return conn, reg, addr, nil
		}
		var we *wire.Error
		if errors.As(err, &we) && we.Code != wire.CodeDuplicateWorker && we.Code != wire.CodeBusy {
			return nil, nil, "", fmt.Errorf("%w; the scheduler refused to take the worker back: %w", lost, err)
		}
		if !time.Now().Before(deadline) {
			return nil, nil, "", fmt.Errorf("%w; could not register again within %v: %w", lost, w.cfg.Reconnect, err)
		}
		if attempt == 1 || attempt%20 == 0 {
			w.log.Info("the scheduler cannot be reached yet", "scheduler", addr, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, nil, "", lost
		case <-w.ctx.Done():
			return nil, nil, "", ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// reconnectDialTimeout bounds one attempt to reach the scheduler again: a cut link swallows
// the connection request, and the next attempt should come soon after the link returns.
const reconnectDialTimeout = 1500 * time.Millisecond

// maxRegisterItems bounds the held results listed in register; the rest follow in add_keys.
const maxRegisterItems = 100_000

// register dials the scheduler and performs the register/registered exchange, listing the
// results the worker holds (none on the first registration).
func (w *Worker) register(ctx context.Context, addr string) (*wire.Conn, *wire.Msg, error) {
	conn, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleWorker, Token: w.cfg.Token,
		TLS: w.cfg.ClientTLS, Limits: w.cfg.limits()})
	if err != nil {
		return nil, nil, fmt.Errorf("worker: connecting to scheduler %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Abort() })
	defer stop()
	stopClose := context.AfterFunc(w.ctx, func() { conn.Abort() })
	defer stopClose()
	items := w.store.Items()
	var running, seceded []string // tasks still running from an earlier registration
	w.mu.Lock()
	for k, ts := range w.mu.tasks {
		if ts.state == stateRunning {
			running = append(running, k)
			if ts.longRunning {
				seceded = append(seceded, k)
			}
		}
	}
	w.mu.Unlock()
	first, rest := items, []wire.Item(nil)
	if len(items) > maxRegisterItems {
		first, rest = items[:maxRegisterItems], items[maxRegisterItems:]
	}
	err = conn.Send(&wire.Msg{Op: wire.OpRegister, Name: w.cfg.Name, DataAddr: w.dataAddr,
		NThreads: w.cfg.NThreads, MemLimit: w.memLimit, Resources: w.cfg.Resources,
		Functions: Registered(), Version: w.cfg.Version, PID: os.Getpid(), Items: first,
		Running: running, Seceded: seceded})
	if err != nil {
		conn.Abort()
		return nil, nil, fmt.Errorf("worker: registering with %s: %w", addr, err)
	}
	m, _, err := conn.Recv()
	switch {
	case err != nil:
		conn.Abort()
		return nil, nil, fmt.Errorf("worker: registering with %s: %w", addr, err)
	case m.Op == wire.OpError:
		conn.Close()
		return nil, nil, fmt.Errorf("worker: scheduler refused registration: %w", wire.Errorf(m.Code, m.Message))
	case m.Op != wire.OpRegistered:
		conn.Abort()
		return nil, nil, fmt.Errorf("worker: expected registered from %s, got %q", addr, m.Op)
	}
	for len(rest) > 0 {
		n := min(len(rest), maxRegisterItems)
		if err := conn.Send(&wire.Msg{Op: wire.OpAddKeys, Items: rest[:n]}); err != nil {
			conn.Abort()
			return nil, nil, fmt.Errorf("worker: registering with %s: %w", addr, err)
		}
		rest = rest[n:]
	}
	return conn, m, nil
}

// recvLoop dispatches the scheduler's messages until the connection ends.
func (w *Worker) recvLoop(conn *wire.Conn) error {
	for {
		m, _, err := conn.Recv()
		if err != nil {
			return err
		}
		w.lastRecv.Store(time.Now().UnixNano())
		switch m.Op {
		case wire.OpHeartbeat: // the scheduler's answer: it still hears this worker
			if m.Interval >= 0 && m.Interval < 3600 {
				w.askedInterval.Store(int64(m.Interval * float64(time.Second)))
			}
			wire.ReleaseMsg(m)
		case wire.OpCompute:
			w.handleCompute(m) // keeps copies of what it needs, not m or its task
			wire.ReleaseTask(m.Task)
			wire.ReleaseMsg(m)
		case wire.OpFreeKeys:
			w.handleFreeKeys(m.Keys)
			wire.ReleaseMsg(m)
		case wire.OpStealRequest:
			w.handleSteal(m.Key)
			wire.ReleaseMsg(m)
		case wire.OpPeerGone:
			w.log.Debug("a peer left the cluster", "peer", m.Worker, "reason", m.Reason)
			w.PeerGone(m.Worker)
			wire.ReleaseMsg(m)
		case wire.OpPreload:
			w.handlePreload(m)
			wire.ReleaseMsg(m)
		case wire.OpAcquire:
			w.handleAcquire(m.Deps)
			wire.ReleaseMsg(m)
		case wire.OpProfile: // the statistical profiler on or off (profile.go)
			w.handleProfile(m)
			wire.ReleaseMsg(m)
		case wire.OpClose:
			w.log.Info("scheduler asked to close", "reason", m.Reason)
			return errSchedulerClose
		case wire.OpRestart:
			w.log.Info("scheduler asked to restart", "reason", m.Reason)
			return ErrRestart
		case wire.OpError:
			w.log.Warn("scheduler reported an error", "code", m.Code, "message", m.Message)
		default:
			conn.SendError(m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not served by a worker", m.Op))
		}
	}
}

// drain hands queued tasks back, waits (bounded) for running ones, says goodbye and closes
// the scheduler connection.
func (w *Worker) drain(conn *wire.Conn, reason string) {
	w.mu.Lock()
	w.mu.draining = true
	var keys []string
	for k, ts := range w.mu.tasks {
		if ts.state != stateRunning {
			keys = append(keys, k)
			w.dropTaskLocked(ts)
		}
	}
	w.mu.Unlock()
	if len(keys) > 0 {
		conn.Send(&wire.Msg{Op: wire.OpReschedule, Keys: keys})
	}
	w.log.Info("draining", "rescheduled", len(keys))
	w.waitIdle(w.cfg.ShutdownGrace)
	conn.Send(&wire.Msg{Op: wire.OpGoodbye, Reason: reason})
	w.sched.CompareAndSwap(conn, nil)
	conn.Close()
}

// waitIdle waits until no task runs, at most d or until Close.
func (w *Worker) waitIdle(d time.Duration) {
	expired := false
	t := time.AfterFunc(d, func() {
		w.mu.Lock()
		expired = true
		w.mu.cond.Broadcast()
		w.mu.Unlock()
	})
	defer t.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.mu.running > 0 && !expired && !w.mu.closed {
		w.mu.cond.Wait()
	}
}

// heartbeatLoop reports load and memory every HeartbeatInterval, or less often when the
// scheduler asks (heartbeatEvery).
func (w *Worker) heartbeatLoop(ctx context.Context) {
	every := w.heartbeatEvery()
	t := time.NewTicker(every)
	defer t.Stop()
	cpu := newCPUMeter()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := w.heartbeatEvery(); now != every {
			every = now
			t.Reset(every)
		}
		m := w.Metrics()
		hb := &wire.Msg{Op: wire.OpHeartbeat, Memory: m.Memory, Spilled: m.Spilled,
			MemLimit: m.MemoryLimit, Executing: m.Executing, Ready: m.Ready, CPU: cpu.percent(),
			BytesSent: m.BytesSent, BytesRecv: m.BytesReceived, ProcMem: w.ProcessMemory()}
		if why := w.unhealthy.Load(); why != nil {
			hb.State, hb.Reason = wire.StateUnhealthy, *why
		}
		w.send(hb)
	}
}
