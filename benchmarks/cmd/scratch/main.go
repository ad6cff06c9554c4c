package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/proc"
	client "github.com/shoal-dev/shoal/clients/go"
)

func main() {
	ctx := context.Background()
	lc, err := proc.StartLocal(ctx, "bin/shoal", 2, 1, "2GiB")
	if err != nil {
		panic(err)
	}
	defer lc.Stop()
	c, err := client.Connect(ctx, lc.Addr, client.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	for rep := 0; rep < 3; rep++ {
		n := 500
		g := client.NewGraph()
		prev := g.Go(fmt.Sprintf("c%d-0", rep), "inc", 0)
		for i := 1; i < n; i++ {
			prev = g.Go(fmt.Sprintf("c%d-%d", rep, i), "inc", prev)
		}
		t := time.Now()
		fs, err := c.Submit(ctx, g, prev)
		if err != nil {
			panic(err)
		}
		v, err := fs[0].Result(ctx)
		el := time.Since(t)
		fmt.Println(v, err, el/time.Duration(n), "per hop")
		fs[0].Release()
	}
	fmt.Fprintln(os.Stderr, lc.Log())
}
