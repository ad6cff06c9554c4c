// Package graph is Shoal's task-graph model: the Task as it travels on the wire, and the pure
// functions the scheduler runs over a submitted batch before it accepts it.
//
//   - Validate checks a batch as a whole: invalid tasks, duplicate keys with different
//     definitions, dependencies that are neither in the batch nor already known, and cycles.
//     It returns an *Error whose Code is one of the stable wire codes (docs/protocol.md §5).
//   - Deps returns a task's dependencies, derived from its Args references for Go tasks
//     that leave Deps empty.
//   - KeySplit names the task group of a key, as dask.utils.key_split does.
//   - Order and OrderCSR give every task of a batch a static priority in the spirit of
//     dask.order: user priority first, then a depth-first post-order from the outputs in
//     which the longest dependency chain is walked first, so that a chain is finished
//     before a new root is started and intermediate results are released early.
//
// The package has no state and no I/O; every function is safe for concurrent use. It must not
// import internal/wire (which imports graph); the codes are duplicated here as constants and
// the scheduler converts an *Error to a *wire.Error.
package graph
