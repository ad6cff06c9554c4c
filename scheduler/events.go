package scheduler

import (
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// WorkerID is a dense id the driver assigns to each registered worker (never reused).
type WorkerID int32

// ClientID is a dense id the driver assigns to each client connection (never reused).
type ClientID int32

// Event is an input to the Core. Every event is a plain value; time enters only through
// fields set by the driver (Now, Start, Stop), never from a clock inside the core.
type Event interface{ eventName() string }

// Action is an output of the Core, performed by the driver. ActCompute and ActKeyState
// come by pointer (*ActCompute, *ActKeyState: see Core.RecycleActions); the others by value.
type Action interface{ actionName() string }

// ---- events ----

// EvWorkerJoined: a worker registered on its control stream.
type EvWorkerJoined struct {
	Worker      WorkerID
	Name        string
	Addr        string // data address
	NThreads    int
	MemoryLimit int64
	Resources   map[string]float64
	Functions   []string // registered Go function names
	// Holds are the results the worker already has: a worker that lost the scheduler and
	// registered again, or one that outlived a scheduler restart. Each is reconciled as a
	// replica report (add_keys): kept when the key is known and useful, freed otherwise.
	Holds []wire.Item
	// Replaces is the same process's previous registration, still open (its old connection
	// has not broken on this side yet): it is removed gracefully after the new one holds its
	// results, so nothing it holds is reported lost in between. 0: none.
	Replaces WorkerID
	// Running are the tasks still running there (it registered again); Seceded[i] says
	// whether Running[i] gave its thread back. Each is booked there rather than run again.
	Running []string
	Seceded []bool
	// Now is when it joined (unix ns): the start of its liveness clock.
	Now int64
	// Asked is the heartbeat interval its registration asked for (ns; 0: its own, about a
	// second): it may be silent for silentIntervals of them (Core.checkLiveness).
	Asked int64
}

// EvWorkersJoined: several workers at once, settled together. After a scheduler restart the
// workers that come back are joined in one event, so none is given work that another one
// already holds the result of.
type EvWorkersJoined struct{ Joins []EvWorkerJoined }

// EvWorkerLeft: a worker's control stream broke, gossip declared it dead, or it said goodbye.
type EvWorkerLeft struct {
	Worker   WorkerID
	Reason   string // how it died: "exit code 137", "signal: killed", "heartbeat timeout", "goodbye"
	Graceful bool   // it left on purpose (its running tasks do not count as suspicious)
}

// EvClientJoined / EvClientLeft bracket a client connection. A departed client releases every
// key it wanted.
type EvClientJoined struct{ Client ClientID }
type EvClientLeft struct{ Client ClientID }

// EvUpdateGraph: a client submitted tasks; Wanted are the keys it holds futures for. The core
// validates the whole graph first (cycles, missing deps, unknown Go functions when any worker
// has registered, key conflicts, invalid tasks) and either adds all of it or none.
type EvUpdateGraph struct {
	Client ClientID
	ID     uint64 // the request id, echoed in ActGraphRejected
	Tasks  []graph.Task
	Wanted []string
}

// EvWanted: a client holds futures to existing keys.
type EvWanted struct {
	Client ClientID
	Keys   []string
}

// EvReleaseKeys: a client dropped its futures.
type EvReleaseKeys struct {
	Client ClientID
	Keys   []string
}

// EvCancelKeys: a client cancels keys (and their dependents that are not yet done).
type EvCancelKeys struct {
	Client ClientID
	Keys   []string
}

// EvScattered: a client put data on a worker directly.
type EvScattered struct {
	Client ClientID
	Worker WorkerID
	Items  []wire.Item
}

// EvTaskFinished: a worker stored a task's result.
type EvTaskFinished struct {
	Worker      WorkerID
	Key         string
	TaskID      uint64 // the handle sent in ActCompute, echoed by the worker; 0 if unknown
	NBytes      int64
	Encoding    string
	Start, Stop int64 // unix nanoseconds
	Thread      int
	// Holds are the keys of futures the result holds (a task that returned futures it
	// submitted): they are kept while the result is in memory, so a reader can claim them.
	Holds []string
}

// EvTaskErred: a task raised, returned an error, panicked, or its executor died.
type EvTaskErred struct {
	Worker      WorkerID
	Key         string
	TaskID      uint64 // as in EvTaskFinished
	Err         *wire.Error
	Start, Stop int64
	Thread      int
}

// EvAddReplica: a worker now also holds these keys (it fetched them as dependencies).
type EvAddReplica struct {
	Worker WorkerID
	Items  []wire.Item
}

// EvMissingData: worker Reporter could not fetch Key from worker From.
type EvMissingData struct {
	Reporter WorkerID
	Key      string
	From     WorkerID // -1 if the address is unknown
	Cause    string   // why the transfer failed; "" when the holder just did not have it
}

// EvStealResponse: the victim's answer to ActSteal.
type EvStealResponse struct {
	Worker   WorkerID
	Key      string
	Accepted bool // true: the task was dequeued and will not run there
}

// EvReschedule: a leaving worker hands back tasks it had not started.
type EvReschedule struct {
	Worker WorkerID
	Keys   []string
}

// EvHeartbeat: load report from a worker.
type EvHeartbeat struct {
	Worker          WorkerID
	Now             int64
	Memory, Spilled int64
	Executing       int
	Ready           int
	// Unhealthy, when set, is why the worker cannot serve (its data port cannot accept
	// connections): it gets no new tasks until a heartbeat without it.
	Unhealthy string
	// Asked is the longer of the last two heartbeat intervals the scheduler asked of it (ns;
	// 0: none), the newer one perhaps not heard yet: it may be silent for silentIntervals of them.
	Asked int64
}

// EvDispatch: hand workers the next batch of queued root tasks (Core.DispatchPending).
type EvDispatch struct{}

// EvTick: time passes; the core may steal work, and checks nothing else time-based.
type EvTick struct{ Now int64 }

// EvRestart: a client restarts the cluster: every task is cancelled (Reason says why).
type EvRestart struct{ Reason string }

// EvRetire: stop placing tasks on Workers and copy what only they hold elsewhere.
type EvRetire struct{ Workers []WorkerID }

// EvReplicate: keep at least N copies of each of Keys.
type EvReplicate struct {
	Keys []string
	N    int
}

// EvRebalance: move values (Keys, or all) from workers holding more than their share.
type EvRebalance struct{ Keys []string }

// EvLongRunning: a running task seceded from its worker's thread (it waits on tasks it
// submitted): it stays processing there but no longer takes a thread, so the worker gets more
// work (dask's long-running state).
type EvLongRunning struct {
	Worker WorkerID
	Key    string
	TaskID uint64
}

// ---- actions ----

// ActCompute: send a task to a worker.
type ActCompute struct {
	Worker WorkerID
	Key    string
	// Task is the definition; a plain task's (a kind, a function, a payload, a group and
	// dependencies) is shared with every task of that kind and function, and its Key is
	// empty: send it with Key, Payload, Group and the keys of Deps as its dependencies.
	Task    *graph.Task
	Payload []byte // a plain task's payload
	Group   string // a plain task's group, when its definition named one
	TaskID  uint64 // the task's handle: workers echo it in task_finished / task_erred
	Deps    []DepLoc
	Order   int64 // lower runs first
	// Keep: the task has dependents, so its result is likely used where it is made: a Python
	// executor may keep it in its memory rather than write it out (worker/resident.go). A
	// result nothing depends on yet (a client's future, a persisted chunk) is written out,
	// ready to be handed over without a copy.
	Keep bool
}

// DepLoc is where one dependency of a compute task lives.
type DepLoc struct {
	Key     string
	Workers []WorkerID
	NBytes  int64
}

// ActFree: tell a worker to drop results and forget tasks.
type ActFree struct {
	Worker WorkerID
	Keys   []string
}

// ActSteal: ask Victim to give back Key if not started (the core later re-places it).
type ActSteal struct {
	Victim WorkerID
	Key    string
}

// ActKeyState: tell a client the fate of a key it wants.
type ActKeyState struct {
	Client   ClientID
	Key      string
	State    string // "memory", "erred", "cancelled", "lost"
	Worker   WorkerID
	NBytes   int64
	Encoding string
	Err      *wire.Error
}

// ActAcquire: ask a worker to fetch copies of values from their holders and keep them.
type ActAcquire struct {
	Worker WorkerID
	Deps   []DepLoc
}

// ActRemoveWorker: a worker has been silent past CoreConfig.HeartbeatTimeout; the driver
// closes its connection and reports EvWorkerLeft.
type ActRemoveWorker struct {
	Worker WorkerID
	Reason string
}

// ActGraphRejected: an update_graph was refused whole.
type ActGraphRejected struct {
	Client ClientID
	ID     uint64
	Keys   []string
	Err    *wire.Error
}

func (EvWorkerJoined) eventName() string  { return "worker-joined" }
func (EvWorkerLeft) eventName() string    { return "worker-left" }
func (EvWorkersJoined) eventName() string { return "workers-joined" }
func (EvClientJoined) eventName() string  { return "client-joined" }
func (EvClientLeft) eventName() string    { return "client-left" }
func (EvUpdateGraph) eventName() string   { return "update-graph" }
func (EvWanted) eventName() string        { return "wanted" }
func (EvReleaseKeys) eventName() string   { return "release-keys" }
func (EvCancelKeys) eventName() string    { return "cancel-keys" }
func (EvScattered) eventName() string     { return "scattered" }
func (EvTaskFinished) eventName() string  { return "task-finished" }
func (EvTaskErred) eventName() string     { return "task-erred" }
func (EvAddReplica) eventName() string    { return "add-replica" }
func (EvMissingData) eventName() string   { return "missing-data" }
func (EvStealResponse) eventName() string { return "steal-response" }
func (EvReschedule) eventName() string    { return "reschedule" }
func (EvHeartbeat) eventName() string     { return "heartbeat" }
func (EvTick) eventName() string          { return "tick" }
func (EvRestart) eventName() string       { return "restart" }
func (EvRetire) eventName() string        { return "retire" }
func (EvReplicate) eventName() string     { return "replicate" }
func (EvRebalance) eventName() string     { return "rebalance" }
func (EvLongRunning) eventName() string   { return "long-running" }
func (EvDispatch) eventName() string      { return "dispatch" }

func (ActCompute) actionName() string       { return "compute" }
func (ActFree) actionName() string          { return "free" }
func (ActSteal) actionName() string         { return "steal" }
func (ActKeyState) actionName() string      { return "key-state" }
func (ActGraphRejected) actionName() string { return "graph-rejected" }
func (ActAcquire) actionName() string       { return "acquire" }
func (ActRemoveWorker) actionName() string  { return "remove-worker" }
