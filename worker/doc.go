// Package worker is everything a Shoal worker process does: it registers with the scheduler,
// runs the tasks it is sent, stores their results (spilling to disk under memory pressure),
// fetches missing inputs from its peers and serves its results to peers and clients over its
// data port. docs/protocol.md §3.3–§3.5 is the contract it implements.
//
// # Use
//
//	cfg := worker.DefaultConfig()
//	cfg.NThreads = 4
//	w, err := worker.New(cfg) // binds the data port; w.DataAddr() is known from here on
//	...                         // announce w.DataAddr() over gossip, find the scheduler
//	err = w.Run(ctx, schedulerAddr) // until ctx ends (graceful), close, or the scheduler is lost
//	w.Close()                       // always: stops everything and removes the scratch dir
//
// Run may be called once per Worker. When ctx ends, Run hands every queued task back to the
// scheduler (reschedule), gives running tasks Config.ShutdownGrace to finish, says goodbye and
// returns nil. Close then kills what is left; no goroutine the worker started outlives Close
// (a Go task that ignores its context delays Close until it returns).
//
// # Go tasks
//
// A Go task names a function registered with Register, normally from an init function in
// the binary that runs the worker; built-ins (noop, identity, inc, add, sum, sleep, fail,
// panic, bytes and the Arrow operators of package arrowio) are always registered. Arguments
// arrive as msgpack literals decoded into interface{} (use Int64 and Float64 to accept any
// numeric type) or as the results of other tasks: Go values for msgpack results,
// arrow.Table for Arrow results (zero-copy over the received bytes), []byte for bytes. A
// pickled Python result cannot be an input to a Go task (task-error). A function's result is
// stored as Arrow (arrow.Table, arrow.Record), raw bytes ([]byte) or msgpack (anything
// else). An error becomes task-error (or the *wire.Error returned), a panic task-panic with
// the Go stack as traceback.
//
// # Python tasks
//
// Python tasks run in up to NProcsPython executor processes, started lazily as
// `<Python> -m shoal.executor` with a socketpair on fd 3 (protocol §3.5). A Python task takes
// one of the NThreads task slots while it runs, so at most min(NThreads, NProcsPython) run at
// once. An executor that dies while running a task fails that task with executor-died; a
// fresh one is started for the next task.
//
// # Memory
//
// Results are held in a Store. Above SpillFraction×MemoryLimit bytes in memory, least
// recently used results are written to the scratch directory and read back on demand; above
// PauseFraction×MemoryLimit the worker starts no new task until memory falls. Only result
// bytes are counted, not the transient memory of running tasks.
//
// The package is Unix-only (socketpair, getrusage).
package worker
