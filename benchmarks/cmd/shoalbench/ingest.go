package main

import (
	"context"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/proc"
	client "github.com/shoal-dev/shoal/clients/go"
)

// IngestResult is how fast a scheduler takes a graph in: n no-op tasks submitted by the Go
// client in batches to a scheduler with no worker, so nothing runs; the clock stops when the
// answer to an info request sent after the last batch arrives (the scheduler reads a
// connection's messages in order, so every batch was ingested by then).
type IngestResult struct {
	Tasks          int     `json:"tasks"`
	Batch          int     `json:"batch"`
	Seconds        float64 `json:"seconds"`
	TasksPerSec    float64 `json:"tasks_per_s"`
	SchedCPUPerTsk float64 `json:"sched_cpu_us_per_task"`
}

func runIngest(ctx context.Context, bin string, n, batch int) (*IngestResult, error) {
	sp, err := proc.StartScheduler(ctx, bin)
	if err != nil {
		return nil, err
	}
	defer sp.Stop()
	c, err := client.Connect(ctx, sp.Addr, client.Options{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	graphs, keys := noopGraphs(n, batch, "ingest") // built before the clock starts
	pid := sp.Pid()
	cpu0 := proc.CPUSeconds(pid)
	start := time.Now()
	if _, err := submitAll(ctx, c, graphs, keys); err != nil {
		return nil, err
	}
	if _, err := c.Info(ctx); err != nil { // answered after every graph before it was read
		return nil, err
	}
	el := time.Since(start)
	cpu := proc.CPUSeconds(pid) - cpu0
	return &IngestResult{Tasks: n, Batch: batch, Seconds: el.Seconds(), TasksPerSec: float64(n) / el.Seconds(),
		SchedCPUPerTsk: cpu / float64(n) * 1e6}, nil
}
