// Command customworker is a Shoal binary with a user's own Go task function, "fib". Every
// process of the cluster runs this binary:
//
//	go build -o customworker ./examples/customworker
//	./customworker local --workers 2
//
// and a Go client submits tasks that call "fib" by name (see cmd/shoal's e2e test). This is the
// untyped way; a program that declares typed functions and is its own cluster (shoal.Func,
// shoal.Main, shoal.NewLocalCluster) is in examples/gopipeline.
package main

import (
	"context"
	"fmt"

	"github.com/shoal-dev/shoal/cli"
	"github.com/shoal-dev/shoal/worker"
)

func fib(ctx context.Context, args []any) (any, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("fib takes one argument, got %d", len(args))
	}
	n, err := worker.Int64(args[0])
	if err != nil {
		return nil, err
	}
	a, b := int64(0), int64(1)
	for i := int64(0); i < n; i++ {
		a, b = b, a+b
	}
	return a, nil
}

func main() {
	worker.Register("fib", fib)
	cli.Main()
}
