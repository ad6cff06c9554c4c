package scheduler

// The actions a task's every step emits, a compute and a key_state, go into the Action
// interface as pointers into slabs the core reuses: a struct put into an interface is a heap
// allocation of its own, and those two were a third of the scheduler's allocations in a graph
// of no-op tasks (docs/performance.md, "10,000 workers: fewer collections"). The pointers are
// valid until the driver calls RecycleActions, once it has performed every action it was
// given; a driver that never calls it (a test) only gets the slabs as fresh memory instead.

// slab hands out values of T by pointer from a chunk that is reused once recycled.
type slab[T any] struct{ items []T }

// slabChunk is the number of values in a chunk: what a driver that never recycles keeps alive
// beyond the actions it holds.
const slabChunk = 256

// put stores a and returns its place. A full chunk is left to the actions that point into it
// and a new one begins.
func (s *slab[T]) put(a T) *T {
	if len(s.items) == cap(s.items) {
		s.items = make([]T, 0, slabChunk)
	}
	s.items = append(s.items, a)
	return &s.items[len(s.items)-1]
}

// recycle empties the current chunk (keeping nothing its values point to alive); the
// values handed out from it must no longer be used.
func (s *slab[T]) recycle() {
	clear(s.items)
	s.items = s.items[:0]
}

// emitCompute emits a compute action.
func (c *Core) emitCompute(a ActCompute) { c.out = append(c.out, c.computes.put(a)) }

// emitKeyState emits a key_state action.
func (c *Core) emitKeyState(a ActKeyState) { c.out = append(c.out, c.keyStates.put(a)) }

// RecycleActions lets the core reuse the memory of the *ActCompute and *ActKeyState actions
// it has emitted so far: call it once every one of them has been performed (and none nested
// in performing them is left to perform).
func (c *Core) RecycleActions() {
	c.computes.recycle()
	c.keyStates.recycle()
}
