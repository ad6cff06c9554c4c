package worker

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

func pyTask(key, hash string, funcData, payload []byte, deps ...string) *wire.Msg {
	return &wire.Msg{Op: wire.OpCompute, FuncData: funcData,
		Task: &graph.Task{Key: key, Kind: graph.KindPy, Func: hash, Payload: payload, Deps: deps}}
}

func TestPythonExecutor(t *testing.T) {
	w, sc, _, _ := startFakePyWorker(t, nil)

	sc.send(goTask("dep", "bytes", 0, 3))
	sc.expect(wire.OpTaskFinished)

	// The function travels once; dependencies arrive in Deps order with their frames.
	sc.send(pyTask("echo-1", "h-echo", []byte("echo"), []byte("hi:"), "dep"))
	m := sc.expect(wire.OpTaskFinished)
	require.Equal(t, wire.EncBytes, m.Encoding)
	sc.send(pyTask("echo-2", "h-echo", nil, []byte("again")))
	sc.expect(wire.OpTaskFinished)
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	_, frames := getData(t, c, 1, "echo-1", "echo-2")
	require.Equal(t, []byte("hi:\x00\x01\x02"), frames[0])
	require.Equal(t, []byte("again"), frames[1])

	sc.send(pyTask("raise", "h-raise", []byte("raise"), nil))
	m = sc.expect(wire.OpTaskErred)
	require.Equal(t, wire.CodeTaskError, m.Error.Code)
	require.Equal(t, "ValueError", m.Error.Type)
	require.Equal(t, "fake traceback", m.Error.Traceback)

	// A crash fails the running task with executor-died, naming the signal.
	sc.send(pyTask("crash", "h-crash", []byte("crash"), nil))
	m = sc.expect(wire.OpTaskErred)
	require.Equal(t, "crash", m.Key)
	require.Equal(t, wire.CodeExecutorDied, m.Error.Code)
	require.Contains(t, m.Error.Message, "died while running the task: signal: segmentation fault")

	// The next task gets a fresh executor, which is sent the function it has not seen.
	sc.send(pyTask("echo-3", "h-echo", nil, []byte("fresh")))
	sc.expect(wire.OpTaskFinished)
	_, frames = getData(t, c, 2, "echo-3")
	require.Equal(t, []byte("fresh"), frames[0])

	sc.send(pyTask("exit", "h-exit", []byte("exit3"), nil))
	m = sc.expect(wire.OpTaskErred)
	require.Contains(t, m.Error.Message, "exit status 3")
	require.Equal(t, int64(2), w.Metrics().ExecutorDeaths)

	// A pickled function the worker never received is a task error, not a crash.
	sc.send(pyTask("nofunc", "h-unknown", nil, nil))
	require.Contains(t, sc.expect(wire.OpTaskErred).Error.Message, "never sent to this worker")
}

func TestPythonExecutorCannotStart(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.Python = filepath.Join(t.TempDir(), "no-such-python")
	_, sc, _, _ := s.startWorker(cfg)
	sc.send(pyTask("p", "h", []byte("echo"), nil))
	m := sc.expect(wire.OpTaskErred)
	require.Equal(t, wire.CodeExecutorDied, m.Error.Code)
	require.Contains(t, m.Error.Message, "cannot start a Python executor")
}

// executorPIDs lists the worker's executor processes.
func executorPIDs(w *Worker) []int {
	w.py.mu.Lock()
	defer w.py.mu.Unlock()
	var pids []int
	for ex := range w.py.mu.all {
		pids = append(pids, ex.pid)
	}
	return pids
}

// TestStartPython: with StartPython a worker starts an executor once registered, before any
// task, and its first Python task runs in it; without, Go tasks run and no Python starts.
func TestStartPython(t *testing.T) {
	w, sc, _, _ := startFakePyWorker(t, nil)
	sc.send(goTask("go", "bytes", 0, 3))
	sc.expect(wire.OpTaskFinished)
	require.Empty(t, executorPIDs(w), "a worker started Python for Go tasks alone")

	w, sc, _, _ = startFakePyWorker(t, func(c *Config) { c.StartPython = true })
	eventually(t, func() bool { return len(executorPIDs(w)) == 1 })
	first := executorPIDs(w)
	sc.send(pyTask("echo", "h-echo", []byte("echo"), []byte("hi")))
	sc.expect(wire.OpTaskFinished)
	require.Equal(t, first, executorPIDs(w), "the first Python task did not run in the executor started ahead")

	// asked to start a Python that cannot start: a warning says so, and the worker serves on
	logs := &lockedLog{}
	_, sc, _, _ = startPyWorker(t, filepath.Join(t.TempDir(), "no-such-python"), func(c *Config) {
		c.StartPython = true
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	eventually(t, func() bool { return strings.Contains(logs.String(), "could not start a Python executor ahead") })
	require.Contains(t, logs.String(), "level=WARN")
	sc.send(goTask("go", "bytes", 0, 3))
	sc.expect(wire.OpTaskFinished)
}

// lockedLog is a log destination that goroutines may write while a test reads it.
type lockedLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestRealPythonExecutor runs shoal.executor from clients/python on Go-produced inputs
// (msgpack and Arrow), when that package and cloudpickle are importable.
func TestRealPythonExecutor(t *testing.T) {
	py := shoalPython(t)
	w, sc, _, _ := startPyWorker(t, py, nil)

	sc.send(goTask("x", "inc", 0, 31))
	sc.expect(wire.OpTaskFinished)
	sc.send(goTask("tbl", "arrow_table", 0, 21))
	sc.expect(wire.OpTaskFinished)

	h, fn, payload := realPyTask(t, py, "add10")
	slow := slowDones.Load()
	sc.send(pyTask("py-add", h, fn, payload, "x"))
	m := sc.expect(wire.OpTaskFinished)
	require.Equal(t, "py-add", m.Key)
	// the executor's answer to a plain run takes the hand-written decoder (only this test's
	// worker talks to executors now: tests of this package that do run one at a time)
	require.Equal(t, slow, slowDones.Load(), "a plain done header took the generic decoder")
	h, fn, payload = realPyTask(t, py, "rows")
	sc.send(pyTask("py-rows", h, fn, payload, "tbl"))
	sc.expect(wire.OpTaskFinished)

	// Python ints come back as msgpack, which Go tasks read.
	sc.send(goTask("go-sum", "add", 0, ref("py-add"), ref("py-rows")))
	sc.expect(wire.OpTaskFinished)
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	reply, frames := getData(t, c, 1, "py-add", "py-rows", "go-sum")
	require.Len(t, reply.Items, 3)
	for i, want := range []int{42, 42, 84} {
		require.Equal(t, wire.EncMsgpack, reply.Items[i].Encoding)
		require.EqualValues(t, want, decodeMsgpack(t, frames[i]))
	}
}

// TestRealPythonExecutorPlainCalls sends the real executor plain calls as client.get sends
// them (a literal payload naming a dependency), several at once so that they go as one runs
// message: the executor runs them in C when shoal._speedups is built, and its answers (a dones
// whose headers it encoded itself) must take the worker's hand-written decoder and carry the
// results.
func TestRealPythonExecutorPlainCalls(t *testing.T) {
	py := shoalPython(t)
	w, sc, _, _ := startPyWorker(t, py, nil)
	sc.send(goTask("x", "inc", 0, 31))
	sc.expect(wire.OpTaskFinished)
	h, fn, _ := realPyTask(t, py, "add")
	slow := slowDones.Load()
	const n = 40
	keys := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("plain-%d", i)
		// 0x00, then msgpack [["x", i], [0]]: operator.add(x, i) with x's value at position 0
		payload := []byte{0x00, 0x92, 0x92, 0xa1, 'x', byte(i), 0x91, 0x00}
		var data []byte
		if i == 0 {
			data = fn
		}
		sc.send(pyTask(keys[i], h, data, payload, "x"))
	}
	for range n {
		m := sc.expect(wire.OpTaskFinished)
		require.Equal(t, wire.EncMsgpack, m.Encoding, m.Key)
	}
	require.Equal(t, slow, slowDones.Load(), "an executor's done header took the generic decoder")
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	reply, frames := getData(t, c, 1, keys...)
	require.Len(t, reply.Items, n)
	for i := range n {
		require.EqualValues(t, 32+i, decodeMsgpack(t, frames[i]), keys[i])
	}
}

// An executor the memory monitor chose to kill that dies of its own cause first (here it
// exits with status 3) fails its task with that cause, not the monitor's reason; one the
// monitor's SIGKILL killed gets the reason.
func TestExecutorDeathCause(t *testing.T) {
	py := shoalPython(t)
	hd, fdie, pdie := realPyTask(t, py, "die")
	_, sc, _, why := markedExecutor(t, py)
	sc.send(pyTask("die", hd, fdie, pdie))
	m := sc.expect(wire.OpTaskErred)
	require.Equal(t, wire.CodeExecutorDied, m.Error.Code)
	require.Contains(t, m.Error.Message, "exit status 3")
	require.NotContains(t, m.Error.Message, why)

	require.True(t, diedOfSIGKILL(killedProcess(t)))
	require.False(t, diedOfSIGKILL(nil))
}

// markedExecutor starts a one-thread worker whose one executor has run a nap task and is
// marked as the memory monitor marks the executor it kills (killedFor: why).
func markedExecutor(t *testing.T, py string) (*Worker, *schedConn, *executor, string) {
	hn, fnap, pnap := realPyTask(t, py, "nap")
	w, sc, _, _ := startPyWorker(t, py, func(c *Config) { c.NThreads = 1 })
	sc.send(pyTask("warm", hn, fnap, pnap))
	sc.expect(wire.OpTaskFinished)
	exs := w.py.executors()
	require.Len(t, exs, 1)
	why := "killed by its worker: a reason for the test"
	exs[0].killedFor.Store(&why)
	return w, sc, exs[0], why
}

// killedProcess is the state of a process killed with SIGKILL.
func killedProcess(t *testing.T) *os.ProcessState {
	cmd := exec.Command("sleep", "10")
	require.NoError(t, cmd.Start())
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	return cmd.ProcessState
}

// An executor that dies while idle blames no task: one found dead is replaced before a run is
// sent to it (even with the memory monitor's reason set), and one whose socket refuses the
// run has it sent to a new executor instead.
func TestIdleExecutorDeathBlamesNoTask(t *testing.T) {
	py := shoalPython(t)
	hn, _, pnap := realPyTask(t, py, "nap")
	w, sc, ex, _ := markedExecutor(t, py)
	require.NoError(t, ex.cmd.Process.Kill())
	eventually(t, ex.isDead)
	sc.send(pyTask("after-kill", hn, nil, pnap))
	require.Equal(t, "after-kill", sc.expect(wire.OpTaskFinished).Key)
	require.Equal(t, int64(1), w.Metrics().ExecutorDeaths)

	exs := w.py.executors()
	require.Len(t, exs, 1)
	exs[0].conn.close() // the next run cannot be written to it
	sc.send(pyTask("after-close", hn, nil, pnap))
	require.Equal(t, "after-close", sc.expect(wire.OpTaskFinished).Key)
	require.Equal(t, int64(2), w.Metrics().ExecutorDeaths)
}
