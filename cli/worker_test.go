package cli

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/worker"
)

// parseWorker parses worker flags as `shoal worker` does and builds the worker's config.
func parseWorker(t *testing.T, args ...string) (worker.Config, error) {
	t.Helper()
	var f workerFlags
	fs := newFlagSet("worker", "", "")
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return f.config()
}

// workerConfig is parseWorker's memory limit and thresholds.
func workerConfig(t *testing.T, args ...string) (cfgLimit int64, target, spill, pause float64, err error) {
	t.Helper()
	cfg, err := parseWorker(t, args...)
	return cfg.MemoryLimit, cfg.SpillFraction, cfg.ProcessSpillFraction, cfg.PauseFraction, err
}

// --memory-limit 0 means no limit, as in dask: the machine's memory, and no threshold acts,
// whatever the fractions say. A size keeps the fractions; a bad one is refused by name.
func TestWorkerMemoryLimitZeroIsNoLimit(t *testing.T) {
	limit, target, spill, pause, err := workerConfig(t, "--memory-limit", "0", "--memory-pause", "0.5")
	if err != nil {
		t.Fatal(err)
	}
	if limit != totalMemory() || target != 0 || spill != 0 || pause != 0 {
		t.Fatalf("--memory-limit 0: limit %d (machine %d), fractions %g %g %g; want the machine and no thresholds",
			limit, totalMemory(), target, spill, pause)
	}

	limit, target, spill, pause, err = workerConfig(t, "--memory-limit", "2GiB", "--memory-pause", "0.5")
	if err != nil {
		t.Fatal(err)
	}
	if limit != 2<<30 || target != 0.6 || spill != 0.7 || pause != 0.5 {
		t.Fatalf("--memory-limit 2GiB: limit %d, fractions %g %g %g", limit, target, spill, pause)
	}

	if _, _, _, _, err = workerConfig(t, "--memory-limit", "lots"); err == nil {
		t.Fatal("--memory-limit lots was accepted")
	}
}

// The GC ballast is 32 MiB, less when an eighth of the Go soft limit in force is smaller.
func TestGCBallastSize(t *testing.T) {
	for _, c := range []struct {
		limit int64
		want  int
	}{
		{math.MaxInt64, 32 << 20}, // no limit
		{8 << 30, 32 << 20},       // a large one
		{128 << 20, 16 << 20},     // an eighth of 128 MiB
		{24 << 20, 3 << 20},       // GOMEMLIMIT=24MiB
		{0, 0},
	} {
		if got := gcBallast(c.limit); got != c.want {
			t.Errorf("gcBallast(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}

// --shutdown-grace sets how long running tasks may finish on SIGTERM (10 s unless given); a
// negative one is refused by name.
func TestWorkerShutdownGrace(t *testing.T) {
	grace := func(args ...string) (time.Duration, error) {
		cfg, err := parseWorker(t, args...)
		return cfg.ShutdownGrace, err
	}
	if g, err := grace(); err != nil || g != 10*time.Second {
		t.Fatalf("default: %v, %v; want 10s", g, err)
	}
	if g, err := grace("--shutdown-grace", "0"); err != nil || g != 0 {
		t.Fatalf("--shutdown-grace 0: %v, %v", g, err)
	}
	if _, err := grace("--shutdown-grace", "-1s"); err == nil || !strings.Contains(err.Error(), "--shutdown-grace") {
		t.Fatalf("--shutdown-grace -1s: %v; want an error naming the flag", err)
	}
}
