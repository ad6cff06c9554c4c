package client

import (
	"fmt"
	"sync/atomic"

	"github.com/shoal-dev/shoal/graph"
)

// Key names a task in a Graph; passing a Key as an argument makes a dependency.
type Key string

// Graph is a task graph under construction.
type Graph struct {
	tasks []graph.Task
	keys  map[string]bool
}

// NewGraph returns an empty graph.
func NewGraph() *Graph { return &Graph{keys: map[string]bool{}} }

var autoKey atomic.Uint64

// Go adds a task running the registered Go function fn. key may be "" for a generated one.
// Arguments of type Key (or *Future) are references to other tasks' results; everything else
// must be encodable as msgpack.
func (g *Graph) Go(key, fn string, args ...any) Key {
	if key == "" {
		key = fmt.Sprintf("%s-%x", fn, autoKey.Add(1))
	}
	t := graph.Task{Key: key, Kind: graph.KindGo, Func: fn}
	for _, a := range args {
		switch a := a.(type) {
		case Key:
			t.Args = append(t.Args, graph.Ref(string(a)))
		case *Future:
			t.Args = append(t.Args, graph.Ref(a.key))
		default:
			t.Args = append(t.Args, graph.Lit(a))
		}
	}
	return g.Add(t)
}

// Add adds a task as it is (retries, priority, restrictions, resources set by the caller).
func (g *Graph) Add(t graph.Task) Key {
	g.tasks = append(g.tasks, t)
	g.keys[t.Key] = true
	return Key(t.Key)
}

// Len is the number of tasks added.
func (g *Graph) Len() int { return len(g.tasks) }

// Tasks returns the tasks added so far.
func (g *Graph) Tasks() []graph.Task { return g.tasks }
