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

// submitAll submits every graph back to back and returns the futures of their keys.
func submitAll(ctx context.Context, c *client.Client, graphs []*client.Graph, keys [][]client.Key) ([]*client.Future, error) {
	var futs []*client.Future
	for i, g := range graphs {
		fs, err := c.Submit(ctx, g, keys[i]...)
		if err != nil {
			return nil, err
		}
		futs = append(futs, fs...)
	}
	return futs, nil
}

// submitAndWait submits every graph back to back, then waits for every future; a failed
// future's error goes through fail, which may add context.
func submitAndWait(ctx context.Context, c *client.Client, graphs []*client.Graph, keys [][]client.Key,
	fail func(f *client.Future, err error) error) ([]*client.Future, error) {
	futs, err := submitAll(ctx, c, graphs, keys)
	if err != nil {
		return nil, err
	}
	for _, f := range futs {
		if err := f.Wait(ctx); err != nil {
			return nil, fail(f, err)
		}
	}
	return futs, nil
}

// noop is the stock binary's built-in no-op, declared for the typed API.
var noop = client.Extern0[any]("noop")

// typedNoopGraphs is noopGraphs written with the typed API: noop.Call per task, named
// prefix-i as noopGraphs names them unless autoKeys (the typed API's generated keys).
func typedNoopGraphs(n, batch int, prefix string, autoKeys bool) ([]*client.Graph, [][]client.Ref[any]) {
	var graphs []*client.Graph
	var refs [][]client.Ref[any]
	for done := 0; done < n; {
		g := client.NewGraph()
		m := min(batch, n-done)
		rs := make([]client.Ref[any], m)
		for i := range rs {
			if autoKeys {
				rs[i] = noop.Call(g)
			} else {
				rs[i] = noop.Call(g, client.Named(fmt.Sprintf("%s-%d", prefix, done+i)))
			}
		}
		graphs = append(graphs, g)
		refs = append(refs, rs)
		done += m
	}
	return graphs, refs
}

// typedSubmitAndWait is submitAndWait with the typed API: SubmitAll per graph, one Wait.
func typedSubmitAndWait(ctx context.Context, c *client.Client, graphs []*client.Graph, refs [][]client.Ref[any]) ([]*client.Future, error) {
	var futs []client.FutureOf[any]
	for i, g := range graphs {
		fs, err := client.SubmitAll(ctx, c, g, refs[i])
		if err != nil {
			return nil, err
		}
		futs = append(futs, fs...)
	}
	if err := client.Wait(ctx, futs); err != nil {
		return nil, err
	}
	out := make([]*client.Future, len(futs))
	for i, f := range futs {
		out[i] = f.Future
	}
	return out, nil
}
