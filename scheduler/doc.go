// Package scheduler is Shoal's scheduler: a sans-IO state machine (Core) that decides where
// and when every task runs, and the network driver (Server) that feeds it.
//
// # The core
//
// Core owns the whole graph state: tasks interned to dense int32 ids with their state in
// slices, task groups with incrementally maintained counters, workers, clients' wants. It has
// no goroutines, clocks or I/O. The driver calls
//
//	actions = core.Handle(event, actions[:0])
//
// for every event (a worker joined, a task finished, a client submitted a graph, time
// passed, …) and performs the actions it gets back (send a task to a worker, tell a worker
// to drop keys, ask a worker to give a task back, tell a client the fate of a key, refuse a
// graph). Contract:
//
//   - Handle and every introspection method (Counts, Groups, TaskInfo, WhoHas, Workers,
//     Stats) are called from one goroutine; the core is not safe for concurrent use.
//   - Time enters only through events (EvTick.Now, start/stop times), so a run is
//     deterministic: the same events give the same actions. testdata/*.txt are such runs.
//   - Actions may share memory with the core (task definitions, key and worker slices); the
//     driver treats them as read-only. The core keeps pointers into EvUpdateGraph.Tasks, so
//     the driver must not reuse that slice.
//   - Computes and key states come as *ActCompute and *ActKeyState, into memory the core
//     reuses once the driver calls RecycleActions (after performing them all): a struct in
//     an interface is an allocation, and those two are emitted for every task.
//   - Worker and client ids are assigned by the driver and never reused.
//
// # Task states
//
//	released   → waiting (needed) · memory (scattered) · forgotten (unreferenced)
//	waiting    → queued · processing · no-worker (placed) · memory (late result) ·
//	             released (not needed) · erred (a dependency erred)
//	queued     → processing · waiting (input lost) · no-worker · memory · released · erred
//	no-worker  → waiting (a worker joined) · memory · released · erred
//	processing → memory · erred · waiting (retry, worker lost, steal accepted, input
//	             missing, rescheduled) · released (cancelled)
//	memory     → released (not needed) · waiting (lost, recomputed) · erred (scattered, lost)
//	erred      → released
//
// States:
//
//   - released: known, not needed now, holds no data. A released task nobody refers to is
//     forgotten and its id may be reused.
//   - waiting: needed (a client wants it or an active dependent needs it); it waits for its
//     dependencies to be in memory, then is placed.
//   - queued: ready and withheld: root tasks are fed to a worker only while it has fewer
//     than ceil(nthreads × SaturationFactor) tasks processing, best static rank first; tasks
//     whose resources are all in use wait here too.
//   - no-worker: ready, but no live worker satisfies its restrictions, resources or Go
//     function; it is retried when a worker joins.
//   - processing: sent to a worker; the core counts it in that worker's occupancy.
//   - memory: the result is on one or more workers (who_has).
//   - erred: failed for good; clients wanting it, or a dependent of it, get the error.
//
// Every legal edge is one method (state_transitions.go); setState panics with an
// IllegalTransition naming both states on any other edge. Each transition is appended to
// the task's bounded story (CoreConfig.StoryLength entries: from, to, the event name and its
// sequence number), shown by TaskInfo.
//
// # Policies
//
// Ordering: each update-graph batch is ranked by graph.OrderCSR (user priority first, then
// a depth-first, critical-path-first post-order), after every earlier batch of the same
// priority. Placement: among workers satisfying restrictions, resources and functions, the
// one minimising occupancy/nthreads + bytes of missing inputs/Bandwidth + TransferLatency per
// missing input. Durations are learned per task group. Stealing (on EvTick): idle workers
// ask saturated ones for tasks they have not started; a task stays processing on the victim until it answers, so it never
// runs twice by accident. Lifetimes: a result is kept while a client wants it or an active
// dependent needs it. Failures: retries, error propagation to dependents, rescheduling on
// worker loss, recomputation from lineage of lost data, killed-worker after
// KilledWorkerThreshold deaths with each worker and its death reason in the message.
package scheduler
