package shoal

import (
	"context"
	"fmt"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/shoal-dev/shoal/internal/wire"
)

// Future is a handle to one key's eventual result, untyped: Result gives the value as the
// wire decoded it. FutureOf is the typed form.
type Future struct {
	c        *Client
	key      string
	ks       *keyState
	released sync.Once
}

// Key is the task key.
func (f *Future) Key() Key { return Key(f.key) }

// Done is closed when the key reached a final state (memory, erred, cancelled or lost).
func (f *Future) Done() <-chan struct{} { return f.ks.done }

// future makes *Future (and FutureOf, which embeds it) a Waitable.
func (f *Future) future() *Future { return f }

// Wait blocks until the key is final and returns its error, if any: a *TaskError for a task
// that failed, was cancelled or lost, or ctx.Err().
func (f *Future) Wait(ctx context.Context) error {
	select {
	case <-f.ks.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return f.err()
}

// err is the final state's error (nil for memory); the future must be done.
func (f *Future) err() error {
	r := f.state()
	if r.state == "memory" {
		return nil
	}
	if r.err != nil {
		return newTaskError(f.key, r.err)
	}
	return newTaskError(f.key, wire.Errorf(wire.CodeLost, fmt.Sprintf("key %s is %s", f.key, r.state)))
}

func (f *Future) state() keyResult {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	return f.ks.res
}

// Result waits and fetches the value from the worker holding it: msgpack values decode to Go
// values, Arrow values to arrow.Table (the caller releases it), bytes to []byte.
func (f *Future) Result(ctx context.Context) (any, error) {
	if err := f.Wait(ctx); err != nil {
		return nil, err
	}
	vals, err := f.c.fetch(ctx, []*Future{f})
	if err != nil {
		return nil, err
	}
	return vals[0], nil
}

// Arrow is Result for a key whose value is an Arrow table.
func (f *Future) Arrow(ctx context.Context) (arrow.Table, error) {
	v, err := f.Result(ctx)
	if err != nil {
		return nil, err
	}
	t, ok := v.(arrow.Table)
	if !ok {
		return nil, fmt.Errorf("shoal: key %s holds %T, not an Arrow table", f.key, v)
	}
	return t, nil
}

// Worker is the data address holding the result (after Wait succeeded).
func (f *Future) Worker() string { return f.state().worker }

// Cancel asks the scheduler to cancel the key and its waiting dependents; the future then
// resolves with an error matching ErrCancelled (unless it had already finished).
func (f *Future) Cancel() error { return f.c.Cancel(f) }

// Release drops this future's hold on the key; the cluster forgets it once nothing needs it.
// Releasing twice is harmless.
func (f *Future) Release() { f.released.Do(func() { f.c.release(f) }) }

// Gather waits for all futures and fetches their values, one request per worker.
func (c *Client) Gather(ctx context.Context, futs ...*Future) ([]any, error) {
	for _, f := range futs {
		if err := f.Wait(ctx); err != nil {
			return nil, fmt.Errorf("shoal: key %s: %w", f.key, err)
		}
	}
	return c.fetch(ctx, futs)
}
