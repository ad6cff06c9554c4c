package arrowio

import (
	"context"
	"errors"
	"math"
	"sort"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/stretchr/testify/require"
)

// row is one row of a GeneratedSchema table, read back for reference
// computations.
type row struct {
	id, key int64
	x       float64
	name    string
}

func rows(t *testing.T, tbl arrow.Table) []row {
	t.Helper()
	var out []row
	tr := array.NewTableReader(tbl, 0)
	defer tr.Release()
	for tr.Next() {
		rec := tr.RecordBatch()
		ids := rec.Column(0).(*array.Int64)
		keys := rec.Column(1).(*array.Int64)
		xs := rec.Column(2).(*array.Float64)
		names := rec.Column(3).(*array.String)
		for i := range int(rec.NumRows()) {
			out = append(out, row{ids.Value(i), keys.Value(i), xs.Value(i), names.Value(i)})
		}
	}
	return out
}

// call runs a built-in with a checked allocator and returns its result.
func call(t *testing.T, fns map[string]Func, name string, args ...any) any {
	t.Helper()
	out, err := fns[name](context.Background(), args)
	require.NoError(t, err, name)
	return out
}

func TestBuiltins(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	fns := FunctionsWithAllocator(mem)

	const n = 5000
	// msgpack hands small integers over as int8/uint16 etc.
	tbl := call(t, fns, "arrow_table", uint16(n), int8(3), uint8(2)).(arrow.Table)
	defer tbl.Release()
	all := rows(t, tbl)
	require.Len(t, all, n)
	for i, r := range all {
		require.Equal(t, int64(2*n+i), r.id)
		require.Equal(t, r.id%100, r.key)
		require.GreaterOrEqual(t, r.x, 0.0)
		require.Less(t, r.x, 1.0)
		require.Equal(t, string([]byte{'k', byte('0' + r.key/10), byte('0' + r.key%10)}), r.name)
	}
	again := call(t, fns, "arrow_table", int64(n), 3.0, 2).(arrow.Table)
	require.True(t, array.TableEqual(tbl, again), "same seed, same table")
	again.Release()

	t.Run("row_count", func(t *testing.T) {
		require.Equal(t, int64(n), call(t, fns, "row_count", tbl))
	})
	t.Run("sum_column", func(t *testing.T) {
		var want float64
		for _, r := range all {
			want += r.x
		}
		require.InDelta(t, want, call(t, fns, "sum_column", tbl, "x"), 1e-9)
		var keys float64
		for _, r := range all {
			keys += float64(r.key)
		}
		require.Equal(t, keys, call(t, fns, "sum_column", tbl, "key"))
	})
	t.Run("filter_gt", func(t *testing.T) {
		out := call(t, fns, "filter_gt", tbl, "x", 0.75).(arrow.Table)
		defer out.Release()
		var want []row
		for _, r := range all {
			if r.x > 0.75 {
				want = append(want, r)
			}
		}
		require.Equal(t, want, rows(t, out))

		byKey := call(t, fns, "filter_gt", tbl, "key", int32(97)).(arrow.Table)
		defer byKey.Release()
		require.Equal(t, int64(2*n/100), byKey.NumRows())
	})
	t.Run("project", func(t *testing.T) {
		out := call(t, fns, "project", tbl, []any{"x", "id"}).(arrow.Table)
		defer out.Release()
		require.Equal(t, []string{"x", "id"}, fieldNames(out.Schema()))
		require.Equal(t, int64(n), out.NumRows())
		require.Equal(t, tbl.Column(2).Data(), out.Column(0).Data())
	})
	t.Run("concat", func(t *testing.T) {
		other := call(t, fns, "arrow_table", 10, 1, 0).(arrow.Table)
		defer other.Release()
		out := call(t, fns, "concat", tbl, other).(arrow.Table)
		defer out.Release()
		require.Equal(t, append(rows(t, tbl), rows(t, other)...), rows(t, out))
		listed := call(t, fns, "concat", []any{tbl, other}).(arrow.Table)
		defer listed.Release()
		require.True(t, array.TableEqual(out, listed))
	})
	t.Run("hash_partition", func(t *testing.T) {
		const parts = 4
		seen := 0
		for p := range parts {
			out := call(t, fns, "hash_partition", tbl, "key", parts, p).(arrow.Table)
			got := rows(t, out)
			out.Release()
			seen += len(got)
			var want []row
			for _, r := range all {
				if HashPartition(r.key, parts) == p {
					want = append(want, r)
				}
			}
			require.Equal(t, want, got)
		}
		require.Equal(t, n, seen)
		// Integers hash by value whatever their width.
		require.Equal(t, HashPartition(int64(42), 7), HashPartition(uint8(42), 7))
	})
	t.Run("groupby_sum", func(t *testing.T) {
		out := call(t, fns, "groupby_sum", tbl, "key", "x").(arrow.Table)
		defer out.Release()
		want := map[int64]float64{}
		for _, r := range all {
			want[r.key] += r.x
		}
		require.Equal(t, int64(len(want)), out.NumRows())
		keys := out.Column(0).Data().Chunk(0).(*array.Int64)
		sums := out.Column(1).Data().Chunk(0).(*array.Float64)
		for i := range keys.Len() {
			require.InDelta(t, want[keys.Value(i)], sums.Value(i), 1e-9)
			if i > 0 {
				require.Less(t, keys.Value(i-1), keys.Value(i))
			}
		}
		byName := call(t, fns, "groupby_sum", tbl, "name", "id").(arrow.Table)
		defer byName.Release()
		names := byName.Column(0).Data().Chunk(0).(*array.String)
		ids := byName.Column(1).Data().Chunk(0).(*array.Int64)
		wantIDs := map[string]int64{}
		for _, r := range all {
			wantIDs[r.name] += r.id
		}
		for i := range names.Len() {
			require.Equal(t, wantIDs[names.Value(i)], ids.Value(i))
		}
	})
	t.Run("sort_by", func(t *testing.T) {
		two := call(t, fns, "concat", tbl, tbl).(arrow.Table) // several chunks
		defer two.Release()
		out := call(t, fns, "sort_by", two, "x").(arrow.Table)
		defer out.Release()
		want := append(rows(t, tbl), rows(t, tbl)...)
		sort.SliceStable(want, func(i, j int) bool { return want[i].x < want[j].x })
		require.Equal(t, want, rows(t, out))

		desc := call(t, fns, "sort_by", tbl, "key", false).(arrow.Table)
		defer desc.Release()
		got := rows(t, desc)
		require.True(t, sort.SliceIsSorted(got, func(i, j int) bool { return got[i].key > got[j].key }))
	})
	t.Run("bytes_table", func(t *testing.T) {
		out := call(t, fns, "arrow_bytes_table", 3*8*chunkRows+5).(arrow.Table)
		defer out.Release()
		require.Equal(t, int64(3*chunkRows+1), out.NumRows())
		require.Equal(t, sumTo(3*chunkRows+1), call(t, fns, "sum_column", out, "x"))
	})
}

func sumTo(n int64) float64 { return float64(n*(n-1)) / 2 }

func TestBuiltinsNulls(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	fns := FunctionsWithAllocator(mem)
	tbl := mixedTable(t, mem) // i: 10-v, f: v/2, nulls where v%4 == 3
	defer tbl.Release()

	require.Equal(t, 0.0+0.5+1+2+2.5+3+4+4.5, call(t, fns, "sum_column", tbl, "f"))

	out := call(t, fns, "filter_gt", tbl, "i", 4).(arrow.Table) // v < 6, non-null
	defer out.Release()
	require.Equal(t, int64(5), out.NumRows())
	require.Zero(t, out.Column(2).NullN())

	sorted := call(t, fns, "sort_by", tbl, "i").(arrow.Table)
	defer sorted.Release()
	col := sorted.Column(0).Data().Chunk(0).(*array.Int32)
	require.Equal(t, []int32{1, 2, 4, 5, 6, 8, 9, 10}, col.Int32Values()[:8])
	require.Equal(t, 2, col.NullN())
	require.True(t, col.IsNull(8) && col.IsNull(9))

	parts := 0
	for p := range 3 {
		out := call(t, fns, "hash_partition", tbl, "s", 3, p).(arrow.Table)
		parts += int(out.NumRows())
		out.Release()
	}
	require.Equal(t, 10, parts)
}

func TestBuiltinsBadArgs(t *testing.T) {
	fns := Functions()
	tbl := GenerateTable(memory.DefaultAllocator, 10, 0, 0)
	defer tbl.Release()
	cases := map[string][]any{
		"arrow_table":       {"ten"},
		"arrow_bytes_table": {-1},
		"row_count":         {42},
		"concat":            {tbl, "nope"},
		"sum_column":        {tbl, "name"},
		"filter_gt":         {tbl, "x", []any{1}},
		"project":           {tbl, []any{"id", "missing"}},
		"hash_partition":    {tbl, "key", 4, 4},
		"groupby_sum":       {tbl, "x", "id"},
		"sort_by":           {tbl},
	}
	require.Len(t, cases, len(fns), "every function has a bad-argument case")
	for name, args := range cases {
		out, err := fns[name](context.Background(), args)
		require.Nil(t, out, name)
		require.True(t, errors.Is(err, ErrBadArgs), "%s: %v", name, err)
		require.Contains(t, err.Error(), name)
	}
	_, err := fns["arrow_table"](context.Background(), []any{1.5})
	require.ErrorIs(t, err, ErrBadArgs)
	_, err = fns["row_count"](context.Background(), nil)
	require.ErrorIs(t, err, ErrBadArgs)
}

func TestUnitFloatSpread(t *testing.T) {
	var sum float64
	for i := range uint64(10000) {
		sum += unitFloat(1, i)
	}
	require.InDelta(t, 0.5, sum/10000, 0.02)
	require.False(t, math.IsNaN(sum))
}
