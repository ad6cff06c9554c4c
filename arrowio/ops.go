package arrowio

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// op is the common shape of the table operators: it validates args, and
// wraps errors with the function name.
type op struct {
	mem memory.Allocator
}

func (o op) rowCount(ctx context.Context, vals []any) (any, error) {
	a := newArgs("row_count", vals, 1, 1)
	defer a.release()
	tbl := a.table(0, "table")
	if a.err != nil {
		return nil, a.err
	}
	return tbl.NumRows(), nil
}

// concat takes tables as separate arguments or as one list argument.
func (o op) concat(ctx context.Context, vals []any) (any, error) {
	if len(vals) == 1 {
		if list, ok := vals[0].([]any); ok {
			vals = list
		}
	}
	a := newArgs("concat", vals, 1, -1)
	defer a.release()
	var tables []arrow.Table
	for i := range vals {
		tables = append(tables, a.table(i, "table"))
	}
	if a.err != nil {
		return nil, a.err
	}
	schema := tables[0].Schema()
	cols := make([][]arrow.Array, schema.NumFields())
	for i, t := range tables {
		if !t.Schema().Equal(schema) {
			return nil, fmt.Errorf("%w: concat: table %d has schema %s, table 0 has %s", ErrBadArgs, i, t.Schema(), schema)
		}
		for c := range cols {
			cols[c] = append(cols[c], t.Column(c).Data().Chunks()...)
		}
	}
	return array.NewTableFromSlice(schema, cols), nil
}

func (o op) sumColumn(ctx context.Context, vals []any) (any, error) {
	a := newArgs("sum_column", vals, 2, 2)
	defer a.release()
	tbl := a.table(0, "table")
	col := a.column(tbl, 1, "column")
	if a.err != nil {
		return nil, a.err
	}
	var sum float64
	for _, chunk := range tbl.Column(col).Data().Chunks() {
		acc, err := access(chunk)
		if err != nil || !acc.numeric() {
			return nil, fmt.Errorf("%w: sum_column: column %q is %s, not numeric", ErrBadArgs, tbl.Schema().Field(col).Name, chunk.DataType())
		}
		sum += sumArray(chunk, acc)
	}
	return sum, nil
}

func sumArray(arr arrow.Array, acc accessor) float64 {
	var sum float64
	if f, ok := arr.(*array.Float64); ok && arr.NullN() == 0 {
		for _, v := range f.Float64Values() {
			sum += v
		}
		return sum
	}
	for i := range arr.Len() {
		if arr.IsValid(i) {
			sum += acc.number(i)
		}
	}
	return sum
}

// filterGT keeps the rows whose column is greater than value. Integer
// columns compare exactly with integral values; strings compare bytewise.
// Nulls never pass.
func (o op) filterGT(ctx context.Context, vals []any) (any, error) {
	a := newArgs("filter_gt", vals, 3, 3)
	defer a.release()
	tbl := a.table(0, "table")
	col := a.column(tbl, 1, "column")
	if a.err != nil {
		return nil, a.err
	}
	threshold := vals[2]
	return o.selectRows(tbl, func(rec arrow.RecordBatch) ([]int, error) {
		arr := rec.Column(col)
		pred, err := greaterThan(arr, threshold)
		if err != nil {
			return nil, fmt.Errorf("%w: filter_gt: column %q: %v", ErrBadArgs, rec.ColumnName(col), err)
		}
		var idx []int
		for i := range arr.Len() {
			if arr.IsValid(i) && pred(i) {
				idx = append(idx, i)
			}
		}
		return idx, nil
	})
}

// greaterThan returns a predicate "element i of arr > v".
func greaterThan(arr arrow.Array, v any) (func(int) bool, error) {
	acc, err := access(arr)
	if err != nil {
		return nil, err
	}
	if s, ok := v.(string); ok {
		if acc.kind != kindString {
			return nil, fmt.Errorf("cannot compare %s with a string", arr.DataType())
		}
		return func(i int) bool { return acc.s(i) > s }, nil
	}
	if !acc.numeric() {
		return nil, fmt.Errorf("cannot compare %s with %T", arr.DataType(), v)
	}
	n, isInt := asInt(v)
	switch {
	case isInt && acc.kind == kindInt:
		return func(i int) bool { return acc.i(i) > n }, nil
	case isInt && acc.kind == kindUint:
		return func(i int) bool { return n < 0 || acc.u(i) > uint64(n) }, nil
	}
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case float32:
		f = float64(x)
	default:
		if !isInt {
			return nil, fmt.Errorf("want a number or string to compare with, got %T", v)
		}
		f = float64(n)
	}
	return func(i int) bool { return acc.number(i) > f }, nil
}

func (o op) project(ctx context.Context, vals []any) (any, error) {
	a := newArgs("project", vals, 2, 2)
	defer a.release()
	tbl := a.table(0, "table")
	names := a.strs(1, "columns")
	if a.err != nil {
		return nil, a.err
	}
	fields := make([]arrow.Field, len(names))
	cols := make([]arrow.Column, len(names))
	for i, name := range names {
		idx := tbl.Schema().FieldIndices(name)
		if len(idx) == 0 {
			return nil, fmt.Errorf("%w: project: no column %q in schema %s", ErrBadArgs, name, fieldNames(tbl.Schema()))
		}
		fields[i], cols[i] = tbl.Schema().Field(idx[0]), *tbl.Column(idx[0])
	}
	return array.NewTable(arrow.NewSchema(fields, nil), cols, tbl.NumRows()), nil
}

// hashPartition keeps the rows whose column hashes to partition part of
// nparts (see HashPartition).
func (o op) hashPartition(ctx context.Context, vals []any) (any, error) {
	a := newArgs("hash_partition", vals, 4, 4)
	defer a.release()
	tbl := a.table(0, "table")
	col := a.column(tbl, 1, "column")
	nparts := a.int(2, "nparts", 0)
	part := a.int(3, "partition", 0)
	if a.err != nil {
		return nil, a.err
	}
	if nparts < 1 || part < 0 || part >= nparts {
		return nil, fmt.Errorf("%w: hash_partition: partition %d of %d parts is out of range", ErrBadArgs, part, nparts)
	}
	return o.selectRows(tbl, func(rec arrow.RecordBatch) ([]int, error) {
		arr := rec.Column(col)
		acc, err := access(arr)
		if err != nil {
			return nil, fmt.Errorf("hash_partition: column %q: %w", rec.ColumnName(col), err)
		}
		var idx []int
		for i := range arr.Len() {
			p := int64(0)
			if arr.IsValid(i) {
				p = int64(acc.hash(i) % uint64(nparts))
			}
			if p == part {
				idx = append(idx, i)
			}
		}
		return idx, nil
	})
}

// selectRows builds a table from the rows of each record batch of tbl that
// pick chooses.
func (o op) selectRows(tbl arrow.Table, pick func(arrow.RecordBatch) ([]int, error)) (arrow.Table, error) {
	var out []arrow.RecordBatch
	defer func() {
		for _, r := range out {
			r.Release()
		}
	}()
	tr := array.NewTableReader(tbl, 0)
	defer tr.Release()
	for tr.Next() {
		rec := tr.RecordBatch()
		idx, err := pick(rec)
		if err != nil {
			return nil, err
		}
		if len(idx) == 0 {
			continue
		}
		sel, err := takeRecord(o.mem, rec, idx)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return array.NewTableFromRecords(tbl.Schema(), out), nil
}
