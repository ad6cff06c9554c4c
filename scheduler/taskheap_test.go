package scheduler

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// queueTasks makes a core with n tasks of the given ranks, and its queue.
func queueTasks(ranks []int64) (*Core, *taskHeap) {
	c := &Core{}
	for _, r := range ranks {
		id := c.tasks.add()
		c.tasks.at(id).rank = r
	}
	c.queue.c = c
	return c, &c.queue
}

func heapPush(c *Core, h *taskHeap, id int32) {
	c.tasks.at(id).state = Queued
	h.push(id)
}

func heapTake(c *Core, h *taskHeap, id int32) {
	t := c.tasks.at(id)
	t.state = Processing // as a transition out of queued does
	h.take(t, id)
}

// The queue of withheld tasks gives them back by rank (ties by id), whatever the order they
// came in and whichever were taken out of the middle meanwhile (their items go stale, and
// are dropped at the top or in a compaction), and with a task queued again after leaving.
func TestTaskHeapOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	const n = 5000
	ranks := make([]int64, n)
	for i := range ranks {
		ranks[i] = int64(r.IntN(n / 4)) // duplicates: ties go by id
	}
	c, h := queueTasks(ranks)
	queued := map[int32]bool{}
	check := func() {
		require.Equal(t, len(queued), h.len())
		live := 0
		for i := range h.items {
			if h.live(&h.items[i]) {
				live++
			}
			if i > 0 {
				require.False(t, h.items[i].before(&h.items[(i-1)/heapArity]), "item %d comes before its parent", i)
			}
		}
		for i := range h.run {
			if h.live(&h.run[i]) {
				live++
			}
			if i > 0 {
				require.False(t, h.run[i].before(&h.run[i-1]), "the run is out of order at %d", i)
			}
		}
		require.Equal(t, len(queued), live, "live items")
		if h.len() > 0 {
			require.True(t, queued[h.top()], "the top is not queued")
		}
	}
	queueAt := func(id int32) {
		heapPush(c, h, id)
		queued[id] = true
	}
	for i, id := range r.Perm(n) {
		queueAt(int32(id))
		switch {
		case i%3 == 1: // take one from anywhere
			ids := h.ids()
			victim := ids[r.IntN(len(ids))]
			heapTake(c, h, victim)
			delete(queued, victim)
			if i%9 == 1 { // and queue it again later
				defer queueAt(victim)
			}
		case i%11 == 5:
			top := h.top()
			for id := range queued {
				require.False(t, c.byRank(id, top) < 0, "task %d queued before the top %d", id, top)
			}
			heapTake(c, h, top)
			delete(queued, top)
		}
		if i%250 == 0 {
			check()
		}
	}
	check()
	require.Positive(t, h.stale, "no stale item left to test the drain with")
	// a release of most of what is queued, from anywhere: the heap compacts on the way
	before := len(h.items) + len(h.run)
	ids := h.ids()
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for _, id := range ids[:len(ids)*3/4] {
		heapTake(c, h, id)
		delete(queued, id)
	}
	require.Less(t, len(h.items)+len(h.run), before-len(ids)/2, "no compaction")
	check()
	drain := func() {
		var out []int32
		for h.len() > 0 {
			top := h.top()
			heapTake(c, h, top)
			out = append(out, top)
		}
		require.True(t, slices.IsSortedFunc(out, c.byRank), "tasks came out of rank order")
		for _, id := range out {
			require.True(t, queued[id], "task %d came out twice or was never queued", id)
			delete(queued, id)
		}
		require.Empty(t, queued)
		require.Empty(t, h.items, "stale items left")
		require.Empty(t, h.run, "stale items left")
	}
	drain()
}

// Tickets are renumbered before they overflow, and stale items do not come back to life.
func TestTaskHeapTicketsRenumbered(t *testing.T) {
	c, h := queueTasks([]int64{3, 1, 2, 0})
	c.rqueue.c = c
	c.tickets = math.MaxInt32 - 3
	heapPush(c, h, 0)
	heapPush(c, h, 1)
	heapPush(c, &c.rqueue, 3)
	heapTake(c, h, 0) // stale, under the top
	heapPush(c, h, 2) // renumbers
	require.Less(t, c.tickets, int32(10))
	require.Zero(t, h.stale)
	require.Equal(t, 2, h.len())
	require.Equal(t, 1, c.rqueue.len())
	require.Equal(t, int32(1), h.top())
	heapTake(c, h, 1)
	require.Equal(t, int32(2), h.top())
	require.Equal(t, int32(3), c.rqueue.top())

	// a task taken out of the middle whose pos, as an index elsewhere, equals its old ticket
	heapPush(c, h, 0) // rank 3: under task 2
	ticket := c.tasks.at(0).pos
	heapTake(c, h, 0)
	c.tasks.at(0).pos = ticket // say its place in a worker's processing list
	require.Equal(t, 1, h.len())
	require.Equal(t, []int32{2}, h.ids())
	heapTake(c, h, 2)
	require.Zero(t, h.len())
	require.Empty(t, h.items, "the stale item came back to life")
	require.Empty(t, h.run, "the stale item came back to life")
}

// The run, taken from its front while more is pushed in order at its end (a graph's roots
// arriving in batches while placement feeds workers), keeps giving tasks in rank order from
// one array, moved back to its start rather than reallocated; and a large one's array goes
// once it is empty.
func TestTaskHeapRunReusesItsArray(t *testing.T) {
	const n = 3 * runKeep
	ranks := make([]int64, n)
	for i := range ranks {
		ranks[i] = int64(i)
	}
	c, h := queueTasks(ranks)
	next, out := int32(0), int32(0)
	push := func(k int) {
		for range k {
			heapPush(c, h, next)
			next++
		}
	}
	pop := func(k int) {
		for range k {
			require.Equal(t, out, h.top())
			heapTake(c, h, out)
			out++
		}
	}
	push(1000) // the array grows to its size
	pop(600)
	arrays := map[*heapItem]bool{&h.runBase[0]: true}
	for range 50 { // a window of 400 to 1,000 items travelling through 1,000 slots
		push(600)
		arrays[&h.runBase[0]] = true
		require.Len(t, h.run, 1000)
		pop(600)
	}
	require.Len(t, arrays, 1, "the run's array was reallocated while half of it was free")
	require.Empty(t, h.items, "a task pushed in order went to the heap")
	pop(400)
	require.Zero(t, h.len())
	require.Same(t, &h.runBase[:1][0], &h.run[:1][0], "an empty run does not start again at its array's start")

	push(n - int(next)) // past runKeep: its array is let go once empty
	require.Greater(t, cap(h.runBase), runKeep)
	pop(int(next - out))
	require.Zero(t, h.len())
	require.Nil(t, h.runBase, "an empty run keeps a large array")
}

// BenchmarkTaskHeapRoots queues 400,000 root tasks in rank order, as a large graph's arrive,
// and takes them from the top, as placement feeds workers: ns per task, push and pop.
func BenchmarkTaskHeapRoots(b *testing.B) {
	const n = 400_000
	ranks := make([]int64, n)
	for i := range ranks {
		ranks[i] = int64(i)
	}
	c, h := queueTasks(ranks)
	b.ResetTimer()
	for b.Loop() {
		for id := range int32(n) {
			heapPush(c, h, id)
		}
		for h.len() > 0 {
			heapTake(c, h, h.top())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/task")
}
