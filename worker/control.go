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
// graceful path, Run returns nil), or the connection breaks (Run returns the error). Run may
// be called once; call Close afterwards.
func (w *Worker) Run(ctx context.Context, schedulerAddr string) error {
	if w.closed.Load() {
		return ErrClosed
	}
	conn, reg, err := w.register(ctx, schedulerAddr)
	if err != nil {
		return err
	}
	w.schedAddr.Store(&schedulerAddr)
	if err := os.WriteFile(filepath.Join(w.scratch.path, "scheduler"), []byte(schedulerAddr), 0o600); err != nil {
		w.log.Warn("cannot tell the Python executors the scheduler's address: get_client in tasks will fail", "err", err)
	}
	w.log.Info("registered with the scheduler", "scheduler", schedulerAddr, "worker_id", reg.WorkerID)
	w.sched.Store(conn)

	runCtx, stopRun := context.WithCancel(w.ctx)
	defer stopRun()
	recvDone := make(chan error, 1)
	w.goFunc(func() { recvDone <- w.recvLoop(conn) })
	w.goFunc(func() { w.heartbeatLoop(runCtx) })

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
		return fmt.Errorf("worker: lost the scheduler at %s: %w", schedulerAddr, err)
	case <-w.ctx.Done():
		return ErrClosed
	}
}

// register dials the scheduler and performs the register/registered exchange.
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
	err = conn.Send(&wire.Msg{Op: wire.OpRegister, Name: w.cfg.Name, DataAddr: w.dataAddr,
		NThreads: w.cfg.NThreads, MemLimit: w.memLimit, Resources: w.cfg.Resources,
		Functions: Registered(), Version: w.cfg.Version, PID: os.Getpid()})
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
	return conn, m, nil
}

// recvLoop dispatches the scheduler's messages until the connection ends.
func (w *Worker) recvLoop(conn *wire.Conn) error {
	for {
		m, _, err := conn.Recv()
		if err != nil {
			return err
		}
		switch m.Op {
		case wire.OpCompute:
			w.handleCompute(m) // keeps copies of what it needs, not m
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

// heartbeatLoop reports load and memory every HeartbeatInterval.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	cpu := newCPUMeter()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := w.Metrics()
		hb := &wire.Msg{Op: wire.OpHeartbeat, Memory: m.Memory, Spilled: m.Spilled,
			MemLimit: m.MemoryLimit, Executing: m.Executing, Ready: m.Ready, CPU: cpu.percent(),
			BytesSent: m.BytesSent, BytesRecv: m.BytesReceived}
		if why := w.unhealthy.Load(); why != nil {
			hb.State, hb.Reason = wire.StateUnhealthy, *why
		}
		w.send(hb)
	}
}
