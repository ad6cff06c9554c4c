package scheduler

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/mem"
	"github.com/shoal-dev/shoal/internal/wire"
)

// CoreConfig tunes the scheduling policy. Start from DefaultCoreConfig.
type CoreConfig struct {
	// SaturationFactor bounds root-task queueing: a worker is sent root tasks only while it
	// has fewer than ceil(nthreads × SaturationFactor) tasks processing. +Inf disables
	// queueing (every ready task goes straight to a worker).
	SaturationFactor float64
	// StealInterval is the least time between two stealing rounds (EvTick.Now); 0 steals on
	// every tick. Stealing is off when DisableStealing is set.
	StealInterval   time.Duration
	DisableStealing bool
	// Bandwidth is the assumed transfer rate between workers, bytes per second.
	Bandwidth float64
	// TransferLatency is the assumed fixed cost of fetching one input from a peer, however
	// small: a request and its answer through both workers. Placement weighs it against how
	// long a task would wait on a busier worker, so a tiny task goes where its inputs are
	// unless that worker is behind by more than this per missing input.
	TransferLatency time.Duration
	// UnknownDuration is the expected run time of a task whose group has never finished.
	UnknownDuration time.Duration
	// DurationWeight is the weight of a new measurement in a group's moving average (0, 1].
	DurationWeight float64
	// KilledWorkerThreshold: a task that was processing on this many workers that died is
	// failed with code killed-worker instead of being retried again.
	KilledWorkerThreshold int
	// FetchFailureLimit: after this many failed transfers of a task's result in a row
	// (missing_data with a cause, none moved in between), the tasks that needed it there are failed with code fetch-failed and
	// the last cause, instead of recomputing and fetching it again forever.
	FetchFailureLimit int
	// StoryLength is how many transitions are kept per task (1…255).
	StoryLength int
	// LatencyHiding lets workers hold extra queued root tasks when a group's tasks are known
	// to be short: enough to cover this much work per thread, so a thread never idles for a
	// round trip to the scheduler between two tiny tasks. 0 disables it.
	LatencyHiding time.Duration
	// RootBytesPerThread caps that extra: the expected result bytes of the extra root tasks
	// one thread may hold (memory stays bounded however fast the tasks are).
	RootBytesPerThread int64
	// HeartbeatTimeout: a worker whose last heartbeat (EvHeartbeat.Now) is older than this at
	// a tick is removed (ActRemoveWorker). 0 disables the check.
	HeartbeatTimeout time.Duration
	// DispatchBatch is the most queued root tasks one event hands to workers; 0 is no limit.
	// When more could go, DispatchPending reports it and the driver handles EvDispatch, after
	// performing this event's actions and writing them out, for the next batch. Without it,
	// the first task to finish in a graph of a million tiny tasks on 10,000 workers (each then
	// given room for 257) made one event of a million computes: its actions and their slabs
	// were fresh memory at once, and the driver handled nothing else until it was done. (The
	// bound is per event: the other events of a driver's pass each have their own.)
	DispatchBatch int
}

// DefaultCoreConfig returns the defaults.
func DefaultCoreConfig() CoreConfig {
	return CoreConfig{
		SaturationFactor:      1.1,
		StealInterval:         100 * time.Millisecond,
		Bandwidth:             1e9,
		TransferLatency:       time.Millisecond,
		UnknownDuration:       500 * time.Millisecond,
		DurationWeight:        0.5,
		KilledWorkerThreshold: 3,
		FetchFailureLimit:     5,
		StoryLength:           16,
		LatencyHiding:         2 * time.Millisecond,
		RootBytesPerThread:    32 << 20,
		HeartbeatTimeout:      30 * time.Second,
		DispatchBatch:         slabKeep * slabChunk, // what the compute slab keeps between events
	}
}

// Validate reports the first bad value.
func (c CoreConfig) Validate() error {
	switch {
	case !(c.SaturationFactor > 0):
		return fmt.Errorf("scheduler: SaturationFactor %v must be > 0 (+Inf disables queueing)", c.SaturationFactor)
	case c.DispatchBatch < 0:
		return fmt.Errorf("scheduler: DispatchBatch %d must be >= 0 (0: no limit)", c.DispatchBatch)
	case c.StealInterval < 0:
		return fmt.Errorf("scheduler: StealInterval %v must not be negative", c.StealInterval)
	case c.HeartbeatTimeout < 0:
		return fmt.Errorf("scheduler: HeartbeatTimeout %v must not be negative", c.HeartbeatTimeout)
	case c.TransferLatency < 0:
		return fmt.Errorf("scheduler: TransferLatency %v must not be negative", c.TransferLatency)
	case !(c.Bandwidth > 0) || math.IsInf(c.Bandwidth, 0):
		return fmt.Errorf("scheduler: Bandwidth %v must be a positive number of bytes per second", c.Bandwidth)
	case c.UnknownDuration <= 0:
		return fmt.Errorf("scheduler: UnknownDuration %v must be positive", c.UnknownDuration)
	case !(c.DurationWeight > 0 && c.DurationWeight <= 1):
		return fmt.Errorf("scheduler: DurationWeight %v must be in (0, 1]", c.DurationWeight)
	case c.FetchFailureLimit < 1 || c.FetchFailureLimit > 255:
		return fmt.Errorf("scheduler: FetchFailureLimit %d must be in 1…255", c.FetchFailureLimit)
	case c.KilledWorkerThreshold < 1:
		return fmt.Errorf("scheduler: KilledWorkerThreshold %d must be at least 1", c.KilledWorkerThreshold)
	case c.StoryLength < 1 || c.StoryLength > 255:
		return fmt.Errorf("scheduler: StoryLength %d must be in 1…255", c.StoryLength)
	}
	return nil
}

// task flags.
const (
	flagScattered uint8 = 1 << iota // put by a client: no definition, cannot be recomputed
	flagResQueue                    // queued for resources (in Core.rqueue, not Core.queue)
	flagReady                       // in Core.ready (dedup)
	flagPlain                       // def is a shared template: only Kind and Func are set (plain)
	flagSeceded                     // processing, but seceded from its worker's thread (long-running)
	flagGroup                       // a plain task whose definition named its group (its group's name)
)

// task is the compact per-task record; Core.tasks is indexed by task id.
type task struct {
	key string
	// def is the definition. A plain task (a key, a kind, a function, a payload, dependencies
	// and a group, as most tasks of large graphs and every dask task are) shares a template
	// holding only Kind and Func (flagPlain), keeps its payload below, its dependencies as deps
	// and its group as group (flagGroup: named by the definition), so that the batch it came
	// in (a graph.Task of 176 bytes and a string per dependency) is not kept alive; its compute
	// carries the template, the key, the payload, the group and the dependencies' keys.
	// Scattered data has the empty template.
	def        *graph.Task
	payload    []byte     // a plain task's payload (def.Payload otherwise)
	deps       []int32    // dependency ids (immutable)
	dependents []uint64   // gen<<32 | id; entries of forgotten tasks are stale (gen differs)
	whoHas     []WorkerID // copy-on-write: never modified in place, so actions may share it
	err        *wire.Error
	rank       int64 // static priority, lower first
	nbytes     int64
	duration   int64 // last measured run time, ns
	group      int32
	worker     WorkerID // processing on, or -1
	pos        int32    // index in the container that holds it (queue, worker, noWorker)
	waitingOn  int32    // dependencies not in memory (state waiting)
	needers    int32    // dependents in an active state
	live       int32    // dependents not forgotten
	want       ClientID // first client wanting it, or -1 (more in Core.wantMore)
	gen        uint32
	run        uint32  // the run number of its last compute (Core.runs): its handle's high half
	expDur     float32 // expected duration when it was assigned, seconds
	retries    uint16
	state      State
	suspicious uint8
	fetchFails uint8 // missing_data reports for its result (CoreConfig.FetchFailureLimit)
	flags      uint8
	enc        uint8
	storyHead  uint8
	storyLen   uint8
}

// Core is the sans-IO scheduler state machine. All methods must be called from one
// goroutine; see the package documentation.
type Core struct {
	cfg      CoreConfig
	storyCap int // story entries kept per task (CoreConfig.StoryLength)
	extra    int // extra root tasks per thread a worker may hold (latency hiding)

	tasks taskSlots
	index keyIndex // key → id
	free  []int32
	story [][]uint64 // pages of storyPage tasks × storyCap entries: never copied as tasks are added

	groups   []group
	groupIdx map[string]int32

	templates map[template]*graph.Task // shared definitions of plain tasks
	lastTmpl  *graph.Task

	workers []*worker // by WorkerID; nil if never joined
	alive   []WorkerID
	unsat   []WorkerID // alive, accepting workers with room for queued root tasks
	// placement's rotating windows over alive and unsat workers, and its visit stamp
	scanAt, unsatAt int
	markGen         uint64
	funcCount       map[string]int
	threads         int
	encodings       []string
	encIdx          map[string]uint8
	queue           taskHeap // root tasks withheld
	rqueue          taskHeap // tasks waiting for resources
	tickets         int32    // the next ticket of an item pushed on queue or rqueue
	noWorker        []int32
	steals          map[int32]WorkerID // task → thief, while a steal request is in flight
	wantMore        map[int32][]ClientID
	deaths          map[int32][]string   // task → "worker (reason)" for each death while it ran
	moves           map[int32]move       // rebalance: value → its move, until the receiver has it
	holds           map[int32][]int32    // result → the keys of the futures it holds (returned by its task)
	heldBy          map[int32]int32      // key → how many results hold it
	acquires        map[WorkerID][]int32 // copies asked for in this event, sent by flushAcquires
	acqPending      map[acqKey]bool
	acqBytes        map[WorkerID]int64
	counts          [NumStates]int
	orderBase       int64
	lastSteal       int64
	stealTicks      bool
	// runs numbers the computes sent; cancelled holds the handles of the last cancelKeep runs
	// cancelled on their workers (processingToReleased) and the worker of each, in the
	// order cancelRing gives for eviction
	runs       uint32
	cancelled  map[uint64]WorkerID
	cancelRing []uint64
	cancelAt   int

	// per event
	seq          uint64
	evCode       uint8
	dispatchLeft int  // queued root tasks this event may still hand out (DispatchBatch; <0: any)
	dispatchMore bool // the last event stopped at DispatchBatch with more to hand out
	out          []Action
	computes     slab[ActCompute] // emitted by pointer (actslab.go)
	deps         []DepLoc         // the arena of the computes' dependency lists (depList)
	thieves      []*worker        // stealRound's lists, reused
	victims      []*worker
	rebookAt     int // the victim whose load stealRound re-books first (rebookLoads)
	keyStates    slab[ActKeyState]
	ready        []int32
	readySpare   []int32
	resFreed     bool
	gcq          []int32
	needq        []int32
	batchIDs     []int32 // update_graph: the id of each task of the batch
	freeBuf      map[WorkerID][]string

	transitions uint64
}

// NewCore returns an empty core. It panics if cfg does not Validate.
func NewCore(cfg CoreConfig) *Core {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	c := &Core{
		cfg:        cfg,
		storyCap:   cfg.StoryLength,
		index:      newKeyIndex(),
		groupIdx:   make(map[string]int32),
		templates:  make(map[template]*graph.Task),
		funcCount:  make(map[string]int),
		encIdx:     map[string]uint8{"": 0},
		encodings:  []string{""},
		steals:     make(map[int32]WorkerID),
		wantMore:   make(map[int32][]ClientID),
		deaths:     make(map[int32][]string),
		moves:      make(map[int32]move),
		holds:      make(map[int32][]int32),
		heldBy:     make(map[int32]int32),
		acquires:   make(map[WorkerID][]int32),
		acqPending: make(map[acqKey]bool),
		acqBytes:   make(map[WorkerID]int64),
		freeBuf:    make(map[WorkerID][]string),
	}
	c.queue.c, c.rqueue.c = c, c
	return c
}

// Handle applies one event and appends the resulting actions to out, which it returns.
// Actions may share memory with the core (slices of keys and workers, task definitions);
// the driver must treat them as read-only and should perform them before the next Handle.
func (c *Core) Handle(ev Event, out []Action) []Action {
	c.seq++
	c.out = out
	c.dispatchLeft, c.dispatchMore = c.cfg.DispatchBatch, false
	if c.dispatchLeft == 0 {
		c.dispatchLeft = -1
	}
	switch e := ev.(type) {
	case EvWorkerJoined:
		c.evCode = evWorkerJoined
		c.workerJoined(&e)
	case EvWorkersJoined:
		c.evCode = evWorkerJoined
		for i := range e.Joins {
			c.workerJoined(&e.Joins[i])
		}
	case EvWorkerLeft:
		c.evCode = evWorkerLeft
		c.workerLeft(&e)
	case EvClientJoined:
		c.evCode = evClientJoined
	case EvClientLeft:
		c.evCode = evClientLeft
		c.clientLeft(e.Client)
	case EvUpdateGraph:
		c.evCode = evUpdateGraph
		c.updateGraph(&e)
	case EvWanted:
		c.evCode = evWanted
		c.wanted(e.Client, e.Keys)
	case EvReleaseKeys:
		c.evCode = evReleaseKeys
		c.releaseKeys(e.Client, e.Keys)
	case EvCancelKeys:
		c.evCode = evCancelKeys
		c.cancelKeys(e.Client, e.Keys)
	case EvScattered:
		c.evCode = evScattered
		c.scattered(&e)
	case EvTaskFinished:
		c.evCode = evTaskFinished
		c.taskFinished(&e)
	case *EvTaskFinished: // the driver's, reused: no allocation per finished task
		c.evCode = evTaskFinished
		c.taskFinished(e)
	case EvTaskErred:
		c.evCode = evTaskErred
		c.taskErred(&e)
	case EvAddReplica:
		c.evCode = evAddReplica
		c.addReplica(&e)
	case EvMissingData:
		c.evCode = evMissingData
		c.missingData(&e)
	case EvStealResponse:
		c.evCode = evStealResponse
		c.stealResponse(&e)
	case EvReschedule:
		c.evCode = evReschedule
		c.reschedule(&e)
	case EvHeartbeat:
		c.evCode = evHeartbeat
		c.heartbeat(&e)
	case EvTick:
		c.evCode = evTick
		c.tick(e.Now)
	case EvRestart:
		c.evCode = evRestart
		c.restart(e.Reason)
	case EvRetire:
		c.evCode = evRetire
		c.retire(e.Workers)
	case EvReplicate:
		c.evCode = evReplicate
		c.replicate(e.Keys, e.N)
	case EvRebalance:
		c.evCode = evRebalance
		c.rebalance(e.Keys)
	case EvLongRunning:
		c.evCode = evLongRunning
		c.longRunning(&e)
	case EvDispatch:
		c.evCode = evDispatch // settle below hands out the next batch
	default:
		panic(fmt.Sprintf("scheduler: unknown event %T", ev))
	}
	c.settle()
	out, c.out = c.out, nil
	return out
}

// DispatchPending reports whether the last event stopped handing queued root tasks to
// workers at DispatchBatch while more could go: the driver should handle EvDispatch once it
// has performed that event's actions (and may serve other events first).
func (c *Core) DispatchPending() bool { return c.dispatchMore }

// settle runs the deferred work of an event: compute what became needed, release what is
// no longer needed, place what became ready, feed queued root tasks, send the frees.
func (c *Core) settle() {
	for len(c.needq) > 0 || len(c.gcq) > 0 || len(c.ready) > 0 {
		c.flushNeed()
		c.flushGC()
		c.flushReady()
	}
	c.dispatchQueue()
	c.flushFrees()
}

// ---- interning ----

// taskSlots holds the task slots in pages of taskPage, never copied as tasks are added: a
// growing slice was copied as a large graph arrived in batches, and each copy landed in fresh
// memory the kernel had to zero (with 10,000 workers, 10 % of the scheduler's CPU was that
// zeroing under the copy). A slot's id is its index across the pages.
type taskSlots struct {
	pages [][]task
	n     int32 // slots in use, the last page's unused ones after them
}

// taskPage is how many task slots share one allocation (a few hundred KB).
const (
	taskPageBits = 11
	taskPage     = 1 << taskPageBits
)

// at returns slot id (< n).
func (s *taskSlots) at(id int32) *task {
	u := uint32(id)
	return &s.pages[u>>taskPageBits][u&(taskPage-1)]
}

// add appends a zero slot and returns its id.
func (s *taskSlots) add() int32 {
	id := s.n
	if int(id)/taskPage == len(s.pages) {
		page := make([]task, taskPage)
		mem.Fresh(page) // its slots' pointer fields are written through the write barrier
		s.pages = append(s.pages, page)
	}
	s.n++
	return id
}

// storyPage is how many tasks' stories share one allocation.
const storyPage = 4096

// template is what a plain task's definition holds.
type template struct {
	kind graph.Kind
	fn   string
}

// plain reports whether def has nothing but a key, a kind, a function, a payload, a group and
// dependencies named in Deps: what a task's slot, deps and group hold without def.
func plain(def *graph.Task) bool {
	return len(def.Args) == 0 && def.Priority == 0 && def.Retries == 0 && len(def.Resources) == 0 &&
		len(def.Workers) == 0
}

// templateOf returns the shared definition of plain tasks of def's kind and function.
func (c *Core) templateOf(kind graph.Kind, fn string) *graph.Task {
	if t := c.lastTmpl; t != nil && t.Kind == kind && t.Func == fn {
		return t
	}
	k := template{kind, fn}
	t, ok := c.templates[k]
	if !ok {
		t = &graph.Task{Kind: kind, Func: fn}
		c.templates[k] = t
	}
	c.lastTmpl = t
	return t
}

// fullDef returns id's definition as a graph.Task (a new one for a plain task).
func (c *Core) fullDef(id int32) *graph.Task {
	t := c.tasks.at(id)
	if t.flags&flagPlain == 0 {
		return t.def
	}
	return &graph.Task{Key: t.key, Kind: t.def.Kind, Func: t.def.Func, Payload: t.payload, Deps: c.depKeys(nil, id),
		Group: c.namedGroup(id)}
}

// namedGroup is the group a plain task's definition named, or "" (its key names it).
func (c *Core) namedGroup(id int32) string {
	if t := c.tasks.at(id); t.flags&flagGroup != 0 {
		return c.groups[t.group].name
	}
	return ""
}

// depKeys appends the keys of id's dependencies, in the order of its definition, to out (nil
// for none).
func (c *Core) depKeys(out []string, id int32) []string {
	for _, d := range c.tasks.at(id).deps {
		out = append(out, c.tasks.at(d).key)
	}
	return out
}

// newTask interns key with definition def (a template when isPlain, with the task's payload
// and whether its definition named its group), in state released.
func (c *Core) newTask(key string, def *graph.Task, payload []byte, isPlain, named bool, group int32) int32 {
	var id int32
	if n := len(c.free); n > 0 {
		id = c.free[n-1]
		c.free = c.free[:n-1]
		gen := c.tasks.at(id).gen + 1
		*c.tasks.at(id) = task{gen: gen}
	} else {
		id = c.tasks.add()
		if int(id)/storyPage >= len(c.story) {
			c.story = append(c.story, make([]uint64, storyPage*c.storyCap))
		}
	}
	t := c.tasks.at(id)
	t.key, t.def, t.group, t.worker, t.want, t.pos = key, def, group, -1, -1, -1
	if isPlain {
		t.flags |= flagPlain
		t.payload = payload
		if named {
			t.flags |= flagGroup
		}
	}
	t.retries = uint16(min(def.Retries, math.MaxUint16))
	c.indexAdd(key, id)
	c.counts[Released]++
	c.groups[group].counts[Released]++
	c.groups[group].total++
	c.groups[group].added++
	return id
}

func (c *Core) key(id int32) string { return c.tasks.at(id).key }

// handle is the task handle sent in compute: its run number and id+1, never 0. A worker
// echoes it in task_finished, so the core finds the task without hashing its key, and a
// report of a run the core cancelled is told from one of the task's next run.
func (c *Core) handle(id int32) uint64 {
	return uint64(c.tasks.at(id).run)<<32 | uint64(uint32(id)+1)
}

// cancelKeep is how many cancelled runs the core remembers: a report of one is stale only
// while it may still be on its way, the time a free_keys takes to reach the worker.
const cancelKeep = 4096

// noteCancelled remembers that run h was cancelled on worker w: w was told to drop it.
func (c *Core) noteCancelled(h uint64, w WorkerID) {
	if c.cancelled == nil {
		c.cancelled = make(map[uint64]WorkerID)
	}
	if len(c.cancelRing) < cancelKeep {
		c.cancelRing = append(c.cancelRing, h)
	} else {
		delete(c.cancelled, c.cancelRing[c.cancelAt])
		c.cancelRing[c.cancelAt] = h
		c.cancelAt = (c.cancelAt + 1) % cancelKeep
	}
	c.cancelled[h] = w
}

// staleRun reports whether worker w's report with handle h is of a run the core cancelled
// there. The worker sent it before it got the free_keys, and has dropped the value since; if
// the task was submitted again meanwhile and given to the same worker, the report would be
// taken for the new run's (dask's run_id serves the same end).
func (c *Core) staleRun(w WorkerID, h uint64) bool {
	if len(c.cancelled) == 0 || h == 0 {
		return false
	}
	cw, ok := c.cancelled[h]
	if !ok || cw != w {
		return false
	}
	// never the run the task has on w now (run numbers wrap after 2^32 computes, and an old
	// cancellation stays remembered until cancelKeep others follow)
	if id, ok := c.byHandle(h); ok {
		if t := c.tasks.at(id); t.state == Processing && t.worker == w {
			return false
		}
	}
	return true
}

// byHandle is the slot handle h names, when that slot's last run is h's.
func (c *Core) byHandle(h uint64) (int32, bool) {
	if lo := uint32(h); lo != 0 && lo <= uint32(c.tasks.n) {
		if id := int32(lo - 1); c.tasks.at(id).run == uint32(h>>32) {
			return id, true
		}
	}
	return 0, false
}

// resolve finds the task of a worker's report: by its handle when the handle still names a
// live task with that key and its last run (the key check guards against a foreign handle),
// by the key otherwise.
func (c *Core) resolve(h uint64, key string) (int32, bool) {
	if id, ok := c.byHandle(h); ok {
		if t := c.tasks.at(id); t.state != Forgotten && t.key == key {
			return id, true
		}
	}
	return c.lookup(key)
}

func (c *Core) encoding(s string) uint8 {
	if i, ok := c.encIdx[s]; ok {
		return i
	}
	if len(c.encodings) == 255 {
		return 0
	}
	c.encodings = append(c.encodings, s)
	c.encIdx[s] = uint8(len(c.encodings) - 1)
	return uint8(len(c.encodings) - 1)
}

// dependent resolves a dependents entry; ok is false when that task was forgotten.
func (c *Core) dependent(ref uint64) (int32, bool) {
	id := int32(uint32(ref))
	return id, c.tasks.at(id).gen == uint32(ref>>32) && c.tasks.at(id).state != Forgotten
}

func depRef(t *task, id int32) uint64 { return uint64(t.gen)<<32 | uint64(uint32(id)) }

// ---- the one place a state changes ----

// setState moves id from → to. It panics with IllegalTransition when the edge is not in the
// state machine or the task is not in from. It keeps the counters, the story and the
// dependencies' needers in step.
func (c *Core) setState(id int32, from, to State) {
	t := c.tasks.at(id)
	if t.state != from || !legal[from][to] {
		panic(IllegalTransition{Key: t.key, From: t.state, To: to})
	}
	t.state = to
	c.counts[from]--
	c.counts[to]++
	g := &c.groups[t.group]
	g.counts[from]--
	g.counts[to]++
	c.transitions++
	c.record(id, from, to)
	if from == Memory && len(c.holds) > 0 {
		c.unhold(id) // its result, which held futures, is gone
	}
	switch {
	case !from.active() && to.active():
		for _, d := range t.deps {
			c.tasks.at(d).needers++
		}
	case from.active() && !to.active():
		for _, d := range t.deps {
			dt := c.tasks.at(d)
			if dt.needers--; dt.needers == 0 {
				c.gcq = append(c.gcq, d)
			}
		}
	}
}

func (c *Core) record(id int32, from, to State) {
	t := c.tasks.at(id)
	base := int(id) % storyPage * c.storyCap
	c.story[id/storyPage][base+int(t.storyHead)] = packStory(c.seq, c.evCode, from, to)
	t.storyHead = uint8((int(t.storyHead) + 1) % c.storyCap)
	if int(t.storyLen) < c.storyCap {
		t.storyLen++
	}
}

func (c *Core) storyOf(id int32) []Story {
	t := c.tasks.at(id)
	out := make([]Story, 0, t.storyLen)
	start := (int(t.storyHead) - int(t.storyLen) + c.storyCap) % c.storyCap
	for i := range int(t.storyLen) {
		out = append(out, unpackStory(c.story[id/storyPage][int(id)%storyPage*c.storyCap+(start+i)%c.storyCap]))
	}
	return out
}

// ---- wants ----

func (c *Core) addWant(id int32, cl ClientID) {
	t := c.tasks.at(id)
	switch {
	case t.want < 0:
		t.want = cl
	case t.want == cl:
	default:
		if !slices.Contains(c.wantMore[id], cl) {
			c.wantMore[id] = append(c.wantMore[id], cl)
		}
	}
}

// dropWant removes cl's want; it reports whether cl wanted id.
func (c *Core) dropWant(id int32, cl ClientID) bool {
	t := c.tasks.at(id)
	more := c.wantMore[id]
	if t.want == cl {
		if len(more) == 0 {
			t.want = -1
			return true
		}
		t.want, more = more[0], more[1:]
	} else if i := slices.Index(more, cl); i >= 0 {
		more = slices.Delete(slices.Clone(more), i, i+1)
	} else {
		return false
	}
	if len(more) == 0 {
		delete(c.wantMore, id)
	} else {
		c.wantMore[id] = more
	}
	return true
}

// wanters calls fn for every client wanting id.
func (c *Core) wanters(id int32, fn func(ClientID)) {
	if w := c.tasks.at(id).want; w >= 0 {
		fn(w)
		for _, cl := range c.wantMore[id] {
			fn(cl)
		}
	}
}

// needed: a client wants it or an active dependent will read it.
func (c *Core) needed(id int32) bool {
	t := c.tasks.at(id)
	return t.want >= 0 || t.needers > 0
}

// ---- garbage collection ----

// flushGC releases tasks nobody needs any more and forgets released tasks nothing refers to.
func (c *Core) flushGC() {
	if len(c.gcq) == 0 {
		return
	}
	for len(c.gcq) > 0 {
		id := c.gcq[len(c.gcq)-1]
		c.gcq = c.gcq[:len(c.gcq)-1]
		c.collect(id)
	}
	if int(c.tasks.n) >= shrinkAbove && c.NTasks() == 0 {
		c.dropTaskStorage()
	}
}

// shrinkAbove: once every task is forgotten, task storage of at least this many slots is
// given back (a million-task graph left ~385 MB of slices behind: slots, stories, index).
const shrinkAbove = 1 << 16

// dropTaskStorage frees the slices of task slots, stories and the key index when no task is
// left; the next graph starts them small again. Task groups (durations learned) are kept.
// A handle (tid) from before may name a slot again: resolve checks the key as well.
func (c *Core) dropTaskStorage() {
	c.tasks, c.free, c.story = taskSlots{}, nil, nil
	for _, ws := range c.workers {
		if ws != nil {
			ws.stored = nil // ids of slots no longer there
		}
	}
	c.index = newKeyIndex()
	clear(c.steals)
	clear(c.wantMore)
	clear(c.deaths)
	clear(c.moves)
	clear(c.holds)
	clear(c.heldBy)
	clear(c.acqPending)
	c.queue, c.rqueue, c.tickets = taskHeap{c: c}, taskHeap{c: c}, 0
	c.noWorker, c.ready, c.readySpare, c.gcq, c.needq, c.batchIDs = nil, nil, nil, nil, nil, nil
}

func (c *Core) collect(id int32) {
	t := c.tasks.at(id)
	if t.state == Forgotten || c.needed(id) {
		return
	}
	switch t.state {
	case Memory:
		c.memoryToReleased(id, true)
	case Waiting:
		c.waitingToReleased(id)
	case Queued:
		c.queuedToReleased(id)
	case NoWorker:
		c.noWorkerToReleased(id)
	case Processing:
		c.processingToReleased(id)
	case Erred:
		c.erredToReleased(id)
	}
	if t.state == Released && t.live == 0 {
		c.releasedToForgotten(id)
	}
}

// ---- errors ----

func fromGraphError(err error) *wire.Error {
	var ge *graph.Error
	if errors.As(err, &ge) {
		return wire.Errorf(ge.Code, ge.Message)
	}
	return wire.Errorf(wire.CodeInvalidTask, err.Error())
}
