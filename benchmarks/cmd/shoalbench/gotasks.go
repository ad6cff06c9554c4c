package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/proc"
	client "github.com/shoal-dev/shoal/clients/go"
)

// GoTasksResult is workload 8: many independent no-op Go tasks from the Go client on a real
// `shoal local` cluster (the scheduler is the `shoal local` process itself).
type GoTasksResult struct {
	Tasks          int     `json:"tasks"`
	Workers        int     `json:"workers"`
	Seconds        float64 `json:"seconds"`
	TasksPerSec    float64 `json:"tasks_per_s"`
	SchedRSSBase   int64   `json:"sched_rss_base"` // scheduler RSS before the graph
	SchedRSSHeld   int64   `json:"sched_rss_held"` // with every task done and held by futures
	SchedRSSPeak   int64   `json:"sched_rss_peak"` // VmHWM of the scheduler process
	BytesPerTask   float64 `json:"bytes_per_task"` // (held − base) / tasks: residual state
	PeakPerTask    float64 `json:"peak_bytes_per_task"`
	SchedCPUPerTsk float64 `json:"sched_cpu_us_per_task"` // scheduler utime+stime / tasks
	API            string  `json:"api"`                   // untyped or typed (--api)
	AutoKeys       bool    `json:"auto_keys,omitempty"`   // typed API's generated keys
}

func runGoTasks(ctx context.Context, bin string, n, batch, workers int, profile, clientProfile, workerProfile, api string, autoKeys bool) (*GoTasksResult, error) {
	var extra []string
	if profile != "" {
		extra = append(extra, "--cpu-profile", profile)
	}
	if workerProfile != "" {
		extra = append(extra, "--worker-cpu-profile", workerProfile)
	}
	lc, err := proc.StartLocal(ctx, bin, workers, 1, "4GiB", extra...)
	if err != nil {
		return nil, err
	}
	defer lc.Stop()
	c, err := client.Connect(ctx, lc.Addr, client.Options{})
	if err != nil {
		return nil, err
	}
	defer c.Close()

	var graphs []*client.Graph
	var keys [][]client.Key
	var typedRefs [][]client.Ref[any]
	if api == "typed" {
		graphs, typedRefs = typedNoopGraphs(n, batch, "noop", autoKeys)
	} else {
		graphs, keys = noopGraphs(n, batch, "noop")
	}
	runtime.GC()
	time.Sleep(300 * time.Millisecond)
	pid := lc.Pid()
	base := proc.RSS(pid)
	cpu0 := proc.CPUSeconds(pid)

	if clientProfile != "" {
		f, err := os.Create(clientProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	var futs []*client.Future
	if api == "typed" {
		futs, err = typedSubmitAndWait(ctx, c, graphs, typedRefs)
	} else {
		futs, err = submitAndWait(ctx, c, graphs, keys, func(f *client.Future, err error) error {
			return fmt.Errorf("task %s: %w", f.Key(), err)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("%w (cluster log:\n%s)", err, lc.Log())
	}
	el := time.Since(start)
	cpu := proc.CPUSeconds(pid) - cpu0
	if clientProfile != "" {
		pprof.StopCPUProfile()
	}
	time.Sleep(200 * time.Millisecond) // let the last key_state batch settle
	held := proc.RSS(pid)
	peak := proc.HWM(pid)
	// sanity: one result really is nil, fetched from its worker
	if v, err := futs[len(futs)-1].Result(ctx); err != nil || v != nil {
		return nil, fmt.Errorf("noop result: %v, %v", v, err)
	}
	for _, f := range futs {
		f.Release()
	}
	return &GoTasksResult{
		Tasks: n, Workers: workers, Seconds: el.Seconds(), TasksPerSec: float64(n) / el.Seconds(),
		SchedRSSBase: base, SchedRSSHeld: held, SchedRSSPeak: peak,
		BytesPerTask: float64(held-base) / float64(n), PeakPerTask: float64(peak-base) / float64(n),
		SchedCPUPerTsk: cpu / float64(n) * 1e6, API: api, AutoKeys: autoKeys,
	}, nil
}
