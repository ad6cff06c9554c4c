package worker

import (
	"fmt"
	"slices"
	"testing"

	"github.com/shoal-dev/shoal/graph"
)

// taskDeps lists each key a task needs once, its deps first, and copies them (the message's
// task is reused), both below and above the size where it stops scanning for repeats.
func TestTaskDeps(t *testing.T) {
	many := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint(prefix, i)
		}
		return out
	}
	refs := func(keys ...string) []graph.Arg {
		out := []graph.Arg{{}} // a literal
		for _, k := range keys {
			out = append(out, graph.Ref(k))
		}
		return out
	}
	for _, c := range []struct {
		name string
		task graph.Task
		want []string
	}{
		{"none", graph.Task{Key: "t"}, nil},
		{"deps", graph.Task{Key: "t", Deps: []string{"a", "b"}}, []string{"a", "b"}},
		{"refs", graph.Task{Key: "t", Deps: []string{"a"}, Args: refs("b", "a", "c", "b")}, []string{"a", "b", "c"}},
		{"many", graph.Task{Key: "t", Deps: many("d", depsScanMax), Args: refs(append(many("r", 3), "d0", "r1")...)},
			append(many("d", depsScanMax), many("r", 3)...)},
	} {
		got := taskDeps(&c.task)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
		if len(got) > 0 && len(c.task.Deps) > 0 && &got[0] == &c.task.Deps[0] {
			t.Errorf("%s: the result shares the task's deps", c.name)
		}
	}
}

// A tree reduction's sum as the worker receives it from a dask graph: two deps, no refs.
func BenchmarkTaskDeps(b *testing.B) {
	t := graph.Task{Key: "('sum', 0, 1)", Kind: graph.KindPy, Deps: []string{"('leaf', 2)", "('leaf', 3)"}}
	b.ReportAllocs()
	for b.Loop() {
		taskDeps(&t)
	}
}
