package arrowio

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// ErrInvalidStream is returned, wrapped with the reason, by DecodeTable and
// ReadTable when the input is not a well-formed Arrow IPC stream.
var ErrInvalidStream = errors.New("arrowio: invalid Arrow IPC stream")

// batchOverhead is a generous estimate of the IPC metadata written per
// record batch, used only to size the output buffer of EncodeTable.
const batchOverhead = 1024

// EncodeTable encodes tbl as an Arrow IPC stream: the schema, one record
// batch per run of aligned column chunks, and the end-of-stream marker.
// The column buffers are copied once, into the returned slice; for a large
// table most of the cost is the kernel providing that fresh memory, which
// AppendTable with a reused buffer or WriteTable to a connection avoid.
func EncodeTable(tbl arrow.Table) ([]byte, error) {
	return AppendTable(nil, tbl)
}

// AppendTable appends the IPC stream encoding of tbl to dst, growing it
// once, and returns the extended slice.
func AppendTable(dst []byte, tbl arrow.Table) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	buf.Grow(int(encodedSizeHint(tbl)))
	if err := WriteTable(buf, tbl); err != nil {
		return dst, err
	}
	return buf.Bytes(), nil
}

// EncodeRecord encodes one record batch as an Arrow IPC stream.
func EncodeRecord(rec arrow.RecordBatch) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(recordSize(rec)) + 2*batchOverhead)
	w := ipc.NewWriter(&buf, ipc.WithSchema(rec.Schema()))
	if err := w.Write(rec); err != nil {
		w.Close()
		return nil, fmt.Errorf("arrowio: encode record: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("arrowio: encode record: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTable streams tbl to w as an Arrow IPC stream without building the
// whole encoding in memory: each record batch is written as it is encoded.
// A table with no rows is written as a schema followed by end-of-stream.
func WriteTable(w io.Writer, tbl arrow.Table) error {
	iw := ipc.NewWriter(w, ipc.WithSchema(tbl.Schema()))
	tr := array.NewTableReader(tbl, 0)
	defer tr.Release()
	for tr.Next() {
		if err := iw.Write(tr.RecordBatch()); err != nil {
			iw.Close()
			return fmt.Errorf("arrowio: write table: %w", err)
		}
	}
	if err := tr.Err(); err != nil {
		iw.Close()
		return fmt.Errorf("arrowio: write table: %w", err)
	}
	if err := iw.Close(); err != nil {
		return fmt.Errorf("arrowio: write table: %w", err)
	}
	return nil
}

// DecodeTable decodes an Arrow IPC stream held in b.
//
// The decode is zero-copy: the columns of the returned table are slices of
// b, not copies (arrow-go's own ipc.NewReader always copies each message
// body into a fresh allocation, so DecodeTable feeds ipc.NewReaderFromMessageReader
// with a reader that wraps sub-slices of b with memory.NewBufferBytes).
// The caller must therefore not modify b while the table, or anything sliced
// from it, is in use. The only exception is a message body that is not
// 8-byte aligned in memory (b itself misaligned), which is copied so that
// typed access stays aligned. Compressed streams are decompressed into new
// buffers.
//
// The caller owns the table and must Release it. Malformed input gives an
// error wrapping ErrInvalidStream, never a panic.
func DecodeTable(b []byte) (tbl arrow.Table, err error) {
	return decodeTable(b, memory.DefaultAllocator)
}

// ReadTable reads a whole Arrow IPC stream from r. Unlike DecodeTable it
// copies: the message bodies are read into buffers from the default
// allocator.
func ReadTable(r io.Reader) (arrow.Table, error) {
	return readTable(func() (*ipc.Reader, error) { return ipc.NewReader(r) })
}

func decodeTable(b []byte, mem memory.Allocator) (arrow.Table, error) {
	return readTable(func() (*ipc.Reader, error) {
		mr := newBytesMessageReader(b, mem)
		rd, err := ipc.NewReaderFromMessageReader(mr, ipc.WithAllocator(mem))
		if err != nil {
			mr.Release()
		}
		return rd, err
	})
}

// readTable drains the reader made by open into a table, turning any panic
// raised by arrow-go on malformed input into ErrInvalidStream.
func readTable(open func() (*ipc.Reader, error)) (tbl arrow.Table, err error) {
	var recs []arrow.RecordBatch
	defer func() {
		if p := recover(); p != nil {
			tbl, err = nil, fmt.Errorf("%w: %v", ErrInvalidStream, p)
		}
		for _, rec := range recs {
			rec.Release()
		}
	}()
	rd, err := open()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidStream, err)
	}
	defer rd.Release()
	for rd.Next() {
		rec := rd.RecordBatch()
		rec.Retain()
		recs = append(recs, rec)
		if err := validateRecord(rec); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidStream, err)
		}
	}
	if err := rd.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidStream, err)
	}
	return array.NewTableFromRecords(rd.Schema(), recs), nil
}

// validateRecord checks what arrow-go does not check when it builds arrays
// from IPC metadata: that every column has the batch's length and that
// variable-length offsets stay inside their data buffers.
func validateRecord(rec arrow.RecordBatch) error {
	for i, col := range rec.Columns() {
		if int64(col.Len()) != rec.NumRows() {
			return fmt.Errorf("column %d has %d rows, batch has %d", i, col.Len(), rec.NumRows())
		}
		if v, ok := col.(interface{ ValidateFull() error }); ok {
			if err := v.ValidateFull(); err != nil {
				return fmt.Errorf("column %d: %w", i, err)
			}
		}
	}
	return nil
}

// TableSize returns the number of bytes referenced by tbl's buffers, the
// figure a worker reports as a stored table's size. Buffers shared by
// several slices are counted once per slice.
func TableSize(tbl arrow.Table) int64 {
	var n int64
	for i := 0; i < int(tbl.NumCols()); i++ {
		for _, chunk := range tbl.Column(i).Data().Chunks() {
			n += dataSize(chunk.Data())
		}
	}
	return n
}

func recordSize(rec arrow.RecordBatch) int64 {
	var n int64
	for _, col := range rec.Columns() {
		n += dataSize(col.Data())
	}
	return n
}

func dataSize(d arrow.ArrayData) int64 {
	var n int64
	for _, b := range d.Buffers() {
		if b != nil {
			n += int64(b.Len())
		}
	}
	for _, c := range d.Children() {
		n += dataSize(c)
	}
	if d.DataType().ID() == arrow.DICTIONARY {
		n += dataSize(d.Dictionary())
	}
	return n
}

func encodedSizeHint(tbl arrow.Table) int64 {
	nbatches := int64(1)
	for i := 0; i < int(tbl.NumCols()); i++ {
		nbatches += int64(len(tbl.Column(i).Data().Chunks()))
	}
	return TableSize(tbl) + (nbatches+1)*batchOverhead
}
