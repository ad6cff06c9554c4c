// Package client is Shoal's Go client: build a task graph of Go functions registered in the
// workers (worker.Register), submit it to a scheduler, wait on futures, and read results as Go
// values or Arrow tables fetched straight from the workers that hold them.
//
//	c, err := client.Connect(ctx, "127.0.0.1:8786", client.Options{})
//	g := client.NewGraph()
//	t := g.Go("gen", "arrow_table", 1000)
//	n := g.Go("count", "row_count", t)
//	futs, err := c.Submit(ctx, g, n)
//	v, err := futs[0].Result(ctx) // int64(1000)
//
// Contract: a Client is safe for concurrent use. Futures hold their key on the cluster until
// Release (or Client.Close); results are fetched from workers' data ports, never through the
// scheduler. Every blocking call takes a context.
package client
