package scheduler

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// heapAlloc is the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// Once every task of a large graph is forgotten, the core's heap falls back near what it was
// before the graph (its slots, stories and key index are given back).
func TestCoreHeapFallsBackAfterAGraphIsForgotten(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 400,000-task graph")
	}
	const n = 400_000
	cl := newNoopCluster(2, 1)
	idle := heapAlloc()
	tasks, wanted := benchTasks(n, false)
	for i := 0; i < n; i += 50_000 {
		cl.handle(EvUpdateGraph{Client: 1, Tasks: tasks[i : i+50_000], Wanted: wanted[i : i+50_000]})
		cl.drain()
	}
	tasks = nil
	require.Equal(t, n, cl.c.NTasks())
	held := heapAlloc()
	cl.handle(EvReleaseKeys{Client: 1, Keys: wanted})
	wanted = nil
	cl.acts, cl.pending = nil, nil
	require.Zero(t, cl.c.NTasks())
	after := heapAlloc()
	t.Logf("heap: idle %.1f MB, %d tasks held %.1f MB, all forgotten %.1f MB",
		float64(idle)/1e6, n, float64(held)/1e6, float64(after)/1e6)
	require.Greater(t, held, idle+uint64(n)*100, "the graph did take memory (the measurement works)")
	require.Less(t, after, idle+20<<20, "more than 20 MB over idle stayed after every task was forgotten")

	// and the core still works
	tasks, wanted = benchTasks(10, false)
	cl.handle(EvUpdateGraph{Client: 1, Tasks: tasks, Wanted: wanted})
	cl.drain()
	require.Equal(t, Memory, cl.c.State(wanted[9]))
}
