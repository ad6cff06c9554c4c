package scheduler

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func tableIDs(t *workerTable) []WorkerID {
	var ids []WorkerID
	for w := range t.all() {
		ids = append(ids, w.id)
	}
	return ids
}

// The worker table finds, counts and lists registered workers by id, keeps only the span from
// the oldest registered id to the newest, and lets a loop over it remove workers.
func TestWorkerTable(t *testing.T) {
	var tb workerTable
	require.Nil(t, tb.get(0))
	for id := WorkerID(5); id < 10; id++ {
		tb.add(&workerConn{id: id})
	}
	require.Equal(t, 5, tb.len())
	require.Nil(t, tb.get(4))
	require.Nil(t, tb.get(10))
	require.Nil(t, tb.get(-1))
	require.Equal(t, WorkerID(7), tb.get(7).id)

	tb.remove(7)
	tb.remove(7) // again: nothing
	tb.remove(42)
	require.Nil(t, tb.get(7))
	require.Equal(t, []WorkerID{5, 6, 8, 9}, tableIDs(&tb))

	tb.remove(5)
	tb.remove(6)
	require.Len(t, tb.byID, 2, "the ids before the oldest registered one are still held")
	require.Equal(t, WorkerID(8), tb.get(8).id)

	tb.add(&workerConn{id: 3}) // older than every registered one
	require.Equal(t, []WorkerID{3, 8, 9}, tableIDs(&tb))

	// removing every worker from inside the loop over them, as a restart does
	seen := 0
	for w := range tb.all() {
		seen++
		tb.remove(w.id)
		if w.id == 3 {
			tb.remove(9) // one not reached yet: not yielded
		}
	}
	require.Equal(t, 2, seen)
	require.Zero(t, tb.len())
	require.Empty(t, tableIDs(&tb))

	tb.add(&workerConn{id: 100})
	require.Equal(t, []WorkerID{100}, tableIDs(&tb))
	require.Len(t, tb.byID, 1)

	for w := range tb.all() { // stopping early
		require.Equal(t, WorkerID(100), w.id)
		break
	}
	require.True(t, slices.Equal([]WorkerID{100}, tableIDs(&tb)))
}
