// Package shoal is Shoal's Go client: declare Go task functions once, with their types, build
// task graphs of them, run the graphs on a cluster, and read the results as Go values or Arrow
// tables fetched straight from the workers that hold them.
//
// A typed function is declared at package level; the declaration registers it in the
// workers this binary runs, and its Call method adds tasks calling it to a graph, so a wrong
// argument or result type is a compile error:
//
//	var Square = shoal.Func("square", func(ctx context.Context, x int64) (int64, error) {
//		return x * x, nil
//	})
//	var Total = shoal.Func("total", func(ctx context.Context, xs []int64) (int64, error) { ... })
//
//	func main() {
//		shoal.Main() // in a process started as part of a cluster, be that process instead
//		ctx := context.Background()
//		cluster, err := shoal.NewLocalCluster(ctx, shoal.Workers(4)) // this binary, 4 workers
//		...
//		defer cluster.Close()
//		g := shoal.NewGraph()
//		parts := shoal.Map(g, Square, []int64{1, 2, 3})     // []shoal.Ref[int64]
//		total := Total.Call(g, shoal.Collect(parts))        // shoal.Ref[int64]
//		v, err := shoal.Get(ctx, cluster.Client(), g, total) // int64(14)
//	}
//
// One binary is driver and worker: NewLocalCluster re-executes the program, and Main turns
// those processes into the scheduler and workers (run `go run .` and it works). A program can
// also connect to any cluster with Connect; there, only functions the workers' binary
// registers can run, and the scheduler refuses a graph calling another with an error matching
// ErrUnknownFunction.
//
// Arguments are Arg[T]: a Ref[T] to another task's result, Lit(v) for a literal, Collect(refs)
// for a slice of results. Functions registered elsewhere are declared with Extern (a built-in
// such as "row_count", or another binary's), Python functions with Python
// ("module.function", run by the workers' Python executors). Annotations are TaskOptions:
// Named, Priority, Retries, Resources, OnWorkers, InGroup.
//
// Results: Get submits and reads one value; Submit and SubmitAll give FutureOf[T]; Wait,
// AsCompleted, Gather and Progress work on many; Future.Cancel and Release end them. Scatter
// puts Go values and Arrow tables on the workers. A failed task's error is a *TaskError,
// matching ErrPanic, ErrCancelled, ... with errors.Is, and carrying the task's own error
// values and types registered with RegisterError and RegisterErrorType.
//
// The untyped API stays for dynamic use: Graph.Go(key, "fn", args...), Client.Submit,
// Future.Result.
//
// Contract: a Client is safe for concurrent use; a Graph is not. Futures hold their key on
// the cluster until Release (or Client.Close); results are fetched from workers' data ports,
// never through the scheduler. Every blocking call takes a context. See docs/go.md.
package shoal
