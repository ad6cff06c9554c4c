package worker

import (
	"context"
	"sort"
	"sync"
)

// Func is a Go task function. args holds the task's positional arguments: msgpack literals
// as decoded into interface{} (see Int64 and Float64 to coerce numbers) and the results of
// referenced tasks (Go values for msgpack results, arrow.Table for Arrow results, []byte for
// raw bytes). Arguments are shared with the store and must be treated as read-only.
//
// The result is stored as Arrow when it is an arrow.Table or arrow.Record, as raw bytes when
// it is a []byte, and as msgpack otherwise. ctx is cancelled when the worker closes.
type Func func(ctx context.Context, args []any) (any, error)

var registry struct {
	sync.RWMutex
	fns map[string]Func
}

// Register makes fn callable by Go tasks as name in every worker of this process. It panics
// when name is empty, fn is nil, or name is already registered; call it from init.
func Register(name string, fn Func) {
	if name == "" {
		panic("worker: Register with an empty name")
	}
	if fn == nil {
		panic("worker: Register " + name + " with a nil function")
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.fns == nil {
		registry.fns = make(map[string]Func)
	}
	if _, dup := registry.fns[name]; dup {
		panic("worker: function " + name + " registered twice")
	}
	registry.fns[name] = fn
}

// Registered returns the names of all registered functions, sorted.
func Registered() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.fns))
	for n := range registry.fns {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func lookup(name string) (Func, bool) {
	registry.RLock()
	defer registry.RUnlock()
	fn, ok := registry.fns[name]
	return fn, ok
}
