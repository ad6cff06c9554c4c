package scheduler

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// The queue of withheld tasks gives them back by rank (ties by id), whatever the order they
// came in and whichever were taken out of the middle meanwhile, and every queued task's pos
// is its index, which removal from the middle relies on.
func TestTaskHeapOrderAndPositions(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	c := &Core{}
	h := &taskHeap{c: c}
	const n = 5000
	for range n {
		id := c.tasks.add()
		c.tasks.at(id).rank = int64(r.IntN(n / 4)) // duplicates: ties go by id
	}
	queued := map[int32]bool{}
	check := func() {
		require.Len(t, h.items, len(queued))
		for i, it := range h.items {
			require.Equal(t, int32(i), c.tasks.at(it.id).pos, "task %d at %d", it.id, i)
			if i > 0 {
				p := &h.items[(i-1)/heapArity]
				require.False(t, it.before(p), "item %d comes before its parent", i)
			}
		}
	}
	var popped []int32
	perm := r.Perm(n)
	for i, id := range perm {
		h.push(int32(id))
		queued[int32(id)] = true
		if i%7 == 3 { // take one from anywhere
			victim := h.items[r.IntN(len(h.items))].id
			h.remove(c.tasks.at(victim).pos)
			delete(queued, victim)
		}
		if i%11 == 5 {
			top := h.top()
			h.remove(0)
			delete(queued, top)
			popped = append(popped, top)
		}
		if i%500 == 0 {
			check()
		}
	}
	check()
	var rest []int32
	for h.len() > 0 {
		top := h.top()
		h.remove(0)
		rest = append(rest, top)
	}
	require.Len(t, rest, len(queued))
	require.True(t, slices.IsSortedFunc(rest, c.byRank), "tasks came out of rank order")
	require.NotEmpty(t, popped)
	for _, id := range rest {
		require.True(t, queued[id], "task %d came out twice or was never queued", id)
		delete(queued, id)
	}
}
