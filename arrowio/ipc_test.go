package arrowio

import (
	"bytes"
	"errors"
	"testing"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/stretchr/testify/require"
)

// mixedTable builds a two-chunk table with nulls in several column types.
func mixedTable(t testing.TB, mem memory.Allocator) arrow.Table {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "i", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "f", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "b", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
	}, nil)
	var recs []arrow.RecordBatch
	for chunk := range 2 {
		bld := array.NewRecordBuilder(mem, schema)
		for i := range 5 {
			v := chunk*5 + i
			if v%4 == 3 {
				for _, f := range bld.Fields() {
					f.AppendNull()
				}
				continue
			}
			bld.Field(0).(*array.Int32Builder).Append(int32(10 - v))
			bld.Field(1).(*array.Float64Builder).Append(float64(v) / 2)
			bld.Field(2).(*array.StringBuilder).Append(string(rune('a' + v)))
			bld.Field(3).(*array.BooleanBuilder).Append(v%2 == 0)
		}
		recs = append(recs, bld.NewRecordBatch())
		bld.Release()
	}
	tbl := array.NewTableFromRecords(schema, recs)
	for _, r := range recs {
		r.Release()
	}
	return tbl
}

func TestRoundTrip(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)

	tables := map[string]arrow.Table{
		"mixed":     mixedTable(t, mem),
		"generated": GenerateTable(mem, 3*chunkRows/2, 7, 0),
		"empty":     GenerateTable(mem, 0, 0, 0),
	}
	for name, tbl := range tables {
		t.Run(name, func(t *testing.T) {
			defer tbl.Release()
			b, err := EncodeTable(tbl)
			require.NoError(t, err)

			got, err := decodeTable(b, mem)
			require.NoError(t, err)
			defer got.Release()
			require.True(t, array.TableEqual(tbl, got), "decoded table differs")

			var buf bytes.Buffer
			require.NoError(t, WriteTable(&buf, tbl))
			require.Equal(t, b, buf.Bytes(), "WriteTable and EncodeTable differ")

			appended, err := AppendTable([]byte("prefix"), tbl)
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), b...), appended)

			read, err := ReadTable(bytes.NewReader(b))
			require.NoError(t, err)
			defer read.Release()
			require.True(t, array.TableEqual(tbl, read))
		})
	}
}

func TestEncodeRecord(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	tbl := mixedTable(t, mem)
	defer tbl.Release()
	rec, err := combinedRecord(mem, tbl)
	require.NoError(t, err)
	defer rec.Release()

	b, err := EncodeRecord(rec)
	require.NoError(t, err)
	got, err := decodeTable(b, mem)
	require.NoError(t, err)
	defer got.Release()
	require.True(t, array.TableEqual(tbl, got))
}

func TestEncodeSlicedTable(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	tbl := mixedTable(t, mem)
	defer tbl.Release()
	rec, err := combinedRecord(mem, tbl)
	require.NoError(t, err)
	defer rec.Release()
	part := rec.NewSlice(3, 8)
	defer part.Release()
	b, err := EncodeRecord(part)
	require.NoError(t, err)
	got, err := decodeTable(b, mem)
	require.NoError(t, err)
	defer got.Release()
	want := array.NewTableFromRecords(part.Schema(), []arrow.RecordBatch{part})
	defer want.Release()
	require.True(t, array.TableEqual(want, got))
}

// TestDecodeIsZeroCopy checks that decoded column values live inside the
// input slice.
func TestDecodeIsZeroCopy(t *testing.T) {
	tbl := GenerateBytesTable(memory.DefaultAllocator, 1<<16, 0)
	defer tbl.Release()
	b, err := EncodeTable(tbl)
	require.NoError(t, err)

	got, err := DecodeTable(b)
	require.NoError(t, err)
	defer got.Release()
	vals := got.Column(0).Data().Chunk(0).(*array.Float64).Float64Values()
	require.Equal(t, float64(0), vals[0])
	require.True(t, within(b, unsafe.Pointer(&vals[0])), "values were copied")

	b[len(b)-8-8] ^= 0xFF // the last value's low byte, before the 8-byte EOS
	last := vals[len(vals)-1]
	require.NotEqual(t, float64(len(vals)-1), last, "a change to the input shows through")
}

func within(b []byte, p unsafe.Pointer) bool {
	lo := uintptr(unsafe.Pointer(&b[0]))
	return uintptr(p) >= lo && uintptr(p) < lo+uintptr(len(b))
}

// TestDecodeMisaligned checks that a stream starting at an odd address
// still decodes (its bodies are copied to aligned memory).
func TestDecodeMisaligned(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	tbl := mixedTable(t, mem)
	defer tbl.Release()
	b, err := EncodeTable(tbl)
	require.NoError(t, err)
	odd := append(make([]byte, 1, len(b)+1), b...)[1:]

	got, err := decodeTable(odd, mem)
	require.NoError(t, err)
	defer got.Release()
	require.True(t, array.TableEqual(tbl, got))
}

func TestDecodeGarbage(t *testing.T) {
	tbl := GenerateTable(memory.DefaultAllocator, 100, 1, 0)
	defer tbl.Release()
	good, err := EncodeTable(tbl)
	require.NoError(t, err)

	cases := map[string][]byte{
		"empty":       nil,
		"zeros":       make([]byte, 64),
		"text":        []byte("this is not an arrow stream at all, sorry"),
		"huge length": {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3},
		"truncated":   good[:len(good)/2],
		"only prefix": good[:6],
		"ones":        bytes.Repeat([]byte{0xFF}, 300),
		"schema ok, body flipped": func() []byte {
			b := bytes.Clone(good)
			for i := len(b) / 3; i < len(b)-8; i += 7 {
				b[i] ^= 0x5A
			}
			return b
		}(),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeTable(b)
			if err == nil {
				// A flip may land only in data bytes; then the stream
				// is still well-formed and decoding must succeed.
				got.Release()
				require.Equal(t, "schema ok, body flipped", name)
				return
			}
			require.True(t, errors.Is(err, ErrInvalidStream), "error %v", err)
		})
	}
}

func TestDecodeNoEOS(t *testing.T) {
	tbl := GenerateTable(memory.DefaultAllocator, 10, 1, 0)
	defer tbl.Release()
	b, err := EncodeTable(tbl)
	require.NoError(t, err)
	got, err := DecodeTable(b[:len(b)-8]) // without the end-of-stream marker
	require.NoError(t, err)
	defer got.Release()
	require.True(t, array.TableEqual(tbl, got))
}

func TestTableSize(t *testing.T) {
	tbl := GenerateBytesTable(memory.DefaultAllocator, 1<<20, 0)
	defer tbl.Release()
	require.Equal(t, int64(1<<20), TableSize(tbl))
}

func FuzzDecodeTable(f *testing.F) {
	tbl := mixedTable(f, memory.DefaultAllocator)
	defer tbl.Release()
	good, err := EncodeTable(tbl)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF, 8, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeTable(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidStream) {
				t.Fatalf("error %v does not wrap ErrInvalidStream", err)
			}
			return
		}
		// A table that decodes must be safe to read and re-encode.
		if _, err := EncodeTable(got); err != nil {
			t.Logf("re-encode: %v", err)
		}
		got.Release()
	})
}
