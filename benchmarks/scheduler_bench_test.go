package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/fakeworker"
	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/scheduler"
)

// The scheduler's whole hot path in one process, for profiling workload 9 with the Go tools:
// a real scheduler.Server (driver, core, wire) on a real TCP port, fake zero-cost workers over
// real sockets, and the Go client submitting no-op tasks. ns/op is wall time per task; the CPU
// profile shows the scheduler's share next to the fake workers' and the client's.
//
//	go test ./benchmarks -run '^$' -bench SchedulerZeroWorkers -benchtime 200000x -cpuprofile cpu.out
//	go tool pprof -top -focus 'scheduler\.' benchmarks.test cpu.out
func BenchmarkSchedulerZeroWorkers2(b *testing.B)  { benchZero(b, 2) }
func BenchmarkSchedulerZeroWorkers16(b *testing.B) { benchZero(b, 16) }
func BenchmarkSchedulerZeroWorkers64(b *testing.B) { benchZero(b, 64) }

func benchZero(b *testing.B, nw int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := scheduler.DefaultServerConfig()
	cfg.Port = 0
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := scheduler.NewServer(cfg)
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(ctx); close(served) }()
	defer func() { srv.Close(); <-served }()
	pool, err := fakeworker.StartPool(ctx, srv.Addr(), nw, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	c, err := client.Connect(ctx, srv.Addr(), client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for {
		ws, err := c.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(ws) >= nw {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	const batch = 50_000
	b.ResetTimer()
	var futs []*client.Future
	for done := 0; done < b.N; {
		g := client.NewGraph()
		m := min(batch, b.N-done)
		keys := make([]client.Key, m)
		for i := range keys {
			keys[i] = g.Go(fmt.Sprintf("z-%d", done+i), "noop")
		}
		fs, err := c.Submit(ctx, g, keys...)
		if err != nil {
			b.Fatal(err)
		}
		futs = append(futs, fs...)
		done += m
	}
	for _, f := range futs {
		if err := f.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	for _, f := range futs {
		f.Release()
	}
}
