package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/benchmarks/internal/fakeworker"
	"github.com/shoal-dev/shoal/benchmarks/internal/proc"
	client "github.com/shoal-dev/shoal/clients/go"
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
	// Steals is how many steal requests they received meanwhile (each refused: a fake
	// worker's tasks finish as they arrive).
	Steals       int64 `json:"steal_requests"`
	SchedRSSPeak int64 `json:"sched_rss_peak"`
	// IdleCPUPct is the scheduler's CPU (percent of one core) over idleWindow before the graph,
	// with every fake worker sending its heartbeat as often as the scheduler asks: the load of
	// heartbeats alone.
	IdleCPUPct float64 `json:"sched_idle_cpu_pct"`
	// HeartbeatsPerSec is how many heartbeats the scheduler received per second meanwhile.
	HeartbeatsPerSec float64 `json:"heartbeats_per_s"`
	// LeaveSeconds and LeaveCPU: from closing every fake worker's connection at once until the
	// scheduler lists none, the time and the scheduler's CPU (a whole cluster going away).
	LeaveSeconds float64 `json:"leave_s"`
	LeaveCPU     float64 `json:"leave_sched_cpu_s"`
	// RatioToFirst is CPUPerTaskUS over that of the run with the first worker count listed,
	// in the same repetition (issue 19's target: within 20 % of 2 workers). Repetitions go
	// round the worker counts, so that each ratio compares runs minutes apart at most, not
	// one whose machine was slower for a while; and each repetition starts at the next
	// count, so that no count always runs first.
	RatioToFirst float64 `json:"cpu_ratio_to_first"`
	// Rep is the repetition, and RanAt the run's place in it (0: it ran first).
	Rep   int `json:"rep"`
	RanAt int `json:"ran_at"`
}

// idleWindow is how long the idle scheduler's CPU is measured before each run.
const idleWindow = 3 * time.Second

// ZeroResult is workload 9: a real `shoal scheduler` process driven by fake workers that
// answer every compute with task_finished at once, over real sockets (docs/protocol.md §3.3).
type ZeroResult struct {
	Runs []ZeroRun `json:"runs"`
}

func runZeroWorkers(ctx context.Context, bin string, n int, workerList string, nthreads, batch, firstRep, reps int, profile string) (*ZeroResult, error) {
	var counts []int
	for _, s := range strings.Split(workerList, ",") {
		nw, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || nw < 1 {
			return nil, fmt.Errorf("bad --workers entry %q", s)
		}
		counts = append(counts, nw)
	}
	var res ZeroResult
	for r := firstRep; r < firstRep+reps; r++ {
		// Each repetition starts at the next count: a run that follows another finds the
		// machine in the state the one before left it (here, a VM whose freed memory goes back
		// to its host, so that the later run pays a host fault for each page it touches: 12 %
		// of the scheduler's samples in clear_page_erms, against under 1 % for the first).
		runs := make([]ZeroRun, len(counts))
		for k := range counts {
			i := (r + k) % len(counts)
			nw := counts[i]
			prof := ""
			if profile != "" {
				prof = fmt.Sprintf("%s.%dw.pprof", profile, nw)
			}
			run, err := zeroRun(ctx, bin, n, nw, nthreads, batch, r, prof)
			if err != nil {
				return nil, fmt.Errorf("%d workers: %w", nw, err)
			}
			run.Rep, run.RanAt = r, k
			runs[i] = *run
		}
		if first := runs[0].CPUPerTaskUS; first > 0 {
			for i := range runs {
				runs[i].RatioToFirst = runs[i].CPUPerTaskUS / first
			}
		}
		res.Runs = append(res.Runs, runs...)
	}
	return &res, nil
}

// pollUntil asks done every 10 ms until it says so or fails (its requests carry the run's
// context, which bounds the wait).
func pollUntil(done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// zeroPerf: when set, `perf record` samples the scheduler while each graph runs (file prefix),
// and over the idle window before it (PREFIX.<workers>w.<rep>.idle.data).
var zeroPerf string

// zeroPerfStat: when set, `perf stat -e` counts these events in the scheduler while each
// graph runs (printed to stderr).
var zeroPerfStat string

// recordPerf starts perf record on pid into file, or perf stat (zeroPerfStat) when file is
// empty; the returned stop ends it and waits for the file.
func recordPerf(pid int, file string) (stop func() error, err error) {
	cmd := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", file)
	if file == "" {
		cmd = exec.Command("perf", "stat", "-e", zeroPerfStat, "-p", strconv.Itoa(pid))
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // perf attaches before the graph starts
	return func() error {
		cmd.Process.Signal(os.Interrupt)
		var exit *exec.ExitError
		if err := cmd.Wait(); err != nil && !errors.As(err, &exit) { // perf ends by the signal
			return err
		}
		if file == "" {
			return nil
		}
		_, err := os.Stat(file)
		return err
	}, nil
}

// zeroJournal: when set, each run's scheduler journals into a fresh directory under it.
var zeroJournal string

func zeroRun(ctx context.Context, bin string, n, nw, nthreads, batch, rep int, profile string) (*ZeroRun, error) {
	var extra []string
	if profile != "" {
		extra = append(extra, "--cpu-profile", profile)
	}
	if zeroJournal != "" {
		dir, err := os.MkdirTemp(zeroJournal, "journal-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		extra = append(extra, "--journal", dir)
	}
	sp, err := proc.StartScheduler(ctx, bin, extra...)
	if err != nil {
		return nil, err
	}
	defer sp.Stop()
	pool, err := fakeworker.StartPool(ctx, sp.Addr, nw, nthreads)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	c, err := client.Connect(ctx, sp.Addr, client.Options{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// wait until the scheduler lists every fake worker
	if err := pollUntil(func() (bool, error) { ws, err := c.Info(ctx); return len(ws) >= nw, err }); err != nil {
		return nil, err
	}

	pid := sp.Pid()
	stopIdlePerf := func() error { return nil }
	if zeroPerf != "" { // the idle window too: what an idle cluster of this size costs
		if stopIdlePerf, err = recordPerf(pid, fmt.Sprintf("%s.%dw.%d.idle.data", zeroPerf, nw, rep)); err != nil {
			return nil, err
		}
	}
	idle0, beats0 := proc.CPUSeconds(pid), pool.Heartbeats()
	time.Sleep(idleWindow)
	idleCPU, beats := proc.CPUSeconds(pid)-idle0, pool.Heartbeats()-beats0
	if err := stopIdlePerf(); err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}

	graphs, keys := noopGraphs(n, batch, "z")
	stopPerf := func() error { return nil }
	if zeroPerf != "" || zeroPerfStat != "" {
		file := "" // perf stat
		if zeroPerf != "" {
			file = fmt.Sprintf("%s.%dw.%d.data", zeroPerf, nw, rep)
		}
		if stopPerf, err = recordPerf(pid, file); err != nil {
			return nil, err
		}
		defer func() { stopPerf() }() // when the graph failed; else a no-op by then
	}
	cpu0, steals0 := proc.CPUSeconds(pid), pool.Steals()
	start := time.Now()
	futs, err := submitAndWait(ctx, c, graphs, keys, func(f *client.Future, err error) error {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("timed out with %d of %d computes sent", pool.Computes(), n)
		}
		return fmt.Errorf("task %s: %w", f.Key(), err)
	})
	if err != nil {
		return nil, err
	}
	el := time.Since(start)
	cpu, steals := proc.CPUSeconds(pid)-cpu0, pool.Steals()-steals0
	err = stopPerf()
	stopPerf = func() error { return nil }
	if err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}
	peak := proc.HWM(pid)
	for _, f := range futs {
		f.Release()
	}
	computes := pool.Computes()
	if computes < int64(n) {
		return nil, fmt.Errorf("only %d computes for %d tasks", computes, n)
	}
	// The cluster leaves once the scheduler has handled the releases (in order: the last key
	// released is forgotten last), not while it still holds the results: closing the workers
	// then lost them, and the scheduler recomputed them on those still there, counting each
	// death against the tasks, for as long as the leave took.
	last := string(futs[len(futs)-1].Key())
	if err := pollUntil(func() (bool, error) { held, err := c.WhoHas(ctx, last); return len(held[last]) == 0, err }); err != nil {
		return nil, err
	}
	cpu0 = proc.CPUSeconds(pid)
	start = time.Now()
	pool.Close()
	if err := pollUntil(func() (bool, error) { ws, err := c.Info(ctx); return len(ws) == 0, err }); err != nil {
		return nil, err
	}
	leave, leaveCPU := time.Since(start).Seconds(), proc.CPUSeconds(pid)-cpu0
	return &ZeroRun{LeaveSeconds: leave, LeaveCPU: leaveCPU, Workers: nw, Tasks: n, Seconds: el.Seconds(), TasksPerSec: float64(n) / el.Seconds(),
		SchedCPU: cpu, CPUPerTaskUS: cpu / float64(n) * 1e6, Computes: computes, Steals: steals, SchedRSSPeak: peak,
		IdleCPUPct: idleCPU / idleWindow.Seconds() * 100, HeartbeatsPerSec: float64(beats) / idleWindow.Seconds()}, nil
}
