package arrowio

import (
	"errors"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// ErrUnsupportedType is returned, wrapped with the column and its type, when
// an operator meets a column type it does not handle.
var ErrUnsupportedType = errors.New("arrowio: unsupported column type")

// takeRecord gathers rows idx of rec into a new record batch.
func takeRecord(mem memory.Allocator, rec arrow.RecordBatch, idx []int) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, 0, rec.NumCols())
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	for i, col := range rec.Columns() {
		out, err := takeArray(mem, col, idx)
		if err != nil {
			return nil, fmt.Errorf("column %q: %w", rec.ColumnName(i), err)
		}
		cols = append(cols, out)
	}
	return array.NewRecordBatch(rec.Schema(), cols, int64(len(idx))), nil
}

// takeArray gathers elements idx of arr, nulls included, into a new array.
func takeArray(mem memory.Allocator, arr arrow.Array, idx []int) (arrow.Array, error) {
	switch a := arr.(type) {
	case *array.Boolean:
		return takeBuilt(mem, a, idx, func(b *array.BooleanBuilder, i int) { b.Append(a.Value(i)) }), nil
	case *array.String:
		return takeBuilt(mem, a, idx, func(b *array.StringBuilder, i int) { b.Append(a.Value(i)) }), nil
	case *array.LargeString:
		return takeBuilt(mem, a, idx, func(b *array.LargeStringBuilder, i int) { b.Append(a.Value(i)) }), nil
	case *array.Binary:
		return takeBuilt(mem, a, idx, func(b *array.BinaryBuilder, i int) { b.Append(a.Value(i)) }), nil
	}
	if w, ok := fixedWidth(arr); ok {
		return takeFixed(mem, arr, w, idx), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUnsupportedType, arr.DataType())
}

// fixedWidth reports the byte width of arr's values when they are a flat
// buffer of equal-sized elements (integers, floats, temporal, decimals,
// fixed-size binary).
func fixedWidth(arr arrow.Array) (int, bool) {
	d := arr.Data()
	fw, ok := arr.DataType().(arrow.FixedWidthDataType)
	if !ok || len(d.Buffers()) != 2 || len(d.Children()) != 0 || d.DataType().ID() == arrow.DICTIONARY {
		return 0, false
	}
	if bits := fw.BitWidth(); bits > 0 && bits%8 == 0 {
		return bits / 8, true
	}
	return 0, false
}

func takeFixed(mem memory.Allocator, arr arrow.Array, width int, idx []int) arrow.Array {
	d := arr.Data()
	off := d.Offset()
	src := d.Buffers()[1].Bytes()
	values := newFixed(mem, len(idx), width)
	dst := values.Bytes()
	if width == 8 {
		s, t := arrow.Uint64Traits.CastFromBytes(src)[off:], arrow.Uint64Traits.CastFromBytes(dst)
		for j, i := range idx {
			t[j] = s[i]
		}
	} else {
		for j, i := range idx {
			copy(dst[j*width:(j+1)*width], src[(off+i)*width:(off+i+1)*width])
		}
	}
	validity, nulls := takeValidity(mem, arr, idx)
	data := array.NewData(arr.DataType(), len(idx), []*memory.Buffer{validity, values}, nil, nulls, 0)
	values.Release()
	if validity != nil {
		validity.Release()
	}
	defer data.Release()
	return array.MakeFromData(data)
}

// takeValidity returns the validity bitmap of arr's elements idx, or nil
// when none of them is null.
func takeValidity(mem memory.Allocator, arr arrow.Array, idx []int) (*memory.Buffer, int) {
	if arr.NullN() == 0 {
		return nil, 0
	}
	buf := newFixed(mem, int(bitutil.BytesForBits(int64(len(idx)))), 1)
	bits := buf.Bytes()
	clear(bits)
	nulls := 0
	for j, i := range idx {
		if arr.IsValid(i) {
			bitutil.SetBit(bits, j)
		} else {
			nulls++
		}
	}
	if nulls == 0 {
		buf.Release()
		return nil, 0
	}
	return buf, nulls
}

// takeBuilt gathers elements of arr with a typed builder; add appends
// element i of arr.
func takeBuilt[B array.Builder](mem memory.Allocator, arr arrow.Array, idx []int, add func(B, int)) arrow.Array {
	b := array.NewBuilder(mem, arr.DataType()).(B)
	defer b.Release()
	b.Reserve(len(idx))
	for _, i := range idx {
		if arr.IsNull(i) {
			b.AppendNull()
		} else {
			add(b, i)
		}
	}
	return b.NewArray()
}
