package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	client "github.com/shoal-dev/shoal/clients/go"
)

// demoGraphs is `shoal demo`'s work once its cluster runs (cli.DemoGraphs): a wide sum tree of
// Go tasks, then an Arrow pipeline.
func demoGraphs(ctx context.Context, addr, token string, tlsConf *tls.Config, ntasks int) error {
	c, err := client.Connect(ctx, addr, client.Options{Token: token, TLS: tlsConf})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := demoSum(ctx, c, ntasks); err != nil {
		return err
	}
	return demoArrow(ctx, c)
}

// demoSum runs inc over 0..n-1 and sums the results in a tree of fan-in 32.
func demoSum(ctx context.Context, c *client.Client, n int) error {
	g := client.NewGraph()
	layer := make([]any, n)
	for i := range layer {
		layer[i] = g.Go(fmt.Sprintf("inc-%d", i), "inc", i)
	}
	for level := 0; len(layer) > 1; level++ {
		var next []any
		for i := 0; i < len(layer); i += 32 {
			next = append(next, g.Go(fmt.Sprintf("sum-%d-%d", level, i/32), "sum", layer[i:min(i+32, len(layer))]...))
		}
		layer = next
	}
	start := time.Now()
	futs, err := c.Submit(ctx, g, layer[0].(client.Key))
	if err != nil {
		return err
	}
	v, err := futs[0].Result(ctx)
	if err != nil {
		return err
	}
	el := time.Since(start)
	want := int64(n) * int64(n+1) / 2
	fmt.Printf("sum of inc(i) for i < %d = %v (expected %d), %d tasks in %v (%.0f tasks/s)\n",
		n, v, want, g.Len(), el.Round(time.Millisecond), float64(g.Len())/el.Seconds())
	if fmt.Sprint(v) != fmt.Sprint(want) {
		return fmt.Errorf("wrong result %v", v)
	}
	futs[0].Release()
	return nil
}

// demoArrow makes Arrow tables on the workers, concatenates them (moving batches between
// workers peer to peer), aggregates, and reads the result back as Arrow.
func demoArrow(ctx context.Context, c *client.Client) error {
	g := client.NewGraph()
	var parts []any
	for i := 0; i < 8; i++ {
		parts = append(parts, g.Go(fmt.Sprintf("table-%d", i), "arrow_table", 250_000, i, i))
	}
	all := g.Go("concat", "concat", parts...)
	rows := g.Go("rows", "row_count", all)
	agg := g.Go("groupby", "groupby_sum", all, "key", "x")
	start := time.Now()
	futs, err := c.Submit(ctx, g, rows, agg)
	if err != nil {
		return err
	}
	n, err := futs[0].Result(ctx)
	if err != nil {
		return err
	}
	tbl, err := futs[1].Arrow(ctx)
	if err != nil {
		return err
	}
	defer tbl.Release()
	fmt.Printf("arrow pipeline: %v rows in 8 tables, groupby_sum gives %d groups (in %v)\n", n, tbl.NumRows(), time.Since(start).Round(time.Millisecond))
	printHead(tbl, 5)
	return nil
}

func printHead(tbl arrow.Table, n int) {
	tr := array.NewTableReader(tbl, int64(n))
	defer tr.Release()
	if tr.Next() {
		rec := tr.RecordBatch()
		for i := 0; i < int(min(rec.NumRows(), int64(n))); i++ {
			fmt.Print("  ")
			for j, col := range rec.Columns() {
				fmt.Printf("%s=%v ", rec.ColumnName(j), col.ValueStr(i))
			}
			fmt.Println()
		}
	}
}
