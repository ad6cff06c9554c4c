package arrowio

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

const (
	// chunkRows is the number of rows per chunk of a generated table, so
	// that a large table streams as many moderate record batches.
	chunkRows = 1 << 20
	// maxGeneratedRows bounds arrow_table and arrow_bytes_table so that a
	// typo in a task cannot ask a worker for terabytes.
	maxGeneratedRows = 1 << 32
	// keyModulus is the number of distinct values of arrow_table's key.
	keyModulus = 100
)

// GeneratedSchema is the schema of the tables made by arrow_table: id is
// the global row number (partition*nrows + row), key is id % 100, x is a
// pseudo-random float64 in [0, 1) determined by the seed and id, and name
// is "k" followed by key as two digits.
var GeneratedSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "key", Type: arrow.PrimitiveTypes.Int64},
	{Name: "x", Type: arrow.PrimitiveTypes.Float64},
	{Name: "name", Type: arrow.BinaryTypes.String},
}, nil)

// BytesSchema is the schema of the tables made by arrow_bytes_table.
var BytesSchema = arrow.NewSchema([]arrow.Field{
	{Name: "x", Type: arrow.PrimitiveTypes.Float64},
}, nil)

// arrowTable implements arrow_table(nrows, [seed], [partition]).
func arrowTable(mem memory.Allocator) Func {
	return func(ctx context.Context, vals []any) (any, error) {
		a := newArgs("arrow_table", vals, 1, 3)
		nrows := a.int(0, "nrows", 0)
		seed := a.int(1, "seed", 0)
		part := a.int(2, "partition", 0)
		if a.err != nil {
			return nil, a.err
		}
		if nrows < 0 || nrows > maxGeneratedRows || part < 0 {
			return nil, fmt.Errorf("%w: arrow_table: nrows %d must be in [0, %d] and partition %d non-negative", ErrBadArgs, nrows, int64(maxGeneratedRows), part)
		}
		return GenerateTable(mem, nrows, uint64(seed), part*nrows), nil
	}
}

// GenerateTable builds the table arrow_table returns: nrows rows of
// GeneratedSchema whose ids start at firstID. The caller must Release it.
func GenerateTable(mem memory.Allocator, nrows int64, seed uint64, firstID int64) arrow.Table {
	cols := make([][]arrow.Array, 4)
	for start := int64(0); start < nrows; start += chunkRows {
		n := int(min(chunkRows, nrows-start))
		ids, keys, xs := newFixed(mem, n, 8), newFixed(mem, n, 8), newFixed(mem, n, 8)
		offsets, names := newFixed(mem, n+1, 4), newFixed(mem, 3*n, 1)
		idv, keyv := arrow.Int64Traits.CastFromBytes(ids.Bytes()), arrow.Int64Traits.CastFromBytes(keys.Bytes())
		xv, offv := arrow.Float64Traits.CastFromBytes(xs.Bytes()), arrow.Int32Traits.CastFromBytes(offsets.Bytes())
		namev := names.Bytes()
		for i := range n {
			id := firstID + start + int64(i)
			key := id % keyModulus
			idv[i], keyv[i] = id, key
			xv[i] = unitFloat(seed, uint64(id))
			offv[i] = int32(3 * i)
			namev[3*i], namev[3*i+1], namev[3*i+2] = 'k', byte('0'+key/10), byte('0'+key%10)
		}
		offv[n] = int32(3 * n)
		cols[0] = append(cols[0], makeArray(arrow.PrimitiveTypes.Int64, n, ids))
		cols[1] = append(cols[1], makeArray(arrow.PrimitiveTypes.Int64, n, keys))
		cols[2] = append(cols[2], makeArray(arrow.PrimitiveTypes.Float64, n, xs))
		cols[3] = append(cols[3], makeArray(arrow.BinaryTypes.String, n, offsets, names))
	}
	return tableFromChunks(GeneratedSchema, cols)
}

// arrowBytesTable implements arrow_bytes_table(nbytes, [seed]).
func arrowBytesTable(mem memory.Allocator) Func {
	return func(ctx context.Context, vals []any) (any, error) {
		a := newArgs("arrow_bytes_table", vals, 1, 2)
		nbytes := a.int(0, "nbytes", 0)
		seed := a.int(1, "seed", 0)
		if a.err != nil {
			return nil, a.err
		}
		if nbytes < 0 || nbytes/8 > maxGeneratedRows {
			return nil, fmt.Errorf("%w: arrow_bytes_table: nbytes %d must be in [0, %d]", ErrBadArgs, nbytes, int64(8*maxGeneratedRows))
		}
		return GenerateBytesTable(mem, nbytes, float64(seed)), nil
	}
}

// GenerateBytesTable builds the table arrow_bytes_table returns: one
// float64 column x holding ceil(nbytes/8) values base, base+1, …, in chunks
// of 8 MiB. The caller must Release it.
func GenerateBytesTable(mem memory.Allocator, nbytes int64, base float64) arrow.Table {
	nrows := (nbytes + 7) / 8
	var chunks []arrow.Array
	for start := int64(0); start < nrows; start += chunkRows {
		n := int(min(chunkRows, nrows-start))
		buf := newFixed(mem, n, 8)
		v := arrow.Float64Traits.CastFromBytes(buf.Bytes())
		f := base + float64(start)
		for i := range v {
			v[i] = f
			f++
		}
		chunks = append(chunks, makeArray(arrow.PrimitiveTypes.Float64, n, buf))
	}
	return tableFromChunks(BytesSchema, [][]arrow.Array{chunks})
}

// unitFloat maps (seed, id) to a float64 in [0, 1) with splitmix64.
func unitFloat(seed, id uint64) float64 {
	z := seed*0x9E3779B97F4A7C15 + id + 0x632BE59BD9B4E019
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return float64(z>>11) / (1 << 53)
}

// newFixed allocates a buffer of n elements of width bytes.
func newFixed(mem memory.Allocator, n, width int) *memory.Buffer {
	buf := memory.NewResizableBuffer(mem)
	buf.Resize(n * width)
	return buf
}

// makeArray builds an array without nulls from its value buffers, taking
// over the caller's references to them.
func makeArray(dt arrow.DataType, n int, bufs ...*memory.Buffer) arrow.Array {
	data := array.NewData(dt, n, append([]*memory.Buffer{nil}, bufs...), nil, 0, 0)
	for _, b := range bufs {
		b.Release()
	}
	defer data.Release()
	return array.MakeFromData(data)
}

// tableFromChunks builds a table from per-column chunks, taking over the
// caller's references to them.
func tableFromChunks(schema *arrow.Schema, cols [][]arrow.Array) arrow.Table {
	tbl := array.NewTableFromSlice(schema, cols)
	for _, chunks := range cols {
		for _, c := range chunks {
			c.Release()
		}
	}
	return tbl
}
