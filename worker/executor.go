package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// exitWait bounds how long a dead or shut-down executor gets to exit before it is killed.
const exitWait = 3 * time.Second

// executor is one Python process speaking §3.5 of docs/protocol.md over a socketpair.
type executor struct {
	pid    int
	cmd    *exec.Cmd
	conn   *wire.Conn
	funcs  map[string]bool // callables this process has received
	exited chan struct{}   // closed once the process has been waited for
	seq    uint64
}

// executorPool starts executors lazily, at most NProcsPython, and restarts dead ones on
// demand.
type executorPool struct {
	w      *Worker
	slots  chan struct{} // one token per executor in use or being started
	deaths atomic.Int64
	mu     struct {
		sync.Mutex
		idle   []*executor
		all    map[*executor]struct{}
		closed bool
	}
}

func newExecutorPool(w *Worker) *executorPool {
	p := &executorPool{w: w, slots: make(chan struct{}, w.cfg.NProcsPython)}
	p.mu.all = make(map[*executor]struct{})
	return p
}

func (p *executorPool) live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.all)
}

// acquire returns an idle executor, starting one when none is idle and the limit allows.
func (p *executorPool) acquire(ctx context.Context) (*executor, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if n := len(p.mu.idle); n > 0 {
		ex := p.mu.idle[n-1]
		p.mu.idle = p.mu.idle[:n-1]
		p.mu.Unlock()
		return ex, nil
	}
	p.mu.Unlock()
	ex, err := p.start(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return ex, nil
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

// discard removes a dead executor and returns how it ended.
func (p *executorPool) discard(ex *executor) string {
	p.deaths.Add(1)
	select {
	case <-ex.exited:
	case <-time.After(exitWait):
		ex.cmd.Process.Kill()
		<-ex.exited
	}
	ex.conn.Abort()
	p.mu.Lock()
	delete(p.mu.all, ex)
	p.mu.Unlock()
	<-p.slots
	return ex.cmd.ProcessState.String()
}

// stop asks an executor to exit, killing it if it does not.
func (p *executorPool) stop(ex *executor) {
	ex.conn.Send(&wire.Msg{Op: wire.OpShutdown})
	ex.conn.Close()
	select {
	case <-ex.exited:
	case <-time.After(exitWait):
		ex.cmd.Process.Kill()
		<-ex.exited
	}
	p.mu.Lock()
	delete(p.mu.all, ex)
	p.mu.Unlock()
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

// start launches `<Python> <PythonArgs>` with one end of a socketpair as fd 3, accepts its
// handshake and waits for ready.
func (p *executorPool) start(ctx context.Context) (*executor, error) {
	cfg := p.w.cfg
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "executor-worker-end"), os.NewFile(uintptr(fds[1]), "executor-end")
	defer theirs.Close()
	nc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	var tok [16]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])

	cmd := exec.Command(cfg.Python, cfg.PythonArgs...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Env = append(os.Environ(), "SHOAL_EXECUTOR_FD=3", "SHOAL_EXECUTOR_TOKEN="+token)
	log := p.w.log.With("python", cfg.Python)
	cmd.Stdout = &lineLogger{log: log, stream: "stdout"}
	cmd.Stderr = &lineLogger{log: log, stream: "stderr"}
	cmd.WaitDelay = exitWait // a grandchild holding our pipes must not block Wait

	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		nc.Close()
		return nil, ErrClosed
	}
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		nc.Close()
		return nil, fmt.Errorf("starting %s: %w", cfg.Python, err)
	}
	ex := &executor{pid: cmd.Process.Pid, cmd: cmd, funcs: make(map[string]bool), exited: make(chan struct{})}
	p.mu.all[ex] = struct{}{}
	p.mu.Unlock()
	reap := func() {
		cmd.Wait()
		close(ex.exited)
	}
	if !p.w.goFunc(reap) { // the worker is closing
		cmd.Process.Kill()
		reap()
		nc.Close()
		p.mu.Lock()
		delete(p.mu.all, ex)
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if err := p.handshake(ctx, ex, nc, token); err != nil {
		nc.Close()
		cmd.Process.Kill()
		<-ex.exited
		p.mu.Lock()
		delete(p.mu.all, ex)
		p.mu.Unlock()
		return nil, fmt.Errorf("Python executor (pid %d) did not start: %w (%s)", ex.pid, err, cmd.ProcessState)
	}
	p.w.log.Info("Python executor started", "pid", ex.pid)
	return ex, nil
}

func (p *executorPool) handshake(ctx context.Context, ex *executor, nc net.Conn, token string) error {
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	exited := make(chan struct{})
	defer close(exited)
	go func() { // an executor that dies before its handshake must not leave us waiting
		select {
		case <-ex.exited:
			nc.Close()
		case <-exited:
		}
	}()
	c, err := wire.Accept(nc, token, p.w.cfg.limits(), wire.RoleExecutor)
	if err != nil {
		return err
	}
	m, _, err := c.Recv()
	if err != nil {
		c.Abort()
		return err
	}
	if m.Op != wire.OpReady {
		c.Abort()
		return fmt.Errorf("expected ready, got %q", m.Op)
	}
	ex.conn = c
	return nil
}

// run sends one run request and waits for its answer.
func (ex *executor) run(m *wire.Msg, frames [][]byte) (*wire.Msg, [][]byte, error) {
	ex.seq++
	m.ID = ex.seq
	if err := ex.conn.Send(m, frames...); err != nil {
		return nil, nil, err
	}
	reply, rframes, err := ex.conn.Recv()
	if err != nil {
		return nil, nil, err
	}
	if reply.ID != m.ID {
		return nil, nil, fmt.Errorf("%w: executor answered id %d to run %d", wire.ErrProtocol, reply.ID, m.ID)
	}
	return reply, rframes, nil
}

// runPy runs a Python task on an executor.
func (w *Worker) runPy(ts *task) result {
	w.mu.Lock()
	fdata := w.mu.funcData[ts.t.Func]
	w.mu.Unlock()
	items := make([]wire.Item, 0, len(ts.t.Deps))
	var frames [][]byte
	for _, dep := range ts.t.Deps {
		e, err := w.store.Get(dep, true)
		if err != nil {
			return result{err: &wire.Error{Code: wire.CodeTaskError, Type: "ArgumentError",
				Message: fmt.Sprintf("dependency %q: %v", dep, err)}}
		}
		items = append(items, wire.Item{Key: dep, Encoding: e.Encoding, NFrames: len(e.Frames), NBytes: e.NBytes})
		frames = append(frames, e.Frames...)
	}
	ex, err := w.py.acquire(w.ctx)
	if err != nil {
		return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorError",
			Message: fmt.Sprintf("cannot start a Python executor: %v", err)}}
	}
	m := &wire.Msg{Op: wire.OpRun, Key: ts.t.Key, FuncHash: ts.t.Func, Payload: ts.t.Payload, Items: items}
	if !ex.funcs[ts.t.Func] {
		if fdata == nil {
			w.py.release(ex)
			return result{err: &wire.Error{Code: wire.CodeTaskError, Type: "MissingFunction",
				Message: fmt.Sprintf("the pickled function %s was never sent to this worker", ts.t.Func)}}
		}
		m.FuncData = fdata
	}
	reply, rframes, err := ex.run(m, frames)
	if err != nil {
		how := w.py.discard(ex)
		w.log.Warn("Python executor died", "pid", ex.pid, "task", ts.t.Key, "how", how)
		return result{err: &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied",
			Message: fmt.Sprintf("Python executor (pid %d) died while running the task: %s", ex.pid, how)}}
	}
	if reply.Op == wire.OpDone {
		ex.funcs[ts.t.Func] = true
	}
	w.py.release(ex)
	return pyResult(reply, rframes)
}

// pyResult turns an executor's answer into a result.
func pyResult(reply *wire.Msg, frames [][]byte) result {
	switch reply.Op {
	case wire.OpDone:
		if len(reply.Items) != 1 || reply.Items[0].NFrames != len(frames) || len(frames) == 0 ||
			!validEncoding(reply.Items[0].Encoding) {
			return result{err: wire.Errorf(wire.CodeProtocol, "the Python executor sent a malformed done message")}
		}
		return result{enc: reply.Items[0].Encoding, frames: frames}
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
