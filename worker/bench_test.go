package worker

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/shoal-dev/shoal/arrowio"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

const benchValueBytes = 200 << 20

// BenchmarkGetData moves one 200 MB value worker→worker over loopback with get_data, as a
// peer fetch does (pooled connection, frames used as received), with the fetch's buffer pool
// and without it (every value read into fresh memory). Reports bytes/s.
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
		for _, pool := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/pool=%v", c.name, pool), func(b *testing.B) {
				cfg := testConfig(b)
				cfg.Logger = nil
				cfg.MemoryLimit = 32 * benchValueBytes // a pool of 2 × 200 MB
				src, dst := newTestWorker(b, cfg), newTestWorker(b, cfg)
				if !pool {
					dst.peers.bufs.min = math.MaxInt
				}
				src.Store().Put("v", c.enc, [][]byte{c.frame}, nil)
				b.SetBytes(int64(len(c.frame)))
				for b.Loop() {
					got, err := dst.peers.getData(context.Background(), src.DataAddr(), []string{"v"})
					if err != nil || len(got) != 1 || len(got[0].frames[0]) != len(c.frame) {
						b.Fatalf("getData: %v (%d items)", err, len(got))
					}
				}
				b.ReportMetric(float64(dst.peers.bufs.reuse.Load())/float64(b.N), "reused/op")
			})
		}
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

// BenchmarkExecutorTransfer hands one 200 MB Arrow value from the worker's store to its
// Python executor for a task that only reads its row count, through the shared-memory windows
// and through the socket. Reports bytes/s. Needs the real executor (clients/python).
func BenchmarkExecutorTransfer(b *testing.B) {
	py := shoalPython(b)
	out, err := exec.Command(py, "testdata/make_py_task.py", "rows").Output()
	if err != nil {
		b.Skipf("cannot build a pickled task: %v", err)
	}
	lines := strings.Fields(string(out))
	fn, _ := hex.DecodeString(lines[1])
	payload, _ := hex.DecodeString(lines[2])
	tbl := arrowio.GenerateBytesTable(memory.DefaultAllocator, benchValueBytes, 0)
	ipc, err := arrowio.EncodeTable(tbl)
	tbl.Release()
	if err != nil {
		b.Fatal(err)
	}
	for _, on := range []bool{true, false} {
		b.Run(fmt.Sprintf("shm=%v", on), func(b *testing.B) {
			old := shmEnabled
			shmEnabled = on
			defer func() { shmEnabled = old }()
			cfg := testConfig(b)
			cfg.Logger = nil
			cfg.Python = py
			cfg.MemoryLimit = 32 * benchValueBytes // windows of 200 MB stay mapped between runs
			w, sc, _, _ := newFakeSched(b, "").startWorker(cfg)
			w.Store().Put("tbl", wire.EncArrow, [][]byte{ipc}, nil)
			b.SetBytes(int64(len(ipc)))
			i := 0
			for b.Loop() {
				m := pyTask(fmt.Sprint("rows-", i), lines[0], fn, payload, "tbl")
				if i > 0 {
					m.FuncData = nil
				}
				i++
				sc.send(m)
				sc.expect(wire.OpTaskFinished)
			}
		})
	}
}

// benchDone is an executor's answer to a short run, as the Python executor writes it.
func benchDone(id int) map[string]any {
	return map[string]any{"op": "done", "id": id, "items": []map[string]any{{"key": fmt.Sprintf("('sum', 1, %d)", id),
		"encoding": "msgpack", "nframes": 1, "nbytes": 3}}, "start": int64(1764980000123456789), "stop": int64(1764980000123459999)}
}

// BenchmarkDecodeDone decodes one done answer into a pooled message (per answer of a batch).
func BenchmarkDecodeDone(b *testing.B) {
	hdr, err := msgpack.Marshal(benchDone(12345))
	if err != nil {
		b.Fatal(err)
	}
	var x execExt
	b.ReportAllocs()
	for b.Loop() {
		m, ok := decodeDoneExt(hdr, &x)
		if !ok {
			b.Fatal("not decoded")
		}
		wire.ReleaseMsg(m)
	}
}

// BenchmarkDecodeDones splits a dones message of 20 answers, as a worker reads a batch's
// (ns/op is per message).
func BenchmarkDecodeDones(b *testing.B) {
	replies := make([]any, 20)
	for i := range replies {
		replies[i] = benchDone(i)
	}
	hdr, err := msgpack.Marshal(struct {
		Op      string `msgpack:"op"`
		Replies []any  `msgpack:"replies"`
		NFrames []int  `msgpack:"nframes"`
	}{wire.OpDones, replies, slices.Repeat([]int{1}, 20)})
	if err != nil {
		b.Fatal(err)
	}
	frames := slices.Repeat([][]byte{{0x01}}, 20)
	b.ReportAllocs()
	var answers []queuedAnswer // an execConn's, kept between dones messages
	for b.Loop() {
		answers, err = decodeDones(hdr, frames, answers[:0])
		if err != nil {
			b.Fatal(err)
		}
		for _, a := range answers {
			wire.ReleaseMsg(a.m)
		}
	}
}

// BenchmarkRunsMsg encodes a batch of 20 short runs as one runs message (ns/op per batch).
func BenchmarkRunsMsg(b *testing.B) {
	msgs := make([]outMsg, 20)
	batch := make([]*pyRun, 20)
	for i := range msgs {
		batch[i] = &pyRun{msg: wire.Msg{Op: wire.OpRun, ID: uint64(i), Key: fmt.Sprintf("('sum', 1, %d)", i),
			FuncHash: strings.Repeat("ab", 32), Payload: []byte{0, 0x92, 0x92, 0xa1, 'a', 0xa1, 'b', 0x92, 0, 1},
			Items: []wire.Item{{Key: "a", Encoding: wire.EncMsgpack, NFrames: 1, NBytes: 2}, {Key: "b", Encoding: wire.EncMsgpack, NFrames: 1, NBytes: 2}}},
			keep: true}
		msgs[i] = outMsg{m: &batch[i].msg, payload: [][]byte{{0x01}, {0x02}}}
	}
	b.ReportAllocs()
	var sc runsScratch // an executor's, kept between its batches
	for b.Loop() {
		if _, err := runsMsg(batch, msgs, &sc); err != nil {
			b.Fatal(err)
		}
		sc.sent()
	}
}
