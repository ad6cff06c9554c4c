package scheduler

import (
	"testing"

	"github.com/shoal-dev/shoal/graph"
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
