package arrowio

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// groupbySum sums a numeric column per distinct key. The result has two
// columns named like the inputs: the key (int64 for any integer key type,
// uint64 for unsigned, string for strings) and the sum (int64 for integer
// values, float64 for floats), one row per key in ascending key order. Rows
// with a null key are dropped (as pandas does); null values add nothing.
func (o op) groupbySum(ctx context.Context, vals []any) (any, error) {
	a := newArgs("groupby_sum", vals, 3, 3)
	defer a.release()
	tbl := a.table(0, "table")
	kcol := a.column(tbl, 1, "key column")
	vcol := a.column(tbl, 2, "value column")
	if a.err != nil {
		return nil, a.err
	}
	keys, err := combined(o.mem, tbl.Column(kcol))
	if err != nil {
		return nil, err
	}
	defer keys.Release()
	values, err := combined(o.mem, tbl.Column(vcol))
	if err != nil {
		return nil, err
	}
	defer values.Release()
	kacc, err := access(keys)
	if err != nil || kacc.kind == kindFloat {
		return nil, fmt.Errorf("%w: groupby_sum: key column %q is %s, want an integer or string", ErrBadArgs, tbl.Schema().Field(kcol).Name, keys.DataType())
	}
	vacc, err := access(values)
	if err != nil || !vacc.numeric() {
		return nil, fmt.Errorf("%w: groupby_sum: value column %q is %s, want a number", ErrBadArgs, tbl.Schema().Field(vcol).Name, values.DataType())
	}
	kb, sb := o.groupBuilders(kacc, vacc)
	defer kb.Release()
	defer sb.Release()
	switch kacc.kind {
	case kindInt:
		groupInto(keys, values, kacc.i, vacc, kb.(*array.Int64Builder).Append, sb)
	case kindUint:
		groupInto(keys, values, kacc.u, vacc, kb.(*array.Uint64Builder).Append, sb)
	default:
		groupInto(keys, values, kacc.s, vacc, kb.(*array.StringBuilder).Append, sb)
	}
	kf, vf := tbl.Schema().Field(kcol), tbl.Schema().Field(vcol)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: kf.Name, Type: kb.Type()},
		{Name: vf.Name, Type: sb.Type()},
	}, nil)
	karr, sarr := kb.NewArray(), sb.NewArray()
	return tableFromChunks(schema, [][]arrow.Array{{karr}, {sarr}}), nil
}

func (o op) groupBuilders(k, v accessor) (kb, sb array.Builder) {
	switch k.kind {
	case kindInt:
		kb = array.NewInt64Builder(o.mem)
	case kindUint:
		kb = array.NewUint64Builder(o.mem)
	default:
		kb = array.NewStringBuilder(o.mem)
	}
	if v.kind == kindFloat {
		return kb, array.NewFloat64Builder(o.mem)
	}
	return kb, array.NewInt64Builder(o.mem)
}

// groupInto sums values per key and appends the groups, ordered by key, to
// the key builder (through appendKey) and the sum builder sb.
func groupInto[K cmp.Ordered](keys, values arrow.Array, key func(int) K, v accessor, appendKey func(K), sb array.Builder) {
	isums, fsums := map[K]int64{}, map[K]float64{}
	seen := map[K]struct{}{}
	for i := range keys.Len() {
		if keys.IsNull(i) {
			continue
		}
		k := key(i)
		seen[k] = struct{}{}
		if values.IsNull(i) {
			continue
		}
		switch v.kind {
		case kindFloat:
			fsums[k] += v.f(i)
		case kindInt:
			isums[k] += v.i(i)
		default:
			isums[k] += int64(v.u(i))
		}
	}
	order := make([]K, 0, len(seen))
	for k := range seen {
		order = append(order, k)
	}
	slices.Sort(order)
	for _, k := range order {
		appendKey(k)
		if v.kind == kindFloat {
			sb.(*array.Float64Builder).Append(fsums[k])
		} else {
			sb.(*array.Int64Builder).Append(isums[k])
		}
	}
}

// sortBy sorts the table by one column, stably, ascending unless the
// optional third argument is false. Nulls and NaNs sort last either way.
func (o op) sortBy(ctx context.Context, vals []any) (any, error) {
	a := newArgs("sort_by", vals, 2, 3)
	defer a.release()
	tbl := a.table(0, "table")
	col := a.column(tbl, 1, "column")
	ascending := a.bool(2, "ascending", true)
	if a.err != nil {
		return nil, a.err
	}
	rec, err := combinedRecord(o.mem, tbl)
	if err != nil {
		return nil, err
	}
	defer rec.Release()
	idx, err := sortIndices(rec.Column(col), ascending)
	if err != nil {
		return nil, fmt.Errorf("%w: sort_by: column %q: %v", ErrBadArgs, rec.ColumnName(col), err)
	}
	sorted, err := takeRecord(o.mem, rec, idx)
	if err != nil {
		return nil, fmt.Errorf("sort_by: %w", err)
	}
	defer sorted.Release()
	return array.NewTableFromRecords(tbl.Schema(), []arrow.RecordBatch{sorted}), nil
}

// sortIndices returns the row order that sorts arr.
func sortIndices(arr arrow.Array, ascending bool) ([]int, error) {
	acc, err := access(arr)
	if err != nil {
		return nil, err
	}
	idx := make([]int, 0, arr.Len())
	var last []int // nulls and NaNs
	for i := range arr.Len() {
		if arr.IsNull(i) || (acc.kind == kindFloat && acc.f(i) != acc.f(i)) {
			last = append(last, i)
		} else {
			idx = append(idx, i)
		}
	}
	var c func(i, j int) int
	switch acc.kind {
	case kindInt:
		c = func(i, j int) int { return cmp.Compare(acc.i(i), acc.i(j)) }
	case kindUint:
		c = func(i, j int) int { return cmp.Compare(acc.u(i), acc.u(j)) }
	case kindFloat:
		c = func(i, j int) int { return cmp.Compare(acc.f(i), acc.f(j)) }
	default:
		c = func(i, j int) int { return cmp.Compare(acc.s(i), acc.s(j)) }
	}
	if !ascending {
		asc := c
		c = func(i, j int) int { return asc(j, i) }
	}
	slices.SortStableFunc(idx, c)
	return append(idx, last...), nil
}

// combined returns a column as one array, concatenating its chunks when it
// has several. The caller must Release the result.
func combined(mem memory.Allocator, col *arrow.Column) (arrow.Array, error) {
	chunks := col.Data().Chunks()
	switch len(chunks) {
	case 0:
		return array.MakeArrayOfNull(mem, col.DataType(), 0), nil
	case 1:
		chunks[0].Retain()
		return chunks[0], nil
	}
	arr, err := array.Concatenate(chunks, mem)
	if err != nil {
		return nil, fmt.Errorf("arrowio: combine column %q: %w", col.Name(), err)
	}
	return arr, nil
}

// combinedRecord returns the whole table as one record batch.
func combinedRecord(mem memory.Allocator, tbl arrow.Table) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, 0, tbl.NumCols())
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	for i := range int(tbl.NumCols()) {
		arr, err := combined(mem, tbl.Column(i))
		if err != nil {
			return nil, err
		}
		cols = append(cols, arr)
	}
	return array.NewRecordBatch(tbl.Schema(), cols, tbl.NumRows()), nil
}
