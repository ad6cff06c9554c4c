package scheduler

import (
	"math"
	"math/bits"
	"slices"

	"github.com/shoal-dev/shoal/graph"
)

// worker is the core's view of one registered worker.
type worker struct {
	id          WorkerID
	name, addr  string
	nthreads    int
	limit       int // processing tasks beyond which no queued root task is sent
	memoryLimit int64
	resources   map[string]float64
	used        map[string]float64
	funcs       map[string]struct{}
	processing  []int32
	occupancy   float64 // expected seconds of work assigned
	nbytes      int64
	nkeys       int
	memory      int64
	spilled     int64
	executing   int
	ready       int
	lastSeen    int64
	asked       int64 // ns: the heartbeat interval asked of it (EvHeartbeat.Asked)
	alive       bool
	seceded     int    // processing tasks that seceded: they take no thread
	retiring    bool   // handed back its tasks: gets no new ones
	unhealthy   string // why it cannot serve now (its last heartbeat said): gets no new tasks
	unsatPos    int32
	mark        uint64 // placement's visit stamp (Core.markGen)
	stealsIn    int
	stealsOut   int
	// stored lists the tasks this worker was recorded holding a copy of, so that its leaving
	// need not look at every task; ids it has dropped since may remain (Core.storedOn).
	stored []int32
	// fetchers are the workers given this one as a holder of a value (in a compute's or an
	// acquire's who_has): they may fetch from it, and keep connections to it. Once there are
	// more than maxFetchers, allFetchers is set instead (every worker then counts).
	fetchers    map[WorkerID]struct{}
	allFetchers bool
}

// busy is how many of its processing tasks take a thread (seceded ones do not).
func (w *worker) busy() int { return len(w.processing) - w.seceded }

func (w *worker) addKey(n int64)  { w.nbytes += n; w.nkeys++ }
func (w *worker) dropKey(n int64) { w.nbytes -= n; w.nkeys-- }

func (w *worker) accepting() bool { return w.alive && !w.retiring && w.unhealthy == "" }

// load is the expected time until a new task could start there, in seconds.
func (w *worker) load() float64 { return w.occupancy / float64(w.nthreads) }

// (Every range over a task's resources is guarded by their count: almost no task has any, and
// ranging over an empty map still starts an iterator, 4-7 ns, which placement paid for each
// worker it weighed.)
func (w *worker) hasFree(res map[string]float64) bool {
	if len(res) == 0 {
		return true
	}
	for k, v := range res {
		if w.resources[k]-w.used[k] < v {
			return false
		}
	}
	return true
}

// allowed: w satisfies t's restrictions, registers its Go function (when checkFunc), and
// has the capacity for its resources (free or not).
func (c *Core) allowed(w *worker, def *graph.Task, checkFunc bool) bool {
	if !w.accepting() {
		return false
	}
	if len(def.Workers) > 0 && !slices.Contains(def.Workers, w.name) && !slices.Contains(def.Workers, w.addr) {
		return false
	}
	if checkFunc {
		if _, ok := w.funcs[def.Func]; !ok {
			return false
		}
	}
	if len(def.Resources) == 0 {
		return true
	}
	for k, v := range def.Resources {
		if w.resources[k] < v {
			return false
		}
	}
	return true
}

// needFuncCheck: not every live worker registers def's Go function.
func (c *Core) needFuncCheck(def *graph.Task) bool {
	return def.Kind == graph.KindGo && c.funcCount[def.Func] != len(c.alive)
}

func (c *Core) anyAllowed(def *graph.Task) bool {
	check := c.needFuncCheck(def)
	for _, w := range c.alive {
		if c.allowed(c.workers[w], def, check) {
			return true
		}
	}
	return false
}

// missingBytes is what w would have to fetch to run t: the bytes, and how many inputs.
func (c *Core) missingBytes(t *task, w WorkerID) (n int64, inputs int) {
	for _, d := range t.deps {
		dt := c.tasks.at(d)
		if !slices.Contains(dt.whoHas, w) {
			n += dt.nbytes
			inputs++
		}
	}
	return n, inputs
}

// transferTime is how long w would take to fetch what t misses there: each input costs
// TransferLatency (a round trip to a peer, whatever the size) plus its bytes at Bandwidth.
func (c *Core) transferTime(t *task, w WorkerID) float64 {
	n, inputs := c.missingBytes(t, w)
	return float64(n)/c.cfg.Bandwidth + float64(inputs)*c.cfg.TransferLatency.Seconds()
}

func (c *Core) cost(t *task, w *worker) float64 {
	cost := w.load()
	if len(t.deps) > 0 {
		cost += c.transferTime(t, w.id)
	}
	return cost
}

// better reports whether a (at cost ca) is a better choice than b (at cost cb).
func better(a *worker, ca float64, b *worker, cb float64) bool {
	if b == nil || ca < cb {
		return true
	}
	return ca == cb && a.busy() < b.busy()
}

// decide picks the worker minimising expected start time plus transfer time among those
// allowed to run t with free resources; blocked reports that some allowed worker lacked
// free resources only. On a cluster larger than placeScan workers, a task without
// restrictions is weighed on the workers holding its inputs and placeScan others taken in
// turn, not on every worker (dask samples too): placement stays a few microseconds per task
// at 10,000 workers.
func (c *Core) decide(id int32) (w WorkerID, blocked bool) {
	t := c.tasks.at(id)
	check := c.needFuncCheck(t.def)
	var best *worker
	var bestCost float64
	consider := func(ws *worker) {
		if !c.allowed(ws, t.def, check) {
			return
		}
		if !ws.hasFree(t.def.Resources) {
			blocked = true
			return
		}
		if cost := c.cost(t, ws); better(ws, cost, best, bestCost) {
			best, bestCost = ws, cost
		}
	}
	if n := len(c.alive); n > placeScan && len(t.def.Resources) == 0 && len(t.def.Workers) == 0 {
		c.markGen++
		for _, d := range t.deps {
			for _, wid := range c.tasks.at(d).whoHas {
				if ws := c.liveWorker(wid); ws != nil && ws.mark != c.markGen {
					ws.mark = c.markGen
					consider(ws)
				}
			}
		}
		for i := range placeScan {
			if ws := c.workers[c.alive[(c.scanAt+i)%n]]; ws.mark != c.markGen {
				ws.mark = c.markGen
				consider(ws)
			}
		}
		c.scanAt = (c.scanAt + placeScan) % n
		if best != nil {
			return best.id, false
		}
		blocked = false // not found among the few: every worker is weighed
	}
	for _, wid := range c.alive {
		consider(c.workers[wid])
	}
	if best == nil {
		return -1, blocked
	}
	return best.id, false
}

// placeScan is how many workers placement weighs for a task beyond those holding its inputs.
const placeScan = 64

// rootish tasks are withheld in the queue and fed to workers as they free up: tasks with no
// dependencies, or members of a large group whose dependencies are a handful of tasks.
func (c *Core) rootish(t *task) bool {
	if math.IsInf(c.cfg.SaturationFactor, 1) || len(t.def.Workers) > 0 || len(t.def.Resources) > 0 {
		return false
	}
	if len(t.deps) == 0 {
		return true
	}
	g := &c.groups[t.group]
	if g.total <= 2*c.threads {
		return false
	}
	for _, d := range t.deps {
		if c.tasks.at(d).group == t.group {
			// a group's own dependencies are not in g.deps: a reduction whose levels share a
			// group name (tree-0-…, tree-1-…) would otherwise look like a group of roots,
			// and its inner tasks would be queued and placed by load, away from their inputs
			return false
		}
	}
	n := 0
	for _, d := range g.deps {
		n += c.groups[d].total
	}
	return n < 5
}

// place sends a ready waiting task on its way.
func (c *Core) place(id int32) {
	t := c.tasks.at(id)
	if c.rootish(t) {
		if len(c.alive) == 0 || c.anyAllowed(t.def) {
			c.waitingToQueued(id, false)
		} else {
			c.waitingToNoWorker(id)
		}
		return
	}
	switch w, blocked := c.decide(id); {
	case w >= 0:
		c.waitingToProcessing(id, w)
	case blocked:
		c.waitingToQueued(id, true)
	default:
		c.waitingToNoWorker(id)
	}
}

// flushReady places the tasks that became ready, in static order.
func (c *Core) flushReady() {
	if len(c.ready) == 0 {
		return
	}
	batch := c.ready
	c.ready = c.readySpare[:0]
	if !slices.IsSortedFunc(batch, c.byRank) {
		slices.SortFunc(batch, c.byRank)
	}
	for _, id := range batch {
		t := c.tasks.at(id)
		t.flags &^= flagReady
		if t.state == Waiting && t.waitingOn == 0 {
			c.place(id)
		}
	}
	c.readySpare = batch[:0]
}

func (c *Core) byRank(a, b int32) int {
	ra, rb := c.tasks.at(a).rank, c.tasks.at(b).rank
	switch {
	case ra < rb:
		return -1
	case ra > rb:
		return 1
	}
	return int(a - b)
}

// dispatchQueue feeds queued root tasks, best rank first, to workers that have room.
//
// When the queued tasks are known to be short (workers hold extra ones, CoreConfig.
// LatencyHiding), a worker gets them in blocks of consecutive tasks (blockFor), not one at a
// time as each of its slots frees up. Tasks next to each other in rank order are siblings whose
// results one dependent combines (the ranking is depth-first); fed one at a time, the queue
// goes to whichever worker finished last, which alternates between workers, and puts most
// pairs of siblings on two workers: measured on a tree reduction with 2 workers, 55–70 % of
// the tasks of every level then had to fetch an input from the other worker. Long tasks are
// still handed out one at a time: there, spreading them over idle threads matters more than
// where their results end up.
//
// One event hands out at most CoreConfig.DispatchBatch of them; when more could go it sets
// dispatchMore, and the driver comes back with EvDispatch.
func (c *Core) dispatchQueue() {
	c.refreshExtra()
	for c.queue.len() > 0 && len(c.unsat) > 0 {
		if c.dispatchLeft == 0 {
			c.dispatchMore = true // the driver comes back for the rest (EvDispatch)
			break
		}
		id := c.queue.top()
		if w := c.pickUnsat(id); w >= 0 {
			ws := c.workers[w]
			for n := c.blockFor(ws); n > 0 && c.dispatchLeft != 0 && c.queue.len() > 0 && ws.accepting() && c.rootRoom(ws) > 0; n-- {
				next := c.queue.top()
				if next != id && !c.allowed(ws, c.tasks.at(next).def, c.needFuncCheck(c.tasks.at(next).def)) {
					break
				}
				c.queuedToProcessing(next, w)
				c.dispatchLeft--
			}
			continue
		}
		if c.anyAllowed(c.tasks.at(id).def) {
			break // the workers that may run it are saturated: wait for them
		}
		c.queuedToNoWorker(id)
	}
	if c.resFreed {
		c.resFreed = false
		c.retryResources()
	}
}

// blockFor is how many consecutive queued tasks w is given at once: 1, or with latency hiding
// half its extra room, so that it asks again while it still holds the other half.
func (c *Core) blockFor(w *worker) int {
	return max(1, w.nthreads*c.extra/2)
}

// readyForQueued reports whether w may be given queued tasks now: it has room for a whole block (or
// for all that is queued), or its threads are about to run out of work.
func (c *Core) readyForQueued(w *worker) bool {
	return c.readyFor(w, min(c.blockFor(w), c.queue.len()))
}

// readyFor reports whether w may be given n queued tasks: it has room for them, or its threads
// are about to run out of work.
func (c *Core) readyFor(w *worker, n int) bool {
	return c.rootRoom(w) >= n || w.busy() < w.limit
}

// rootRoom is how many more queued root tasks w may hold: its limit plus the latency-hiding
// extra per thread, less what it is processing.
func (c *Core) rootRoom(w *worker) int {
	return w.limit + w.nthreads*c.extra - w.busy()
}

// pickUnsat picks, for a queued root task, the least loaded unsaturated worker that may run
// it; beyond placeScan of them, the best of placeScan taken in turn (more only when none of
// those may run it), or the first found with nothing to wait for.
func (c *Core) pickUnsat(id int32) WorkerID {
	t := c.tasks.at(id)
	check := c.needFuncCheck(t.def)
	var best *worker
	var bestCost float64
	n := len(c.unsat)
	sampled := n > placeScan
	start := 0
	if sampled {
		start = c.unsatAt % n
	}
	weighed := 0
	for i := range n {
		if i >= placeScan && best != nil {
			break
		}
		weighed = i + 1
		ws := c.workers[c.unsat[(start+i)%n]]
		if !c.readyForQueued(ws) || !c.allowed(ws, t.def, check) {
			continue
		}
		cost := c.cost(t, ws)
		if best == nil || cost < bestCost || cost == bestCost && ws.id < best.id {
			best, bestCost = ws, cost
		}
		if sampled && bestCost <= 0 {
			// Nothing waits there and nothing need move: no worker does better (in a
			// window that rotates, the lowest id among equals means nothing). At 10,000
			// workers, weighing placeScan of them for every block fed was 3 % of the
			// scheduler's CPU (docs/performance.md).
			break
		}
	}
	if sampled {
		c.unsatAt = start + min(weighed, placeScan) // the next window starts after those weighed
	}
	if best == nil {
		return -1
	}
	return best.id
}

// retryResources places tasks that were waiting for resources to be freed.
func (c *Core) retryResources() {
	if c.rqueue.len() == 0 {
		return
	}
	ids := c.rqueue.ids()
	slices.SortFunc(ids, c.byRank)
	for _, id := range ids {
		switch w, blocked := c.decide(id); {
		case w >= 0:
			c.queuedToProcessing(id, w)
		case !blocked:
			c.queuedToNoWorker(id)
		}
	}
}

// retryNoWorker gives tasks no worker could run another chance (a worker joined).
func (c *Core) retryNoWorker() {
	for len(c.noWorker) > 0 {
		c.noWorkerToWaiting(c.noWorker[len(c.noWorker)-1])
	}
}

// assign records that id runs on w and emits the compute action.
func (c *Core) assign(id int32, w WorkerID) {
	c.book(id, w)
	c.sendCompute(id, w)
}

// book records that id runs on w.
func (c *Core) book(id int32, w WorkerID) {
	t := c.tasks.at(id)
	ws := c.workers[w]
	t.worker = w
	t.pos = int32(len(ws.processing))
	ws.processing = append(ws.processing, id)
	d := c.expected(t.group)
	t.expDur = float32(d)
	ws.occupancy += float64(t.expDur)
	if len(t.def.Resources) > 0 { // see hasFree
		if ws.used == nil {
			ws.used = make(map[string]float64)
		}
		for k, v := range t.def.Resources {
			ws.used[k] += v
		}
	}
	c.updateSat(ws)
}

// sendCompute emits the compute action of id, booked on w, as its next run.
func (c *Core) sendCompute(id int32, w WorkerID) {
	t := c.tasks.at(id)
	c.runs++
	t.run = c.runs
	var deps []DepLoc
	if len(t.deps) > 0 {
		deps = c.depList(len(t.deps))
		for i, d := range t.deps {
			dt := c.tasks.at(d)
			deps[i] = DepLoc{Key: dt.key, Workers: dt.whoHas[:len(dt.whoHas):len(dt.whoHas)], NBytes: dt.nbytes}
			c.toldHolders(w, dt.whoHas)
		}
	}
	// a plain task goes out with its shared template (no graph.Task allocated per compute)
	c.emitCompute(ActCompute{Worker: w, Key: t.key, Task: t.def, Payload: t.payload, Group: c.namedGroup(id),
		TaskID: c.handle(id), Deps: deps, Order: t.rank, Keep: len(t.dependents) > 0})
}

// unassign removes a processing task from its worker.
func (c *Core) unassign(id int32) {
	t := c.tasks.at(id)
	ws := c.workers[t.worker]
	last := ws.processing[len(ws.processing)-1]
	ws.processing[t.pos] = last
	c.tasks.at(last).pos = t.pos
	ws.processing = ws.processing[:len(ws.processing)-1]
	if t.flags&flagSeceded != 0 {
		t.flags &^= flagSeceded
		ws.seceded-- // its expected duration left the occupancy when it seceded
	} else {
		ws.occupancy -= float64(t.expDur)
	}
	if len(ws.processing) == 0 || ws.occupancy < 0 {
		ws.occupancy = 0
	}
	if len(t.def.Resources) > 0 { // see hasFree
		for k, v := range t.def.Resources {
			ws.used[k] -= v
		}
		c.resFreed = true
	}
	if ws.stealsOut > 0 { // a lookup in steals per task was a cache miss with thousands of workers
		if thief, ok := c.steals[id]; ok {
			delete(c.steals, id)
			ws.stealsOut--
			c.workers[thief].stealsIn--
		}
	}
	t.worker, t.pos = -1, -1
	c.updateSat(ws)
}

// updateSat keeps w's membership of the unsaturated set in step: the accepting workers
// readyForQueued (whatever the queue's length), so that pickUnsat finds one among the first it
// looks at. With every worker that had any room in the set, a worker one short of a block's
// room stayed in it, not ready, and with 10,000 workers mostly in that state pickUnsat looked
// at all of them for each finished task (28 % of the scheduler's CPU).
func (c *Core) updateSat(w *worker) {
	want := w.accepting() && c.readyFor(w, c.blockFor(w))
	if in := w.unsatPos >= 0; want == in {
		return
	}
	if want {
		w.unsatPos = int32(len(c.unsat))
		c.unsat = append(c.unsat, w.id)
		return
	}
	last := c.unsat[len(c.unsat)-1]
	c.unsat[w.unsatPos] = last
	c.workers[last].unsatPos = w.unsatPos
	c.unsat = c.unsat[:len(c.unsat)-1]
	w.unsatPos = -1
}

func (c *Core) dequeue(id int32) {
	t := c.tasks.at(id)
	if t.flags&flagResQueue != 0 {
		t.flags &^= flagResQueue
		c.rqueue.take(t, id)
	} else {
		c.queue.take(t, id)
	}
}

func (c *Core) removeNoWorker(id int32) {
	t := c.tasks.at(id)
	last := c.noWorker[len(c.noWorker)-1]
	c.noWorker[t.pos] = last
	c.tasks.at(last).pos = t.pos
	c.noWorker = c.noWorker[:len(c.noWorker)-1]
	t.pos = -1
}

// freeOn tells w (later, batched per worker) to drop id.
func (c *Core) freeOn(w WorkerID, id int32) {
	if w >= 0 && c.workers[w].alive {
		c.freeBuf[w] = append(c.freeBuf[w], c.key(id))
	}
}

func (c *Core) freeKeyOn(w WorkerID, key string) {
	if w >= 0 && int(w) < len(c.workers) && c.workers[w] != nil && c.workers[w].alive {
		c.freeBuf[w] = append(c.freeBuf[w], key)
	}
}

func (c *Core) flushFrees() {
	if len(c.freeBuf) == 0 {
		return
	}
	ws := make([]WorkerID, 0, len(c.freeBuf))
	for w := range c.freeBuf {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	for _, w := range ws {
		c.out = append(c.out, ActFree{Worker: w, Keys: c.freeBuf[w]})
		delete(c.freeBuf, w)
	}
}

// taskHeap is the queue of tasks by rank: a 4-ary min-heap of queued task ids, and beside it
// a run of those pushed in rank order, as a large graph's root tasks arrive. An item carries
// its task's rank (which never changes while the task is queued), so sifting reads and moves
// the heap's own array and never a task record (each a cache miss in a large queue): four
// children to a node make a heap of 400,000 tasks 10 levels deep instead of a binary heap's
// 19, their items adjacent in the array (64 bytes), and a sift moves a hole rather than
// swapping pairs. The run is taken from its front, with no sift at all.
//
// A task taken out from anywhere but the top (released while queued, or placed out of rank
// order) is not found and moved: its item goes stale, and is dropped when it reaches the top,
// or when stale items are more than half of the queue. An item is live while its task is
// queued and its pos holds the item's ticket, a number given at each push and never to two
// items at once. (Binary, swapping, and keeping every queued task's index in its record,
// popping the queue was 8 % of the scheduler's time on no-op roots; BenchmarkTaskHeapRoots.)
//
// The run is a window of runBase, its array: taken from the front, it starts again at the
// array's start when it empties, and moves back there when it reaches the array's end with
// half of it free. (Appending to a slice taken from the front reallocated it at each end: a
// million roots made 108 MB of copies for 16 MB of items, and as much more for the collector.)
type taskHeap struct {
	c       *Core
	items   []heapItem // the heap
	run     []heapItem // in order: each pushed not before the one before it
	runBase []heapItem // run's array, from its start
	stale   int        // items whose task was taken out before reaching the top
}

// runKeep is the most items of array the run keeps once it is empty (1 MiB): a huge graph's
// queue is returned to the allocator after it.
const runKeep = 1 << 16

type heapItem struct {
	rank   int64
	id     int32
	ticket int32
}

// heapArity is the number of children of a node.
const heapArity = 4

// len is the number of tasks queued.
func (h *taskHeap) len() int { return len(h.items) + len(h.run) - h.stale }

// first is the item of the best rank (the queue is not empty), and whether it is the run's.
func (h *taskHeap) first() (*heapItem, bool) {
	if len(h.run) == 0 {
		return &h.items[0], false
	}
	if len(h.items) == 0 || h.run[0].before(&h.items[0]) {
		return &h.run[0], true
	}
	return &h.items[0], false
}

// top is the queued task of the best rank (the queue is not empty). The first item is always
// live: whatever takes an item out drops the stale ones that come first.
func (h *taskHeap) top() int32 {
	it, _ := h.first()
	return it.id
}

// before: a comes out of the queue before b (as byRank).
func (a *heapItem) before(b *heapItem) bool {
	return a.rank < b.rank || a.rank == b.rank && a.id < b.id
}

// live: it is its task's item (a task neither queued nor freed has pos, an index elsewhere,
// that may equal any ticket).
func (h *taskHeap) live(it *heapItem) bool {
	t := h.c.tasks.at(it.id)
	return t.pos == it.ticket && t.state == Queued
}

// ids returns the queued task ids, in no order.
func (h *taskHeap) ids() []int32 {
	out := make([]int32, 0, h.len())
	for _, items := range [][]heapItem{h.items, h.run} {
		for i := range items {
			if h.live(&items[i]) {
				out = append(out, items[i].id)
			}
		}
	}
	return out
}

// push queues id; its pos becomes the item's ticket.
func (h *taskHeap) push(id int32) {
	if h.c.tickets == math.MaxInt32 {
		h.c.renumberQueues()
	}
	t := h.c.tasks.at(id)
	t.pos = h.c.tickets
	h.c.tickets++
	it := heapItem{rank: t.rank, id: id, ticket: t.pos}
	if n := len(h.run); n == 0 || !it.before(&h.run[n-1]) {
		if n == cap(h.run) {
			h.growRun()
		}
		h.run = append(h.run, it)
		return
	}
	h.items = append(h.items, heapItem{})
	h.up(len(h.items)-1, it)
}

// take takes t, queued here, out of the queue: its pos no longer holds its item's ticket.
func (h *taskHeap) take(t *task, id int32) {
	first, inRun := h.first()
	atTop := first.id == id && first.ticket == t.pos
	t.pos = -1
	if atTop {
		h.pop(inRun)
	} else {
		h.stale++
		if h.stale > (len(h.items)+len(h.run))/2 && h.stale >= 1024 {
			h.compact()
		}
	}
	for len(h.items)+len(h.run) > 0 {
		first, inRun := h.first()
		if h.live(first) {
			break
		}
		h.stale--
		h.pop(inRun)
	}
}

// pop removes the first item, which is the run's when inRun (as first says).
func (h *taskHeap) pop(inRun bool) {
	if inRun {
		h.run[0] = heapItem{}
		h.run = h.run[1:]
		if len(h.run) == 0 {
			h.resetRun()
		}
		return
	}
	n := len(h.items) - 1
	last := h.items[n]
	h.items = h.items[:n]
	if n > 0 {
		h.down(0, last)
	}
}

// growRun makes room for one more item at the run's end: at the start of its array when
// half of that is free, else in an array twice the run's length.
func (h *taskHeap) growRun() {
	n := len(h.run)
	if n <= cap(h.runBase)/2 {
		copy(h.runBase[:n], h.run) // (they may overlap: copy moves)
		h.run = h.runBase[:n]
		return
	}
	h.runBase = make([]heapItem, n, max(2*n, 64))
	copy(h.runBase, h.run)
	h.run = h.runBase
}

// resetRun starts the empty run again at its array's start, or with no array when that is
// larger than runKeep.
func (h *taskHeap) resetRun() {
	if cap(h.runBase) > runKeep {
		h.runBase = nil
	}
	h.run = h.runBase[:0]
}

// compact drops every stale item and makes a heap of the heap's rest.
func (h *taskHeap) compact() {
	live := func(items []heapItem) []heapItem {
		kept := items[:0]
		for _, it := range items {
			if h.live(&it) {
				kept = append(kept, it)
			}
		}
		clear(items[len(kept):])
		return kept
	}
	h.items, h.run, h.stale = live(h.items), live(h.run), 0
	if len(h.items) < 2 {
		return
	}
	for i := (len(h.items) - 2) / heapArity; i >= 0; i-- {
		h.down(i, h.items[i])
	}
}

// renumberQueues gives the items of both queues tickets from 0 again, before the count of
// tickets overflows; stale items go.
func (c *Core) renumberQueues() {
	c.tickets = 0
	for _, h := range []*taskHeap{&c.queue, &c.rqueue} {
		h.compact()
		for _, items := range [][]heapItem{h.items, h.run} {
			for i := range items {
				items[i].ticket = c.tickets
				c.tasks.at(items[i].id).pos = c.tickets
				c.tickets++
			}
		}
	}
}

// up fills the hole at i with it, moving the parents it comes before down.
func (h *taskHeap) up(i int, it heapItem) {
	for i > 0 {
		p := (i - 1) / heapArity
		if !it.before(&h.items[p]) {
			break
		}
		h.items[i] = h.items[p]
		i = p
	}
	h.items[i] = it
}

// down fills the hole at i with it, moving the least children that come before it up.
func (h *taskHeap) down(i int, it heapItem) {
	n := len(h.items)
	for {
		first := heapArity*i + 1
		if first >= n {
			break
		}
		m := first
		for c := first + 1; c < min(first+heapArity, n); c++ {
			if h.items[c].before(&h.items[m]) {
				m = c
			}
		}
		if !h.items[m].before(&it) {
			break
		}
		h.items[i] = h.items[m]
		i = m
	}
	h.items[i] = it
}

// refreshExtra recomputes how many extra root tasks per thread a worker may hold (see
// CoreConfig.LatencyHiding), from the learned duration and result size of the group at the
// head of the queue. It is rounded down to a power of two so that it rarely changes.
func (c *Core) refreshExtra() {
	e := 0
	if c.cfg.LatencyHiding > 0 && c.queue.len() > 0 {
		g := &c.groups[c.tasks.at(c.queue.top()).group]
		if g.ndur > 0 && g.nsize > 0 {
			e = int(c.cfg.LatencyHiding.Seconds() / max(g.dur, 1e-7))
			if g.size > 0 {
				e = min(e, int(float64(c.cfg.RootBytesPerThread)/g.size))
			}
			e = min(e, maxExtraPerThread)
			if e > 0 {
				e = 1 << (bits.Len(uint(e)) - 1)
			}
		}
	}
	if e == c.extra {
		return
	}
	c.extra = e
	for _, id := range c.alive {
		c.updateSat(c.workers[id])
	}
}

// maxExtraPerThread bounds latency hiding whatever the measurements say. It matters only for
// groups of tasks under 8 µs (LatencyHiding's 2 ms / 256), and for those it also sets the
// block a worker is given at once (half of it): every block boundary in a reduction's rank
// order is a pair of siblings on two workers, one transfer at every level above it. At 64
// (blocks of 32), the million-task tree of benchmarks/million.py made 14,700 transfers per
// worker and its `runs` batches averaged 40 runs; at 256, 4,700 and 58, and the graph took
// 16.1–19.1 s against 20.4–23.2 (docs/performance.md, "the root blocks"). Memory stays bounded
// by RootBytesPerThread.
const maxExtraPerThread = 256
