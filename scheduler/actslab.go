package scheduler

// The actions a task's every step emits, a compute and a key_state, go into the Action
// interface as pointers into slabs the core reuses: a struct put into an interface is a heap
// allocation of its own, and those two were a third of the scheduler's allocations in a graph
// of no-op tasks (docs/performance.md, "10,000 workers: fewer collections"). The pointers are
// valid until the driver calls RecycleActions, once it has performed every action it was
// given. A driver that never calls it (a test) gets new chunks instead, and the first
// slabKeep chunks, with what their actions point to, stay alive.

// slab hands out values of T by pointer from chunks that are reused once recycled.
type slab[T any] struct {
	items  []T   // the chunk being filled
	chunks [][]T // every chunk of this round, the one being filled last
	next   int   // the index in chunks of the chunk after items
}

// slabChunk is the number of values in a chunk: what a driver that never recycles keeps alive
// beyond the actions it holds.
const slabChunk = 256

// slabKeep is the most chunks a recycled slab keeps for the next rounds: an event that
// emitted more (a graph sent to 10,000 idle workers at once) leaves the rest to the collector.
const slabKeep = 64

// put stores a and returns its place. A full chunk is left to the actions that point into it,
// and the next begins: one kept from an earlier round when there is one. (Chunks made anew
// each time were fresh memory, whose pages faulted twice: the pointer writes' barrier reads
// first.)
func (s *slab[T]) put(a T) *T {
	if len(s.items) == cap(s.items) {
		if s.next < len(s.chunks) {
			s.items = s.chunks[s.next][:0]
		} else {
			s.items = make([]T, 0, slabChunk)
			if len(s.chunks) < slabKeep {
				s.chunks = append(s.chunks, s.items)
			}
		}
		s.next++
	}
	s.items = append(s.items, a)
	return &s.items[len(s.items)-1]
}

// recycle empties the chunks (keeping nothing their values point to alive) for the next
// round; the values handed out must no longer be used.
func (s *slab[T]) recycle() {
	if s.next == 0 {
		return
	}
	// Chunks fill in order and each round clears what it used, so only the chunks before the
	// last are full, and of the last (items, kept or not) only its length was written.
	// (Clearing every chunk to its capacity was 5 % of the scheduler's time: an event with
	// one compute cleared 256.)
	for _, c := range s.chunks[:min(s.next-1, len(s.chunks))] {
		clear(c[:cap(c)])
	}
	clear(s.items)
	s.items, s.next = nil, 0
}

// emitCompute emits a compute action.
func (c *Core) emitCompute(a ActCompute) { c.out = append(c.out, c.computes.put(a)) }

// emitKeyState emits a key_state action.
func (c *Core) emitKeyState(a ActKeyState) { c.out = append(c.out, c.keyStates.put(a)) }

// depList returns a list of n dependencies for a compute action, from an arena recycled with
// the actions (a new slice per compute was an allocation per task with inputs).
func (c *Core) depList(n int) []DepLoc {
	if cap(c.deps)-len(c.deps) < n {
		c.deps = make([]DepLoc, 0, max(depArena, n)) // the full one stays with its actions
	}
	at := len(c.deps)
	c.deps = c.deps[:at+n]
	return c.deps[at : at+n : at+n]
}

// depArena is the number of dependencies an arena of depList holds.
const depArena = 1024

// RecycleActions lets the core reuse the memory of the *ActCompute and *ActKeyState actions
// it has emitted so far, and of the computes' dependency lists: call it once every one of
// them has been performed (and none nested in performing them is left to perform).
func (c *Core) RecycleActions() {
	c.computes.recycle()
	c.keyStates.recycle()
	clear(c.deps)
	c.deps = c.deps[:0]
}
