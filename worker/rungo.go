package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// runGo runs a Go task: it resolves the arguments, calls the registered function with
// panics recovered, and encodes the result.
func (w *Worker) runGo(ts *task, thread int) result {
	fn, ok := lookup(ts.t.Func)
	if !ok {
		return result{err: &wire.Error{Code: wire.CodeUnknownFunction, Type: "UnknownFunction",
			Message: fmt.Sprintf("no Go function %q is registered in worker %s", ts.t.Func, w.cfg.Name)}}
	}
	args := make([]any, len(ts.t.Args))
	for i, a := range ts.t.Args {
		if a.Ref == "" {
			args[i] = a.Val
			continue
		}
		v, err := w.argValue(a.Ref)
		if err != nil {
			return result{err: depError(a.Ref, fmt.Errorf("argument %d: %w", i, err))}
		}
		args[i] = v
	}
	var out any
	var werr *wire.Error
	// under a pprof label naming the task group while the profiler is on (profile.go)
	w.runLabelled(w.taskContext(ts, thread), graph.GroupOf(&ts.t), func(ctx context.Context) {
		out, werr = callGo(ctx, fn, args)
	})
	if werr != nil {
		return result{err: werr}
	}
	enc, frames, err := encodeValue(out)
	if err != nil {
		return result{err: &wire.Error{Code: wire.CodeTaskError, Type: "EncodeError", Message: err.Error()}}
	}
	r := result{enc: enc, frames: frames}
	if tbl, ok := out.(arrow.Table); ok {
		r.obj = tbl // dependents on this worker use the table without decoding
	}
	return r
}

// argValue returns the decoded value of a stored dependency, caching decoded Arrow tables.
func (w *Worker) argValue(key string) (any, error) {
	e, err := w.store.Get(key, true)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("dependency is not in this worker's memory")
		}
		return nil, err
	}
	if e.Obj != nil {
		return e.Obj, nil
	}
	v, err := decodeValue(e.Encoding, e.Frames)
	if err != nil {
		return nil, err
	}
	if e.Encoding == wire.EncArrow {
		w.store.SetObj(e, v)
	}
	return v, nil
}

// callGo calls fn, turning a returned error or a panic into a wire error.
func callGo(ctx context.Context, fn Func, args []any) (out any, werr *wire.Error) {
	defer func() {
		if r := recover(); r != nil {
			werr = &wire.Error{Code: wire.CodeTaskPanic, Type: "panic", Message: fmt.Sprint(r),
				Traceback: string(debug.Stack())}
		}
	}()
	out, err := fn(ctx, args)
	if err != nil {
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, we
		}
		return nil, &wire.Error{Code: wire.CodeTaskError, Type: fmt.Sprintf("%T", err), Message: err.Error()}
	}
	return out, nil
}
