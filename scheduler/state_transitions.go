package scheduler

import (
	"fmt"

	"github.com/shoal-dev/shoal/internal/wire"
)

// One function per legal edge of the state machine (see legal in state.go). Each one does
// the bookkeeping particular to its edge and calls setState, which panics on an illegal edge.

// ---- from released ----

func (c *Core) releasedToWaiting(id int32) {
	c.setState(id, Released, Waiting)
	c.enterWaiting(id)
}

func (c *Core) releasedToMemory(id int32, w WorkerID, nbytes int64, enc string) {
	c.setState(id, Released, Memory)
	c.enterMemory(id, w, nbytes, enc)
}

func (c *Core) releasedToForgotten(id int32) {
	c.setState(id, Released, Forgotten)
	t := c.tasks.at(id)
	c.indexRemove(t.key, id)
	delete(c.deaths, id)
	delete(c.wantMore, id)
	delete(c.moves, id)
	delete(c.heldBy, id) // a key held by results but cancelled: its slot may be reused
	c.groups[t.group].total--
	for _, d := range t.deps {
		dt := c.tasks.at(d)
		if dt.live--; dt.live == 0 {
			dt.dependents = nil
			c.gcq = append(c.gcq, d)
		}
	}
	t.key, t.def, t.payload, t.deps, t.dependents, t.whoHas, t.err = "", nil, nil, nil, nil, nil, nil
	c.free = append(c.free, id)
}

// ---- from waiting ----

func (c *Core) waitingToQueued(id int32, forResources bool) {
	c.setState(id, Waiting, Queued)
	if forResources {
		c.tasks.at(id).flags |= flagResQueue
		c.rqueue.push(id)
	} else {
		c.queue.push(id)
	}
}

func (c *Core) waitingToNoWorker(id int32) {
	c.setState(id, Waiting, NoWorker)
	c.tasks.at(id).pos = int32(len(c.noWorker))
	c.noWorker = append(c.noWorker, id)
}

func (c *Core) waitingToProcessing(id int32, w WorkerID) {
	c.setState(id, Waiting, Processing)
	c.assign(id, w)
}

func (c *Core) waitingToMemory(id int32, w WorkerID, nbytes int64, enc string) {
	c.setState(id, Waiting, Memory)
	c.enterMemory(id, w, nbytes, enc)
}

func (c *Core) waitingToReleased(id int32) { c.setState(id, Waiting, Released) }

func (c *Core) waitingToErred(id int32, err *wire.Error) {
	c.setState(id, Waiting, Erred)
	c.enterErred(id, err)
}

// ---- from queued ----

func (c *Core) queuedToProcessing(id int32, w WorkerID) {
	c.dequeue(id)
	c.setState(id, Queued, Processing)
	c.assign(id, w)
}

func (c *Core) queuedToWaiting(id int32) {
	c.dequeue(id)
	c.setState(id, Queued, Waiting)
	c.enterWaiting(id)
}

func (c *Core) queuedToNoWorker(id int32) {
	c.dequeue(id)
	c.setState(id, Queued, NoWorker)
	c.tasks.at(id).pos = int32(len(c.noWorker))
	c.noWorker = append(c.noWorker, id)
}

func (c *Core) queuedToMemory(id int32, w WorkerID, nbytes int64, enc string) {
	c.dequeue(id)
	c.setState(id, Queued, Memory)
	c.enterMemory(id, w, nbytes, enc)
}

func (c *Core) queuedToReleased(id int32) {
	c.dequeue(id)
	c.setState(id, Queued, Released)
}

func (c *Core) queuedToErred(id int32, err *wire.Error) {
	c.dequeue(id)
	c.setState(id, Queued, Erred)
	c.enterErred(id, err)
}

// ---- from no-worker ----

func (c *Core) noWorkerToWaiting(id int32) {
	c.removeNoWorker(id)
	c.setState(id, NoWorker, Waiting)
	c.enterWaiting(id)
}

func (c *Core) noWorkerToMemory(id int32, w WorkerID, nbytes int64, enc string) {
	c.removeNoWorker(id)
	c.setState(id, NoWorker, Memory)
	c.enterMemory(id, w, nbytes, enc)
}

func (c *Core) noWorkerToReleased(id int32) {
	c.removeNoWorker(id)
	c.setState(id, NoWorker, Released)
}

func (c *Core) noWorkerToErred(id int32, err *wire.Error) {
	c.removeNoWorker(id)
	c.setState(id, NoWorker, Erred)
	c.enterErred(id, err)
}

// ---- from processing ----

// processingToMemory records a result. The task may have been processing on another worker
// than w (a welcome late result): that worker is not told to drop it, because a free_keys
// crossing a fetch of the same key would leave the core believing in a copy that is gone;
// if it runs the task anyway, its result is recorded as a replica.
func (c *Core) processingToMemory(id int32, w WorkerID, nbytes int64, enc string, dur int64) {
	c.unassign(id)
	c.setState(id, Processing, Memory)
	g := &c.groups[c.tasks.at(id).group]
	if dur >= 0 { // a measured run; a zero-length one (an instant acknowledgement) counts as 100 ns
		c.tasks.at(id).duration = dur
		g.observe(float64(max(dur, 100))/1e9, c.cfg.DurationWeight)
	}
	g.observeSize(nbytes, c.cfg.DurationWeight)
	g.done = min(g.done+1, g.added)
	c.enterMemory(id, w, nbytes, enc)
}

func (c *Core) processingToErred(id int32, err *wire.Error) {
	c.unassign(id)
	c.setState(id, Processing, Erred)
	c.enterErred(id, err)
}

// processingToWaiting takes a task back from its worker (rescheduled, retried, stolen, or
// dropped by the worker); it is placed again once its inputs are in memory.
func (c *Core) processingToWaiting(id int32) {
	c.unassign(id)
	c.setState(id, Processing, Waiting)
	c.enterWaiting(id)
}

// processingToReleased cancels a running task: its worker is told to drop it.
func (c *Core) processingToReleased(id int32) {
	w := c.tasks.at(id).worker
	if w >= 0 && c.workers[w].alive { // as freeOn: a dead worker reports nothing more
		c.noteCancelled(c.handle(id), w)
	}
	c.freeOn(w, id)
	c.unassign(id)
	c.setState(id, Processing, Released)
}

// ---- from memory ----

// memoryToReleased drops the result; free says whether the holders are told to drop it.
func (c *Core) memoryToReleased(id int32, free bool) {
	t := c.tasks.at(id)
	for _, w := range t.whoHas {
		if free {
			c.freeOn(w, id)
		}
		c.workers[w].dropKey(t.nbytes)
	}
	c.groups[t.group].nbytes -= t.nbytes
	t.whoHas = nil
	c.setState(id, Memory, Released)
}

// memoryToWaiting recomputes a needed result whose every copy was lost.
func (c *Core) memoryToWaiting(id int32) {
	t := c.tasks.at(id)
	c.groups[t.group].nbytes -= t.nbytes
	t.whoHas = nil
	c.setState(id, Memory, Waiting)
	c.dependentsLost(id)
	c.enterWaiting(id)
}

// memoryToErred: scattered data was lost and cannot be recomputed.
func (c *Core) memoryToErred(id int32, err *wire.Error) {
	t := c.tasks.at(id)
	c.groups[t.group].nbytes -= t.nbytes
	t.whoHas = nil
	c.setState(id, Memory, Erred)
	c.dependentsLost(id)
	c.enterErredAs(id, err, "lost")
}

// ---- from erred ----

func (c *Core) erredToReleased(id int32) {
	c.tasks.at(id).err = nil
	c.setState(id, Erred, Released)
}

// ---- shared entry work ----

// enterWaiting counts the dependencies still to come, asks for released ones to be
// computed, errs the task when a dependency has failed, and marks it ready when none is
// missing.
func (c *Core) enterWaiting(id int32) {
	t := c.tasks.at(id)
	t.waitingOn = 0
	var failed *wire.Error
	for _, d := range t.deps {
		dt := c.tasks.at(d)
		switch dt.state {
		case Memory:
			continue
		case Erred:
			failed = dt.err
		case Released:
			if dt.flags&flagScattered != 0 {
				failed = lostError(dt.key)
			} else {
				c.needq = append(c.needq, d)
			}
		}
		t.waitingOn++
	}
	switch {
	case failed != nil:
		c.waitingToErred(id, failed)
	case t.waitingOn == 0:
		c.markReady(id)
	}
}

func (c *Core) markReady(id int32) {
	if t := c.tasks.at(id); t.flags&flagReady == 0 {
		t.flags |= flagReady
		c.ready = append(c.ready, id)
	}
}

// enterMemory records the first holder, tells wanting clients and wakes dependents.
func (c *Core) enterMemory(id int32, w WorkerID, nbytes int64, enc string) {
	t := c.tasks.at(id)
	t.nbytes, t.enc, t.err = nbytes, c.encoding(enc), nil
	t.whoHas = []WorkerID{w}
	c.addKey(w, id, nbytes)
	c.groups[t.group].nbytes += nbytes
	c.notifyMemory(id)
	for _, ref := range t.dependents {
		if d, ok := c.dependent(ref); ok {
			if dt := c.tasks.at(d); dt.state == Waiting {
				if dt.waitingOn--; dt.waitingOn == 0 {
					c.markReady(d)
				}
			}
		}
	}
	c.gcq = append(c.gcq, id) // nobody may need it (e.g. a late result)
}

// enterErred stores the error, tells wanting clients, and errs every dependent that is
// still to run (transitively) with the same error.
func (c *Core) enterErred(id int32, err *wire.Error) { c.enterErredAs(id, err, "erred") }

// enterErredAs is enterErred telling wanting clients state ("erred" or "lost").
func (c *Core) enterErredAs(id int32, err *wire.Error, state string) {
	c.tasks.at(id).err = err
	c.notifyErred(id, state)
	for _, ref := range c.tasks.at(id).dependents {
		d, ok := c.dependent(ref)
		if !ok {
			continue
		}
		switch c.tasks.at(d).state {
		case Waiting:
			c.waitingToErred(d, err)
		case Queued:
			c.queuedToErred(d, err)
		case NoWorker:
			c.noWorkerToErred(d, err)
		}
	}
	c.gcq = append(c.gcq, id)
}

// dependentsLost puts dependents that counted on id's data back to waiting for it.
//
// A task may name id more than once (a definition's Deps may repeat a key), so it is in
// id's dependents as often, and waits for each: a waiting one counts each again, and one
// that goes back to waiting counts them all at once (enterWaiting), which is why those move
// only after the waiting ones have been counted (one pass counting both was a count too many,
// and a task that never ran).
func (c *Core) dependentsLost(id int32) {
	refs := c.tasks.at(id).dependents
	for _, ref := range refs {
		if d, ok := c.dependent(ref); ok {
			if dt := c.tasks.at(d); dt.state == Waiting {
				dt.waitingOn++
			}
		}
	}
	for _, ref := range refs {
		d, ok := c.dependent(ref)
		if !ok {
			continue
		}
		switch c.tasks.at(d).state {
		case Queued:
			c.queuedToWaiting(d)
		case NoWorker:
			c.noWorkerToWaiting(d)
		}
	}
}

// flushNeed computes what became needed: released tasks go to waiting, recursively.
func (c *Core) flushNeed() {
	for len(c.needq) > 0 {
		id := c.needq[len(c.needq)-1]
		c.needq = c.needq[:len(c.needq)-1]
		if c.tasks.at(id).state == Released {
			c.releasedToWaiting(id)
		}
	}
}

// ---- client notifications ----

func (c *Core) notifyMemory(id int32) {
	t := c.tasks.at(id)
	if t.want < 0 {
		return
	}
	c.wanters(id, func(cl ClientID) {
		c.emitKeyState(ActKeyState{Client: cl, Key: t.key, State: "memory",
			Worker: t.whoHas[0], NBytes: t.nbytes, Encoding: c.encodings[t.enc]})
	})
}

// notifyErred sends state ("erred", "lost" or "cancelled") with the task's error.
func (c *Core) notifyErred(id int32, state string) {
	t := c.tasks.at(id)
	c.wanters(id, func(cl ClientID) {
		c.emitKeyState(ActKeyState{Client: cl, Key: t.key, State: state, Worker: -1, Err: t.err})
	})
}

func lostError(key string) *wire.Error {
	return wire.Errorf(wire.CodeLost, fmt.Sprintf("the data of %q was lost and cannot be recomputed (it was scattered, not computed)", key))
}
