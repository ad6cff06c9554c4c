// Package main is the control for TestCompileFail: the same program with the right argument
// types, which must build.
package main

import (
	"context"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

var square = shoal.Func("square", func(ctx context.Context, x int64) (int64, error) { return x * x, nil })

func main() {
	shoal.Main()
	g := shoal.NewGraph()
	r := square.Call(g, shoal.Lit[int64](3))
	var _ shoal.Ref[int64] = square.Call(g, r)
}
