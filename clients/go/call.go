package shoal

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/worker"
)

// TaskOption sets an annotation of a task added by a typed call (Call, Map).
type TaskOption func(*graph.Task)

// Named gives the task this key instead of a generated one (in Map: key-0, key-1, ...).
// Naming two tasks of one graph alike is an error (Graph.Err).
func Named(key string) TaskOption { return func(t *graph.Task) { t.Key = key } }

// Priority sets the user priority: larger runs first when tasks compete (default 0).
func Priority(p int) TaskOption { return func(t *graph.Task) { t.Priority = p } }

// Retries re-runs the task up to n times after it fails (not after it is cancelled).
func Retries(n int) TaskOption { return func(t *graph.Task) { t.Retries = n } }

// Resources says what one run consumes, e.g. Resources(map[string]float64{"GPU": 1}); the
// task runs only on workers offering them (shoal worker --resources GPU=1).
func Resources(r map[string]float64) TaskOption {
	r = maps.Clone(r)
	return func(t *graph.Task) { t.Resources = r }
}

// OnWorkers restricts the task to workers with these names or data addresses.
func OnWorkers(names ...string) TaskOption {
	names = slices.Clone(names)
	return func(t *graph.Task) { t.Workers = names }
}

// InGroup puts the task in this task group (dashboard, learned durations) instead of the one
// its key implies.
func InGroup(name string) TaskOption { return func(t *graph.Task) { t.Group = name } }

// call adds a task calling d with these arguments; idx >= 0 (Map) suffixes a Named key.
func (g *Graph) call(d *fnDesc, opts []TaskOption, idx int, specs ...argSpec) string {
	t := graph.Task{Kind: d.kind, Func: d.name}
	for i := range specs {
		if specs[i].kind == argRef && specs[i].ref == "" {
			g.fail(fmt.Errorf("shoal: argument %d of a call to %s is the zero Ref", i, d.name))
		}
	}
	if d.kind == graph.KindPy {
		g.pyTask(&t, d, specs)
	} else {
		t.Args = goArgs(&t, specs)
	}
	if len(opts) > 0 { // through a copy: t itself must not escape (one allocation per task)
		tp := new(graph.Task)
		*tp = t
		for _, o := range opts {
			o(tp)
		}
		t = *tp
	}
	switch {
	case t.Key == "":
		t.Key = newKey(d.prefix)
	case idx >= 0:
		t.Key += "-" + strconv.Itoa(idx)
	}
	g.checkKey(t.Key)
	g.Add(t)
	return t.Key
}

// goArgs encodes a Go task's arguments: one per parameter, or, when one of them is a Collect,
// the collect form: a shape literal (per parameter, -1 for a single argument or the number
// of grouped ones) followed by all of them flat, calling name#collect.
func goArgs(t *graph.Task, specs []argSpec) []graph.Arg {
	grouped := false
	for i := range specs {
		grouped = grouped || specs[i].kind == argGroup
	}
	if len(specs) == 0 {
		return nil
	}
	if !grouped {
		out := make([]graph.Arg, len(specs))
		for i := range specs {
			out[i] = specs[i].arg()
		}
		return out
	}
	t.Func += collectSuffix
	shape := make([]int64, len(specs))
	out := []graph.Arg{{}} // the shape, filled in below
	for i := range specs {
		if specs[i].kind != argGroup {
			shape[i] = -1
			out = append(out, specs[i].arg())
			continue
		}
		shape[i] = int64(len(specs[i].refs))
		for _, k := range specs[i].refs {
			out = append(out, graph.Ref(k))
		}
	}
	out[0] = graph.Lit(shape)
	return out
}

func (s *argSpec) arg() graph.Arg {
	if s.kind == argRef {
		return graph.Ref(s.ref)
	}
	return graph.Lit(s.lit)
}

// ungroup turns the collect form's arguments back into one per parameter, the groups as
// []any.
func ungroup(name string, arity int, args []any) ([]any, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("%s%s called without its shape argument", name, collectSuffix)
	}
	shape, ok := args[0].([]any)
	if !ok || len(shape) != arity {
		return nil, fmt.Errorf("%s%s: the shape argument is %v, want %d counts", name, collectSuffix, args[0], arity)
	}
	rest := args[1:]
	out := make([]any, arity)
	for i, s := range shape {
		n, err := worker.Int64(s)
		if err != nil || n < -1 || (n == -1 && len(rest) < 1) || n > int64(len(rest)) {
			return nil, fmt.Errorf("%s%s: bad shape %v for %d arguments", name, collectSuffix, shape, len(args)-1)
		}
		if n == -1 {
			out[i], rest = rest[0], rest[1:]
			continue
		}
		out[i], rest = slices.Clone(rest[:n]), rest[n:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%s%s: %d arguments beyond its shape %v", name, collectSuffix, len(rest), shape)
	}
	return out, nil
}

func wrongArity(name string, want, got int) error {
	return fmt.Errorf("%s takes %d argument(s), got %d", name, want, got)
}
