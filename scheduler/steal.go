package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// Work stealing. On a tick, workers with idle threads take tasks that saturated workers have
// not started. The core only asks (ActSteal); the task stays processing on the victim until
// the victim answers, so a task is never run twice by accident: a victim that already
// started it rejects the request, and its result is accepted as usual.

func (c *Core) tick(now int64) {
	c.checkLiveness(now)
	if c.cfg.DisableStealing {
		return
	}
	if c.stealTicks && now-c.lastSteal < int64(c.cfg.StealInterval) {
		return
	}
	c.stealTicks, c.lastSteal = true, now
	c.stealRound()
}

// stealRound pairs idle thieves with the most loaded victims.
func (c *Core) stealRound() {
	// the lists of the last round, reused: at 10,000 workers they were new slices of
	// thousands of entries every tick
	thieves, victims := c.thieves[:0], c.victims[:0]
	for _, wid := range c.alive {
		ws := c.workers[wid]
		switch excess := ws.busy() - ws.stealsOut - ws.nthreads; {
		case !ws.accepting():
		case ws.busy()+ws.stealsIn < ws.nthreads:
			thieves = append(thieves, ws)
		case excess > 0:
			victims = append(victims, ws)
		}
	}
	// kept whole for the next round (thieves is consumed from its front below), holding no
	// worker once this one ends
	c.thieves, c.victims = thieves, victims
	defer func() {
		clear(c.thieves)
		clear(c.victims)
		c.thieves, c.victims = c.thieves[:0], c.victims[:0]
	}()
	if len(thieves) == 0 || len(victims) == 0 {
		return
	}
	c.rebookLoads(victims)
	slices.SortStableFunc(victims, func(a, b *worker) int { return cmp.Compare(b.load(), a.load()) })
	// Each thief in turn takes the victim's candidates until it is full; a full thief stays
	// full for the rest of the round and is dropped, and the round ends when none is left.
	// (Every victim used to walk every thief: with thousands of each, at 10,000 workers, that
	// was 14 % of the scheduler's CPU.)
	for _, v := range victims {
		if len(thieves) == 0 {
			return
		}
		if v.load() < minStealDuration.Seconds() {
			// This victim, and every one after it, is expected to have run all it holds
			// before a steal could take effect. (Their short tasks would each be passed over
			// below, but only after listing and sorting them: at 10,000 workers each holding
			// a block of 128 no-op tasks, that was a quarter of the scheduler's CPU.) Its
			// load is what its tasks were expected to take when they were booked.
			return
		}
		cands := c.stealable(v)
		for len(cands) > 0 && len(thieves) > 0 && v.busy()-v.stealsOut > v.nthreads {
			th := thieves[0]
			if th.busy()+th.stealsIn >= th.nthreads {
				thieves = thieves[1:]
				continue
			}
			id := cands[0]
			cands = cands[1:]
			if c.worthStealing(id, th) {
				c.requestSteal(id, v, th)
			}
		}
	}
}

// rebookLoads books the processing tasks of victims again at their groups' current average
// durations, as many as rebookBudget allows this round, starting where the last round
// stopped. A task counts in its worker's occupancy for what its group's tasks took when it
// was booked; stealRound ends at the first victim whose load is under minStealDuration,
// so a worker given tasks of a group that had looked short was never stolen from once they
// turned out long, though the thieves stood idle (testdata/steal_stale_estimate.txt).
func (c *Core) rebookLoads(victims []*worker) {
	budget := rebookBudget
	n := len(victims)
	for i := range n {
		ws := victims[(c.rebookAt+i)%n]
		occ := 0.0
		for _, id := range ws.processing {
			t := c.tasks.at(id)
			t.expDur = float32(c.expected(t.group))
			if t.flags&flagSeceded == 0 { // a seceded task's thread is free (longRunning)
				occ += float64(t.expDur)
			}
		}
		ws.occupancy = occ
		budget -= len(ws.processing) + 1
		if budget <= 0 {
			c.rebookAt = (c.rebookAt + i + 1) % n
			return
		}
	}
	c.rebookAt = 0
}

// rebookBudget bounds the tasks rebookLoads looks at in one stealing round: with 10,000
// workers each holding a block of root tasks, all of them would be a million.
const rebookBudget = 4096

// stealable lists v's tasks that are probably not started (v runs the best rank first):
// the worst ranks first, as many as v has beyond its threads.
func (c *Core) stealable(v *worker) []int32 {
	cands := make([]int32, 0, len(v.processing))
	for _, id := range v.processing {
		if _, inFlight := c.steals[id]; !inFlight {
			cands = append(cands, id)
		}
	}
	slices.SortFunc(cands, func(a, b int32) int { return c.byRank(b, a) })
	return cands[:min(len(cands), max(v.busy()-v.stealsOut-v.nthreads, 0))]
}

// worthStealing: the thief may run it, the task is expected to take longer than a steal's
// round trips (minStealDuration, by what its group's tasks take now, not when it was
// booked), and moving its inputs costs no more than running it.
func (c *Core) worthStealing(id int32, th *worker) bool {
	t := c.tasks.at(id)
	if !c.allowed(th, t.def, c.needFuncCheck(t.def)) || !th.hasFree(t.def.Resources) {
		return false
	}
	d := c.expected(t.group)
	return d >= minStealDuration.Seconds() && c.transferTime(t, th.id) <= d
}

// minStealDuration: a task expected to take less is never stolen. A steal is a request to the
// victim, its answer, and a compute to the thief: three messages and as many wake-ups, for a
// task the victim will likely have run meanwhile (dask gives up under the same 5 ms). At
// 10,000 zero-cost workers, stealing no-op tasks sent 15,000 requests per million tasks, each
// refused.
const minStealDuration = 5 * time.Millisecond

func (c *Core) requestSteal(id int32, v, th *worker) {
	c.steals[id] = th.id
	v.stealsOut++
	th.stealsIn++
	c.out = append(c.out, ActSteal{Victim: v.id, Key: c.key(id)})
}

// stealResponse: accepted → the victim dropped the task; place it, on the thief if it can.
// Rejected → it is running there; nothing changes.
func (c *Core) stealResponse(e *EvStealResponse) {
	id, ok := c.lookup(e.Key)
	if !ok {
		return
	}
	t := c.tasks.at(id)
	if t.state != Processing || t.worker != e.Worker {
		return // finished, or already moved: the answer is moot
	}
	thief, inFlight := c.steals[id]
	if inFlight {
		delete(c.steals, id)
		c.workers[e.Worker].stealsOut--
		c.workers[thief].stealsIn--
	}
	if !e.Accepted {
		return
	}
	c.processingToWaiting(id)
	if t.state != Waiting || t.waitingOn != 0 || !inFlight {
		return
	}
	if th := c.liveWorker(thief); th != nil && c.allowed(th, t.def, c.needFuncCheck(t.def)) && th.hasFree(t.def.Resources) {
		c.waitingToProcessing(id, thief)
	}
}
