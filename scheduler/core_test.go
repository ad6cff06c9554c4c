package scheduler

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/graph"
)

func TestCoreConfigValidate(t *testing.T) {
	if err := DefaultCoreConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	inf := DefaultCoreConfig()
	inf.SaturationFactor = math.Inf(1)
	if err := inf.Validate(); err != nil {
		t.Fatalf("+Inf saturation refused: %v", err)
	}
	bad := []func(*CoreConfig){
		func(c *CoreConfig) { c.SaturationFactor = 0 },
		func(c *CoreConfig) { c.SaturationFactor = math.NaN() },
		func(c *CoreConfig) { c.Bandwidth = -1 },
		func(c *CoreConfig) { c.TransferLatency = -time.Millisecond },
		func(c *CoreConfig) { c.UnknownDuration = 0 },
		func(c *CoreConfig) { c.KilledWorkerThreshold = 0 },
		func(c *CoreConfig) { c.StoryLength = 300 },
		func(c *CoreConfig) { c.StealInterval = -1 },
		func(c *CoreConfig) { c.DurationWeight = 2 },
		func(c *CoreConfig) { c.DispatchBatch = -1 },
	}
	for i, mut := range bad {
		c := DefaultCoreConfig()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "scheduler: ") {
			t.Errorf("case %d: Validate = %v", i, err)
		}
	}
}

func TestIllegalTransitionPanics(t *testing.T) {
	c := NewCore(DefaultCoreConfig())
	c.Handle(EvUpdateGraph{Client: 1, Tasks: []graph.Task{{Key: "k", Kind: graph.KindGo, Func: "f"}}, Wanted: []string{"k"}}, nil)
	if s := c.State("k"); s != Queued {
		t.Fatalf("k is %s, want queued (no worker yet)", s)
	}
	defer func() {
		var it IllegalTransition
		p := recover()
		if err, ok := p.(error); !ok || !errors.As(err, &it) || it.From != Queued || it.To != Forgotten {
			t.Fatalf("recovered %v", p)
		}
		if !strings.Contains(it.Error(), "queued → forgotten") {
			t.Fatalf("message %q does not name both states", it.Error())
		}
	}()
	c.setState(c.mustLookup("k"), Queued, Forgotten)
}

func TestStoryIsBounded(t *testing.T) {
	cfg := DefaultCoreConfig()
	cfg.StoryLength = 3
	cfg.SaturationFactor = math.Inf(1)
	c := NewCore(cfg)
	c.Handle(EvWorkerJoined{Worker: 0, Name: "a", NThreads: 1, Functions: []string{"f"}}, nil)
	c.Handle(EvUpdateGraph{Client: 1, Tasks: []graph.Task{{Key: "k", Kind: graph.KindGo, Func: "f", Retries: 5}}, Wanted: []string{"k"}}, nil)
	for range 3 {
		c.Handle(EvTaskErred{Worker: 0, Key: "k"}, nil)
	}
	ti, _ := c.TaskInfo("k")
	if len(ti.Story) != 3 {
		t.Fatalf("story has %d entries, want 3: %v", len(ti.Story), ti.Story)
	}
	last := ti.Story[2]
	if last.From != Waiting || last.To != Processing || last.Event != "task-erred" || last.Seq != c.Stats().Events {
		t.Fatalf("last entry %v", last)
	}
	if ti.RetriesLeft != 2 {
		t.Fatalf("retries left %d, want 2", ti.RetriesLeft)
	}
}

// Every worker in the unsaturated set may be given queued tasks now, so that placing a queued
// task looks at a bounded number of workers however many there are. Workers get blocks of
// short root tasks (latency hiding), and a worker one task short of a block's room must leave
// the set: with 10,000 workers mostly in that state, each finished task had placement look at
// every one of them.
func TestUnsaturatedWorkersAreReady(t *testing.T) {
	const workers, n = 300, 30_000
	cl := newNoopCluster(workers, 1)
	tasks, wanted := benchTasks(n, false)
	check := func(when string) {
		t.Helper()
		for _, w := range cl.c.unsat {
			if ws := cl.c.workers[w]; !cl.c.readyForQueued(ws) {
				t.Fatalf("%s: worker %d is in the unsaturated set but not ready for queued tasks "+
					"(room %d, block %d, busy %d, limit %d, %d queued)", when, w, cl.c.rootRoom(ws),
					cl.c.blockFor(ws), ws.busy(), ws.limit, cl.c.queue.len())
			}
		}
	}
	cl.handle(EvUpdateGraph{Client: 1, Tasks: tasks, Wanted: wanted})
	check("after the graph")
	blocks := false
	for i := 0; len(cl.pending) > 0; i++ {
		ac := cl.pending[0]
		cl.pending = cl.pending[1:]
		cl.handle(EvTaskFinished{Worker: ac.Worker, Key: ac.Key, TaskID: ac.TaskID, NBytes: 8, Encoding: "msgpack", Start: 0, Stop: 1000})
		check(fmt.Sprintf("after %d tasks finished", i+1))
		blocks = blocks || cl.c.blockFor(cl.c.workers[0]) > 1
	}
	if !blocks {
		t.Fatal("the tasks were never handed out in blocks: the case under test did not arise")
	}
	for _, k := range wanted {
		if st := cl.c.State(k); st != Memory {
			t.Fatalf("%s ended in %v", k, st)
		}
	}
}

// A worker that was unhealthy while its tasks finished gets queued root tasks again once it
// recovers: it left the unsaturated set while not accepting, and must rejoin it.
func TestQueuedTasksGoToARecoveredWorker(t *testing.T) {
	cl := newNoopCluster(1, 2)
	tasks, wanted := benchTasks(100, false)
	cl.handle(EvUpdateGraph{Client: 1, Tasks: tasks, Wanted: wanted})
	sent := len(cl.pending)
	if sent == 0 || sent == len(tasks) {
		t.Fatalf("%d of %d root tasks sent at first: the case under test (some queued) did not arise", sent, len(tasks))
	}
	cl.handle(EvHeartbeat{Worker: 0, Now: 1, Unhealthy: "data port full"})
	running := cl.pending
	cl.pending = nil
	for _, ac := range running {
		cl.handle(EvTaskFinished{Worker: ac.Worker, Key: ac.Key, TaskID: ac.TaskID, NBytes: 8, Encoding: "msgpack", Start: 0, Stop: 1000})
	}
	if len(cl.pending) != 0 {
		t.Fatalf("%d tasks sent to an unhealthy worker", len(cl.pending))
	}
	cl.handle(EvHeartbeat{Worker: 0, Now: 2})
	if len(cl.pending) == 0 {
		t.Fatal("no queued task was sent to the worker once it recovered")
	}
	cl.drain()
	for _, k := range wanted {
		if st := cl.c.State(k); st != Memory {
			t.Fatalf("%s ended in %v", k, st)
		}
	}
}

// A leaving worker matters to those that may be fetching from it or keep connections to it:
// the workers ever given it as a holder of a value, in a compute's dependencies or in an
// acquire (replication), and no others (telling every worker about every departure was
// quadratic in the cluster). What it held is found from its own list, which drops ids it no
// longer holds: losing it loses exactly the values it held alone.
func TestLeavingWorkerFetchers(t *testing.T) {
	cl := newNoopCluster(5, 1)
	on := func(w string) []string { return []string{w} }
	tasks := []graph.Task{
		{Key: "a", Kind: graph.KindGo, Func: "f", Workers: on("w0")},
		{Key: "x", Kind: graph.KindGo, Func: "f", Workers: on("w0")},
		{Key: "b", Kind: graph.KindGo, Func: "f", Workers: on("w1"), Deps: []string{"a"}},
		{Key: "c", Kind: graph.KindGo, Func: "f", Workers: on("w3")},
	}
	cl.handle(EvUpdateGraph{Client: 1, Tasks: tasks, Wanted: []string{"a", "b", "c", "x"}})
	finish := func(key string) {
		t.Helper()
		for i, ac := range cl.pending {
			if ac.Key == key {
				cl.pending = append(cl.pending[:i], cl.pending[i+1:]...)
				cl.handle(EvTaskFinished{Worker: ac.Worker, Key: ac.Key, TaskID: ac.TaskID, NBytes: 8, Encoding: "msgpack", Start: 0, Stop: 1000})
				return
			}
		}
		t.Fatalf("%s was not sent to a worker", key)
	}
	finish("a")
	finish("x")
	finish("c")
	if st := cl.c.State("b"); st != Processing {
		t.Fatalf("b is %v, want processing on w1 (fetching a from w0)", st)
	}
	// churn: w0's list holds ids of copies it dropped, and is pruned as it grows
	for i := range 500 {
		k := fmt.Sprintf("t%d", i)
		cl.handle(EvUpdateGraph{Client: 1, Tasks: []graph.Task{{Key: k, Kind: graph.KindGo, Func: "f", Workers: on("w0")}}, Wanted: []string{k}})
		finish(k)
		cl.handle(EvReleaseKeys{Client: 1, Keys: []string{k}})
	}
	if got, held := len(cl.c.workers[0].stored), cl.c.workers[0].nkeys; got > 2*held+64 || held != 2 {
		t.Fatalf("w0 holds %d values and its list has %d entries", held, got)
	}
	acts := cl.c.Handle(EvReplicate{Keys: []string{"c"}, N: 2}, nil)
	var acquirer WorkerID = -1
	for _, a := range acts {
		if aq, ok := a.(ActAcquire); ok {
			acquirer = aq.Worker
		}
	}
	if acquirer < 0 {
		t.Fatalf("replicating c asked no worker to acquire it: %v", acts)
	}
	check := func(w WorkerID, want []WorkerID) {
		t.Helper()
		got, all := cl.c.fetchersOf(w)
		if all || !slices.Equal(got, want) {
			t.Fatalf("fetchers of w%d: %v (all: %v), want %v", w, got, all, want)
		}
	}
	check(0, []WorkerID{1})        // w1 runs b, which needs a
	check(3, []WorkerID{acquirer}) // the worker copying c
	check(2, nil)                  // w2 holds nothing
	cl.handle(EvWorkerLeft{Worker: 0, Reason: "test"})
	// a and x were only on w0 and can run only there: they wait for such a worker now
	for key, want := range map[string]State{"a": NoWorker, "x": NoWorker, "c": Memory} {
		if st := cl.c.State(key); st != want {
			t.Errorf("after w0 left, %s is %v, want %v", key, st, want)
		}
	}
	check(3, []WorkerID{acquirer})
	cl.handle(EvWorkerLeft{Worker: acquirer, Reason: "test"})
	check(3, nil) // those that left do not count
}

// Past maxFetchers workers told of one holder, its leaving concerns every worker.
func TestFetchersBounded(t *testing.T) {
	cl := newNoopCluster(maxFetchers+3, 1)
	for i := 1; i <= maxFetchers+1; i++ {
		cl.c.toldHolders(WorkerID(i), []WorkerID{0})
	}
	if ids, all := cl.c.fetchersOf(0); !all || ids != nil || cl.c.workers[0].fetchers != nil {
		t.Fatalf("%d fetchers remembered, all %v", len(ids), all)
	}
}
