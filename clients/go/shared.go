package shoal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Shared state held by the scheduler, shared with Python clients and tasks
// (docs/protocol.md §3.2, "Shared state"): a Variable and a Queue of the same name are the
// objects Python's shoal.Variable and shoal.Queue use. Values are msgpack (what a Go value
// marshals to; Python reads it as plain data) or futures; a pickled value set from Python
// cannot be read here (its Get returns an error saying so).

// ErrNotReady is returned by Variable.Get and Queue.Get when the context's deadline passed
// before a value came, and by Queue.Put when the queue stayed full.
var ErrNotReady = errors.New("shoal: no value within the deadline")

// encFuture is the encoding of a shared value that is a future.
const encFuture = "future"

// Variable is a named value held by the scheduler.
type Variable struct {
	c    *Client
	name string
}

// Variable returns the variable called name (it need not exist yet).
func (c *Client) Variable(name string) *Variable { return &Variable{c: c, name: name} }

// Set stores v: a *Future (the scheduler keeps its result while the variable holds it) or any
// value msgpack can encode, of at most 1 MiB.
func (v *Variable) Set(ctx context.Context, value any) error {
	m, err := sharedValue(wire.OpVariableSet, v.name, value)
	if err != nil {
		return err
	}
	_, err = v.c.request(ctx, m)
	return err
}

// Get returns the value, waiting for a first Set until ctx's deadline (ErrNotReady) or without
// limit when ctx has none. A future comes back as a *Future of this client.
func (v *Variable) Get(ctx context.Context) (any, error) {
	return v.c.sharedGet(ctx, &wire.Msg{Op: wire.OpVariableGet, Name: v.name})
}

// Delete forgets the value.
func (v *Variable) Delete(ctx context.Context) error {
	_, err := v.c.request(ctx, &wire.Msg{Op: wire.OpVariableDelete, Name: v.name})
	return err
}

// Queue is a named first-in first-out queue held by the scheduler.
type Queue struct {
	c       *Client
	name    string
	maxsize int
}

// Queue returns the queue called name; maxsize > 0 makes Put wait while it holds that many
// items.
func (c *Client) Queue(name string, maxsize int) *Queue {
	return &Queue{c: c, name: name, maxsize: maxsize}
}

// Put appends a value (as Variable.Set takes it), waiting while the queue is full until ctx's
// deadline (ErrNotReady).
func (q *Queue) Put(ctx context.Context, value any) error {
	m, err := sharedValue(wire.OpQueuePut, q.name, value)
	if err != nil {
		return err
	}
	m.N, m.Timeout = int64(q.maxsize), timeoutOf(ctx)
	r, err := q.c.request(ctx, m)
	if err != nil {
		return err
	}
	if !r.Accepted {
		return fmt.Errorf("queue %q: %w (it stayed full)", q.name, ErrNotReady)
	}
	return nil
}

// Get takes the oldest item, waiting until ctx's deadline (ErrNotReady) or without limit.
func (q *Queue) Get(ctx context.Context) (any, error) {
	return q.c.sharedGet(ctx, &wire.Msg{Op: wire.OpQueueGet, Name: q.name})
}

// Len is the number of items in the queue now.
func (q *Queue) Len(ctx context.Context) (int, error) {
	r, err := q.c.request(ctx, &wire.Msg{Op: wire.OpQueueSize, Name: q.name})
	if err != nil {
		return 0, err
	}
	return int(r.N), nil
}

// timeoutOf is the wire timeout for a wait bounded by ctx: its deadline, or no limit.
func timeoutOf(ctx context.Context) float64 {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d).Seconds(), 1e-6)
	}
	return -1
}

func sharedValue(op, name string, value any) (*wire.Msg, error) {
	if f, ok := value.(*Future); ok {
		return &wire.Msg{Op: op, Name: name, Items: []wire.Item{{Key: f.key, Encoding: encFuture}}, Keys: []string{f.key}}, nil
	}
	b, err := msgpack.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("shoal: %s %q: %w", op, name, err)
	}
	return &wire.Msg{Op: op, Name: name, Items: []wire.Item{{Encoding: wire.EncMsgpack, NBytes: int64(len(b))}}, Payload: b}, nil
}

// sharedGet sends a get that may wait and decodes the one value it returns.
func (c *Client) sharedGet(ctx context.Context, m *wire.Msg) (any, error) {
	m.Timeout = timeoutOf(ctx)
	r, err := c.request(ctx, m)
	if err != nil {
		return nil, err
	}
	if !r.Accepted || len(r.Items) != 1 {
		return nil, fmt.Errorf("%s %q: %w", m.Op, m.Name, ErrNotReady)
	}
	// the scheduler made this client want the keys the value refers to: hold them as futures
	futs := make([]*Future, 0, len(r.Keys))
	c.mu.Lock()
	for _, k := range r.Keys {
		futs = append(futs, c.futureLocked(k))
	}
	c.mu.Unlock()
	if len(r.Keys) > 0 {
		if err := c.conn.Load().Send(&wire.Msg{Op: wire.OpWanted, Keys: r.Keys}); err != nil {
			return nil, err
		}
	}
	it := r.Items[0]
	if it.Encoding == encFuture {
		for _, f := range futs {
			if f.key == it.Key {
				return f, nil
			}
		}
		return nil, fmt.Errorf("shoal: %s %q: the reply does not hold future %q", m.Op, m.Name, it.Key)
	}
	for _, f := range futs {
		f.Release()
	}
	return Decode(it.Encoding, [][]byte{r.Payload})
}
