package scheduler

import (
	"fmt"
	"slices"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// updateGraph validates a batch whole, then adds it, orders it and computes what is wanted.
// The core keeps pointers into e.Tasks: the driver must not reuse that slice.
func (c *Core) updateGraph(e *EvUpdateGraph) {
	b, err := c.checkGraph(e)
	if err != nil {
		keys := make([]string, len(e.Tasks))
		for i := range e.Tasks {
			keys[i] = e.Tasks[i].Key
		}
		c.out = append(c.out, ActGraphRejected{Client: e.Client, ID: e.ID, Keys: keys, Err: err})
		return
	}
	fresh := c.addTasks(e.Tasks, c.batchIDs, &b)
	for i, k := range e.Wanted {
		// clients usually want the batch's own keys in batch order: no lookup then
		if i < len(e.Tasks) && e.Tasks[i].Key == k {
			c.want(c.batchIDs[i], e.Client)
			continue
		}
		c.want(c.mustLookup(k), e.Client)
	}
	c.batchIDs = c.batchIDs[:0]
	// Tasks that lead to nothing wanted are dropped at once.
	c.gcq = append(c.gcq, fresh...)
}

// checkGraph returns why the batch must be refused, or nil. It leaves in c.batchIDs the id
// of every task of the batch that is already known, -1 for the others, and returns the
// batch's dependencies as indexes into it (graph.Batch).
func (c *Core) checkGraph(e *EvUpdateGraph) (b graph.Batch, _ *wire.Error) {
	known := func(k string) bool { _, ok := c.lookup(k); return ok }
	c.batchIDs = c.batchIDs[:0]
	b, err := graph.ValidateBatch(e.Tasks, known)
	if err != nil {
		return b, fromGraphError(err)
	}
	ids := slices.Grow(c.batchIDs, len(e.Tasks))
	lastFunc := "" // a function name just checked (batches mostly call a few functions)
	for i := range e.Tasks {
		t := &e.Tasks[i]
		if id, ok := c.lookup(t.Key); ok {
			if c.tasks.at(id).flags&flagScattered != 0 || !graph.Same(c.fullDef(id), t) {
				return b, wire.Errorf(wire.CodeKeyConflict, fmt.Sprintf("key %q is already known with a different definition", t.Key))
			}
			ids = append(ids, id)
			continue
		}
		ids = append(ids, -1)
		if t.Kind == graph.KindGo && len(c.alive) > 0 && t.Func != lastFunc {
			if c.funcCount[t.Func] == 0 {
				return b, wire.Errorf(wire.CodeUnknownFunction, fmt.Sprintf("task %q calls Go function %q, which no worker registers", t.Key, t.Func))
			}
			lastFunc = t.Func
		}
	}
	c.batchIDs = ids
	var inBatch map[string]struct{} // built only when a wanted key is not at its task's index
	for i, k := range e.Wanted {
		if i < len(e.Tasks) && e.Tasks[i].Key == k {
			continue
		}
		if inBatch == nil {
			inBatch = make(map[string]struct{}, len(e.Tasks))
			for i := range e.Tasks {
				inBatch[e.Tasks[i].Key] = struct{}{}
			}
		}
		if _, ok := inBatch[k]; !ok && !known(k) {
			return b, wire.Errorf(wire.CodeMissingDependency, fmt.Sprintf("wanted key %q is neither in the graph nor known", k))
		}
	}
	return b, nil
}

// addTasks interns the new tasks of a valid batch, links them and ranks them. ids holds, per
// task, its id when known before the batch or -1 (from checkGraph); addTasks fills in the ids
// it creates. b is what validating the batch learned: whether a key repeats, and each
// dependency's index in the batch, so that only dependencies from outside it are looked up.
// It returns the new ids.
func (c *Core) addTasks(tasks []graph.Task, ids []int32, b *graph.Batch) []int32 {
	fresh := make([]int32, 0, len(tasks))
	freshAt := make([]int32, 0, len(tasks)) // each fresh task's index in the batch
	// Full definitions point into tasks when most of the batch needs them; otherwise each is
	// copied, so the batch's array is not kept alive by a few tasks.
	var full int
	for i := range tasks {
		if !plain(&tasks[i]) {
			full++
		}
	}
	share := 2*full >= len(tasks)
	var lastGroup string
	var group int32
	for i := range tasks {
		def := &tasks[i]
		if ids[i] >= 0 {
			continue // known
		}
		if b.Dups {
			if id, ok := c.lookup(def.Key); ok {
				ids[i] = id // an identical duplicate earlier in the batch
				continue
			}
		}
		if g := graph.GroupOf(def); g != lastGroup || len(fresh) == 0 {
			group, lastGroup = c.groupFor(g), g
		}
		switch {
		case plain(def):
			ids[i] = c.newTask(def.Key, c.templateOf(def.Kind, def.Func), def.Payload, true, def.Group != "", group)
		case share:
			ids[i] = c.newTask(def.Key, def, nil, false, false, group)
		default:
			cp := new(graph.Task)
			*cp = *def
			ids[i] = c.newTask(def.Key, cp, nil, false, false, group)
		}
		fresh = append(fresh, ids[i])
		freshAt = append(freshAt, int32(i))
	}
	if len(fresh) == 0 {
		return nil
	}
	// Dependencies, in one backing array for the batch; count dependents as live.
	var nd int
	for _, i := range freshAt {
		nd += int(b.DepOff[i+1] - b.DepOff[i])
	}
	depArr := make([]int32, 0, nd)
	for n, id := range fresh {
		t := c.tasks.at(id)
		start := len(depArr)
		i := freshAt[n]
		var keys []string // the dependencies' keys, for those from outside the batch
		for k, j := range b.DepAt[b.DepOff[i]:b.DepOff[i+1]] {
			var d int32
			if j >= 0 {
				d = ids[j]
			} else {
				if keys == nil {
					keys = graph.Deps(&tasks[i])
				}
				d = c.mustLookup(keys[k])
			}
			depArr = append(depArr, d)
			c.tasks.at(d).live++
			c.addGroupDep(t.group, c.tasks.at(d).group)
		}
		t.deps = depArr[start:len(depArr):len(depArr)]
	}
	// Dependents: fresh tasks get exact-capacity slices of one array, older ones append.
	refs := make([]uint64, 0, nd)
	for _, id := range fresh {
		t := c.tasks.at(id)
		start := len(refs)
		refs = refs[:start+int(t.live)]
		t.dependents = refs[start:start:len(refs)]
	}
	for _, id := range fresh {
		t := c.tasks.at(id)
		ref := depRef(t, id)
		for _, d := range t.deps {
			c.tasks.at(d).dependents = append(c.tasks.at(d).dependents, ref)
		}
	}
	c.rank(fresh)
	return fresh
}

// rank gives the fresh tasks their static priority: user priority first, then the batch's
// generation, then graph.OrderCSR within the batch.
func (c *Core) rank(fresh []int32) {
	for i, id := range fresh {
		c.tasks.at(id).pos = int32(i) // local index, while released
	}
	off := make([]int32, len(fresh)+1)
	dep := make([]int32, 0, len(fresh))
	prio := make([]int, len(fresh))
	for i, id := range fresh {
		t := c.tasks.at(id)
		for _, d := range t.deps {
			if dt := c.tasks.at(d); dt.state == Released && dt.pos >= 0 && int(dt.pos) < len(fresh) && fresh[dt.pos] == d {
				dep = append(dep, dt.pos)
			}
		}
		off[i+1] = int32(len(dep))
		prio[i] = t.def.Priority
	}
	order := graph.OrderCSR(off, dep, prio)
	const prioShift = 40
	for i, id := range fresh {
		t := c.tasks.at(id)
		p := int64(max(min(t.def.Priority, 1<<22), -(1 << 22)))
		t.rank = -p<<prioShift + c.orderBase + int64(order[i])
		t.pos = -1
	}
	c.orderBase += int64(len(fresh))
}

// want records that cl holds a future to id and tells it at once if the fate is known.
func (c *Core) want(id int32, cl ClientID) {
	c.addWant(id, cl)
	switch t := c.tasks.at(id); t.state {
	case Memory:
		c.wanters(id, func(x ClientID) {
			if x == cl {
				c.emitKeyState(ActKeyState{Client: cl, Key: t.key, State: "memory",
					Worker: t.whoHas[0], NBytes: t.nbytes, Encoding: c.encodings[t.enc]})
			}
		})
	case Erred:
		state := "erred"
		if t.err != nil && t.err.Code == wire.CodeLost {
			state = "lost"
		}
		c.emitKeyState(ActKeyState{Client: cl, Key: t.key, State: state, Worker: -1, Err: t.err})
	case Released:
		c.needq = append(c.needq, id)
	}
}

func (c *Core) wanted(cl ClientID, keys []string) {
	for _, k := range keys {
		if id, ok := c.lookup(k); ok {
			c.want(id, cl)
			continue
		}
		c.emitKeyState(ActKeyState{Client: cl, Key: k, State: "lost", Worker: -1,
			Err: wire.Errorf(wire.CodeLost, fmt.Sprintf("key %q is not known to the scheduler", k))})
	}
}

func (c *Core) releaseKeys(cl ClientID, keys []string) {
	for _, k := range keys {
		if id, ok := c.lookup(k); ok && c.dropWant(id, cl) {
			c.gcq = append(c.gcq, id)
		}
	}
}

func (c *Core) clientLeft(cl ClientID) {
	for id := range c.tasks.n {
		if t := c.tasks.at(id); t.state != Forgotten && t.want >= 0 && c.dropWant(int32(id), cl) {
			c.gcq = append(c.gcq, int32(id))
		}
	}
}

// cancelKeys cancels keys and every dependent not yet finished: wanting clients are told
// "cancelled", wants are dropped, and what nobody needs any more is released (running tasks
// are freed on their workers).
func (c *Core) cancelKeys(cl ClientID, keys []string) {
	var todo []int32
	seen := make(map[int32]bool)
	for _, k := range keys {
		if id, ok := c.lookup(k); ok && !seen[id] {
			seen[id] = true
			todo = append(todo, id)
		}
	}
	err := wire.Errorf(wire.CodeCancelled, fmt.Sprintf("cancelled by client %d", cl))
	for i := 0; i < len(todo); i++ {
		id := todo[i]
		for _, ref := range c.tasks.at(id).dependents {
			if d, ok := c.dependent(ref); ok && !seen[d] {
				if s := c.tasks.at(d).state; s != Memory && s != Erred {
					seen[d] = true
					todo = append(todo, d)
				}
			}
		}
	}
	for _, id := range todo {
		t := c.tasks.at(id)
		c.wanters(id, func(x ClientID) {
			c.emitKeyState(ActKeyState{Client: x, Key: t.key, State: "cancelled", Worker: -1, Err: err})
		})
		t.want = -1
		delete(c.wantMore, id)
		c.gcq = append(c.gcq, id)
	}
}

// scattered: a client put values on a worker. Unknown keys become scattered tasks (no
// lineage); known ones gain a holder, or take the value if they had none.
func (c *Core) scattered(e *EvScattered) {
	ws := c.liveWorker(e.Worker)
	if ws == nil {
		return
	}
	for _, it := range e.Items {
		id, ok := c.lookup(it.Key)
		if !ok {
			id = c.newTask(it.Key, c.templateOf("", ""), nil, true, false, c.groupFor(graph.KeySplit(it.Key)))
			c.tasks.at(id).flags |= flagScattered
		}
		c.addWant(id, e.Client)
		t := c.tasks.at(id)
		if t.state == Memory {
			c.addHolder(id, e.Worker)
			c.want(id, e.Client)
			continue
		}
		if t.state == Erred {
			c.erredToReleased(id)
		}
		c.toMemory(id, e.Worker, it.NBytes, it.Encoding, -1)
	}
}

// toMemory records a result from any state that has none (a late or scattered value).
func (c *Core) toMemory(id int32, w WorkerID, nbytes int64, enc string, dur int64) {
	switch c.tasks.at(id).state {
	case Released:
		c.releasedToMemory(id, w, nbytes, enc)
	case Waiting:
		c.waitingToMemory(id, w, nbytes, enc)
	case Queued:
		c.queuedToMemory(id, w, nbytes, enc)
	case NoWorker:
		c.noWorkerToMemory(id, w, nbytes, enc)
	case Processing:
		c.processingToMemory(id, w, nbytes, enc, dur)
	}
}

// addHolder records a replica.
func (c *Core) addHolder(id int32, w WorkerID) {
	t := c.tasks.at(id)
	for _, x := range t.whoHas {
		if x == w {
			return
		}
	}
	hs := make([]WorkerID, len(t.whoHas)+1)
	copy(hs, t.whoHas)
	hs[len(t.whoHas)] = w
	t.whoHas = hs
	c.addKey(w, id, t.nbytes)
}

// removeHolder drops a replica; it reports whether w held it.
func (c *Core) removeHolder(id int32, w WorkerID) bool {
	t := c.tasks.at(id)
	hs := make([]WorkerID, 0, len(t.whoHas))
	for _, x := range t.whoHas {
		if x != w {
			hs = append(hs, x)
		}
	}
	if len(hs) == len(t.whoHas) {
		return false
	}
	t.whoHas = hs
	c.workers[w].dropKey(t.nbytes)
	return true
}

// lost handles a task in memory whose last copy is gone: recompute it when needed, report
// it lost when it cannot be, release it otherwise.
func (c *Core) lost(id int32) {
	t := c.tasks.at(id)
	switch {
	case !c.needed(id):
		c.memoryToReleased(id, false)
		c.gcq = append(c.gcq, id)
	case t.flags&flagScattered != 0:
		c.memoryToErred(id, lostError(t.key))
	default:
		c.memoryToWaiting(id)
	}
}
