package shoal_test

import (
	"strconv"
	"testing"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

// Building a graph: the typed Call against the untyped Go, per task, for the no-op task of
// the million-task benchmark (benchmarks/cmd/shoalbench gotasks --api typed|untyped) and
// for a one-argument task. Run: go test ./clients/go -run '^$' -bench Build -benchmem

var benchNoop = shoal.Extern0[any]("noop")

func BenchmarkBuildNoopUntyped(b *testing.B) {
	g := shoal.NewGraph()
	for i := 0; b.Loop(); i++ {
		g.Go("noop-"+strconv.Itoa(i), "noop")
	}
}

func BenchmarkBuildNoopTyped(b *testing.B) {
	g := shoal.NewGraph()
	for i := 0; b.Loop(); i++ {
		benchNoop.Call(g, shoal.Named("noop-"+strconv.Itoa(i)))
	}
}

func BenchmarkBuildNoopTypedAutoKey(b *testing.B) {
	g := shoal.NewGraph()
	for b.Loop() {
		benchNoop.Call(g)
	}
}

func BenchmarkBuildSquareUntyped(b *testing.B) {
	g := shoal.NewGraph()
	prev := g.Go("", "test_square", int64(2))
	for b.Loop() {
		prev = g.Go("", "test_square", prev)
	}
}

func BenchmarkBuildSquareTyped(b *testing.B) {
	g := shoal.NewGraph()
	prev := square.Call(g, shoal.Lit[int64](2))
	for b.Loop() {
		prev = square.Call(g, prev)
	}
}
