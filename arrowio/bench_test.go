package arrowio

import (
	"context"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

const benchBytes = 200 << 20

func reportGBps(b *testing.B, n int64) {
	b.SetBytes(n)
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}

func BenchmarkEncodeTable200MB(b *testing.B) {
	tbl := GenerateBytesTable(memory.DefaultAllocator, benchBytes, 0)
	defer tbl.Release()
	b.ResetTimer()
	for b.Loop() {
		if _, err := EncodeTable(tbl); err != nil {
			b.Fatal(err)
		}
	}
	reportGBps(b, benchBytes)
}

// BenchmarkAppendTable200MB encodes into a reused buffer: the copy alone.
func BenchmarkAppendTable200MB(b *testing.B) {
	tbl := GenerateBytesTable(memory.DefaultAllocator, benchBytes, 0)
	defer tbl.Release()
	buf, err := AppendTable(nil, tbl)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if buf, err = AppendTable(buf[:0], tbl); err != nil {
			b.Fatal(err)
		}
	}
	reportGBps(b, benchBytes)
}

func BenchmarkDecodeTable200MB(b *testing.B) {
	tbl := GenerateBytesTable(memory.DefaultAllocator, benchBytes, 0)
	enc, err := EncodeTable(tbl)
	tbl.Release()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		got, err := DecodeTable(enc)
		if err != nil {
			b.Fatal(err)
		}
		got.Release()
	}
	reportGBps(b, int64(len(enc)))
}

func BenchmarkGenerateBytesTable200MB(b *testing.B) {
	fn := Functions()["arrow_bytes_table"]
	for b.Loop() {
		out, err := fn(context.Background(), []any{int64(benchBytes)})
		if err != nil {
			b.Fatal(err)
		}
		out.(arrow.Table).Release()
	}
	reportGBps(b, benchBytes)
}

func BenchmarkArrowTable10M(b *testing.B) {
	fn := Functions()["arrow_table"]
	for b.Loop() {
		out, err := fn(context.Background(), []any{10_000_000, 1})
		if err != nil {
			b.Fatal(err)
		}
		out.(arrow.Table).Release()
	}
	b.ReportMetric(1e7*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
