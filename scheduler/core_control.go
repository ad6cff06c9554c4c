package scheduler

import (
	"cmp"
	"slices"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Cluster control: restart, retiring workers, and moving replicas (replicate, rebalance).
// Copies are made by asking a worker to fetch a value from a holder (ActAcquire); the worker
// reports it with add_keys like any fetched dependency, so a copy counts only once it exists.

// restart cancels every task of every client, as dask's Client.restart drops all work: each
// wanting client is told its keys were cancelled (err says why), and what nobody needs any
// more is released. The driver restarts the workers themselves.
func (c *Core) restart(reason string) {
	err := wire.Errorf(wire.CodeCancelled, reason)
	for id := range c.tasks.n {
		t := c.tasks.at(id)
		if t.state == Forgotten {
			continue
		}
		c.wanters(int32(id), func(x ClientID) {
			c.emitKeyState(ActKeyState{Client: x, Key: t.key, State: "cancelled", Worker: -1, Err: err})
		})
		t.want = -1
		delete(c.wantMore, int32(id))
		c.gcq = append(c.gcq, int32(id))
	}
	clear(c.moves)
	clear(c.holds)
	clear(c.heldBy)
}

// retire stops placing tasks on the workers and copies every value only they hold to the
// other workers (least memory first). The driver closes each once Retired says so.
func (c *Core) retire(ids []WorkerID) {
	leaving := make(map[WorkerID]bool, len(ids))
	for _, w := range ids {
		if ws := c.liveWorker(w); ws != nil {
			ws.retiring = true
			c.updateSat(ws)
			leaving[w] = true
		}
	}
	var stay []WorkerID
	for _, w := range c.alive {
		if !leaving[w] {
			stay = append(stay, w)
		}
	}
	if len(stay) == 0 || len(leaving) == 0 {
		return
	}
	for id := range c.tasks.n {
		t := c.tasks.at(id)
		if t.state == Memory && !slices.ContainsFunc(t.whoHas, func(w WorkerID) bool { return !leaving[w] }) {
			c.copyTo(int32(id), c.leastMemory(stay, int32(id)))
		}
	}
	c.flushAcquires()
}

// Retired reports whether w may be closed without losing anything: it runs nothing and holds
// no value that no other live worker holds.
func (c *Core) Retired(w WorkerID) bool {
	ws := c.liveWorker(w)
	if ws == nil {
		return true
	}
	if len(ws.processing) > 0 {
		return false
	}
	for _, id := range c.storedOn(w) {
		if !slices.ContainsFunc(c.tasks.at(id).whoHas, func(x WorkerID) bool { return x != w && c.liveWorker(x) != nil }) {
			return false
		}
	}
	return true
}

// replicate makes sure each key in memory has at least n copies (at most one per worker),
// adding copies on the workers with the least memory.
func (c *Core) replicate(keys []string, n int) {
	n = min(n, len(c.alive))
	for _, k := range keys {
		id, ok := c.lookup(k)
		if !ok || c.tasks.at(id).state != Memory {
			continue
		}
		for have := len(c.tasks.at(id).whoHas) + c.pendingCopies(id); have < n; have++ {
			w := c.leastMemory(c.alive, id)
			if w < 0 {
				break
			}
			c.copyTo(id, w)
		}
	}
	c.flushAcquires()
}

// rebalance moves values (keys, or every value in memory when keys is empty) from workers
// holding more than the mean share of them to workers holding less, largest values first,
// until no move would bring a sender and a receiver closer to the mean. A moved value is
// dropped from its sender once the receiver has it.
func (c *Core) rebalance(keys []string) {
	var ids []int32
	if len(keys) == 0 {
		for id := range c.tasks.n {
			if c.tasks.at(id).state == Memory {
				ids = append(ids, int32(id))
			}
		}
	} else {
		for _, k := range keys {
			if id, ok := c.lookup(k); ok && c.tasks.at(id).state == Memory {
				ids = append(ids, id)
			}
		}
	}
	if len(c.alive) < 2 || len(ids) == 0 {
		return
	}
	held := make(map[WorkerID]int64, len(c.alive))
	var total int64
	for _, id := range ids {
		t := c.tasks.at(id)
		for _, w := range t.whoHas {
			held[w] += t.nbytes
			total += t.nbytes
		}
	}
	mean := total / int64(len(c.alive))
	slices.SortFunc(ids, func(a, b int32) int { return cmp.Compare(c.tasks.at(b).nbytes, c.tasks.at(a).nbytes) })
	for _, id := range ids {
		t := c.tasks.at(id)
		if _, moving := c.moves[id]; moving {
			continue
		}
		var from WorkerID = -1
		for _, w := range t.whoHas {
			if held[w] > mean && (from < 0 || held[w] > held[from]) {
				from = w
			}
		}
		if from < 0 {
			continue
		}
		var to WorkerID = -1
		for _, w := range c.alive {
			if !slices.Contains(t.whoHas, w) && c.workers[w].accepting() && held[w]+t.nbytes <= mean+t.nbytes/2 &&
				(to < 0 || held[w] < held[to]) {
				to = w
			}
		}
		if to < 0 {
			continue
		}
		held[from] -= t.nbytes
		held[to] += t.nbytes
		c.moves[id] = move{from: from, to: to}
		c.copyTo(id, to)
	}
	c.flushAcquires()
}

// move is a value being moved by rebalance: once to holds it, from drops it.
type move struct{ from, to WorkerID }

// moved completes a rebalance move when its receiver reported the copy.
func (c *Core) moved(id int32, w WorkerID) {
	m, ok := c.moves[id]
	if !ok || m.to != w {
		return
	}
	delete(c.moves, id)
	if t := c.tasks.at(id); t.state == Memory && len(t.whoHas) > 1 && c.removeHolder(id, m.from) {
		c.freeOn(m.from, id)
	}
}

// leastMemory is the accepting worker among ws not holding id with the fewest bytes held, or -1.
// Copies asked for in this event count towards their receiver's bytes, so that many copies
// (retiring a worker) spread over the others instead of all going to the one holding least.
func (c *Core) leastMemory(ws []WorkerID, id int32) WorkerID {
	best := WorkerID(-1)
	var bestBytes int64
	for _, w := range ws {
		x := c.workers[w]
		if !x.accepting() || slices.Contains(c.tasks.at(id).whoHas, w) || c.acqPending[acqKey{w, id}] {
			continue
		}
		if b := x.nbytes + c.acqBytes[w]; best < 0 || b < bestBytes {
			best, bestBytes = w, b
		}
	}
	return best
}

// acqKey is a copy of value id asked of worker w.
type acqKey struct {
	w  WorkerID
	id int32
}

func (c *Core) pendingCopies(id int32) int {
	n := 0
	for w := range c.acquires {
		if c.acqPending[acqKey{w, id}] {
			n++
		}
	}
	return n
}

func (c *Core) copyTo(id int32, w WorkerID) {
	if w >= 0 {
		c.acquires[w] = append(c.acquires[w], id)
		c.acqPending[acqKey{w, id}] = true
		c.acqBytes[w] += c.tasks.at(id).nbytes
	}
}

// flushAcquires turns the copies asked for into one ActAcquire per worker.
func (c *Core) flushAcquires() {
	ws := make([]WorkerID, 0, len(c.acquires))
	for w := range c.acquires {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	for _, w := range ws {
		deps := make([]DepLoc, 0, len(c.acquires[w]))
		for _, id := range c.acquires[w] {
			t := c.tasks.at(id)
			deps = append(deps, DepLoc{Key: t.key, Workers: slices.Clone(t.whoHas), NBytes: t.nbytes})
			c.toldHolders(w, t.whoHas)
		}
		c.out = append(c.out, ActAcquire{Worker: w, Deps: deps})
	}
	clear(c.acquires)
	clear(c.acqPending)
	clear(c.acqBytes)
}
