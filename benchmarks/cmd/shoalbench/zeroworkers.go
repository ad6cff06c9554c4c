package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/proc"
	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/internal/wire"
)

// ZeroRun is one run of workload 9 with a given number of fake workers.
type ZeroRun struct {
	Workers      int     `json:"workers"`
	Tasks        int     `json:"tasks"`
	Seconds      float64 `json:"seconds"`
	TasksPerSec  float64 `json:"tasks_per_s"`
	SchedCPU     float64 `json:"sched_cpu_s"`
	CPUPerTaskUS float64 `json:"sched_cpu_us_per_task"`
	Computes     int64   `json:"computes"` // compute messages the fake workers received
	SchedRSSPeak int64   `json:"sched_rss_peak"`
}

// ZeroResult is workload 9: a real `shoal scheduler` process driven by fake workers that
// answer every compute with task_finished at once, over real sockets (docs/protocol.md §3.3).
type ZeroResult struct {
	Runs []ZeroRun `json:"runs"`
}

func runZeroWorkers(ctx context.Context, bin string, n int, workerList string, nthreads, batch, reps int, profile string) (*ZeroResult, error) {
	var res ZeroResult
	for _, s := range strings.Split(workerList, ",") {
		nw, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || nw < 1 {
			return nil, fmt.Errorf("bad --workers entry %q", s)
		}
		for r := 0; r < reps; r++ {
			prof := ""
			if profile != "" {
				prof = fmt.Sprintf("%s.%dw.pprof", profile, nw)
			}
			run, err := zeroRun(ctx, bin, n, nw, nthreads, batch, prof)
			if err != nil {
				return nil, fmt.Errorf("%d workers: %w", nw, err)
			}
			res.Runs = append(res.Runs, *run)
		}
	}
	return &res, nil
}

// fakeWorker registers with the scheduler and acknowledges every compute immediately.
type fakeWorker struct {
	conn     *wire.Conn
	computes *atomic.Int64
}

func startFakeWorker(ctx context.Context, addr string, i, nthreads int, computes *atomic.Int64) (*fakeWorker, error) {
	conn, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleWorker})
	if err != nil {
		return nil, err
	}
	err = conn.Send(&wire.Msg{Op: wire.OpRegister, Name: fmt.Sprintf("fake-%d", i),
		DataAddr: fmt.Sprintf("127.0.0.1:%d", 40000+i), NThreads: nthreads, MemLimit: 4 << 30,
		Functions: []string{"noop"}, Version: "bench", PID: os.Getpid()})
	if err != nil {
		conn.Abort()
		return nil, err
	}
	m, _, err := conn.Recv()
	if err != nil || m.Op != wire.OpRegistered {
		conn.Abort()
		if err == nil {
			err = fmt.Errorf("got %q (%s) instead of registered", m.Op, m.Message)
		}
		return nil, err
	}
	return &fakeWorker{conn: conn, computes: computes}, nil
}

// serve answers until the connection closes. A task_finished is encoded once per compute; the
// fake worker spends no time "running" it.
func (w *fakeWorker) serve() {
	for {
		m, _, err := w.conn.Recv()
		if err != nil {
			return
		}
		switch m.Op {
		case wire.OpCompute:
			w.computes.Add(1)
			now := time.Now().UnixNano()
			w.conn.Send(&wire.Msg{Op: wire.OpTaskFinished, Key: m.Task.Key, NBytes: 1,
				Encoding: wire.EncMsgpack, Start: now, Stop: now})
		case wire.OpStealRequest:
			w.conn.Send(&wire.Msg{Op: wire.OpStealResponse, Key: m.Key, Accepted: false})
		case wire.OpClose:
			return
		}
	}
}

func (w *fakeWorker) heartbeat(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if w.conn.Send(&wire.Msg{Op: wire.OpHeartbeat, MemLimit: 4 << 30, Memory: 1 << 20}) != nil {
				return
			}
		}
	}
}

func zeroRun(ctx context.Context, bin string, n, nw, nthreads, batch int, profile string) (*ZeroRun, error) {
	var extra []string
	if profile != "" {
		extra = append(extra, "--cpu-profile", profile)
	}
	sp, err := proc.StartScheduler(ctx, bin, extra...)
	if err != nil {
		return nil, err
	}
	defer sp.Stop()
	var computes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var workers []*fakeWorker
	defer func() {
		close(stop)
		for _, w := range workers {
			w.conn.Abort()
		}
		wg.Wait()
	}()
	for i := 0; i < nw; i++ {
		w, err := startFakeWorker(ctx, sp.Addr, i, nthreads, &computes)
		if err != nil {
			return nil, fmt.Errorf("fake worker %d: %w", i, err)
		}
		workers = append(workers, w)
		wg.Add(2)
		go func() { defer wg.Done(); w.serve() }()
		go func() { defer wg.Done(); w.heartbeat(stop) }()
	}
	c, err := client.Connect(ctx, sp.Addr, client.Options{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// wait until the scheduler lists every fake worker
	for {
		ws, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		if len(ws) >= nw {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	var graphs []*client.Graph
	var keys [][]client.Key
	for done := 0; done < n; {
		g := client.NewGraph()
		m := min(batch, n-done)
		ks := make([]client.Key, m)
		for i := range ks {
			ks[i] = g.Go(fmt.Sprintf("z-%d", done+i), "noop")
		}
		graphs = append(graphs, g)
		keys = append(keys, ks)
		done += m
	}
	pid := sp.Pid()
	cpu0 := proc.CPUSeconds(pid)
	start := time.Now()
	var futs []*client.Future
	for i, g := range graphs {
		fs, err := c.Submit(ctx, g, keys[i]...)
		if err != nil {
			return nil, err
		}
		futs = append(futs, fs...)
	}
	for _, f := range futs {
		if err := f.Wait(ctx); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("timed out with %d of %d computes sent", computes.Load(), n)
			}
			return nil, fmt.Errorf("task %s: %w", f.Key(), err)
		}
	}
	el := time.Since(start)
	cpu := proc.CPUSeconds(pid) - cpu0
	peak := proc.HWM(pid)
	for _, f := range futs {
		f.Release()
	}
	if got := computes.Load(); got < int64(n) {
		return nil, fmt.Errorf("only %d computes for %d tasks", got, n)
	}
	return &ZeroRun{Workers: nw, Tasks: n, Seconds: el.Seconds(), TasksPerSec: float64(n) / el.Seconds(),
		SchedCPU: cpu, CPUPerTaskUS: cpu / float64(n) * 1e6, Computes: computes.Load(), SchedRSSPeak: peak}, nil
}
