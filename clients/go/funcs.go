package shoal

import (
	"context"
	"slices"
	"strings"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/worker"
)

// A typed function is declared once, at package level, and used both ways: its declaration
// registers it in this binary's workers (Func, Func0, Func2, Func3), and its Call method adds
// tasks calling it to a graph, with argument and result types checked by the compiler.
// Extern* and Python* declare functions that live elsewhere (a built-in, another worker
// binary, a Python module) without registering anything.

// fnDesc is what a task needs to name a function.
type fnDesc struct {
	name   string     // the registered Go name; for Python the module-qualified name
	kind   graph.Kind // go or py
	prefix string     // generated keys start with it
	hash   string     // py: hex SHA-256 of data
	data   []byte     // py: the pickled callable
}

// collectSuffix names the second registration of a typed Go function: the form whose first
// argument says how the rest are grouped into slices (a call with Collect).
const collectSuffix = "#collect"

// Fn0 is a typed function of no arguments returning R.
type Fn0[R any] struct{ d fnDesc }

// Fn1 is a typed function of one argument of type A returning R.
type Fn1[A, R any] struct{ d fnDesc }

// Fn2 is a typed function of arguments A, B returning R.
type Fn2[A, B, R any] struct{ d fnDesc }

// Fn3 is a typed function of arguments A, B, C returning R.
type Fn3[A, B, C, R any] struct{ d fnDesc }

// Func0 declares and registers a Go task function of no arguments. See Func.
func Func0[R any](name string, fn func(ctx context.Context) (R, error)) *Fn0[R] {
	register(name, 0, func(ctx context.Context, a []any) (any, error) { return fn(ctx) })
	return &Fn0[R]{goDesc(name)}
}

// Func declares a Go task function of one argument and registers it, as name, in the workers
// this binary runs (worker.Register, with an adapter that decodes the arguments into A). Call
// it at package level so that every process of a one-binary program registers it:
//
//	var Square = shoal.Func("square", func(ctx context.Context, x int64) (int64, error) {
//		return x * x, nil
//	})
//
// Arguments arrive as the types declared: integers and floats are converted from whatever
// width msgpack chose, slices and maps element by element, structs through msgpack, Arrow
// results as arrow.Table or arrow.RecordBatch. They are shared with the worker's store:
// treat them as read-only and do not Release them. The result is stored as Arrow for
// arrow.Table and arrow.RecordBatch, as raw bytes for []byte, and as msgpack otherwise. An
// error is reported as the task's error (see TaskError and RegisterError); a panic as a
// task-panic with its stack. ctx is cancelled when the worker shuts down.
//
// Func panics when name is empty or already registered (the built-ins noop, inc, sum, ...
// included; see worker.Registered).
func Func[A, R any](name string, fn func(ctx context.Context, a A) (R, error)) *Fn1[A, R] {
	register(name, 1, func(ctx context.Context, a []any) (any, error) {
		x, err := argAs[A](name, 0, a[0])
		if err != nil {
			return nil, err
		}
		return fn(ctx, x)
	})
	return &Fn1[A, R]{goDesc(name)}
}

// Func2 declares and registers a Go task function of two arguments. See Func.
func Func2[A, B, R any](name string, fn func(ctx context.Context, a A, b B) (R, error)) *Fn2[A, B, R] {
	register(name, 2, func(ctx context.Context, a []any) (any, error) {
		x, err := argAs[A](name, 0, a[0])
		if err != nil {
			return nil, err
		}
		y, err := argAs[B](name, 1, a[1])
		if err != nil {
			return nil, err
		}
		return fn(ctx, x, y)
	})
	return &Fn2[A, B, R]{goDesc(name)}
}

// Func3 declares and registers a Go task function of three arguments. See Func.
func Func3[A, B, C, R any](name string, fn func(ctx context.Context, a A, b B, c C) (R, error)) *Fn3[A, B, C, R] {
	register(name, 3, func(ctx context.Context, a []any) (any, error) {
		x, err := argAs[A](name, 0, a[0])
		if err != nil {
			return nil, err
		}
		y, err := argAs[B](name, 1, a[1])
		if err != nil {
			return nil, err
		}
		z, err := argAs[C](name, 2, a[2])
		if err != nil {
			return nil, err
		}
		return fn(ctx, x, y, z)
	})
	return &Fn3[A, B, C, R]{goDesc(name)}
}

// Extern0 declares a Go function of no arguments registered by name in the workers' binary
// (a built-in such as "noop", or one of another program), without registering anything. The
// types are the caller's claim about that function; the compiler checks calls against them.
func Extern0[R any](name string) *Fn0[R] { return &Fn0[R]{goDesc(name)} }

// Extern declares a Go function of one argument registered elsewhere. See Extern0.
func Extern[A, R any](name string) *Fn1[A, R] { return &Fn1[A, R]{goDesc(name)} }

// Extern2 declares a Go function of two arguments registered elsewhere. See Extern0.
func Extern2[A, B, R any](name string) *Fn2[A, B, R] { return &Fn2[A, B, R]{goDesc(name)} }

// Extern3 declares a Go function of three arguments registered elsewhere. See Extern0.
func Extern3[A, B, C, R any](name string) *Fn3[A, B, C, R] { return &Fn3[A, B, C, R]{goDesc(name)} }

func goDesc(name string) fnDesc {
	return fnDesc{name: name, kind: graph.KindGo, prefix: name}
}

// Name is the function's registered (or Python) name.
func (f *Fn0[R]) Name() string { return f.d.name }

// Name is the function's registered (or Python) name.
func (f *Fn1[A, R]) Name() string { return f.d.name }

// Name is the function's registered (or Python) name.
func (f *Fn2[A, B, R]) Name() string { return f.d.name }

// Name is the function's registered (or Python) name.
func (f *Fn3[A, B, C, R]) Name() string { return f.d.name }

// Call adds a task calling f to g and returns a reference to its result.
func (f *Fn0[R]) Call(g *Graph, opts ...TaskOption) Ref[R] {
	return Ref[R]{g.call(&f.d, opts, -1)}
}

// Call adds a task calling f(a) to g and returns a reference to its result.
func (f *Fn1[A, R]) Call(g *Graph, a Arg[A], opts ...TaskOption) Ref[R] {
	return Ref[R]{g.call(&f.d, opts, -1, a.spec())}
}

// Call adds a task calling f(a, b) to g and returns a reference to its result.
func (f *Fn2[A, B, R]) Call(g *Graph, a Arg[A], b Arg[B], opts ...TaskOption) Ref[R] {
	return Ref[R]{g.call(&f.d, opts, -1, a.spec(), b.spec())}
}

// Call adds a task calling f(a, b, c) to g and returns a reference to its result.
func (f *Fn3[A, B, C, R]) Call(g *Graph, a Arg[A], b Arg[B], c Arg[C], opts ...TaskOption) Ref[R] {
	return Ref[R]{g.call(&f.d, opts, -1, a.spec(), b.spec(), c.spec())}
}

// Map adds one task f(x) per literal x and returns their references, in order. Options apply
// to every task; with Named(k) the keys are k-0, k-1, ...
func Map[A, R any](g *Graph, f *Fn1[A, R], xs []A, opts ...TaskOption) []Ref[R] {
	out := make([]Ref[R], len(xs))
	for i, x := range xs {
		out[i] = Ref[R]{g.call(&f.d, opts, i, argSpec{kind: argLit, lit: x})}
	}
	return out
}

// MapRefs adds one task f(r) per reference r and returns their references, in order. See Map.
func MapRefs[A, R any](g *Graph, f *Fn1[A, R], rs []Ref[A], opts ...TaskOption) []Ref[R] {
	out := make([]Ref[R], len(rs))
	for i, r := range rs {
		out[i] = Ref[R]{g.call(&f.d, opts, i, r.spec())}
	}
	return out
}

// register adds a typed function's two worker entries: name, called with one argument per
// parameter, and name#collect, whose first argument groups the rest (Collect).
func register(name string, arity int, call func(ctx context.Context, a []any) (any, error)) {
	if name == "" || strings.HasSuffix(name, collectSuffix) {
		panic("shoal: a typed function needs a name not ending in " + collectSuffix)
	}
	if slices.Contains(worker.Registered(), name) {
		panic("shoal: Go function " + name + " is already registered in this binary (a built-in? worker.Registered lists the names taken)")
	}
	worker.Register(name, func(ctx context.Context, args []any) (any, error) {
		if len(args) != arity {
			return nil, wrongArity(name, arity, len(args))
		}
		return callTyped(ctx, call, args)
	})
	worker.Register(name+collectSuffix, func(ctx context.Context, args []any) (any, error) {
		grouped, err := ungroup(name, arity, args)
		if err != nil {
			return nil, err
		}
		return callTyped(ctx, call, grouped)
	})
}

// callTyped runs the user's function, carrying registered error values across the wire.
func callTyped(ctx context.Context, call func(context.Context, []any) (any, error), args []any) (any, error) {
	out, err := call(ctx, args)
	if err != nil {
		return nil, toWireError(err)
	}
	return out, nil
}
