package main

import (
	"context"
	"fmt"

	client "github.com/shoal-dev/shoal/clients/go"
)

// noopGraphs builds n no-op tasks named prefix-i, cut into graphs of at most batch tasks (one
// update_graph each), before any timing starts, so the client's own work is not measured.
func noopGraphs(n, batch int, prefix string) ([]*client.Graph, [][]client.Key) {
	var graphs []*client.Graph
	var keys [][]client.Key
	for done := 0; done < n; {
		g := client.NewGraph()
		m := min(batch, n-done)
		ks := make([]client.Key, m)
		for i := range ks {
			ks[i] = g.Go(fmt.Sprintf("%s-%d", prefix, done+i), "noop")
		}
		graphs = append(graphs, g)
		keys = append(keys, ks)
		done += m
	}
	return graphs, keys
}

// submitAndWait submits every graph back to back, then waits for every future; a failed
// future's error goes through fail, which may add context.
func submitAndWait(ctx context.Context, c *client.Client, graphs []*client.Graph, keys [][]client.Key,
	fail func(f *client.Future, err error) error) ([]*client.Future, error) {
	var futs []*client.Future
	for i, g := range graphs {
		fs, err := c.Submit(ctx, g, keys[i]...)
		if err != nil {
			return nil, err
		}
		futs = append(futs, fs...)
	}
	for _, f := range futs {
		if err := f.Wait(ctx); err != nil {
			return nil, fail(f, err)
		}
	}
	return futs, nil
}
