package scheduler

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// dialWorker registers a worker named name (one thread, function "inc") on a real socket and
// returns its connection; it never reads, so it neither runs nor answers anything.
func dialWorker(t *testing.T, s *Server, name string, port int) *wire.Conn {
	t.Helper()
	c, _ := dialWorkerRegistered(t, s, name, port)
	return c
}

// dialWorkerRegistered is dialWorker that also returns the scheduler's registered answer.
func dialWorkerRegistered(t *testing.T, s *Server, name string, port int) (*wire.Conn, *wire.Msg) {
	t.Helper()
	c, err := wire.Dial(context.Background(), s.Addr(), wire.DialOptions{Role: wire.RoleWorker})
	require.NoError(t, err)
	t.Cleanup(func() { c.Abort() })
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpRegister, Name: name, DataAddr: fmt.Sprintf("127.0.0.1:%d", port),
		NThreads: 1, MemLimit: 1 << 30, Functions: []string{"inc"}, Version: "test"}))
	return c, recvOp(t, c, wire.OpRegistered)
}

// A removal performed among a pass's actions (a worker whose heartbeats stopped) handles the
// worker's leaving at once, and that has actions of its own (its tasks sent elsewhere). They
// must not take the place of the pass's remaining actions: two workers timing out in one tick
// are both removed.
func TestRemovalsInOneTickAllHappen(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.Core.SaturationFactor = math.Inf(1) // every task sent at once: a's go to another worker
	s, stop := serveConfig(t, cfg)
	defer stop()
	for i, n := range []string{"a", "b", "c"} {
		dialWorker(t, s, n, 1+i)
	}
	c, _ := dialClient(t, s)
	var tasks []graph.Task
	var keys []string
	for i := range 30 {
		k := fmt.Sprintf("t%d", i)
		tasks = append(tasks, graph.Task{Key: k, Kind: graph.KindGo, Func: "inc"})
		keys = append(keys, k)
	}
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: keys, Tasks: tasks}))
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpInfo, ID: 2}))
	recvOp(t, c, wire.OpInfoReply) // the graph is in
	var left []string
	query(t, s, func(t require.TestingT) {
		a, b, live := s.byName["a"], s.byName["b"], s.byName["c"]
		require.GreaterOrEqual(t, len(s.core.workers[a].processing), 2,
			"a runs tasks: its leaving sends them elsewhere, in more actions than the one after its removal")
		now := s.cfg.Clock().Add(time.Hour).UnixNano()
		s.handle(EvHeartbeat{Worker: live, Now: now})
		s.handle(EvTick{Now: now}) // a and b are silent past the timeout
		for _, w := range []WorkerID{a, b} {
			if s.workers.get(w) != nil {
				left = append(left, s.core.workers[w].name)
			}
		}
		require.Equal(t, 1, s.workers.len())
	})
	require.Empty(t, left, "workers still registered after the tick that timed them out")
}

// Stopping the server ends every connection it holds, workers' and clients' alike: a peer
// reading from it sees the connection close instead of waiting on it. (Each connection is
// ended by a callback on the server's stop, not by a goroutine of its own.)
func TestStopEndsConnections(t *testing.T) {
	s, stop := serveConfig(t, DefaultServerConfig())
	w := dialWorker(t, s, "a", 1)
	c, _ := dialClient(t, s)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }() // (waits for the server's goroutines: its readers too)
	for name, conn := range map[string]*wire.Conn{"worker": w, "client": c} {
		ended := make(chan error, 1)
		go func() {
			for {
				if _, _, err := conn.Recv(); err != nil {
					ended <- err
					return
				}
			}
		}()
		select {
		case err := <-ended:
			require.Error(t, err, name)
		case <-time.After(10 * time.Second):
			t.Fatalf("the %s's connection is still open after the server stopped", name)
		}
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not finish stopping")
	}
}

// A thousand idle workers cost the scheduler no goroutine each: their connections wait in the
// poller, and are resumed when they send or hang up. A worker joining a cluster that large is
// asked, in its registered answer, to heartbeat less often than once a second.
func TestThousandIdleWorkers(t *testing.T) {
	const n = 1001 // (the interval asked for passes a second at 201)
	s, stop := serveConfig(t, DefaultServerConfig())
	defer stop()
	base := runtime.NumGoroutine()
	conns := make([]*wire.Conn, n)
	var last *wire.Msg
	for i := range conns {
		conns[i], last = dialWorkerRegistered(t, s, fmt.Sprint("w", i), 1+i)
		if i == 0 {
			require.Zero(t, last.Interval, "a small cluster asks for no interval")
		}
	}
	require.InDelta(t, askedInterval(n).Seconds(), last.Interval, 1e-9)
	require.Greater(t, last.Interval, 1.0)

	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+50 }, 10*time.Second, 10*time.Millisecond,
		"%d goroutines for %d idle worker connections (%d before)", runtime.NumGoroutine(), n, base)

	// parked connections are served: each worker's first heartbeat is answered
	for _, i := range []int{0, 1, n / 2, n - 2, n - 1} {
		require.NoError(t, conns[i].Send(&wire.Msg{Op: wire.OpHeartbeat, Memory: 1 << 20}))
	}
	for _, i := range []int{0, 1, n / 2, n - 2, n - 1} {
		ack := recvOp(t, conns[i], wire.OpHeartbeat)
		require.Greater(t, ack.Interval, 1.0, "worker %d", i)
	}

	// a parked worker that sends a last message and hangs up is seen to go at once, not after
	// the heartbeat timeout
	require.NoError(t, conns[7].Send(&wire.Msg{Op: wire.OpHeartbeat, Memory: 1 << 20}))
	conns[7].Close()
	require.Eventually(t, func() bool {
		gone := false
		s.Query(func(*Core) { _, ok := s.byName["w7"]; gone = !ok })
		return gone
	}, 5*time.Second, 10*time.Millisecond, "the worker that hung up is still registered")
}

// Workers answering in bursts while the read-ahead budget is nearly spent: readers that find
// no grant leave a callback and return (workerReader.granted goes on once one is free), and
// every answer still reaches the driver, every share comes back, and each connection keeps its
// slot among MaxWorkers while its reader waits by callback. Both with the connections parked
// in the poller and with readers that wait in read(2), as over TLS, which leave serveConn's
// goroutine for the first time by such a callback.
func TestWorkerBurstsUnderTightReadAhead(t *testing.T) {
	for _, polled := range []bool{true, false} {
		t.Run(fmt.Sprint("polled=", polled), func(t *testing.T) { testBurstsUnderTightReadAhead(t, polled) })
	}
}

func testBurstsUnderTightReadAhead(t *testing.T, polled bool) {
	const workers, n = 16, 3000
	cfg := DefaultServerConfig()
	cfg.Core.SaturationFactor = math.Inf(1) // every task sent at once: answers come in bursts
	cfg.MaxWorkers = workers
	s, err := NewServer(cfg)
	require.NoError(t, err)
	s.ahead = newReadAhead(s.stopped, 2, 2)
	if !polled {
		s.pollOnce.Do(func() {}) // no poller: readers wait in read(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for i := range workers {
		go answerComputes(dialWorker(t, s, fmt.Sprint("w", i), 1+i), nil, nil)
	}
	c, _ := dialClient(t, s)
	submitIncs(t, c, n)
	awaitInMemory(t, c, n)
	s.ahead.mu.Lock()
	deferred := s.ahead.deferred
	s.ahead.mu.Unlock()
	require.Positive(t, deferred, "no reader ever waited for a grant: the test tests nothing")
	require.Eventually(t, func() bool { return s.ahead.taken() == 0 }, 5*time.Second, time.Millisecond,
		"every share came back")
	_, err = wire.Dial(context.Background(), s.Addr(), wire.DialOptions{Role: wire.RoleWorker})
	var he *wire.HandshakeError
	require.ErrorAs(t, err, &he, "a worker beyond MaxWorkers was let in: a waiting reader gave its slot up")
}

// With a small DispatchBatch, the queued root tasks of a graph go out over several passes of
// the driver (EvDispatch), between which it serves what arrives; every task still runs, once.
// The workers answer nothing at first, so that only EvDispatch can hand out more than one
// batch: 8 workers with room for 2 tasks each get 16 computes in batches of 7, 7 and 2.
func TestQueuedTasksGoOutInBatches(t *testing.T) {
	const workers, n, batch = 8, 2000, 7
	cfg := DefaultServerConfig()
	cfg.Core.DispatchBatch = batch
	cfg.TickInterval = time.Hour // a tick's event would hand out a batch of its own
	s, stop := serveConfig(t, cfg)
	defer stop()
	seen := make(chan *wire.Msg, n)
	release := make(chan struct{})
	for i := range workers {
		go answerComputes(dialWorker(t, s, fmt.Sprint("w", i), 1+i), seen, release)
	}
	c, _ := dialClient(t, s)
	keys := submitIncs(t, c, n)
	computes := map[string]int{}
	for range 2 * workers { // each worker's room: ceil(1.1 × 1 thread)
		select {
		case m := <-seen:
			computes[m.Task.Key]++
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d computes went out to idle workers with room for %d", len(computes), 2*workers)
		}
	}
	var dispatches uint64
	require.True(t, s.Query(func(*Core) { dispatches = s.stats.dispatches }))
	require.GreaterOrEqual(t, dispatches, uint64(2), "the batches after the first went out by EvDispatch")
	close(release)
	awaitInMemory(t, c, n)
	for len(seen) > 0 {
		computes[(<-seen).Task.Key]++
	}
	for _, k := range keys {
		require.Equal(t, 1, computes[k], "task %s was sent %d times", k, computes[k])
	}
}

// submitIncs sends the scheduler a graph of n independent tasks t0…t<n-1> calling inc, all
// wanted, and returns their keys.
func submitIncs(t *testing.T, c *wire.Conn, n int) []string {
	t.Helper()
	tasks := make([]graph.Task, n)
	keys := make([]string, n)
	for i := range tasks {
		keys[i] = fmt.Sprint("t", i)
		tasks[i] = graph.Task{Key: keys[i], Kind: graph.KindGo, Func: "inc"}
	}
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: keys, Tasks: tasks}))
	return keys
}

// awaitInMemory reads c's key states until n keys are in memory, for up to a minute.
func awaitInMemory(t *testing.T, c *wire.Conn, n int) {
	t.Helper()
	inMemory := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for len(inMemory) < n {
		require.True(t, time.Now().Before(deadline), "%d of %d tasks finished", len(inMemory), n)
		m := recvOp(t, c, wire.OpKeyState)
		if m.State == "memory" {
			inMemory[m.Key] = true
		}
	}
}

// A compute lists where to fetch each dependency the worker lacks, and leaves out those only
// that worker holds (it never fetches from itself): of z's inputs, on worker a, x is there and
// y is on b.
func TestComputeOmitsDependenciesTheWorkerHolds(t *testing.T) {
	s, stop := serveConfig(t, DefaultServerConfig())
	defer stop()
	computes := make(chan *wire.Msg, 8)
	go answerComputes(dialWorker(t, s, "a", 1), computes, nil)
	go answerComputes(dialWorker(t, s, "b", 2), computes, nil)
	c, _ := dialClient(t, s)
	tasks := []graph.Task{
		{Key: "x", Kind: graph.KindGo, Func: "inc", Workers: []string{"a"}},
		{Key: "y", Kind: graph.KindGo, Func: "inc", Workers: []string{"b"}},
		{Key: "z", Kind: graph.KindGo, Func: "inc", Workers: []string{"a"}, Args: []graph.Arg{graph.Ref("x"), graph.Ref("y")}},
	}
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: []string{"z"}, Tasks: tasks}))
	for {
		select {
		case m := <-computes:
			if m.Task.Key != "z" {
				continue
			}
			require.Equal(t, []string{"x", "y"}, graph.Deps(m.Task))
			require.Len(t, m.Deps, 1, "%+v", m.Deps)
			require.Equal(t, "y", m.Deps[0].Key)
			require.Equal(t, []string{"127.0.0.1:2"}, m.Deps[0].WhoHas)
			return
		case <-time.After(10 * time.Second):
			t.Fatal("z was never computed")
		}
	}
}

// answerComputes plays a worker on w until its connection ends: each compute is passed on to
// seen (when not nil) as it arrives and finishes with a result of one byte, at once, or when
// release is closed if release is not nil.
func answerComputes(w *wire.Conn, seen chan<- *wire.Msg, release <-chan struct{}) {
	got := make(chan *wire.Msg)
	go func() {
		defer close(got)
		for {
			m, _, err := w.Recv()
			if err != nil {
				return
			}
			if m.Op == wire.OpCompute {
				if seen != nil {
					seen <- m
				}
				got <- m
			}
		}
	}()
	answer := func(m *wire.Msg) {
		now := time.Now().UnixNano()
		w.Send(&wire.Msg{Op: wire.OpTaskFinished, Key: m.Task.Key, TaskID: m.TaskID, NBytes: 1,
			Encoding: wire.EncMsgpack, Start: now, Stop: now})
	}
	var held []*wire.Msg
	for {
		select {
		case m, ok := <-got:
			if !ok {
				return
			}
			if release != nil {
				held = append(held, m)
			} else {
				answer(m)
			}
		case <-release:
			release = nil
			for _, m := range held {
				answer(m)
			}
			held = nil
		}
	}
}
