package shoal

import (
	"context"
	"iter"
	"sync/atomic"
)

// Waitable is a *Future or a FutureOf[T]: what Wait and AsCompleted take.
type Waitable interface {
	future() *Future
}

// WaitOption configures Wait.
type WaitOption func(*waitConfig)

type waitConfig struct {
	progress func(done, total int)
}

// Progress calls fn(done, total) each time one of the futures becomes final, in completion
// order, from the client's reader goroutine: fn must be quick and must not block. done counts
// up to total; the last call has done == total. When Wait returns nil or a task's error,
// every call has returned; calls go on after Wait returned early (its context ended) as the
// remaining futures finish.
func Progress(fn func(done, total int)) WaitOption {
	return func(c *waitConfig) { c.progress = fn }
}

// Wait blocks until every future is final, or ctx ends. It returns ctx's error, or the error
// of the first failed future in slice order (a *TaskError), or nil when all hold values.
func Wait[F Waitable](ctx context.Context, futs []F, opts ...WaitOption) error {
	var cfg waitConfig
	for _, o := range opts {
		o(&cfg)
	}
	// a future is final (its done channel closed) just before its callbacks run: the calls
	// are counted too, so that none comes after Wait returned
	var calls chan struct{}
	if cfg.progress != nil {
		calls = make(chan struct{}, len(futs))
		var n atomic.Int64
		total := len(futs)
		for _, f := range futs {
			ff := f.future()
			ff.c.onDone(ff.ks, func() {
				cfg.progress(int(n.Add(1)), total)
				calls <- struct{}{}
			})
		}
	}
	for _, f := range futs {
		select {
		case <-f.future().ks.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for range cap(calls) { // none without Progress
		select {
		case <-calls:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, f := range futs {
		if err := f.future().err(); err != nil {
			return err
		}
	}
	return nil
}

// AsCompleted yields the futures as they become final (with a value or an error: check each
// with Wait or Get, which then return at once). It stops early when ctx ends or the loop
// breaks; futures released before they finish are never yielded.
func AsCompleted[F Waitable](ctx context.Context, futs []F) iter.Seq[F] {
	return func(yield func(F) bool) {
		if len(futs) == 0 {
			return
		}
		ready := make(chan int, len(futs)) // never blocks: each future sends once
		for i, f := range futs {
			ff := f.future()
			ff.c.onDone(ff.ks, func() { ready <- i })
		}
		for range futs {
			select {
			case i := <-ready:
				if !yield(futs[i]) {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}
