package scheduler

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// Values handed out stay where they were put until the slab is recycled, across chunks; once
// recycled, the slab reuses its chunk instead of allocating.
func TestActionSlab(t *testing.T) {
	var s slab[ActKeyState]
	const n = 3*slabChunk + 7
	got := make([]*ActKeyState, n)
	for i := range got {
		got[i] = s.put(ActKeyState{Key: strconv.Itoa(i), Worker: WorkerID(i)})
	}
	for i, a := range got {
		require.Equal(t, strconv.Itoa(i), a.Key, "value %d overwritten before recycling", i)
		require.Equal(t, WorkerID(i), a.Worker)
	}
	s.recycle()
	require.Empty(t, s.items)
	allocs := testing.AllocsPerRun(100, func() {
		for i := 0; i < n; i++ { // as many as the first round: its chunks are reused
			s.put(ActKeyState{Key: "k"})
		}
		s.recycle()
	})
	require.Zero(t, allocs, "a recycled slab allocated")
	for _, c := range s.chunks {
		for _, a := range c[:cap(c)] {
			require.Empty(t, a.Key, "a recycled chunk keeps a value alive")
		}
	}
}

// Recycling clears what each round wrote, whatever its size: a round ending inside a kept
// chunk, one ending on a chunk's last value, and one beyond the chunks a slab keeps (whose last
// chunk is not kept, but may still be reached from an action the driver dropped late).
func TestActionSlabRecycleClearsWhatEachRoundWrote(t *testing.T) {
	var s slab[ActKeyState]
	for _, n := range []int{1, slabChunk, slabChunk + 1, 3, (slabKeep+2)*slabChunk + 3, 2*slabChunk - 1, 1} {
		var last *ActKeyState
		for i := 0; i < n; i++ {
			last = s.put(ActKeyState{Key: "k" + strconv.Itoa(i)})
		}
		s.recycle()
		require.Empty(t, last.Key, "round of %d: the last value was not cleared", n)
		require.LessOrEqual(t, len(s.chunks), slabKeep)
		for ci, c := range s.chunks {
			for i, a := range c[:cap(c)] {
				require.Empty(t, a.Key, "round of %d: chunk %d keeps value %d alive", n, ci, i)
			}
		}
	}
}

// The core emits computes and key states by pointer; a driver that never recycles (a test
// holding actions across events) still sees each action as it was emitted, while later events
// emit more of both.
func TestActionsKeptAcrossEventsWithoutRecycling(t *testing.T) {
	cl := newNoopCluster(2, 1)
	tasks, wanted := benchTasks(600, false)
	first := cl.c.Handle(EvUpdateGraph{Client: 1, Tasks: tasks, Wanted: wanted}, nil)
	keysOf := func(acts []Action) []string {
		var keys []string
		for _, a := range acts {
			if c, ok := a.(*ActCompute); ok {
				keys = append(keys, c.Key)
			}
		}
		return keys
	}
	before := keysOf(first)
	require.NotEmpty(t, before)
	later := 0
	for _, a := range first {
		c, ok := a.(*ActCompute)
		if !ok {
			continue
		}
		fin := cl.c.Handle(EvTaskFinished{Worker: c.Worker, Key: c.Key, TaskID: c.TaskID}, nil)
		states := 0
		for _, f := range fin {
			switch f := f.(type) {
			case *ActKeyState:
				require.Equal(t, c.Key, f.Key)
				require.Equal(t, "memory", f.State)
				states++
			case *ActCompute:
				later++ // the queue feeds the worker that freed up
			}
		}
		require.Equal(t, 1, states, "task %s", c.Key)
	}
	require.Positive(t, later, "no event after the first emitted a compute")
	require.Equal(t, before, keysOf(first), "the first event's computes changed under later events")
}
