package scheduler

import (
	"maps"
	"slices"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// Introspection. These are called by the driver on the goroutine that owns the core (the
// dashboard and /metrics go through it); none changes state. All are O(answer), except
// Groups, which is O(groups).

// GroupStats summarises one task group.
type GroupStats struct {
	Name         string
	States       [NumStates]int // tasks per state (Forgotten is always 0)
	Total        int            // tasks not forgotten
	Added        int            // tasks ever added to the group
	Done         int            // tasks of the group that ever finished
	NBytes       int64          // bytes in memory, one copy per task
	MeanDuration time.Duration  // moving average of run times; 0 when none finished yet
	Dependencies []string       // names of the groups this group depends on
}

// TaskInfo describes one task.
type TaskInfo struct {
	Key         string
	Group       string
	State       State
	Worker      WorkerID // processing on, or -1
	WorkerName  string
	WhoHas      []WorkerID
	Deps        []DepInfo
	Dependents  int // dependents not forgotten
	NBytes      int64
	Encoding    string
	Duration    time.Duration // last measured run time
	RetriesLeft int
	Suspicious  int // workers that died while it ran
	Wanted      int // clients holding a future to it
	Order       int64
	Scattered   bool
	Err         *wire.Error
	Story       []Story // oldest first, at most CoreConfig.StoryLength
}

// DepInfo is one dependency of a task.
type DepInfo struct {
	Key    string
	State  State
	NBytes int64
}

// WorkerStats describes one live worker.
type WorkerStats struct {
	ID          WorkerID
	Name        string
	Addr        string
	NThreads    int
	Processing  int
	Occupancy   time.Duration // expected work assigned, summed over threads
	Memory      int64         // last heartbeat
	MemoryLimit int64
	Spilled     int64
	NBytes      int64 // bytes of the keys the core believes it holds
	NKeys       int
	Executing   int
	Ready       int
	LastSeen    int64 // EvHeartbeat.Now of the last heartbeat
	Retiring    bool
	Unhealthy   string // why its last heartbeat said it cannot serve, if it did
	Resources   map[string]float64
}

// Stats are cumulative counters and sizes.
type Stats struct {
	Events      uint64 // events handled
	Transitions uint64
	TasksAlive  int // tasks not forgotten
	Queued      int // root tasks withheld
	NoWorker    int
	Stealing    int // steal requests in flight
	Workers     int // live workers
	Threads     int
	Groups      int
}

// Counts returns the number of tasks in each state (Forgotten counts every task forgotten
// since the start).
func (c *Core) Counts() [NumStates]int { return c.counts }

// Groups returns every group that has tasks, in creation order.
func (c *Core) Groups() []GroupStats { return c.RecentGroups(0, false) }

// RecentGroups returns the last n groups (all when n <= 0) in creation order; with finished,
// groups whose tasks are all forgotten are included too (a finished graph's progress).
func (c *Core) RecentGroups(n int, finished bool) []GroupStats {
	first := 0
	if n > 0 {
		first = max(0, len(c.groups)-n)
	}
	out := make([]GroupStats, 0, len(c.groups)-first)
	for i := first; i < len(c.groups); i++ {
		g := &c.groups[i]
		if g.total == 0 && (!finished || g.added == 0) {
			continue
		}
		gs := GroupStats{Name: g.name, States: g.counts, Total: g.total, Added: g.added, Done: g.done, NBytes: g.nbytes}
		gs.States[Forgotten] = 0
		if g.ndur > 0 {
			gs.MeanDuration = time.Duration(g.dur * 1e9)
		}
		for _, d := range g.deps {
			gs.Dependencies = append(gs.Dependencies, c.groups[d].name)
		}
		out = append(out, gs)
	}
	return out
}

// TaskInfo describes the task named key.
func (c *Core) TaskInfo(key string) (TaskInfo, bool) {
	id, ok := c.lookup(key)
	if !ok {
		return TaskInfo{}, false
	}
	t := c.tasks.at(id)
	ti := TaskInfo{Key: key, Group: c.groups[t.group].name, State: t.state, Worker: t.worker,
		WhoHas: slices.Clone(t.whoHas), Dependents: int(t.live), NBytes: t.nbytes,
		Encoding: c.encodings[t.enc], Duration: time.Duration(t.duration), RetriesLeft: int(t.retries),
		Suspicious: int(t.suspicious), Order: t.rank, Scattered: t.flags&flagScattered != 0,
		Err: t.err, Story: c.storyOf(id)}
	if t.worker >= 0 {
		ti.WorkerName = c.workers[t.worker].name
	}
	c.wanters(id, func(ClientID) { ti.Wanted++ })
	for _, d := range t.deps {
		dt := c.tasks.at(d)
		ti.Deps = append(ti.Deps, DepInfo{Key: dt.key, State: dt.state, NBytes: dt.nbytes})
	}
	return ti, true
}

// State returns the state of key; Forgotten when it is not known.
func (c *Core) State(key string) State {
	if id, ok := c.lookup(key); ok {
		return c.tasks.at(id).state
	}
	return Forgotten
}

// WhoHas returns the workers holding key's result (nil when none).
func (c *Core) WhoHas(key string) []WorkerID {
	if id, ok := c.lookup(key); ok {
		return slices.Clone(c.tasks.at(id).whoHas)
	}
	return nil
}

// Workers describes the live workers, by id.
func (c *Core) Workers() []WorkerStats {
	out := make([]WorkerStats, 0, len(c.alive))
	for _, wid := range c.alive {
		w := c.workers[wid]
		out = append(out, WorkerStats{ID: w.id, Name: w.name, Addr: w.addr, NThreads: w.nthreads,
			Processing: len(w.processing), Occupancy: time.Duration(w.occupancy * 1e9),
			Memory: w.memory, MemoryLimit: w.memoryLimit, Spilled: w.spilled, NBytes: w.nbytes,
			NKeys: w.nkeys, Executing: w.executing, Ready: w.ready, LastSeen: w.lastSeen,
			Retiring: w.retiring, Unhealthy: w.unhealthy, Resources: maps.Clone(w.resources)})
	}
	return out
}

// Stats returns the core's counters.
func (c *Core) Stats() Stats {
	return Stats{Events: c.seq, Transitions: c.transitions, TasksAlive: c.index.n,
		Queued: c.queue.len() + c.rqueue.len(), NoWorker: len(c.noWorker), Stealing: len(c.steals),
		Workers: len(c.alive), Threads: c.threads, Groups: len(c.groupIdx)}
}

// Processing returns the keys processing on worker w (for tests and debugging).
func (c *Core) Processing(w WorkerID) []string {
	ws := c.liveWorker(w)
	if ws == nil {
		return nil
	}
	out := make([]string, len(ws.processing))
	for i, id := range ws.processing {
		out[i] = c.key(id)
	}
	slices.Sort(out)
	return out
}

// PendingWork is the work not yet done: tasks waiting, queued, without a worker or processing,
// and their expected run time in seconds (each group's mean, or UnknownDuration), which an
// adaptive cluster sizes itself by (dask's adaptive_target).
func (c *Core) PendingWork() (tasks int, seconds float64) {
	for i := range c.groups {
		g := &c.groups[i]
		n := g.counts[Waiting] + g.counts[Queued] + g.counts[NoWorker] + g.counts[Processing]
		tasks += n
		seconds += float64(n) * c.expected(int32(i))
	}
	return tasks, seconds
}

// WantedBy returns the keys client cl wants.
func (c *Core) WantedBy(cl ClientID) []string {
	var out []string
	for id := range c.tasks.n {
		t := c.tasks.at(id)
		if t.state == Forgotten || t.want < 0 {
			continue
		}
		if t.want == cl || slices.Contains(c.wantMore[int32(id)], cl) {
			out = append(out, t.key)
		}
	}
	return out
}

// Snapshot calls task for every task the core still knows (not forgotten), dependencies
// before their dependents, with its definition, and want for every (client, key) want. A
// scheduler that replays the tasks as one graph and then the wants is in the same state as
// far as clients can tell (the journal's compaction). Scattered values have no definition and
// are not reported.
func (c *Core) Snapshot(task func(def *graph.Task), want func(cl ClientID, key string)) {
	done := make([]bool, int(c.tasks.n))
	type frame struct{ id, next int32 } // next: the index of the dependency to visit next
	var stack []frame
	for root := range c.tasks.n {
		if c.tasks.at(root).state == Forgotten || done[root] {
			continue
		}
		done[root] = true
		stack = append(stack[:0], frame{id: int32(root)})
		for len(stack) > 0 { // iterative: a long chain must not exhaust the stack
			top := &stack[len(stack)-1]
			t := c.tasks.at(top.id)
			if int(top.next) < len(t.deps) {
				d := t.deps[top.next]
				top.next++
				if !done[d] {
					done[d] = true
					stack = append(stack, frame{id: d})
				}
				continue
			}
			if t.flags&flagScattered == 0 {
				task(c.fullDef(top.id))
			}
			stack = stack[:len(stack)-1]
		}
	}
	for id := range c.tasks.n {
		t := c.tasks.at(id)
		if t.state != Forgotten {
			c.wanters(int32(id), func(cl ClientID) { want(cl, t.key) })
		}
	}
}

// NTasks is how many tasks the core knows (not forgotten).
func (c *Core) NTasks() int {
	n := 0
	for s, k := range c.counts {
		if State(s) != Forgotten {
			n += k
		}
	}
	return n
}
