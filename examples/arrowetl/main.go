// Command arrowetl is an Arrow ETL on Shoal from Go: each worker generates a partition of
// sales records, a filter drops the small ones, a groupby sums the amounts per region in
// every partition, and a final task merges the partial aggregates (collected straight from
// the workers that computed them) and joins the region names the driver scattered. Tables
// travel between workers as Arrow IPC, never through the scheduler.
//
//	go run ./examples/arrowetl
package main

import (
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	shoal "github.com/shoal-dev/shoal/clients/go"
)

var salesSchema = arrow.NewSchema([]arrow.Field{
	{Name: "region", Type: arrow.PrimitiveTypes.Int32},
	{Name: "amount", Type: arrow.PrimitiveTypes.Float64},
}, nil)

var aggSchema = arrow.NewSchema([]arrow.Field{
	{Name: "region", Type: arrow.PrimitiveTypes.Int32},
	{Name: "total", Type: arrow.PrimitiveTypes.Float64},
	{Name: "count", Type: arrow.PrimitiveTypes.Int64},
}, nil)

var (
	// Generate makes partition p: n sales in 8 regions, reproducibly.
	Generate = shoal.Func2("etl_generate", func(ctx context.Context, p, n int64) (arrow.RecordBatch, error) {
		rng := rand.New(rand.NewPCG(uint64(p), 42))
		b := array.NewRecordBuilder(memory.DefaultAllocator, salesSchema)
		defer b.Release()
		for range n {
			b.Field(0).(*array.Int32Builder).Append(rng.Int32N(8))
			b.Field(1).(*array.Float64Builder).Append(float64(rng.IntN(100_00)) / 100)
		}
		return b.NewRecordBatch(), nil
	})
	// Filter keeps the sales of at least min.
	Filter = shoal.Func2("etl_filter", func(ctx context.Context, sales arrow.RecordBatch, min float64) (arrow.RecordBatch, error) {
		region, amount := sales.Column(0).(*array.Int32), sales.Column(1).(*array.Float64)
		b := array.NewRecordBuilder(memory.DefaultAllocator, salesSchema)
		defer b.Release()
		for i := range sales.NumRows() {
			if amount.Value(int(i)) >= min {
				b.Field(0).(*array.Int32Builder).Append(region.Value(int(i)))
				b.Field(1).(*array.Float64Builder).Append(amount.Value(int(i)))
			}
		}
		return b.NewRecordBatch(), nil
	})
	// GroupBy sums the amounts per region (region, total, count).
	GroupBy = shoal.Func("etl_groupby", func(ctx context.Context, sales arrow.RecordBatch) (arrow.RecordBatch, error) {
		region, amount := sales.Column(0).(*array.Int32), sales.Column(1).(*array.Float64)
		totals, counts := map[int32]float64{}, map[int32]int64{}
		for i := range int(sales.NumRows()) {
			totals[region.Value(i)] += amount.Value(i)
			counts[region.Value(i)]++
		}
		return aggregate(totals, counts), nil
	})
	// Merge adds partial aggregates up and names the regions.
	Merge = shoal.Func2("etl_merge", func(ctx context.Context, parts []arrow.RecordBatch, names map[string]string) (arrow.Table, error) {
		totals, counts := map[int32]float64{}, map[int32]int64{}
		for _, p := range parts {
			region, total, count := p.Column(0).(*array.Int32), p.Column(1).(*array.Float64), p.Column(2).(*array.Int64)
			for i := range int(p.NumRows()) {
				totals[region.Value(i)] += total.Value(i)
				counts[region.Value(i)] += count.Value(i)
			}
		}
		agg := aggregate(totals, counts)
		defer agg.Release()
		nb := array.NewStringBuilder(memory.DefaultAllocator)
		defer nb.Release()
		for _, r := range agg.Column(0).(*array.Int32).Int32Values() {
			nb.Append(names[fmt.Sprint(r)])
		}
		name := nb.NewArray()
		defer name.Release()
		schema := arrow.NewSchema(append([]arrow.Field{{Name: "name", Type: arrow.BinaryTypes.String}}, aggSchema.Fields()...), nil)
		rec := array.NewRecordBatch(schema, append([]arrow.Array{name}, agg.Columns()...), agg.NumRows())
		defer rec.Release()
		return array.NewTableFromRecords(schema, []arrow.RecordBatch{rec}), nil
	})
)

// aggregate builds (region, total, count) sorted by region.
func aggregate(totals map[int32]float64, counts map[int32]int64) arrow.RecordBatch {
	regions := make([]int32, 0, len(totals))
	for r := range totals {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	b := array.NewRecordBuilder(memory.DefaultAllocator, aggSchema)
	defer b.Release()
	for _, r := range regions {
		b.Field(0).(*array.Int32Builder).Append(r)
		b.Field(1).(*array.Float64Builder).Append(totals[r])
		b.Field(2).(*array.Int64Builder).Append(counts[r])
	}
	return b.NewRecordBatch()
}

func main() {
	shoal.Main()
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	cluster, err := shoal.NewLocalCluster(ctx, shoal.Workers(3))
	if err != nil {
		return err
	}
	defer cluster.Close()
	c := cluster.Client()

	// a small dimension table, put on the cluster once and shared by reference
	names, err := shoal.Scatter(ctx, c, map[string]string{
		"0": "north", "1": "south", "2": "east", "3": "west", "4": "centre", "5": "islands", "6": "coast", "7": "hills"})
	if err != nil {
		return err
	}
	defer names[0].Release()

	g := shoal.NewGraph()
	var partials []shoal.Ref[arrow.RecordBatch]
	for p := range int64(12) {
		sales := Generate.Call(g, shoal.Lit(p), shoal.Lit[int64](100_000))
		big := Filter.Call(g, sales, shoal.Lit(20.0))
		partials = append(partials, GroupBy.Call(g, big))
	}
	result := Merge.Call(g, shoal.Collect(partials), names[0].Ref())

	tbl, err := shoal.Get(ctx, c, g, result) // an arrow.Table, ours to release
	if err != nil {
		return err
	}
	defer tbl.Release()
	fmt.Printf("%d regions from %d partitions of sales of at least 20:\n", tbl.NumRows(), len(partials))
	tr := array.NewTableReader(tbl, 0)
	defer tr.Release()
	for tr.Next() {
		rec := tr.RecordBatch()
		name, total, count := rec.Column(0).(*array.String), rec.Column(2).(*array.Float64), rec.Column(3).(*array.Int64)
		for i := range int(rec.NumRows()) {
			fmt.Printf("  %-8s %12.2f over %6d sales\n", name.Value(i), total.Value(i), count.Value(i))
		}
	}
	return nil
}
