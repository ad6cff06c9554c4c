package scheduler

import (
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// TestMetamorphic runs random graphs on an in-memory fake cluster with random worker
// counts, message interleavings, transient task failures (within the tasks' retries),
// worker deaths, graceful leaves and joins, and stealing. Whatever the schedule, every
// wanted key must end in memory with the value a sequential evaluation gives, and the core
// must never make an illegal transition (which panics).
var metaSeeds = flag.Int("seeds", 300, "TestMetamorphic: number of random schedules")

func TestMetamorphic(t *testing.T) {
	seeds := *metaSeeds
	if testing.Short() {
		seeds = 40
	}
	var missing, deaths, tasks, stealing, dispatches, seconds, rewants, seceded, cancels int
	defer func() {
		t.Logf("%d graphs, %d tasks, %d worker losses, %d inputs missing, %d graphs with steals in flight, %d pending batches dispatched, "+
			"%d second clients, %d results asked for again, %d tasks seceded, %d keys cancelled",
			seeds, tasks, deaths, missing, stealing, dispatches, seconds, rewants, seceded, cancels)
		if !t.Failed() && seeds >= 40 && dispatches == 0 {
			t.Errorf("no graph left a batch of queued tasks pending (DispatchBatch): that path went untested")
		}
		if !t.Failed() && seeds >= 40 && (seconds == 0 || rewants == 0 || seceded == 0 || cancels == 0) {
			t.Errorf("a client step or secession never happened: that path went untested")
		}
	}()
	for seed := range seeds {
		fc := newFakeCluster(t, uint64(seed))
		defer func() {
			missing, deaths, tasks = missing+fc.missing, deaths+fc.deaths, tasks+len(fc.tasks)
			dispatches += fc.dispatches
			seconds, rewants, seceded = seconds+min(fc.second+1, 1), rewants+fc.rewants, seceded+fc.seceded
			cancels += fc.cancels
			stealing += min(fc.stealing, 1)
		}()
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("seed %d: panic: %v", seed, p)
				}
			}()
			fc.run()
		}()
		if t.Failed() {
			return
		}
	}
}

type fakeWorker struct {
	id     WorkerID
	store  map[string]uint64
	queue  []ActCompute // received, not started
	inbox  []Action     // scheduler → worker, in order
	outbox []Event      // worker → scheduler, in order
}

type fakeCluster struct {
	t       *testing.T
	seed    uint64
	r       *rand.Rand
	c       *Core
	workers map[WorkerID]*fakeWorker
	next    WorkerID
	tasks   []graph.Task
	wanted  []string
	ref     map[string]uint64
	fails   map[string]int
	client  map[string]string // last key-state per wanted key
	// a second client submits a prefix of the graph and wants its last task (second: its
	// index, -1 before), then perhaps drops it (secondGone); client2 is its key-states
	second     int
	secondGone bool
	client2    map[string]string
	rewants    int  // wanted keys the first client dropped and asked for again
	noEcho     bool // the workers report tasks by key alone, not echoing their handles
	seceded    int  // tasks that seceded while running (EvLongRunning)
	cancels    int  // wanted keys the first client cancelled (they, and what depends on them and is not done, end "cancelled")
	deaths     int
	missing    int
	// stealing is the most steals the core had in flight at once
	stealing int
	// dispatches counts the EvDispatch events handled for a batch left pending
	dispatches int
	trace      func(dir string, v any)
	acts       []Action
}

func newFakeCluster(t *testing.T, seed uint64) *fakeCluster {
	r := rand.New(rand.NewPCG(seed, 99))
	cfg := DefaultCoreConfig()
	cfg.KilledWorkerThreshold = 1 << 20
	cfg.StealInterval = 0
	if r.IntN(3) == 0 {
		cfg.SaturationFactor = 1 + r.Float64()
	}
	if r.IntN(3) == 0 {
		cfg.DispatchBatch = 1 + r.IntN(4) // the driver comes back for the rest (EvDispatch)
	}
	fc := &fakeCluster{t: t, seed: seed, r: r, c: NewCore(cfg), workers: map[WorkerID]*fakeWorker{},
		ref: map[string]uint64{}, fails: map[string]int{}, client: map[string]string{}, client2: map[string]string{},
		second: -1, noEcho: r.IntN(4) == 0}
	n := 1 + r.IntN(60)
	for i := range n {
		task := graph.Task{Key: fmt.Sprintf("t%d-%x", i%5, i), Kind: graph.KindGo, Func: "h", Retries: r.IntN(3)}
		// half the tasks name their inputs in Deps (repeating some), with a payload, as dask's
		// do (plain ones when they have no retries: the core keeps no graph.Task of theirs),
		// half in Args
		byDeps := r.IntN(2) == 0
		if byDeps {
			task.Kind, task.Payload = graph.KindPy, []byte(strconv.Itoa(r.IntN(3)))
			if r.IntN(2) == 0 {
				task.Group = "g" + strconv.Itoa(r.IntN(3))
			}
		}
		for range r.IntN(4) {
			if i > 0 {
				d := fc.tasks[r.IntN(i)].Key
				switch {
				case byDeps:
					task.Deps = append(task.Deps, d) // repeats too
				case !slices.ContainsFunc(task.Args, func(a graph.Arg) bool { return a.Ref == d }):
					task.Args = append(task.Args, graph.Ref(d))
				}
			}
		}
		if !byDeps && r.IntN(4) == 0 {
			task.Args = append(task.Args, graph.Lit(int64(i)))
		}
		fc.tasks = append(fc.tasks, task)
		fc.ref[task.Key] = value(&task, fc.ref)
	}
	used := map[string]bool{}
	for i := range fc.tasks {
		for _, d := range graph.Deps(&fc.tasks[i]) {
			used[d] = true
		}
	}
	for _, task := range fc.tasks {
		if !used[task.Key] || r.IntN(4) == 0 {
			fc.wanted = append(fc.wanted, task.Key)
		}
	}
	return fc
}

// checkWaiting: after every event, a waiting task waits for exactly its dependencies not in
// memory, counted as often as its definition names them (a count too many is a task that
// never runs; too few, one that runs without its inputs).
func (fc *fakeCluster) checkWaiting(ev Event) {
	for i := range fc.tasks {
		id, ok := fc.c.lookup(fc.tasks[i].Key)
		if !ok || fc.c.tasks.at(id).state != Waiting {
			continue
		}
		t, n := fc.c.tasks.at(id), int32(0)
		for _, d := range t.deps {
			if fc.c.tasks.at(d).state != Memory {
				n++
			}
		}
		if t.waitingOn != n {
			fc.t.Fatalf("seed %d: after %T, %s waits for %d inputs, but %d are not in memory", fc.seed, ev, t.key, t.waitingOn, n)
		}
	}
}

// value is what a task computes: a hash of its key, its payload, its group and its inputs'
// values.
func value(task *graph.Task, vals map[string]uint64) uint64 {
	h := fnv.New64a()
	h.Write([]byte(task.Key))
	h.Write(task.Payload)
	h.Write([]byte(task.Group))
	for _, d := range graph.Deps(task) {
		h.Write([]byte(strconv.FormatUint(vals[d], 16)))
	}
	return h.Sum64()
}

func (fc *fakeCluster) handle(ev Event) {
	if fc.trace != nil {
		fc.trace("in ", ev)
	}
	fc.acts = fc.c.Handle(ev, fc.acts[:0])
	fc.checkDispatch(ev)
	fc.checkWaiting(ev)
	for _, a := range fc.acts {
		if fc.trace != nil {
			fc.trace("out", a)
		}
		switch a := a.(type) {
		case *ActCompute:
			fc.toWorker(a.Worker, a)
		case ActFree:
			fc.toWorker(a.Worker, a)
		case ActSteal:
			fc.toWorker(a.Victim, a)
		case *ActKeyState:
			if a.State != "memory" && (a.State != "cancelled" || fc.cancels == 0) {
				fc.t.Fatalf("seed %d: key %s is %s: %v", fc.seed, a.Key, a.State, a.Err)
			}
			if a.Client == 2 {
				fc.client2[a.Key] = a.State
			} else {
				fc.client[a.Key] = a.State
			}
		case ActGraphRejected:
			fc.t.Fatalf("seed %d: graph rejected: %v", fc.seed, a.Err)
		}
	}
}

func (fc *fakeCluster) toWorker(w WorkerID, a Action) {
	if fw := fc.workers[w]; fw != nil {
		fw.inbox = append(fw.inbox, a)
	}
}

func (fc *fakeCluster) addWorker() {
	id := fc.next
	fc.next++
	fc.workers[id] = &fakeWorker{id: id, store: map[string]uint64{}}
	fc.handle(EvWorkerJoined{Worker: id, Name: fmt.Sprint("w", id), Addr: fmt.Sprint("w", id, ":1"),
		NThreads: 1 + fc.r.IntN(3), Functions: []string{"h"}})
}

func (fc *fakeCluster) pick() *fakeWorker {
	ids := make([]WorkerID, 0, len(fc.workers))
	for id := range fc.workers {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	return fc.workers[ids[fc.r.IntN(len(ids))]]
}

func (fc *fakeCluster) run() {
	for range 1 + fc.r.IntN(4) {
		fc.addWorker()
	}
	fc.handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: fc.tasks, Wanted: fc.wanted})
	for step := 0; ; step++ {
		if step > 200000 {
			fc.t.Fatalf("seed %d: no progress after %d steps; counts %v", fc.seed, step, fc.c.Counts())
		}
		if fc.done() {
			break
		}
		fc.step()
		fc.checkSteals()
		fc.stealing = max(fc.stealing, len(fc.c.steals))
	}
	fc.check()
}

func (fc *fakeCluster) done() bool {
	for _, w := range fc.workers {
		if len(w.inbox)+len(w.outbox)+len(w.queue) > 0 {
			return false
		}
	}
	for _, k := range fc.live() {
		if fc.client[k] != "memory" || fc.c.State(k) != Memory {
			return false
		}
	}
	if k, ok := fc.secondKey(); ok && (fc.client2[k] != "memory" || fc.c.State(k) != Memory) {
		return false
	}
	return true
}

// live is the first client's wanted keys that were not cancelled (it was told so).
func (fc *fakeCluster) live() []string {
	if fc.cancels == 0 {
		return fc.wanted
	}
	var out []string
	for _, k := range fc.wanted {
		if fc.client[k] != "cancelled" {
			out = append(out, k)
		}
	}
	return out
}

// secondKey is the key the second client holds a future for, if any.
// inFlight reports whether a worker has a compute of key queued or on its way, or a report of
// it on its way back.
func (fc *fakeCluster) inFlight(key string) bool {
	for _, w := range fc.workers {
		if slices.ContainsFunc(w.queue, func(q ActCompute) bool { return q.Key == key }) {
			return true
		}
		for _, a := range w.inbox {
			if ac, ok := a.(*ActCompute); ok && ac.Key == key {
				return true
			}
		}
		for _, ev := range w.outbox {
			switch ev := ev.(type) {
			case EvTaskFinished:
				if ev.Key == key {
					return true
				}
			case EvTaskErred:
				if ev.Key == key {
					return true
				}
			}
		}
	}
	return false
}

func (fc *fakeCluster) echo(ac ActCompute) uint64 {
	if fc.noEcho {
		return 0
	}
	return ac.TaskID
}

func (fc *fakeCluster) secondKey() (string, bool) {
	if fc.second < 0 || fc.secondGone || fc.client2[fc.tasks[fc.second].Key] == "cancelled" {
		return "", false
	}
	return fc.tasks[fc.second].Key, true
}

// clientStep is what clients do besides the first graph: a second client submits part of it
// (every task already known, compared with its definition) and may drop its future; the first
// drops a future and asks for it again, as a user recomputing a result.
func (fc *fakeCluster) clientStep() {
	switch fc.r.IntN(4) {
	case 3: // the first client cancels a key: it and what depends on it and is not done end
		if fc.cancels < 2 {
			fc.cancels++
			fc.handle(EvCancelKeys{Client: 1, Keys: []string{fc.wanted[fc.r.IntN(len(fc.wanted))]}})
		}
	case 0:
		if fc.second >= 0 {
			return
		}
		fc.second = fc.r.IntN(len(fc.tasks))
		fc.handle(EvUpdateGraph{Client: 2, ID: 2, Tasks: slices.Clone(fc.tasks[:fc.second+1]),
			Wanted: []string{fc.tasks[fc.second].Key}})
	case 1:
		if k, ok := fc.secondKey(); ok {
			fc.secondGone = true
			fc.handle(EvReleaseKeys{Client: 2, Keys: []string{k}})
		}
	case 2:
		// (a result still being computed too: its worker may report the run the release
		// cancelled after the new one was given to it, which must not count for the new one;
		// only a worker that echoes the handles tells them apart)
		// (but not while a worker still has a compute of it or a report on the way: a
		// free_keys crossing those is the known race of docs/architecture.md, "Known limits";
		// the cancelled run's report, which the core does tell apart, has its own test,
		// TestAReportOfACancelledRunDoesNotCountForTheNext)
		k := fc.wanted[fc.r.IntN(len(fc.wanted))]
		if fc.rewants >= 3 || fc.inFlight(k) {
			return
		}
		fc.rewants++
		j := slices.IndexFunc(fc.tasks, func(t graph.Task) bool { return t.Key == k })
		fc.handle(EvReleaseKeys{Client: 1, Keys: []string{k}})
		delete(fc.client, k)
		fc.handle(EvUpdateGraph{Client: 1, ID: uint64(3 + fc.rewants), Tasks: slices.Clone(fc.tasks[:j+1]), Wanted: []string{k}})
	}
}

func (fc *fakeCluster) step() {
	if fc.c.DispatchPending() && fc.r.IntN(4) == 0 {
		// the server serves a pending batch in turn with what arrives meanwhile
		fc.dispatches++
		fc.handle(EvDispatch{})
		return
	}
	if fc.r.IntN(50) == 0 {
		fc.clientStep()
		return
	}
	w := fc.pick()
	if w == nil {
		fc.addWorker()
		return
	}
	switch x := fc.r.IntN(100); {
	case x < 30:
		fc.deliverIn(w)
	case x < 60:
		fc.runTask(w)
	case x < 90:
		if len(w.outbox) > 0 {
			ev := w.outbox[0]
			w.outbox = w.outbox[1:]
			fc.handle(ev)
		}
	case x < 92 && fc.deaths < 6:
		fc.deaths++
		delete(fc.workers, w.id)
		fc.handle(EvWorkerLeft{Worker: w.id, Reason: "signal: killed"})
	case x < 93 && fc.deaths < 6:
		fc.deaths++
		for _, ev := range w.outbox {
			fc.handle(ev)
		}
		w.outbox = nil
		var keys []string
		for _, q := range w.queue {
			keys = append(keys, q.Key)
		}
		fc.handle(EvReschedule{Worker: w.id, Keys: keys})
		delete(fc.workers, w.id)
		fc.handle(EvWorkerLeft{Worker: w.id, Reason: "goodbye", Graceful: true})
	case x < 95 && len(fc.workers) < 6:
		fc.addWorker()
	default:
		fc.handle(EvTick{Now: int64(fc.r.IntN(1 << 30))})
	}
}

func (fc *fakeCluster) deliverIn(w *fakeWorker) {
	if len(w.inbox) == 0 {
		return
	}
	a := w.inbox[0]
	w.inbox = w.inbox[1:]
	if fc.trace != nil {
		fc.trace(fmt.Sprintf("w%d got", w.id), a)
	}
	switch a := a.(type) {
	case *ActCompute:
		w.queue = slices.DeleteFunc(w.queue, func(q ActCompute) bool { return q.Key == a.Key })
		w.queue = append(w.queue, *a)
	case ActFree:
		for _, k := range a.Keys {
			delete(w.store, k)
			w.queue = slices.DeleteFunc(w.queue, func(q ActCompute) bool { return q.Key == k })
		}
	case ActSteal:
		i := slices.IndexFunc(w.queue, func(q ActCompute) bool { return q.Key == a.Key })
		if i >= 0 {
			w.queue = slices.Delete(w.queue, i, i+1)
		}
		w.outbox = append(w.outbox, EvStealResponse{Worker: w.id, Key: a.Key, Accepted: i >= 0})
	}
}

// runTask runs one queued task on w: fetch inputs from the holders the compute message
// named, then succeed or fail transiently. An input it cannot fetch is reported missing and
// the task is dropped.
func (fc *fakeCluster) runTask(w *fakeWorker) {
	if len(w.queue) == 0 {
		return
	}
	i := fc.r.IntN(len(w.queue))
	ac := w.queue[i]
	def := *ac.Task
	if def.Key == "" { // a plain task's shared template: the compute carries the rest, as on the wire
		def.Key, def.Payload, def.Group = ac.Key, ac.Payload, ac.Group
		for _, d := range ac.Deps {
			def.Deps = append(def.Deps, d.Key)
		}
	}
	task := &def
	w.queue = slices.Delete(w.queue, i, i+1)
	vals := map[string]uint64{}
	for _, dep := range ac.Deps {
		d := dep.Key
		if v, ok := w.store[d]; ok {
			vals[d] = v
			continue
		}
		got := false
		for _, h := range dep.Workers {
			if hw := fc.workers[h]; hw != nil {
				if v, ok := hw.store[d]; ok {
					vals[d], got = v, true
					w.store[d] = v
					w.outbox = append(w.outbox, EvAddReplica{Worker: w.id, Items: []wire.Item{{Key: d, NBytes: 8}}})
					break
				}
			}
			w.outbox = append(w.outbox, EvMissingData{Reporter: w.id, Key: d, From: h})
		}
		if !got {
			fc.missing++
			return // dropped
		}
	}
	if fc.fails[task.Key] < task.Retries && fc.r.IntN(3) == 0 {
		fc.fails[task.Key]++
		w.outbox = append(w.outbox, EvTaskErred{Worker: w.id, Key: task.Key, TaskID: fc.echo(ac), Err: wire.Errorf(wire.CodeTaskError, "transient")})
		return
	}
	if fc.r.IntN(8) == 0 { // it seceded while it ran (it waited on tasks it submitted)
		fc.seceded++
		w.outbox = append(w.outbox, EvLongRunning{Worker: w.id, Key: task.Key, TaskID: fc.echo(ac)})
	}
	w.store[task.Key] = value(task, vals)
	w.outbox = append(w.outbox, EvTaskFinished{Worker: w.id, Key: task.Key, TaskID: fc.echo(ac), NBytes: 8,
		Encoding: "msgpack", Stop: 1000})
}

func (fc *fakeCluster) check() {
	for _, w := range fc.workers {
		for k, v := range w.store {
			if fc.ref[k] != v {
				fc.t.Fatalf("seed %d: worker %d holds %s = %x, want %x", fc.seed, w.id, k, v, fc.ref[k])
			}
		}
	}
	wanted := fc.live()
	if k, ok := fc.secondKey(); ok {
		wanted = append(slices.Clone(wanted), k)
	}
	for _, k := range wanted {
		if s := fc.c.State(k); s != Memory {
			fc.t.Fatalf("seed %d: wanted %s is %s", fc.seed, k, s)
		}
		holders := fc.c.WhoHas(k)
		if len(holders) == 0 {
			fc.t.Fatalf("seed %d: wanted %s has no holder", fc.seed, k)
		}
		for _, h := range holders {
			hw := fc.workers[h]
			if hw == nil {
				fc.t.Fatalf("seed %d: %s said to be on dead worker %d", fc.seed, k, h)
			}
			if v, ok := hw.store[k]; !ok || v != fc.ref[k] {
				fc.t.Fatalf("seed %d: %s on worker %d: %x %v, want %x", fc.seed, k, h, v, ok, fc.ref[k])
			}
		}
	}
	fc.checkSteals()
	fc.handle(EvReleaseKeys{Client: 1, Keys: fc.wanted})
	if k, ok := fc.secondKey(); ok {
		fc.handle(EvReleaseKeys{Client: 2, Keys: []string{k}})
	}
	if st := fc.c.Stats(); st.TasksAlive != 0 {
		fc.t.Fatalf("seed %d: %d tasks alive after releasing everything", fc.seed, st.TasksAlive)
	}
	fc.checkSteals()
}

// checkDispatch: no event leaves a queued task that a worker could take now without a batch
// pending (EvDispatch would then never come, and the task would wait for an unrelated event),
// and EvDispatch hands out a whole batch whenever it leaves more pending.
func (fc *fakeCluster) checkDispatch(ev Event) {
	c := fc.c
	if !c.DispatchPending() && c.queue.len() > 0 && len(c.unsat) > 0 {
		if w := c.pickUnsat(c.queue.top()); w >= 0 {
			fc.t.Fatalf("seed %d: after %T, %d tasks are queued and worker %d could take the first, but no batch is pending",
				fc.seed, ev, c.queue.len(), w)
		}
	}
	if _, ok := ev.(EvDispatch); ok && c.DispatchPending() {
		n := 0
		for _, a := range fc.acts {
			if _, ok := a.(*ActCompute); ok {
				n++
			}
		}
		if n != c.cfg.DispatchBatch {
			fc.t.Fatalf("seed %d: EvDispatch handed out %d queued tasks and left more pending; its batch is %d",
				fc.seed, n, c.cfg.DispatchBatch)
		}
	}
}

// checkSteals: each worker's counts of steals in flight match the core's table of them, which
// unassign trusts (it looks a task up there only when its worker has a steal out).
func (fc *fakeCluster) checkSteals() {
	out, in := map[WorkerID]int{}, map[WorkerID]int{}
	for id, thief := range fc.c.steals {
		out[fc.c.tasks.at(id).worker]++
		in[thief]++
	}
	for _, ws := range fc.c.workers {
		if ws != nil && ws.alive && (ws.stealsOut != out[ws.id] || ws.stealsIn != in[ws.id]) {
			fc.t.Fatalf("seed %d: worker %d counts %d steals out and %d in, the table %d and %d",
				fc.seed, ws.id, ws.stealsOut, ws.stealsIn, out[ws.id], in[ws.id])
		}
	}
}
