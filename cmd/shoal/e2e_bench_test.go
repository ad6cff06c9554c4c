package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
)

// End-to-end benchmarks on a real `shoal local` cluster (2 worker processes, 1 thread each,
// real sockets). Run: go test ./cmd/shoal -run ^$ -bench E2E -benchtime 3x

// BenchmarkE2ENoopTasks submits 100,000 independent no-op Go tasks and waits for all.
func BenchmarkE2ENoopTasks(b *testing.B) {
	c := startCluster(b, 2, "--nthreads", "1")
	cl := c.connect(b)
	ctx := ctxT(b, 10*time.Minute)
	const n = 100_000
	runNoops(ctx, b, cl, n)
}

// runNoops submits n independent no-op tasks b.N times, waits for all, and reports tasks/s.
func runNoops(ctx context.Context, b *testing.B, cl *client.Client, n int) {
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g := client.NewGraph()
		keys := make([]client.Key, n)
		for j := range keys {
			keys[j] = g.Go(fmt.Sprintf("noop-%d-%d", i, j), "noop")
		}
		futs, err := cl.Submit(ctx, g, keys...)
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range futs {
			if err := f.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		for _, f := range futs {
			f.Release()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkE2EChain runs a chain of 1,000 dependent inc tasks; reports time per hop.
func BenchmarkE2EChain(b *testing.B) {
	c := startCluster(b, 2, "--nthreads", "1")
	cl := c.connect(b)
	ctx := ctxT(b, 10*time.Minute)
	const hops = 1000
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g := client.NewGraph()
		prev := g.Go(fmt.Sprintf("c-%d-0", i), "inc", 0)
		for j := 1; j < hops; j++ {
			prev = g.Go(fmt.Sprintf("c-%d-%d", i, j), "inc", prev)
		}
		futs, err := cl.Submit(ctx, g, prev)
		if err != nil {
			b.Fatal(err)
		}
		v, err := futs[0].Result(ctx)
		if err != nil || fmt.Sprint(v) != fmt.Sprint(hops) {
			b.Fatalf("chain gave %v, %v", v, err)
		}
		futs[0].Release()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(hops*b.N), "µs/hop")
}

// BenchmarkE2EArrowTransfer makes a 200 MB Arrow table on worker A and counts its rows on
// worker B; the timed part is B's task, whose input moves peer to peer.
func BenchmarkE2EArrowTransfer(b *testing.B) {
	c := startCluster(b, 2, "--nthreads", "1")
	cl := c.connect(b)
	ctx := ctxT(b, 10*time.Minute)
	infos, err := cl.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	const size = 200 << 20
	b.SetBytes(size)
	transfer := func(i int) {
		b.StopTimer()
		g := client.NewGraph()
		tbl := g.Add(graph.Task{Key: fmt.Sprintf("t-%d", i), Kind: graph.KindGo, Func: "arrow_bytes_table", Args: []graph.Arg{graph.Lit(size)}, Workers: []string{infos[0].Name}})
		futs, err := cl.Submit(ctx, g, tbl)
		if err != nil || futs[0].Wait(ctx) != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		g = client.NewGraph()
		cnt := g.Add(graph.Task{Key: fmt.Sprintf("n-%d", i), Kind: graph.KindGo, Func: "row_count", Args: []graph.Arg{graph.Ref(string(tbl))}, Workers: []string{infos[1].Name}})
		f2, err := cl.Submit(ctx, g, cnt)
		if err != nil {
			b.Fatal(err)
		}
		if err := f2[0].Wait(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		f2[0].Release()
		futs[0].Release()
		b.StartTimer()
	}
	transfer(-1) // warm-up: the first 200 MB allocations of fresh processes fault in pages
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		transfer(i)
	}
}

// BenchmarkE2EDashboardViewers runs 100,000 no-op tasks with 0 and with 3 dashboard viewers
// connected to the websocket (each reading every frame), to measure what watching costs.
func BenchmarkE2EDashboardViewers(b *testing.B) {
	for _, viewers := range []int{0, 3} {
		b.Run(fmt.Sprintf("viewers=%d", viewers), func(b *testing.B) {
			args := []string{"--nthreads", "1"}
			if dir := os.Getenv("SHOAL_BENCH_PROFILE_DIR"); dir != "" { // profile the scheduler
				args = append(args, "--cpu-profile", filepath.Join(dir, fmt.Sprintf("scheduler-viewers%d.prof", viewers)))
			}
			c := startCluster(b, 2, args...)
			cl := c.connect(b)
			ctx := ctxT(b, 10*time.Minute)
			frames := openViewers(b, c.Dashboard, viewers)
			runNoops(ctx, b, cl, 100_000)
			if viewers > 0 && frames.Load() == 0 {
				b.Fatal("viewers received no frames")
			}
		})
	}
}
