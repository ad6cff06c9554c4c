package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

func (c *Core) liveWorker(w WorkerID) *worker {
	if w < 0 || int(w) >= len(c.workers) || c.workers[w] == nil || !c.workers[w].alive {
		return nil
	}
	return c.workers[w]
}

func (c *Core) workerJoined(e *EvWorkerJoined) {
	if e.Worker < 0 || c.liveWorker(e.Worker) != nil {
		return
	}
	for int(e.Worker) >= len(c.workers) {
		c.workers = append(c.workers, nil)
	}
	nthreads := max(e.NThreads, 1)
	limit := math.MaxInt
	if sf := c.cfg.SaturationFactor; !math.IsInf(sf, 1) {
		limit = int(math.Ceil(float64(nthreads) * sf))
	}
	ws := &worker{id: e.Worker, name: e.Name, addr: e.Addr, nthreads: nthreads, limit: max(limit, 1),
		memoryLimit: e.MemoryLimit, resources: maps.Clone(e.Resources), funcs: make(map[string]struct{}, len(e.Functions)),
		alive: true, unsatPos: -1, lastSeen: e.Now, asked: e.Asked}
	for _, f := range e.Functions {
		if _, dup := ws.funcs[f]; !dup {
			ws.funcs[f] = struct{}{}
			c.funcCount[f]++
		}
	}
	c.workers[e.Worker] = ws
	i, _ := slices.BinarySearch(c.alive, e.Worker)
	c.alive = slices.Insert(c.alive, i, e.Worker)
	c.threads += nthreads
	c.updateSat(ws)
	c.retryNoWorker()
	c.resFreed = true
	if len(e.Holds) > 0 {
		c.addReplica(&EvAddReplica{Worker: e.Worker, Items: e.Holds})
	}
	for i, k := range e.Running {
		c.adopt(k, e.Worker, e.Replaces, i < len(e.Seceded) && e.Seceded[i])
	}
	if e.Replaces > 0 && e.Replaces != e.Worker {
		// after the new registration holds the results: none of them is reported lost
		c.workerLeft(&EvWorkerLeft{Worker: e.Replaces, Reason: "it registered again on a new connection", Graceful: true})
	}
}

// adopt: a task still runs on a worker that registered again (after a cut link or a scheduler
// restart). Unless it already runs elsewhere, it is booked there, and a task that seceded
// stays seceded. Its compute goes to the worker again: the worker takes it for the run it has
// (it does not run the task a second time) and reports that run under the new handle, which
// the handle it got before, perhaps from another scheduler, would not be (a cancelled run's
// report is told by its handle, staleRun).
func (c *Core) adopt(key string, w, replaces WorkerID, seceded bool) {
	id, ok := c.lookup(key)
	if !ok {
		return // unknown: its result will be freed when it is reported
	}
	t := c.tasks.at(id)
	for _, d := range t.deps {
		if c.tasks.at(d).state != Memory {
			return // its inputs are not known to be anywhere: let it be placed anew
		}
	}
	switch t.state {
	case Processing:
		if t.worker != replaces || replaces == 0 {
			return // it runs elsewhere too: the first result counts, the other is a replica
		}
		c.unassign(id) // moves from the old registration to the new one
	case Waiting:
		if t.waitingOn > 0 {
			return
		}
		if t.flags&flagReady != 0 {
			c.ready = slices.DeleteFunc(c.ready, func(x int32) bool { return x == id })
			t.flags &^= flagReady
		}
		c.setState(id, Waiting, Processing)
	case Queued:
		c.dequeue(id)
		c.setState(id, Queued, Processing)
	case NoWorker:
		c.removeNoWorker(id)
		c.setState(id, NoWorker, Waiting)
		c.setState(id, Waiting, Processing)
	default:
		return
	}
	c.assign(id, w)
	if seceded {
		c.longRunning(&EvLongRunning{Worker: w, Key: key, TaskID: c.handle(id)})
	}
}

// silentIntervals is how many of the heartbeat intervals it was asked for a worker may miss
// before it is taken for dead, when that is longer than HeartbeatTimeout (a large cluster's).
const silentIntervals = 4

// checkLiveness removes workers whose last heartbeat is older than HeartbeatTimeout, or than
// silentIntervals of the interval each was asked to heartbeat at when that is longer.
func (c *Core) checkLiveness(now int64) {
	limit := int64(c.cfg.HeartbeatTimeout)
	if limit <= 0 {
		return
	}
	for _, wid := range c.alive {
		if ws := c.workers[wid]; ws.lastSeen > 0 && now-ws.lastSeen > max(limit, silentIntervals*ws.asked) {
			c.out = append(c.out, ActRemoveWorker{Worker: wid, Reason: fmt.Sprintf("heartbeat timeout: silent for %v",
				time.Duration(now-ws.lastSeen).Round(time.Second))})
		}
	}
}

// workerLeft reschedules what ran there, counts the death against those tasks when it was
// not graceful, and recomputes (or reports lost) data whose only copy lived there.
func (c *Core) workerLeft(e *EvWorkerLeft) {
	ws := c.liveWorker(e.Worker)
	if ws == nil {
		return
	}
	ws.alive = false
	c.updateSat(ws)
	i, _ := slices.BinarySearch(c.alive, e.Worker)
	c.alive = slices.Delete(c.alive, i, i+1)
	c.threads -= ws.nthreads
	for f := range ws.funcs {
		if c.funcCount[f]--; c.funcCount[f] == 0 {
			delete(c.funcCount, f)
		}
	}
	for _, id := range slices.Clone(ws.processing) {
		t := c.tasks.at(id)
		if !e.Graceful {
			t.suspicious++
			c.deaths[id] = append(c.deaths[id], fmt.Sprintf("%s (%s)", workerLabel(ws), e.Reason))
			if int(t.suspicious) >= c.cfg.KilledWorkerThreshold {
				c.processingToErred(id, c.killedWorker(id))
				continue
			}
		}
		c.processingToWaiting(id)
	}
	for _, id := range c.storedOn(e.Worker) {
		if c.removeHolder(id, e.Worker) && len(c.tasks.at(id).whoHas) == 0 {
			c.lost(id)
		}
	}
	ws.stored, ws.fetchers = nil, nil
}

// maxFetchers bounds the workers remembered per holder as told of it (worker.fetchers): past
// it, the holder's leaving is told to every worker (as it always was before: with 10,000
// workers leaving at once, that was 50 million messages and 46 s of the scheduler's CPU).
const maxFetchers = 1024

// toldHolders records that dest was given holders as where to fetch a value from.
func (c *Core) toldHolders(dest WorkerID, holders []WorkerID) {
	for _, h := range holders {
		hs := c.workers[h]
		if h == dest || hs.allFetchers {
			continue
		}
		if hs.fetchers == nil {
			hs.fetchers = make(map[WorkerID]struct{})
		}
		hs.fetchers[dest] = struct{}{}
		if len(hs.fetchers) > maxFetchers {
			hs.fetchers, hs.allFetchers = nil, true
		}
	}
}

// fetchersOf lists the live workers that may be fetching from w, or keep connections to it:
// those ever given w as a holder of a value. all reports that there were too many to
// remember, so every worker may be.
func (c *Core) fetchersOf(w WorkerID) (ids []WorkerID, all bool) {
	ws := c.liveWorker(w)
	if ws == nil {
		return nil, false
	}
	if ws.allFetchers {
		return nil, true
	}
	for x := range ws.fetchers {
		if c.liveWorker(x) != nil {
			ids = append(ids, x)
		}
	}
	slices.Sort(ids)
	return ids, false
}

// addKey records that w holds a copy of task id, of nbytes.
func (c *Core) addKey(w WorkerID, id int32, nbytes int64) {
	ws := c.workers[w]
	ws.addKey(nbytes)
	ws.stored = append(ws.stored, id)
	if len(ws.stored) > 2*ws.nkeys+64 {
		c.pruneStored(w, ws)
	}
}

// storedOn is every task w holds a copy of, each once. (A worker's list is pruned of what it
// dropped when it is more than twice what it holds, so the cost stays proportional.)
func (c *Core) storedOn(w WorkerID) []int32 {
	ws := c.workers[w]
	c.pruneStored(w, ws)
	return ws.stored
}

func (c *Core) pruneStored(w WorkerID, ws *worker) {
	slices.Sort(ws.stored)
	ws.stored = slices.Compact(ws.stored)
	ws.stored = slices.DeleteFunc(ws.stored, func(id int32) bool {
		return id >= c.tasks.n || !slices.Contains(c.tasks.at(id).whoHas, w)
	})
}

func workerLabel(ws *worker) string {
	if ws.name != "" {
		return ws.name
	}
	return ws.addr
}

func (c *Core) killedWorker(id int32) *wire.Error {
	deaths := c.deaths[id]
	return wire.Errorf(wire.CodeKilledWorker, fmt.Sprintf(
		"task %q was running on %d workers (or their executors) that died: %s", c.key(id), len(deaths), strings.Join(deaths, ", ")))
}

// reschedule: a leaving worker hands back tasks it had not started; it gets no new ones.
func (c *Core) reschedule(e *EvReschedule) {
	ws := c.liveWorker(e.Worker)
	if ws == nil {
		return
	}
	ws.retiring = true
	c.updateSat(ws)
	for _, k := range e.Keys {
		if id, ok := c.lookup(k); ok && c.tasks.at(id).state == Processing && c.tasks.at(id).worker == e.Worker {
			c.processingToWaiting(id)
		}
	}
}

func (c *Core) heartbeat(e *EvHeartbeat) {
	if ws := c.liveWorker(e.Worker); ws != nil {
		ws.memory, ws.spilled, ws.executing, ws.ready, ws.lastSeen = e.Memory, e.Spilled, e.Executing, e.Ready, e.Now
		ws.asked = e.Asked
		recovered := ws.unhealthy != "" && e.Unhealthy == ""
		changed := ws.unhealthy != e.Unhealthy
		ws.unhealthy = e.Unhealthy
		if changed {
			c.updateSat(ws) // accepting() reads unhealthy: queued root tasks go (or not) by it
		}
		if recovered {
			c.retryNoWorker()
		}
	}
}

func (c *Core) taskFinished(e *EvTaskFinished) {
	ws := c.liveWorker(e.Worker)
	if ws == nil || c.staleRun(e.Worker, e.TaskID) {
		return // (a cancelled run's value is dropped already: a free now could cancel its next run)
	}
	id, ok := c.resolve(e.TaskID, e.Key)
	if !ok {
		c.freeKeyOn(e.Worker, e.Key) // a result nobody will ask for
		return
	}
	t := c.tasks.at(id)
	dur := int64(-1) // unknown unless the worker stamped the run
	if e.Stop > 0 && e.Stop >= e.Start {
		dur = e.Stop - e.Start
	}
	switch {
	case t.state == Processing && t.worker == e.Worker:
		c.processingToMemory(id, e.Worker, e.NBytes, e.Encoding, dur)
		c.hold(id, e.Holds)
	case c.welcome(id):
		c.toMemory(id, e.Worker, e.NBytes, e.Encoding, dur)
		c.hold(id, e.Holds)
	case t.state == Memory:
		c.addHolder(id, e.Worker) // it ran a task that had moved on: a valid replica
	}
	// Otherwise (released, erred) the report is stale: the core already told the worker to
	// drop the task, and a second free could cross a later, legitimate fetch of the key.
}

// welcome: a result arriving out of turn is still useful, because the task is needed and
// has no data (its data was lost, or it is being recomputed elsewhere).
func (c *Core) welcome(id int32) bool {
	switch c.tasks.at(id).state {
	case Waiting, Queued, NoWorker, Processing:
		return true
	}
	return false
}

func (c *Core) taskErred(e *EvTaskErred) {
	id, ok := c.resolve(e.TaskID, e.Key)
	if !ok || c.liveWorker(e.Worker) == nil || c.staleRun(e.Worker, e.TaskID) {
		return
	}
	t := c.tasks.at(id)
	if t.state != Processing || t.worker != e.Worker {
		return // stale
	}
	if e.Err != nil && e.Err.Code == wire.CodeExecutorDied {
		// The process running the task died (a crash, or killed over the memory limit): as a
		// dask worker's death, it makes the task suspicious and runs it again elsewhere, up to
		// KilledWorkerThreshold deaths; the user's retries are not spent on it.
		t.suspicious++
		c.deaths[id] = append(c.deaths[id], fmt.Sprintf("%s (%s)", workerLabel(c.workers[e.Worker]), e.Err.Message))
		if int(t.suspicious) >= c.cfg.KilledWorkerThreshold {
			c.processingToErred(id, c.killedWorker(id))
		} else {
			c.processingToWaiting(id)
		}
		return
	}
	if t.retries > 0 {
		t.retries--
		c.processingToWaiting(id)
		return
	}
	err := e.Err
	if err == nil {
		err = wire.Errorf(wire.CodeTaskError, "the task failed without an error")
	}
	c.processingToErred(id, err)
}

func (c *Core) addReplica(e *EvAddReplica) {
	if c.liveWorker(e.Worker) == nil {
		return
	}
	for _, it := range e.Items {
		id, ok := c.lookup(it.Key)
		switch {
		case !ok:
			c.freeKeyOn(e.Worker, it.Key)
		case c.tasks.at(id).state == Memory:
			c.tasks.at(id).fetchFails = 0 // it moves again
			c.addHolder(id, e.Worker)
			c.moved(id, e.Worker)
		case c.welcome(id):
			c.toMemory(id, e.Worker, it.NBytes, it.Encoding, -1)
		default:
			c.freeOn(e.Worker, id)
		}
	}
}

// missingData: Reporter could not fetch Key from From. From no longer counts as a holder;
// the tasks Reporter was to run with Key were dropped by it and are taken back.
func (c *Core) missingData(e *EvMissingData) {
	id, ok := c.lookup(e.Key)
	if !ok {
		return
	}
	t := c.tasks.at(id)
	if e.Cause != "" && t.fetchFails < 255 { // a transfer that failed, not a value gone (lineage)
		t.fetchFails++
	}
	if e.Cause != "" && int(t.fetchFails) >= c.cfg.FetchFailureLimit {
		// a value that cannot be moved (a peer that cannot be reached, a value that cannot
		// be sent) is not recomputed and fetched again forever: its consumers there fail
		err := wire.Errorf(wire.CodeFetchFailed, fmt.Sprintf("dependency %s could not be fetched after %d tries; last cause: %s",
			e.Key, t.fetchFails, cmp.Or(e.Cause, "unknown")))
		for _, ref := range t.dependents {
			if d, ok := c.dependent(ref); ok {
				if dt := c.tasks.at(d); dt.state == Processing && dt.worker == e.Reporter {
					c.processingToErred(d, err)
				}
			}
		}
		return
	}
	if t.state == Memory && e.From >= 0 && c.removeHolder(id, e.From) && len(t.whoHas) == 0 {
		c.lost(id)
	}
	for _, ref := range c.tasks.at(id).dependents {
		if d, ok := c.dependent(ref); ok {
			if dt := c.tasks.at(d); dt.state == Processing && dt.worker == e.Reporter {
				c.processingToWaiting(d)
			}
		}
	}
}

// longRunning: a processing task seceded (it waits on tasks it submitted): it keeps running
// there, but its thread is free, so it counts neither towards the worker's room for queued
// tasks nor its occupancy.
func (c *Core) longRunning(e *EvLongRunning) {
	id, ok := c.resolve(e.TaskID, e.Key)
	if !ok || c.liveWorker(e.Worker) == nil || c.staleRun(e.Worker, e.TaskID) {
		return
	}
	t := c.tasks.at(id)
	if t.state != Processing || t.worker != e.Worker || t.flags&flagSeceded != 0 {
		return
	}
	ws := c.workers[e.Worker]
	t.flags |= flagSeceded
	ws.seceded++
	ws.occupancy = max(ws.occupancy-float64(t.expDur), 0)
	c.updateSat(ws)
}

// holdClient is the pseudo-client that wants the keys results hold (futures a task returned):
// a key stays wanted while any result holding it is in memory.
const holdClient ClientID = 1<<31 - 2

// hold records that result id holds the futures keys (its task returned them); unknown keys
// are skipped (their holder in the task already let them go).
func (c *Core) hold(id int32, keys []string) {
	if len(keys) == 0 || c.tasks.at(id).state != Memory {
		return
	}
	c.unhold(id)
	var held []int32
	seen := make(map[int32]bool, len(keys))
	for _, k := range keys {
		hid, ok := c.lookup(k)
		if !ok || hid == id || seen[hid] {
			continue
		}
		seen[hid] = true
		held = append(held, hid)
		if c.heldBy[hid]++; c.heldBy[hid] == 1 {
			c.want(hid, holdClient)
		}
	}
	if len(held) > 0 {
		c.holds[id] = held
	}
}

// unhold lets go of what result id held.
func (c *Core) unhold(id int32) {
	held, ok := c.holds[id]
	if !ok {
		return
	}
	delete(c.holds, id)
	for _, hid := range held {
		n, ok := c.heldBy[hid]
		if !ok {
			continue // forgotten meanwhile (cancelled): its slot may hold another task now
		}
		if c.heldBy[hid] = n - 1; n > 1 {
			continue
		}
		delete(c.heldBy, hid)
		if c.dropWant(hid, holdClient) {
			c.gcq = append(c.gcq, hid)
		}
	}
}
