package worker

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// batchGate holds the worker's only thread in a Go task until the test has queued the Python
// tasks it wants batched.
var (
	batchGate  = make(chan chan struct{}, 1)
	batchGates int
)

func init() {
	Register("executor-test-gate", func(ctx context.Context, _ []any) (any, error) {
		select {
		case g := <-batchGate:
			<-g
		case <-ctx.Done():
		}
		return nil, nil
	})
}

func groupTask(key, hash string, funcData []byte, payload string) *wire.Msg {
	m := pyTask(key, hash, funcData, []byte(payload))
	m.Task.Group = "g"
	return m
}

// batchLimits lets batches hold up to n runs, whatever their run times (every run counts as
// short and the time budget is unbounded: a test must not depend on the machine's speed),
// until the test ends.
func batchLimits(t *testing.T, n int) {
	oldShort, oldBatch, oldTime := pyShortRun, pyBatch, pyBatchTime
	pyShortRun, pyBatch, pyBatchTime = time.Hour, n, time.Hour
	t.Cleanup(func() { pyShortRun, pyBatch, pyBatchTime = oldShort, oldBatch, oldTime })
}

// startBatchWorker starts a one-thread worker on the fake executor and teaches it that group
// "g" is short (every run counts as short: the test must not depend on the machine's speed).
func startBatchWorker(t *testing.T) (*Worker, *schedConn) {
	batchLimits(t, 4)
	w, sc, _, _ := startFakePyWorker(t, func(c *Config) { c.NThreads = 1 })
	sc.send(groupTask("warm-1", "h-echo", []byte("echo"), "w"))
	sc.expect(wire.OpTaskFinished)
	sc.send(groupTask("warm-2", "h-echo", nil, "w"))
	sc.expect(wire.OpTaskFinished)
	_, short := w.py.short("g")
	require.True(t, short)
	return w, sc
}

// queueBehindGate runs the gate task, queues msgs while it holds the thread, then opens it.
func queueBehindGate(t *testing.T, w *Worker, sc *schedConn, msgs ...*wire.Msg) {
	g := make(chan struct{})
	batchGate <- g
	batchGates++
	gate := fmt.Sprintf("gate-%d", batchGates)
	sc.send(goTask(gate, "executor-test-gate", 0))
	for _, m := range msgs {
		sc.send(m)
	}
	eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.mu.ready) == len(msgs) && w.mu.running == 1
	})
	close(g)
	require.Equal(t, gate, sc.expect(wire.OpTaskFinished).Key)
}

// finished collects the keys of the next n task_finished messages.
func finished(sc *schedConn, n int) []string {
	var keys []string
	for range n {
		m := sc.expect(wire.OpTaskFinished)
		require.Equal(sc.t, wire.EncBytes, m.Encoding)
		keys = append(keys, m.Key)
	}
	return keys
}

// Short Python tasks queued together run in batches; every one is stored and reported once,
// and the worker counts none of them as running afterwards.
func TestPythonBatches(t *testing.T) {
	w, sc := startBatchWorker(t)
	var msgs []*wire.Msg
	for i := range 7 {
		msgs = append(msgs, groupTask(fmt.Sprintf("b-%d", i), "h-echo", nil, fmt.Sprintf("v%d", i)))
	}
	queueBehindGate(t, w, sc, msgs...)
	// the popped task runs last in its batch: b-1 b-2 b-3 b-0, then b-5 b-6 b-4
	require.Equal(t, []string{"b-1", "b-2", "b-3", "b-0", "b-5", "b-6", "b-4"}, finished(sc, 7))
	require.GreaterOrEqual(t, w.py.batched.Load(), int64(pyBatch-1))
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	_, frames := getData(t, c, 1, "b-0", "b-3", "b-6")
	require.Equal(t, [][]byte{[]byte("v0"), []byte("v3"), []byte("v6")}, frames)
	eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.mu.running == 0 && len(w.mu.tasks) == 0
	})

	// A task of a group not known to be short is never batched behind another one.
	before := w.py.batched.Load()
	other := pyTask("o-1", "h-echo", nil, []byte("x")) // group "o"
	queueBehindGate(t, w, sc, groupTask("b-7", "h-echo", nil, "y"), other)
	require.Equal(t, "b-7", sc.expect(wire.OpTaskFinished).Key)
	require.Equal(t, "o-1", sc.expect(wire.OpTaskFinished).Key)
	require.Equal(t, before, w.py.batched.Load())

	// Runs too big to share one write with the others are not batched (and not lost): big-0
	// runs alone (big-1 does not fit beside it), then small-2 fits in big-1's batch.
	big := strings.Repeat("x", pyBatchBytes*2/3)
	queueBehindGate(t, w, sc, groupTask("big-0", "h-echo", nil, big), groupTask("big-1", "h-echo", nil, big),
		groupTask("small-2", "h-echo", nil, "s"))
	require.Equal(t, []string{"big-0", "small-2", "big-1"}, finished(sc, 3))
	require.Equal(t, before+1, w.py.batched.Load())
	_, frames = getData(t, c, 2, "big-1")
	require.Equal(t, big, string(frames[0]))

	// A batch holds only what is expected to run within pyBatchTime: with no time to spare,
	// every task runs alone, in order.
	pyBatchTime = 0
	before = w.py.batched.Load()
	queueBehindGate(t, w, sc, groupTask("t-0", "h-echo", nil, "0"), groupTask("t-1", "h-echo", nil, "1"),
		groupTask("t-2", "h-echo", nil, "2"))
	require.Equal(t, []string{"t-0", "t-1", "t-2"}, finished(sc, 3))
	require.Equal(t, before, w.py.batched.Load())
}

// When the executor dies in the middle of a batch, the task that killed it is not known (the
// executor holds a batch's answers until it has run all of it): every unanswered task runs
// again alone on a new executor, and the one that kills that executor fails with
// executor-died; the others finish.
func TestPythonBatchExecutorDies(t *testing.T) {
	w, sc := startBatchWorker(t)
	// "crash" must be a known short group member too: its function is sent with it.
	crash := groupTask("c-1", "h-crash", []byte("crash"), "")
	queueBehindGate(t, w, sc,
		groupTask("e-0", "h-echo", nil, "zero"), crash,
		groupTask("e-2", "h-echo", nil, "two"), groupTask("e-3", "h-echo", nil, "three"))
	// batch c-1 e-2 e-3 e-0 kills the executor. e-0 (popped by the thread) is retried first,
	// alone; then c-1 alone kills a second executor and is blamed; then e-2 and e-3.
	require.Equal(t, "e-0", sc.expect(wire.OpTaskFinished).Key)
	m := sc.expect(wire.OpTaskErred)
	require.Equal(t, "c-1", m.Key)
	require.Equal(t, wire.CodeExecutorDied, m.Error.Code)
	require.Contains(t, m.Error.Message, "segmentation fault")
	require.Equal(t, []string{"e-2", "e-3"}, finished(sc, 2))
	require.Equal(t, int64(2), w.Metrics().ExecutorDeaths)
	require.Equal(t, int64(3), w.py.batched.Load(), "only the first batch was batched")
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	_, frames := getData(t, c, 1, "e-0", "e-2", "e-3")
	require.Equal(t, [][]byte{[]byte("zero"), []byte("two"), []byte("three")}, frames)
	eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.mu.running == 0 && len(w.mu.tasks) == 0
	})
}

// The real executor says when it ran each task: the answers of a batch, read together, still
// give every task its own span (the worker's clock alone would give the first the whole batch
// and the others nothing), in the order they ran, without overlap.
func TestPythonBatchRunTimes(t *testing.T) {
	py := shoalPython(t)
	h, fn, payload := realPyTask(t, py, "nap")
	batchLimits(t, 64)
	w, sc, _, _ := startPyWorker(t, py, func(c *Config) { c.NThreads = 1 })
	nap := func(key string, fdata []byte) *wire.Msg {
		m := pyTask(key, h, fdata, payload)
		m.Task.Group = "g"
		return m
	}
	sc.send(nap("warm-0", fn)) // two runs make group "g" known to be short
	sc.expect(wire.OpTaskFinished)
	sc.send(nap("warm-1", nil))
	sc.expect(wire.OpTaskFinished)

	const n = 6
	var msgs []*wire.Msg
	for i := range n {
		msgs = append(msgs, nap(fmt.Sprint("n-", i), nil))
	}
	before, runs, dones := w.py.batched.Load(), w.py.runsOut.Load(), w.py.donesIn.Load()
	queueBehindGate(t, w, sc, msgs...)
	spans := make([][2]int64, 0, n)
	for range n {
		m := sc.expect(wire.OpTaskFinished)
		spans = append(spans, [2]int64{m.Start, m.Stop})
	}
	require.Equal(t, before+n-1, w.py.batched.Load(), "the six ran as one batch")
	// the real executor takes a batch as one runs message and answers it with one dones
	require.Equal(t, runs+1, w.py.runsOut.Load())
	require.Equal(t, dones+n, w.py.donesIn.Load())

	// a batch of more frames than a runs message may hold goes as run messages (answered
	// with dones all the same: the executor has seen a runs)
	old := runsMaxFrames
	runsMaxFrames = 2
	t.Cleanup(func() { runsMaxFrames = old })
	msgs = msgs[:0]
	for i := range 3 {
		msgs = append(msgs, nap(fmt.Sprint("m-", i), nil))
	}
	queueBehindGate(t, w, sc, msgs...)
	var keys []string
	for range 3 {
		keys = append(keys, sc.expect(wire.OpTaskFinished).Key)
	}
	require.ElementsMatch(t, []string{"m-0", "m-1", "m-2"}, keys)
	require.Equal(t, runs+1, w.py.runsOut.Load(), "sent as a runs message")
	require.Equal(t, dones+n+3, w.py.donesIn.Load())
	slices.SortFunc(spans, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	for i, sp := range spans {
		require.GreaterOrEqual(t, sp[1]-sp[0], int64(2*time.Millisecond), "span %d: %v", i, sp)
		if i > 0 {
			require.GreaterOrEqual(t, sp[0], spans[i-1][1], "span %d starts before %d ends", i, i-1)
		}
	}
}

// A run in the middle of a runs message that secedes hands the executor's socket to another
// thread, which runs the rest of that message: every task of the batch finishes, the seceded
// one through its own socket after saying long_running.
func TestPythonBatchSecedes(t *testing.T) {
	py := shoalPython(t)
	h, fn, payload := realPyTask(t, py, "nap")
	sh, sfn, spayload := realPyTask(t, py, "secede_nap")
	batchLimits(t, 64)
	w, sc, _, _ := startPyWorker(t, py, func(c *Config) { c.NThreads = 1 })
	task := func(key, hash string, fdata, payload []byte) *wire.Msg {
		m := pyTask(key, hash, fdata, payload)
		m.Task.Group = "g"
		return m
	}
	sc.send(task("warm-0", h, fn, payload)) // two runs make group "g" known to be short
	sc.expect(wire.OpTaskFinished)
	sc.send(task("warm-1", h, nil, payload))
	sc.expect(wire.OpTaskFinished)

	runs := w.py.runsOut.Load()
	// the popped task runs last: the batch is s-1 n-2 n-3 n-0
	queueBehindGate(t, w, sc, task("n-0", h, nil, payload), task("s-1", sh, sfn, spayload),
		task("n-2", h, nil, payload), task("n-3", h, nil, payload))
	finished := map[string]bool{}
	longRunning := ""
	for len(finished) < 4 {
		m := sc.next()
		switch m.Op {
		case wire.OpLongRunning:
			longRunning = m.Key
		case wire.OpTaskFinished:
			finished[m.Key] = true
		default:
			t.Fatalf("unexpected %s: %+v", m.Op, m)
		}
	}
	require.Equal(t, "s-1", longRunning)
	require.Equal(t, map[string]bool{"n-0": true, "s-1": true, "n-2": true, "n-3": true}, finished)
	require.Equal(t, runs+1, w.py.runsOut.Load(), "the four went as one runs message")
	require.Equal(t, int64(0), w.Metrics().ExecutorDeaths)
}

// An executor that answers runs it never had (a dones with more replies than the batch) is
// replaced once the batch is done: its extra answers are never taken for a later run's.
func TestPythonExtraAnswersReplaceExecutor(t *testing.T) {
	w, sc := startBatchWorker(t)
	sc.send(groupTask("x-1", "h-extra", []byte("extra"), "v"))
	require.Equal(t, "x-1", sc.expect(wire.OpTaskFinished).Key)
	eventually(t, func() bool { return w.Metrics().ExecutorDeaths == 1 })
	// the next run goes to a new executor and is answered as it should be
	sc.send(groupTask("e-1", "h-echo", []byte("echo"), "w"))
	require.Equal(t, "e-1", sc.expect(wire.OpTaskFinished).Key)
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	_, frames := getData(t, c, 1, "x-1", "e-1")
	require.Equal(t, [][]byte{[]byte("v"), []byte("w")}, frames)
}
