package shoal

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
)

// FutureOf is a Future whose value has type T. It embeds *Future, so Wait, Done, Cancel,
// Release and Key work as there; Get reads the value as a T.
type FutureOf[T any] struct{ *Future }

// Get waits for the value and fetches it from the worker holding it, converted to T (see
// Func for the conversions). An Arrow value read as arrow.Table or arrow.RecordBatch belongs
// to the caller, who releases it.
func (f FutureOf[T]) Get(ctx context.Context) (T, error) {
	var zero T
	v, err := f.Result(ctx)
	if err != nil {
		return zero, err
	}
	return resultAs[T](f.key, v)
}

// Ref is a reference to the future's key, for use as an argument in another graph.
func (f FutureOf[T]) Ref() Ref[T] { return Ref[T]{f.key} }

func resultAs[T any](key string, v any) (T, error) {
	x, err := as[T](v)
	if t, ok := v.(arrow.Table); ok {
		if _, same := any(x).(arrow.Table); !same || err != nil {
			t.Release() // converted (to a record batch, say) or refused: the table was ours
		}
	}
	if err != nil {
		return x, fmt.Errorf("shoal: key %s: %w", key, err)
	}
	return x, nil
}

// Submit sends g and returns a future to r's value. Every task of g is sent; only r is kept
// once computed (until the future is released).
func Submit[T any](ctx context.Context, c *Client, g *Graph, r Ref[T]) (FutureOf[T], error) {
	fs, err := c.Submit(ctx, g, Key(r.key))
	if err != nil {
		return FutureOf[T]{}, err
	}
	return FutureOf[T]{fs[0]}, nil
}

// SubmitAll sends g and returns one future per reference, in order.
func SubmitAll[T any](ctx context.Context, c *Client, g *Graph, refs []Ref[T]) ([]FutureOf[T], error) {
	keys := make([]Key, len(refs))
	for i, r := range refs {
		keys[i] = Key(r.key)
	}
	fs, err := c.Submit(ctx, g, keys...)
	if err != nil {
		return nil, err
	}
	out := make([]FutureOf[T], len(fs))
	for i, f := range fs {
		out[i] = FutureOf[T]{f}
	}
	return out, nil
}

// Get submits g, waits for r's value, reads it as a T and releases the key. When ctx ends
// first, it cancels the key on the cluster and returns ctx's error.
func Get[T any](ctx context.Context, c *Client, g *Graph, r Ref[T]) (T, error) {
	var zero T
	f, err := Submit(ctx, c, g, r)
	if err != nil {
		return zero, err
	}
	defer f.Release()
	if err := f.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			f.Cancel()
		}
		return zero, err
	}
	return f.Get(ctx)
}

// Gather waits for every future and fetches the values, one request per worker holding some,
// in the futures' order. It returns the first error in that order.
func Gather[T any](ctx context.Context, futs []FutureOf[T]) ([]T, error) {
	if len(futs) == 0 {
		return nil, nil
	}
	plain := make([]*Future, len(futs))
	for i, f := range futs {
		plain[i] = f.Future
	}
	vals, err := plain[0].c.Gather(ctx, plain...)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(vals))
	for i, v := range vals {
		if out[i], err = resultAs[T](plain[i].key, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}
