// Package main must not build: TestCompileFail expects the compiler to refuse exactly the
// lines marked WANT, each a wrong argument or result type for a typed function.
package main

import (
	"context"
	"strconv"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

var square = shoal.Func("square", func(ctx context.Context, x int64) (int64, error) { return x * x, nil })

var name = shoal.Func("name", func(ctx context.Context, x int64) (string, error) { return strconv.FormatInt(x, 10), nil })

func main() {
	shoal.Main()
	g := shoal.NewGraph()
	r := square.Call(g, shoal.Lit[int64](3))
	square.Call(g, shoal.Lit("three"))                   // WANT: a string literal for an int64
	var s shoal.Ref[string] = square.Call(g, r)          // WANT: an int64 result as a string
	square.Call(g, name.Call(g, r))                      // WANT: a string result for an int64
	square.Call(g, shoal.Collect([]shoal.Ref[int64]{r})) // WANT: a []int64 for an int64
	shoal.Map(g, square, []string{"a"})                  // WANT: strings mapped over int64
	v, _ := shoal.Get(context.Background(), nil, g, s)
	var n int64 = v // WANT: a string read as an int64
	_ = n
}
