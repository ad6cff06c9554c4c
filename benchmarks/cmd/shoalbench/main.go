// Command shoalbench runs the Shoal-only benchmark workloads that need Go: many no-op Go tasks
// from the Go client (workload 8), a scheduler fed by zero-cost fake workers (workload 9), and
// how fast a scheduler with no worker takes a graph in (ingest). Each prints one JSON object
// on stdout; benchmarks/run.py collects the first two.
//
//	shoalbench gotasks     --bin bin/shoal --tasks 1000000 [--api typed]
//	shoalbench zeroworkers --bin bin/shoal --tasks 200000 --workers 2,16,64
//	shoalbench ingest      --bin bin/shoal --tasks 1000000 [--batch 50000]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: shoalbench gotasks|zeroworkers|ingest [flags]")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var (
		out any
		err error
	)
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	bin := fs.String("bin", "bin/shoal", "the shoal binary")
	tasks := fs.Int("tasks", 1_000_000, "number of tasks")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	switch os.Args[1] {
	case "gotasks":
		batch := fs.Int("batch", 50_000, "tasks per update_graph message")
		workers := fs.Int("workers", 2, "worker processes")
		profile := fs.String("cpu-profile", "", "pass --cpu-profile to the scheduler process")
		clientProfile := fs.String("client-profile", "", "write a CPU profile of this process (the Go client) while it submits and waits")
		workerProfile := fs.String("worker-cpu-profile", "", "pass --worker-cpu-profile PREFIX to shoal local (one profile per worker)")
		api := fs.String("api", "untyped", "how the Go client builds and waits: untyped (Graph.Go, Future.Wait) or typed (shoal.Extern0 + Call, shoal.Wait)")
		autoKeys := fs.Bool("auto-keys", false, "with --api typed: the keys the typed API generates instead of noop-<i>")
		fs.Parse(os.Args[2:])
		if *api != "untyped" && *api != "typed" {
			fmt.Fprintf(os.Stderr, "--api %q: want untyped or typed\n", *api)
			os.Exit(2)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		out, err = runGoTasks(ctx, *bin, *tasks, *batch, *workers, *profile, *clientProfile, *workerProfile, *api, *autoKeys)
	case "zeroworkers":
		workers := fs.String("workers", "2,16,64", "comma-separated numbers of fake workers, one run each")
		nthreads := fs.Int("nthreads", 1, "threads each fake worker declares")
		batch := fs.Int("batch", 50_000, "tasks per update_graph message")
		reps := fs.Int("reps", 1, "repetitions per worker count (fresh scheduler each), going round the worker counts, each repetition starting at the next one; each run reports its CPU per task over that of the first count listed, in the same repetition (cpu_ratio_to_first)")
		firstRep := fs.Int("first-rep", 0, "number the repetitions from this one, so that their order of worker counts goes on from an earlier invocation's (run.py runs one repetition per invocation)")
		profile := fs.String("cpu-profile", "", "pass --cpu-profile to the scheduler process (file prefix; the worker count is appended)")
		fs.StringVar(&zeroJournal, "journal", "", "run the scheduler with --journal in a fresh directory under this one (measures the journal's cost)")
		fs.StringVar(&zeroPerf, "perf", "", "run `perf record -g` on the scheduler during each graph (PREFIX.<workers>w.<rep>.data) and the idle window before it (PREFIX.<workers>w.<rep>.idle.data), not registration or teardown")
		fs.StringVar(&zeroPerfStat, "perf-stat", "", "run `perf stat -e EVENTS` on the scheduler during each graph only, printing the counts (say raw_syscalls:sys_enter,context-switches); not with -perf")
		fs.Parse(os.Args[2:])
		if zeroPerf != "" && zeroPerfStat != "" {
			fmt.Fprintln(os.Stderr, "shoalbench zeroworkers: -perf and -perf-stat cannot be used together: perf attaches once per graph")
			os.Exit(2)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if *firstRep < 0 {
			fmt.Fprintf(os.Stderr, "shoalbench zeroworkers: -first-rep %d must not be negative\n", *firstRep)
			os.Exit(2)
		}
		out, err = runZeroWorkers(ctx, *bin, *tasks, *workers, *nthreads, *batch, *firstRep, *reps, *profile)
	case "ingest":
		batch := fs.Int("batch", 50_000, "tasks per update_graph message")
		fs.Parse(os.Args[2:])
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		out, err = runIngest(ctx, *bin, *tasks, *batch)
	default:
		fmt.Fprintf(os.Stderr, "unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shoalbench:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}
