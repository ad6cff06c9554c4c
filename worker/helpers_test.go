package worker

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// hangGuard only keeps a broken test from hanging forever; no test depends on it for
// correctness.
const hangGuard = 30 * time.Second

// testBlock is a Go task that runs until its gate is opened, so tests can hold a thread.
var testGate = struct {
	sync.Mutex
	started chan string
	release chan struct{}
}{}

func init() {
	Register("test_block", blockOnGate)
	// test_secede_block: test_block that first gives its thread back (TaskEnv.Secede)
	Register("test_secede_block", func(ctx context.Context, args []any) (any, error) {
		if env, ok := TaskEnvFrom(ctx); ok {
			env.Secede()
		}
		return blockOnGate(ctx, args)
	})
}

// blockOnGate says it started (its first argument) and waits for the gate to open.
func blockOnGate(ctx context.Context, args []any) (any, error) {
	testGate.Lock()
	started, release := testGate.started, testGate.release
	testGate.Unlock()
	name, _ := args[0].(string)
	started <- name
	select {
	case <-release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return name, nil
}

// newGate arms test_block for one test.
func newGate(t *testing.T) (started chan string, release chan struct{}) {
	testGate.Lock()
	defer testGate.Unlock()
	testGate.started, testGate.release = make(chan string, 16), make(chan struct{})
	return testGate.started, testGate.release
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.NThreads = 2
	cfg.NProcsPython = 1
	cfg.LocalDir = t.TempDir()
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.SchedulerTimeout = 500 * time.Millisecond // the fake scheduler answers every heartbeat
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func newTestWorker(t testing.TB, cfg Config) *Worker {
	w, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, w.Close()) })
	return w
}

// fakeSched is a scheduler control port driven by the test.
type fakeSched struct {
	t      testing.TB
	ln     net.Listener
	token  string
	joined chan *schedConn
	wg     sync.WaitGroup
	// regInterval is the heartbeat interval (seconds) the registered answer asks for (0: none)
	regInterval atomic.Value
}

// schedConn is one registered worker as the fake scheduler sees it.
type schedConn struct {
	t    testing.TB
	c    *wire.Conn
	reg  *wire.Msg
	in   chan *wire.Msg
	deaf atomic.Bool // stop answering heartbeats (a scheduler gone silent)
	// interval is the heartbeat interval the answers ask for, seconds (0: none)
	interval atomic.Value
}

func newFakeSched(t testing.TB, token string) *fakeSched {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &fakeSched{t: t, ln: ln, token: token, joined: make(chan *schedConn, 8)}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *fakeSched) addr() string { return s.ln.Addr().String() }

func (s *fakeSched) accept() {
	defer s.wg.Done()
	var id int64
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		c, err := wire.Accept(nc, s.token, wire.DefaultLimits(), wire.RoleWorker)
		if err != nil {
			continue
		}
		m, _, err := c.Recv()
		if err != nil || m.Op != wire.OpRegister {
			c.Abort()
			continue
		}
		id++
		iv, _ := s.regInterval.Load().(float64)
		c.Send(&wire.Msg{Op: wire.OpRegistered, WorkerID: id, Interval: iv})
		sc := &schedConn{t: s.t, c: c, reg: m, in: make(chan *wire.Msg, 1024)}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(sc.in)
			for {
				m, _, err := c.Recv()
				if err != nil {
					return
				}
				if m.Op == wire.OpHeartbeat && !sc.deaf.Load() {
					iv, _ := sc.interval.Load().(float64)
					c.Send(&wire.Msg{Op: wire.OpHeartbeat, Interval: iv}) // as the scheduler does
				}
				sc.in <- m
			}
		}()
		s.joined <- sc
	}
}

// startWorker runs a worker against the fake scheduler; cancel stops Run, done yields its
// error.
func (s *fakeSched) startWorker(cfg Config) (w *Worker, sc *schedConn, cancel context.CancelFunc, done chan error) {
	t := s.t
	w = newTestWorker(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- w.Run(ctx, s.addr())
	}()
	t.Cleanup(func() {
		cancel()
		w.Close()
		<-finished
	})
	select {
	case sc = <-s.joined:
	case err := <-done:
		t.Fatalf("worker did not register: %v", err)
	case <-time.After(hangGuard):
		t.Fatal("worker did not register")
	}
	t.Cleanup(func() { sc.c.Abort() })
	return w, sc, cancel, done
}

func (sc *schedConn) send(m *wire.Msg) {
	require.NoError(sc.t, sc.c.Send(m))
}

// next returns the next message that is not a heartbeat.
func (sc *schedConn) next() *wire.Msg {
	sc.t.Helper()
	for {
		select {
		case m, ok := <-sc.in:
			if !ok {
				sc.t.Fatal("worker connection closed")
			}
			if m.Op != wire.OpHeartbeat {
				return m
			}
		case <-time.After(hangGuard):
			sc.t.Fatal("no message from the worker")
		}
	}
}

// expect returns the next non-heartbeat message, requiring its op.
func (sc *schedConn) expect(op string) *wire.Msg {
	sc.t.Helper()
	m := sc.next()
	require.Equal(sc.t, op, m.Op, "message: %+v (error %+v)", m, m.Error)
	return m
}

// goTask is a compute message for a Go task.
func goTask(key, fn string, order int64, args ...any) *wire.Msg {
	return goTaskDeps(key, fn, order, nil, args...)
}

func goTaskDeps(key, fn string, order int64, deps []wire.Dep, args ...any) *wire.Msg {
	t := &graph.Task{Key: key, Kind: "go", Func: fn}
	for _, a := range args {
		if r, ok := a.(ref); ok {
			t.Args = append(t.Args, graph.Arg{Ref: string(r)})
		} else {
			t.Args = append(t.Args, graph.Arg{Val: a})
		}
	}
	return &wire.Msg{Op: wire.OpCompute, Task: t, Deps: deps, Order: order}
}

type ref string

// dialData connects to a worker's data port.
func dialData(t testing.TB, addr, token string, role wire.Role) *wire.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	c, err := wire.Dial(ctx, addr, wire.DialOptions{Role: role, Token: token})
	require.NoError(t, err)
	t.Cleanup(func() { c.Abort() })
	return c
}

// getData asks for keys and returns the reply.
func getData(t testing.TB, c *wire.Conn, id uint64, keys ...string) (*wire.Msg, [][]byte) {
	t.Helper()
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpGetData, ID: id, Keys: keys}))
	m, frames, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpData, m.Op, "%+v", m)
	require.Equal(t, id, m.ID)
	return m, frames
}

// pythonForTests finds an interpreter with msgpack, or skips.
func pythonForTests(t testing.TB) string {
	if p := os.Getenv("SHOAL_PYTHON"); p != "" {
		return p
	}
	p, _ := filepath.Abs("../.venv/bin/python")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	t.Skip("no Python with msgpack: set SHOAL_PYTHON or run make venv")
	return ""
}

// shoalPython is pythonForTests with the repository's Python package (clients/python) on the
// PYTHONPATH of the executors the test starts: the real executor, and make_py_task.py.
func shoalPython(t testing.TB) string {
	py := pythonForTests(t)
	pkg, err := filepath.Abs("../clients/python")
	require.NoError(t, err)
	t.Setenv("PYTHONPATH", pkg)
	return py
}

// eventually polls cond (for state with no message to wait on), failing after hangGuard.
func eventually(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never became true")
		}
		time.Sleep(time.Millisecond)
	}
}

// silentPeer is a data port that accepts peers and reads their get_data, but never answers;
// asked receives a value for each get_data read. It closes its listener and connections when
// the test ends.
func silentPeer(t testing.TB) (addr string, asked <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ch := make(chan struct{}, 16)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, nc := range conns {
			nc.Close()
		}
	})
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			go func() {
				defer nc.Close()
				c, err := wire.Accept(nc, "", wire.DefaultLimits(), wire.RolePeer)
				if err != nil {
					return
				}
				if _, _, err := c.Recv(); err != nil { // the get_data, never answered
					return
				}
				select {
				case ch <- struct{}{}:
				default:
				}
				c.Recv() // until the asker gives up and closes
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// startFakePyWorker starts a worker whose executors run testdata/fake_executor.py (a stand-in
// speaking the executor protocol), joined to a fresh fake scheduler; edit as startPyWorker's.
func startFakePyWorker(t testing.TB, edit func(*Config)) (*Worker, *schedConn, context.CancelFunc, chan error) {
	fake, err := filepath.Abs("testdata/fake_executor.py")
	require.NoError(t, err)
	return startPyWorker(t, pythonForTests(t), func(c *Config) {
		c.PythonArgs = []string{fake}
		if edit != nil {
			edit(c)
		}
	})
}

// startPyWorker starts a worker whose Python executors run py, joined to a fresh fake
// scheduler; edit, when given, changes the worker's configuration first.
func startPyWorker(t testing.TB, py string, edit func(*Config)) (*Worker, *schedConn, context.CancelFunc, chan error) {
	cfg := testConfig(t)
	cfg.Python = py
	if edit != nil {
		edit(&cfg)
	}
	return newFakeSched(t, "").startWorker(cfg)
}
