package scheduler

import (
	"slices"
	"testing"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

func depTask(key string, deps ...string) graph.Task {
	return graph.Task{Key: key, Kind: graph.KindPy, Func: "f", Payload: []byte{1}, Deps: deps}
}

// A batch's tasks are linked to dependencies inside it (through an identical duplicate's
// first occurrence) and outside it (from an earlier batch) alike, each counted as a
// dependent once per edge.
func TestBatchLinksDependenciesInAndOutOfIt(t *testing.T) {
	cl := newNoopCluster(1, 1)
	c := cl.c
	cl.handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: []graph.Task{depTask("old")}, Wanted: []string{"old"}})
	batch := []graph.Task{
		depTask("b", "old"),
		depTask("c", "b", "old"),
		depTask("b", "old"), // identical
		depTask("d", "c", "b"),
	}
	cl.handle(EvUpdateGraph{Client: 1, ID: 2, Tasks: batch, Wanted: []string{"d"}})
	id := func(k string) int32 {
		i, ok := c.lookup(k)
		require.True(t, ok, k)
		return i
	}
	deps := func(k string) []int32 { return c.tasks.at(id(k)).deps }
	require.Equal(t, []int32{id("old")}, deps("b"))
	require.Equal(t, []int32{id("b"), id("old")}, deps("c"))
	require.Equal(t, []int32{id("c"), id("b")}, deps("d"))
	require.Len(t, c.tasks.at(id("b")).dependents, 2, "b: c and d")
	require.Len(t, c.tasks.at(id("old")).dependents, 2, "old: b and c")
	cl.drain()
	require.Equal(t, Memory, c.State("d"))
}

// A plain task (a payload, dependencies and a group, as dask's tasks have) keeps none of the
// batch it came in: its slot holds the payload, its deps the dependencies and its group the
// group. What leaves the core must be the definition it was given all the same: the compute,
// the comparison with a resubmitted definition, and the journal's snapshot.
func TestPlainTasksKeepTheirWholeDefinition(t *testing.T) {
	c := NewCore(DefaultCoreConfig())
	// the computes, read as a worker reads them (sendCompute: the template, then the rest)
	// before the core reuses their memory; each finishes at once
	got := map[string]graph.Task{}
	var acts []Action
	var handle func(ev Event) (rejected bool)
	handle = func(ev Event) bool {
		acts = c.Handle(ev, acts[:0])
		var done []EvTaskFinished
		for _, a := range acts {
			if ac, ok := a.(*ActCompute); ok {
				require.Empty(t, ac.Task.Key)
				def := *ac.Task
				def.Key, def.Payload, def.Group = ac.Key, ac.Payload, ac.Group
				for _, d := range ac.Deps {
					def.Deps = append(def.Deps, d.Key)
				}
				got[ac.Key] = def
				done = append(done, EvTaskFinished{Worker: ac.Worker, Key: ac.Key, TaskID: ac.TaskID, NBytes: 8,
					Encoding: "msgpack", Stop: 1000})
			}
		}
		rejected := slices.ContainsFunc(acts, func(a Action) bool { _, ok := a.(ActGraphRejected); return ok })
		c.RecycleActions()
		if c.DispatchPending() {
			handle(EvDispatch{})
		}
		for _, ev := range done {
			handle(ev)
		}
		return rejected
	}
	handle(EvWorkerJoined{Worker: 0, Name: "w0", NThreads: 1, Functions: []string{"f"}})
	named := depTask("b", "a", "a") // a repeated dependency, kept as given
	named.Group, named.Payload = "my-group", []byte("pickled b")
	defs := []graph.Task{depTask("a"), named}
	handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: slices.Clone(defs), Wanted: []string{"b"}})
	for _, d := range defs {
		id, ok := c.lookup(d.Key)
		require.True(t, ok)
		require.NotZero(t, c.tasks.at(id).flags&flagPlain, "%s: plain", d.Key)
		require.Empty(t, c.tasks.at(id).def.Key, "%s: the shared template, not the batch's graph.Task", d.Key)
	}
	for _, d := range defs {
		require.True(t, graph.Same(&d, ptr(got[d.Key])), "%s: compute %+v, want %+v", d.Key, got[d.Key], d)
	}
	require.Equal(t, Memory, c.State("b"))

	// the journal's snapshot gives the definitions back
	var snap []graph.Task
	c.Snapshot(func(def *graph.Task) { snap = append(snap, *def) }, func(ClientID, string) {})
	require.Len(t, snap, 2)
	for i := range defs {
		require.True(t, graph.Same(&defs[i], &snap[i]), "snapshot %+v, want %+v", snap[i], defs[i])
	}

	// a resubmission is compared with the whole definition
	rejected := func(d graph.Task) bool {
		return handle(EvUpdateGraph{Client: 1, ID: 2, Tasks: []graph.Task{depTask("a"), d}, Wanted: []string{"b"}})
	}
	require.False(t, rejected(named), "the same definition again")
	other := named
	other.Payload = []byte("pickled c")
	require.True(t, rejected(other), "another payload")
	other = named
	other.Group = ""
	require.True(t, rejected(other), "no group named")
	other = named
	other.Deps = []string{"a"}
	require.True(t, rejected(other), "the dependency once")
}

func ptr[T any](v T) *T { return &v }

// A task released while it runs and submitted again at once goes back to the same worker; the
// worker's report of the cancelled run (sent before the free_keys reached it, about a value it
// has dropped since) must not count for the new run, nor cancel it: only the new run's does.
func TestAReportOfACancelledRunDoesNotCountForTheNext(t *testing.T) {
	c := NewCore(DefaultCoreConfig())
	var acts []Action
	handle := func(ev Event) (computes []ActCompute, frees []ActFree, states []string) {
		acts = c.Handle(ev, acts[:0])
		for _, a := range acts {
			switch a := a.(type) {
			case *ActCompute:
				computes = append(computes, *a)
			case ActFree:
				frees = append(frees, a)
			case *ActKeyState:
				states = append(states, a.State)
			}
		}
		c.RecycleActions()
		return
	}
	handle(EvWorkerJoined{Worker: 0, Name: "w0", NThreads: 1, Functions: []string{"f"}})
	submit := func() ActCompute {
		computes, _, _ := handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: []graph.Task{depTask("t")}, Wanted: []string{"t"}})
		require.Len(t, computes, 1)
		return computes[0]
	}
	first := submit()
	_, frees, _ := handle(EvReleaseKeys{Client: 1, Keys: []string{"t"}})
	require.Equal(t, []ActFree{{Worker: 0, Keys: []string{"t"}}}, frees, "the running task is cancelled")
	second := submit()
	require.Equal(t, first.Worker, second.Worker)
	require.NotEqual(t, first.TaskID, second.TaskID, "each run has its own handle")

	// the cancelled run's reports, in the order a worker sends them
	for _, ev := range []Event{
		EvLongRunning{Worker: 0, Key: "t", TaskID: first.TaskID},
		EvTaskErred{Worker: 0, Key: "t", TaskID: first.TaskID, Err: wire.Errorf(wire.CodeTaskError, "boom")},
		EvTaskFinished{Worker: 0, Key: "t", TaskID: first.TaskID, NBytes: 8, Encoding: "msgpack", Stop: 1000},
	} {
		computes, frees, states := handle(ev)
		require.Empty(t, computes, "%T", ev)
		require.Empty(t, frees, "%T: a free would cancel the new run", ev)
		require.Empty(t, states, "%T", ev)
		require.Equal(t, Processing, c.State("t"), "%T", ev)
		id, _ := c.lookup("t")
		require.Zero(t, c.tasks.at(id).flags&flagSeceded, "%T", ev)
	}
	_, _, states := handle(EvTaskFinished{Worker: 0, Key: "t", TaskID: second.TaskID, NBytes: 8, Encoding: "msgpack", Stop: 1000})
	require.Equal(t, []string{"memory"}, states)
	require.Equal(t, Memory, c.State("t"))

	// a worker that reports by key alone is served as before: the report counts
	c.Handle(EvReleaseKeys{Client: 1, Keys: []string{"t"}}, nil)
	c.RecycleActions()
	submit()
	_, _, states = handle(EvTaskFinished{Worker: 0, Key: "t", NBytes: 8, Encoding: "msgpack", Stop: 1000})
	require.Equal(t, []string{"memory"}, states)
}
