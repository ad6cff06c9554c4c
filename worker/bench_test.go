package worker

import (
	"context"
	"fmt"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/shoal-dev/shoal/arrowio"
	"github.com/shoal-dev/shoal/internal/wire"
)

const benchValueBytes = 200 << 20

// BenchmarkGetData moves one 200 MB value worker→worker over loopback with get_data, as a
// peer fetch does (pooled connection, frames used as received). Reports bytes/s.
func BenchmarkGetData(b *testing.B) {
	tbl := arrowio.GenerateBytesTable(memory.DefaultAllocator, benchValueBytes, 0)
	ipc, err := arrowio.EncodeTable(tbl)
	tbl.Release()
	if err != nil {
		b.Fatal(err)
	}
	raw := make([]byte, benchValueBytes)
	for _, c := range []struct {
		name, enc string
		frame     []byte
	}{{"arrow", wire.EncArrow, ipc}, {"bytes", wire.EncBytes, raw}} {
		b.Run(c.name, func(b *testing.B) {
			cfg := testConfig(b)
			cfg.Logger = nil
			cfg.MemoryLimit = 4 * benchValueBytes
			src, dst := newTestWorker(b, cfg), newTestWorker(b, cfg)
			src.Store().Put("v", c.enc, [][]byte{c.frame}, nil)
			b.SetBytes(int64(len(c.frame)))
			for b.Loop() {
				got, err := dst.peers.getData(context.Background(), src.DataAddr(), []string{"v"})
				if err != nil || len(got) != 1 || len(got[0].frames[0]) != len(c.frame) {
					b.Fatalf("getData: %v (%d items)", err, len(got))
				}
			}
		})
	}
}

// BenchmarkNoopTask measures a noop Go task's round trip through a worker: compute in,
// task_finished out, over a real control connection, with up to 1000 tasks in flight.
func BenchmarkNoopTask(b *testing.B) {
	s := newFakeSched(b, "")
	cfg := testConfig(b)
	cfg.Logger = nil
	cfg.HeartbeatInterval = 1 << 40
	_, sc, _, _ := s.startWorker(cfg)
	const window = 1000
	sent, done := 0, 0
	for b.Loop() {
		for sent-done < window {
			sc.send(goTask(fmt.Sprint("t-", sent), "noop", 0))
			sent++
		}
		if m := sc.next(); m.Op != wire.OpTaskFinished {
			b.Fatalf("unexpected %+v", m)
		}
		done++
	}
	for done < sent {
		sc.next()
		done++
	}
}
