package shoal

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/shoal-dev/shoal/arrowio"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// ErrNoWorkers is returned by Scatter when the cluster has no worker to put values on.
var ErrNoWorkers = errors.New("shoal: no worker is available")

// Scatter puts Go values on the cluster's workers (spread round-robin, least loaded first)
// and returns one future per value, as Python's Client.scatter does: each travels straight to
// a worker's data port, and the scheduler then tracks it as this client's key, usable as an
// argument (FutureOf.Ref) until released. Values are encoded as results are: arrow.Table and
// arrow.RecordBatch as Arrow, []byte as raw bytes, anything else as msgpack.
func Scatter[T any](ctx context.Context, c *Client, values ...T) ([]FutureOf[T], error) {
	anys := make([]any, len(values))
	for i, v := range values {
		anys[i] = v
	}
	fs, err := c.Scatter(ctx, anys...)
	if err != nil {
		return nil, err
	}
	out := make([]FutureOf[T], len(fs))
	for i, f := range fs {
		out[i] = FutureOf[T]{f}
	}
	return out, nil
}

// Scatter is the untyped form of the package function Scatter.
func (c *Client) Scatter(ctx context.Context, values ...any) ([]*Future, error) {
	ws, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, ErrNoWorkers
	}
	slices.SortFunc(ws, func(a, b wire.WorkerInfo) int {
		if a.Memory != b.Memory {
			return int(min(max(a.Memory-b.Memory, -1), 1))
		}
		return strings.Compare(a.Address, b.Address)
	})
	type put struct {
		items  []wire.Item
		frames [][]byte
		idx    []int
	}
	byWorker := map[string]*put{}
	keys := make([]string, len(values))
	for i, v := range values {
		enc, frames, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("shoal: scatter value %d: %w", i, err)
		}
		keys[i] = scatterKey(v)
		addr := ws[i%len(ws)].Address
		p := byWorker[addr]
		if p == nil {
			p = &put{}
			byWorker[addr] = p
		}
		p.items = append(p.items, wire.Item{Key: keys[i], Encoding: enc, NFrames: len(frames), NBytes: frameLen(frames)})
		p.frames = append(p.frames, frames...)
		p.idx = append(p.idx, i)
	}
	futs := make([]*Future, len(values))
	for addr, p := range byWorker {
		if err := c.data.putData(ctx, addr, p.items, p.frames); err != nil {
			return nil, err
		}
		var cbs []func()
		c.mu.Lock()
		for _, i := range p.idx {
			futs[i] = c.futureLocked(keys[i])
			if ks := futs[i].ks; !ks.closed { // in memory there now; key_state may move it later
				cbs = append(cbs, ks.closeLocked(keyResult{state: "memory", worker: addr})...)
			}
		}
		c.mu.Unlock()
		runAll(cbs)
		if err := c.conn.Load().Send(&wire.Msg{Op: wire.OpScatter, Items: p.items, Worker: addr}); err != nil {
			return nil, err
		}
	}
	return futs, nil
}

// scatterKey names a scattered value after its type, with a random token.
func scatterKey(v any) string {
	var b [16]byte
	rand.Read(b[:])
	name := fmt.Sprintf("%T", v)
	if i := strings.LastIndexAny(name, ".]*"); i >= 0 {
		name = name[i+1:]
	}
	if name == "" || name == "<nil>" {
		name = "data"
	}
	return "scatter-" + name + "-" + hex.EncodeToString(b[:])
}

// encodeValue encodes a Go value as a worker stores a Go task's result.
func encodeValue(v any) (string, [][]byte, error) {
	switch x := v.(type) {
	case arrow.Table:
		b, err := arrowio.EncodeTable(x)
		return wire.EncArrow, [][]byte{b}, err
	case arrow.RecordBatch:
		b, err := arrowio.EncodeRecord(x)
		return wire.EncArrow, [][]byte{b}, err
	case []byte:
		return wire.EncBytes, [][]byte{x}, nil
	}
	b, err := msgpack.Marshal(v)
	return wire.EncMsgpack, [][]byte{b}, err
}

func frameLen(frames [][]byte) int64 {
	var n int64
	for _, f := range frames {
		n += int64(len(f))
	}
	return n
}
