package shoal_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

var (
	// makeRows builds n rows (key = "k<i mod 3>", value = i + offset)
	makeRows = shoal.Func2("test_make_rows", func(ctx context.Context, n, offset int64) (arrow.RecordBatch, error) {
		return rows(memory.DefaultAllocator, n, offset), nil
	})
	// concatTables appends tables with one schema
	concatTables = shoal.Func("test_concat", func(ctx context.Context, ts []arrow.Table) (arrow.Table, error) {
		var recs []arrow.RecordBatch
		for _, t := range ts {
			tr := array.NewTableReader(t, 0)
			for tr.Next() {
				r := tr.RecordBatch()
				r.Retain()
				recs = append(recs, r)
			}
			tr.Release()
		}
		return array.NewTableFromRecords(ts[0].Schema(), recs), nil
	})
	// sumByKey is a groupby: the sum of value per key, keys sorted
	sumByKey = shoal.Func("test_sum_by_key", func(ctx context.Context, r arrow.RecordBatch) (map[string]int64, error) {
		keys := r.Column(0).(*array.String)
		vals := r.Column(1).(*array.Int64)
		out := map[string]int64{}
		for i := range int(r.NumRows()) {
			out[keys.Value(i)] += vals.Value(i)
		}
		return out, nil
	})
	// countAll counts the rows of many batches (Arrow tables converted element by element)
	countAll = shoal.Func("test_count_all", func(ctx context.Context, rs []arrow.RecordBatch) (int64, error) {
		var n int64
		for _, r := range rs {
			n += r.NumRows()
		}
		return n, nil
	})
	rowCount = shoal.Extern[arrow.Table, int64]("row_count") // a built-in of every worker
)

func rows(mem memory.Allocator, n, offset int64) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{{Name: "key", Type: arrow.BinaryTypes.String}, {Name: "value", Type: arrow.PrimitiveTypes.Int64}}, nil)
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for i := range n {
		b.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("k%d", i%3))
		b.Field(1).(*array.Int64Builder).Append(i + offset)
	}
	return b.NewRecordBatch()
}

func TestArrowRoundTrip(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()
	var parts []shoal.Ref[arrow.Table]
	for i := range int64(4) {
		// a RecordBatch result read as a Table argument: the types say Arrow either way
		parts = append(parts, shoal.RefOf[arrow.Table](makeRows.Call(g, shoal.Lit[int64](10), shoal.Lit(i*100)).Key()))
	}
	all := concatTables.Call(g, shoal.Collect(parts))

	n, err := shoal.Get(ctx, c, g, rowCount.Call(g, all))
	require.NoError(t, err)
	require.Equal(t, int64(40), n)

	// a table of several batches, read as one record batch by a task
	sums, err := shoal.Get(ctx, c, g, sumByKey.Call(g, shoal.RefOf[arrow.RecordBatch](all.Key())))
	require.NoError(t, err)
	want := map[string]int64{}
	for p := range int64(4) {
		for i := range int64(10) {
			want[fmt.Sprintf("k%d", i%3)] += i + p*100
		}
	}
	require.Equal(t, want, sums)

	// a collection of Arrow results, each converted to the declared element type
	n, err = shoal.Get(ctx, c, g, countAll.Call(g, shoal.Collect([]shoal.Ref[arrow.RecordBatch]{
		shoal.RefOf[arrow.RecordBatch](all.Key()), shoal.RefOf[arrow.RecordBatch](parts[0].Key())})))
	require.NoError(t, err)
	require.Equal(t, int64(50), n)

	// the client reads Arrow as a Table or as a RecordBatch, and owns what it reads
	tbl, err := shoal.Get(ctx, c, g, all)
	require.NoError(t, err)
	require.Equal(t, int64(40), tbl.NumRows())
	require.Equal(t, "key", tbl.Schema().Field(0).Name)
	tbl.Release()
	rec, err := shoal.Get(ctx, c, g, shoal.RefOf[arrow.RecordBatch](all.Key()))
	require.NoError(t, err)
	require.Equal(t, int64(40), rec.NumRows())
	require.Equal(t, int64(301), rec.Column(1).(*array.Int64).Value(31)) // part 3, row 1
	rec.Release()
}

func TestArrowScatter(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	rec := rows(mem, 7, 1)
	futs, err := shoal.Scatter(ctx, c, rec)
	rec.Release()
	mem.AssertSize(t, 0) // scattering copies out what it sends
	require.NoError(t, err)
	defer futs[0].Release()
	g := shoal.NewGraph()
	sums, err := shoal.Get(ctx, c, g, sumByKey.Call(g, futs[0].Ref()))
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"k0": 1 + 4 + 7, "k1": 2 + 5, "k2": 3 + 6}, sums)
}
