package worker

import (
	"context"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

func decodeMsgpack(t *testing.T, b []byte) any {
	var v any
	require.NoError(t, msgpack.Unmarshal(b, &v))
	return v
}

func TestRegister(t *testing.T) {
	s := newFakeSched(t, testToken)
	cfg := testConfig(t)
	cfg.Token = testToken
	cfg.Name = "alice"
	cfg.Resources = map[string]float64{"GPU": 2}
	w, sc, _, _ := s.startWorker(cfg)
	require.Equal(t, "alice", sc.reg.Name)
	require.Equal(t, w.DataAddr(), sc.reg.DataAddr)
	require.Equal(t, 2, sc.reg.NThreads)
	require.Equal(t, DefaultMemoryLimit, sc.reg.MemLimit)
	require.Equal(t, map[string]float64{"GPU": 2}, sc.reg.Resources)
	require.Equal(t, Registered(), sc.reg.Functions)
	require.Contains(t, sc.reg.Functions, "inc")
	require.Contains(t, sc.reg.Functions, "row_count")
	require.NotZero(t, sc.reg.PID)

	hb := <-sc.in
	for hb.Op != wire.OpHeartbeat {
		hb = <-sc.in
	}
	require.Equal(t, DefaultMemoryLimit, hb.MemLimit)
}

func TestRegisterWrongToken(t *testing.T) {
	s := newFakeSched(t, testToken)
	w := newTestWorker(t, testConfig(t))
	err := w.Run(context.Background(), s.addr())
	require.ErrorContains(t, err, "authentication failed")
}

func TestComputeResultsAndErrors(t *testing.T) {
	s := newFakeSched(t, "")
	w, sc, _, _ := s.startWorker(testConfig(t))

	sc.send(goTask("x", "inc", 0, int8(41)))
	m := sc.expect(wire.OpTaskFinished)
	require.Equal(t, "x", m.Key)
	require.Equal(t, wire.EncMsgpack, m.Encoding)
	require.Positive(t, m.NBytes)
	require.LessOrEqual(t, m.Start, m.Stop)

	sc.send(goTask("y", "add", 0, ref("x"), ref("x")))
	require.Equal(t, "y", sc.expect(wire.OpTaskFinished).Key)
	sc.send(goTask("z", "sum", 0, []any{ref("y")}))          // a list literal is not a ref
	require.Equal(t, wire.OpTaskErred, sc.next().Op)         // sum over a list holding a map
	sc.send(goTask("s", "sum", 0, ref("x"), 1.5, uint16(2))) // 42 + 1.5 + 2
	require.Equal(t, "s", sc.expect(wire.OpTaskFinished).Key)
	sc.send(goTask("b", "bytes", 0, 5))
	require.Equal(t, wire.EncBytes, sc.expect(wire.OpTaskFinished).Encoding)

	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	reply, frames := getData(t, c, 1, "x", "y", "s", "b")
	require.Len(t, reply.Items, 4)
	require.EqualValues(t, 42, decodeMsgpack(t, frames[0]))
	require.EqualValues(t, 84, decodeMsgpack(t, frames[1]))
	require.EqualValues(t, 45.5, decodeMsgpack(t, frames[2]))
	require.Equal(t, []byte{0, 1, 2, 3, 4}, frames[3])

	sc.send(goTask("f", "fail", 0, "no luck"))
	m = sc.expect(wire.OpTaskErred)
	require.Equal(t, "f", m.Key)
	require.Equal(t, wire.CodeTaskError, m.Error.Code)
	require.Equal(t, "no luck", m.Error.Message)

	sc.send(goTask("p", "panic", 0, "kaboom"))
	m = sc.expect(wire.OpTaskErred)
	require.Equal(t, wire.CodeTaskPanic, m.Error.Code)
	require.Equal(t, "kaboom", m.Error.Message)
	require.Contains(t, m.Error.Traceback, "builtinPanic")

	sc.send(goTask("u", "no_such_function", 0))
	require.Equal(t, wire.CodeUnknownFunction, sc.expect(wire.OpTaskErred).Error.Code)

	// A pickled value cannot feed a Go task.
	pc := dialData(t, w.DataAddr(), "", wire.RoleClient)
	require.NoError(t, pc.Send(&wire.Msg{Op: wire.OpPutData, ID: 1,
		Items: []wire.Item{{Key: "pk", Encoding: wire.EncPickle, NFrames: 1}}}, []byte("\x80\x05N.")))
	_, _, err := pc.Recv()
	require.NoError(t, err)
	sc.send(goTask("g", "identity", 0, ref("pk")))
	m = sc.expect(wire.OpTaskErred)
	require.Equal(t, wire.CodeTaskError, m.Error.Code)
	require.Contains(t, m.Error.Message, "a pickled Python value cannot be passed to a Go task")

	// free_keys drops results.
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"x", "y"}})
	sc.send(goTask("after-free", "noop", 0)) // messages are handled in order
	sc.expect(wire.OpTaskFinished)
	reply, _ = getData(t, c, 2, "x", "y", "s")
	require.Equal(t, []string{"x", "y"}, reply.Missing)

	met := w.Metrics()
	require.Equal(t, int64(5), met.TasksErred)    // z, f, p, u, g
	require.Equal(t, int64(5), met.TasksExecuted) // x, y, s, b, after-free
}

func TestArrowResultsAcrossWorkers(t *testing.T) {
	s := newFakeSched(t, "")
	a, sa, _, _ := s.startWorker(testConfig(t))
	b, sb, _, _ := s.startWorker(testConfig(t))

	sa.send(goTask("tbl", "arrow_table", 0, 1000, 7))
	m := sa.expect(wire.OpTaskFinished)
	require.Equal(t, wire.EncArrow, m.Encoding)
	// Same worker: the cached table is used.
	sa.send(goTask("n-local", "row_count", 0, ref("tbl")))
	sa.expect(wire.OpTaskFinished)

	// Other worker: the IPC stream is fetched peer-to-peer and decoded there.
	deps := []wire.Dep{{Key: "tbl", WhoHas: []string{a.DataAddr()}, NBytes: m.NBytes}}
	sb.send(goTaskDeps("n-remote", "row_count", 0, deps, ref("tbl")))
	add := sb.expect(wire.OpAddKeys)
	require.Equal(t, []wire.Item{{Key: "tbl", Encoding: wire.EncArrow, NBytes: m.NBytes}}, add.Items)
	sb.expect(wire.OpTaskFinished)

	ca := dialData(t, a.DataAddr(), "", wire.RolePeer)
	_, fa := getData(t, ca, 1, "n-local", "tbl")
	cb := dialData(t, b.DataAddr(), "", wire.RolePeer)
	_, fb := getData(t, cb, 1, "n-remote", "tbl")
	require.EqualValues(t, 1000, decodeMsgpack(t, fa[0]))
	require.EqualValues(t, 1000, decodeMsgpack(t, fb[0]))
	require.Equal(t, fa[1], fb[1], "the replica is the same IPC stream")
}

func TestPeerFetch(t *testing.T) {
	s := newFakeSched(t, testToken)
	cfg := testConfig(t)
	cfg.Token = testToken
	a, sa, _, _ := s.startWorker(cfg)
	cfg2 := testConfig(t)
	cfg2.Token = testToken
	cfg2.MaxConcurrentFetches = 1 // both keys must travel in one get_data
	b, sb, _, _ := s.startWorker(cfg2)

	sa.send(goTask("x1", "bytes", 0, 300<<10))
	sa.expect(wire.OpTaskFinished)
	sa.send(goTask("x2", "bytes", 0, 100))
	sa.expect(wire.OpTaskFinished)

	// B holds neither; the scheduler says A has both (and lists a dead peer first for x2).
	dead := "127.0.0.1:1"
	deps := []wire.Dep{
		{Key: "x1", WhoHas: []string{a.DataAddr()}, NBytes: 300 << 10},
		{Key: "x2", WhoHas: []string{dead, a.DataAddr()}, NBytes: 100},
	}
	sb.send(goTaskDeps("y", "sum", 0, deps, ref("x1"), ref("x2")))
	// sum over two []byte values errs, but only after both arrived: a task-error, not missing.
	var added []wire.Item
	var final *wire.Msg
	var missing []*wire.Msg
	for final == nil {
		switch m := sb.next(); m.Op {
		case wire.OpAddKeys:
			added = append(added, m.Items...)
		case wire.OpMissingData:
			missing = append(missing, m)
		case wire.OpTaskErred, wire.OpTaskFinished:
			final = m
		default:
			t.Fatalf("unexpected %+v", m)
		}
	}
	require.Equal(t, wire.OpTaskErred, final.Op)
	require.Equal(t, wire.CodeTaskError, final.Error.Code)
	require.ElementsMatch(t, []string{"x1", "x2"}, []string{added[0].Key, added[len(added)-1].Key})
	require.Empty(t, missing, "a holder supplied every key")
	require.True(t, b.Store().Has("x1"))
	require.True(t, b.Store().Has("x2"))
	am, bm := a.Metrics(), b.Metrics()
	require.Equal(t, int64(300<<10+100), am.BytesSent, "the data moved peer to peer")
	require.Equal(t, int64(300<<10+100), bm.BytesReceived)

	// A key nobody holds: missing_data naming the peer tried, and the task is dropped.
	deps = []wire.Dep{{Key: "ghost", WhoHas: []string{a.DataAddr()}}}
	sb.send(goTaskDeps("z", "identity", 0, deps, ref("ghost")))
	m := sb.expect(wire.OpMissingData)
	require.Equal(t, "ghost", m.Key)
	require.Equal(t, a.DataAddr(), m.Worker)
	eventually(t, func() bool { return b.Metrics().Waiting == 0 })
	// The scheduler re-sends it once the key exists: the dropped task is not a duplicate.
	sa.send(goTask("ghost", "identity", 0, "boo"))
	sa.expect(wire.OpTaskFinished)
	sb.send(goTaskDeps("z", "identity", 0, deps, ref("ghost")))
	sb.expect(wire.OpAddKeys)
	require.Equal(t, "z", sb.expect(wire.OpTaskFinished).Key)
	require.Equal(t, int64(1), b.Metrics().FetchFailures)
}

func TestOrderStealAndFreeRunning(t *testing.T) {
	started, release := newGate(t)
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.NThreads = 1
	w, sc, _, _ := s.startWorker(cfg)

	sc.send(goTask("blocker", "test_block", 0, "blocker"))
	require.Equal(t, "blocker", <-started)
	sc.send(goTask("c", "identity", 5, "c"))
	sc.send(goTask("a", "identity", 1, "a"))
	sc.send(goTask("b", "identity", 3, "b"))
	sc.send(goTask("stolen", "identity", 0, "stolen"))
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "stolen"})
	m := sc.expect(wire.OpStealResponse)
	require.Equal(t, "stolen", m.Key)
	require.True(t, m.Accepted)
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "blocker"})
	m = sc.expect(wire.OpStealResponse)
	require.False(t, m.Accepted, "a running task cannot be stolen")
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "unknown"})
	require.False(t, sc.expect(wire.OpStealResponse).Accepted)
	require.Equal(t, 3, w.Metrics().Ready)

	// Free the running task: it still reports, but its result is not kept.
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"blocker"}})
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "blocker"}) // a marker: free was handled
	sc.expect(wire.OpStealResponse)
	close(release)
	require.Equal(t, "blocker", sc.expect(wire.OpTaskFinished).Key)
	var order []string
	for range 3 {
		order = append(order, sc.expect(wire.OpTaskFinished).Key)
	}
	require.Equal(t, []string{"a", "b", "c"}, order, "lower order runs first")
	require.False(t, w.Store().Has("blocker"))
	require.False(t, w.Store().Has("stolen"))
	require.True(t, w.Store().Has("a"))
}

func TestGracefulShutdown(t *testing.T) {
	started, release := newGate(t)
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.NThreads = 1
	_, sc, cancel, done := s.startWorker(cfg)

	sc.send(goTask("running", "test_block", 0, "running"))
	<-started
	sc.send(goTask("q1", "noop", 0))
	sc.send(goTask("q2", "noop", 0))
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "nothing"}) // marker: computes handled
	sc.expect(wire.OpStealResponse)
	cancel()
	m := sc.expect(wire.OpReschedule)
	require.ElementsMatch(t, []string{"q1", "q2"}, m.Keys)
	close(release)
	require.Equal(t, "running", sc.expect(wire.OpTaskFinished).Key)
	require.Equal(t, wire.OpGoodbye, sc.expect(wire.OpGoodbye).Op)
	require.NoError(t, <-done)
	_, ok := <-sc.in
	for ok {
		_, ok = <-sc.in
	}
}

func TestSchedulerClose(t *testing.T) {
	s := newFakeSched(t, "")
	_, sc, _, done := s.startWorker(testConfig(t))
	sc.send(&wire.Msg{Op: wire.OpClose, Reason: "test"})
	sc.expect(wire.OpGoodbye)
	require.NoError(t, <-done)
}

func TestSchedulerLost(t *testing.T) {
	s := newFakeSched(t, "")
	_, sc, _, done := s.startWorker(testConfig(t))
	for m := range sc.in { // a heartbeat proves registered was delivered before the abort
		if m.Op == wire.OpHeartbeat {
			break
		}
	}
	sc.c.Abort()
	require.ErrorContains(t, <-done, "lost the scheduler")
}

func TestPauseAboveMemoryLimit(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.MemoryLimit = 1000
	cfg.SpillFraction = 0
	cfg.ProcessSpillFraction = 0 // the store's accounting alone: the process is far above 1000 bytes
	cfg.PauseFraction = 0.5
	w, sc, _, _ := s.startWorker(cfg)

	c := dialData(t, w.DataAddr(), "", wire.RoleClient)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpPutData, ID: 1,
		Items: []wire.Item{{Key: "big", Encoding: wire.EncBytes, NFrames: 1}}}, make([]byte, 600)))
	_, _, err := c.Recv()
	require.NoError(t, err)

	sc.send(goTask("t", "noop", 0))
	eventually(t, func() bool { return w.Metrics().Ready == 1 })
	require.True(t, w.Metrics().Paused)
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"big"}})
	require.Equal(t, "t", sc.expect(wire.OpTaskFinished).Key)
	require.False(t, w.Metrics().Paused)
}

func TestSpillUnderMemoryPressure(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.MemoryLimit = 10 << 10
	cfg.ProcessSpillFraction = 0 // the store's own threshold, not the process's memory
	w, sc, _, _ := s.startWorker(cfg)
	for i := range 10 {
		sc.send(goTask(string(rune('a'+i)), "bytes", 0, 2<<10))
		sc.expect(wire.OpTaskFinished)
	}
	m := w.Metrics()
	require.LessOrEqual(t, m.Memory, int64(6<<10))
	require.Equal(t, int64(20<<10), m.Memory+m.Spilled)
	// Spilled values still serve peers and tasks.
	sc.send(goTask("n", "identity", 0, ref("a")))
	sc.expect(wire.OpTaskFinished)
	c := dialData(t, w.DataAddr(), "", wire.RolePeer)
	_, frames := getData(t, c, 1, "b", "n")
	require.Len(t, frames[0], 2<<10)
	require.Equal(t, byte(255), frames[0][255])
}

// A running task freed and then asked for again (the scheduler cancelled the run, then its
// client submitted the task again) is the new run: its result is kept and reported once,
// under the new handle. Asked for again after its run ended, it runs again.
func TestFreedRunningTaskAskedForAgain(t *testing.T) {
	started, release := newGate(t)
	w, sc := oneThreadWorker(t)

	compute := func(tid uint64) *wire.Msg { return withTID(tid, goTask("blocker", "test_block", 0, "blocker")) }
	sc.send(compute(1))
	require.Equal(t, "blocker", <-started)
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"blocker"}})
	sc.send(compute(2))
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "nothing"}) // a marker: both were handled
	sc.expect(wire.OpStealResponse)
	close(release)
	m := sc.expect(wire.OpTaskFinished)
	require.Equal(t, "blocker", m.Key)
	require.Equal(t, uint64(2), m.TaskID, "reported as the run asked for last")
	require.True(t, w.Store().Has("blocker"), "the new run's result is kept")

	// its run over, freed and asked for again: it runs again
	started2, release2 := newGate(t)
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"blocker"}})
	sc.send(compute(3))
	require.Equal(t, "blocker", <-started2)
	close(release2)
	m = sc.expect(wire.OpTaskFinished)
	require.Equal(t, uint64(3), m.TaskID)
	require.True(t, w.Store().Has("blocker"))
	require.Zero(t, w.Metrics().Ready)
}

// A freed running task whose key comes back with another definition (the scheduler forgot
// the key, and a client gave it to a new task) does not take over the run: the new task runs
// once the cancelled run has ended and reported under its old handle.
func TestFreedRunningTaskKeyGivenToAnotherDefinition(t *testing.T) {
	started, release := newGate(t)
	w, sc := oneThreadWorker(t)

	old := withTID(1, goTask("k", "test_block", 0, "k"))
	sc.send(old)
	require.Equal(t, "k", <-started)
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"k"}})
	other := withTID(2, goTask("k", "identity", 0, int64(7)))
	sc.send(other)
	sc.send(&wire.Msg{Op: wire.OpStealRequest, Key: "nothing"}) // a marker: both were handled
	sc.expect(wire.OpStealResponse)
	close(release)
	m := sc.expect(wire.OpTaskFinished)
	require.Equal(t, uint64(1), m.TaskID, "the cancelled run reports under its own handle")
	m = sc.expect(wire.OpTaskFinished)
	require.Equal(t, uint64(2), m.TaskID, "then the new definition runs")
	got, err := w.Store().Get("k", false)
	require.NoError(t, err)
	require.Equal(t, "msgpack", got.Encoding)
	var v int64
	require.NoError(t, msgpack.Unmarshal(got.Frames[0], &v))
	require.Equal(t, int64(7), v, "the new definition's value")
}

// A freed run that gave its thread back, asked for again, says long_running again under the
// new handle (the scheduler ignored the first, of a cancelled run).
func TestFreedSecededTaskAskedForAgainSecedesAgain(t *testing.T) {
	started, release := newGate(t)
	_, sc := oneThreadWorker(t)

	m := withTID(1, goTask("p", "test_secede_block", 0, "p"))
	sc.send(m)
	require.Equal(t, uint64(1), sc.expect(wire.OpLongRunning).TaskID)
	require.Equal(t, "p", <-started)
	sc.send(&wire.Msg{Op: wire.OpFreeKeys, Keys: []string{"p"}})
	again := withTID(2, goTask("p", "test_secede_block", 0, "p"))
	sc.send(again)
	require.Equal(t, uint64(2), sc.expect(wire.OpLongRunning).TaskID)
	close(release)
	require.Equal(t, uint64(2), sc.expect(wire.OpTaskFinished).TaskID)
}

// oneThreadWorker is a worker of one thread, registered with a fake scheduler.
func oneThreadWorker(t *testing.T) (*Worker, *schedConn) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.NThreads = 1
	w, sc, _, _ := s.startWorker(cfg)
	return w, sc
}

// withTID is m with the task handle tid, as the scheduler sends it.
func withTID(tid uint64, m *wire.Msg) *wire.Msg {
	m.TaskID = tid
	return m
}
