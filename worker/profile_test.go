package worker

import (
	"bytes"
	"context"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

//go:noinline
func profiledSpin(stop *atomic.Bool) int {
	n := 0
	for !stop.Load() {
		n++
	}
	return n
}

// The Go sampler counts the stacks of goroutines labelled with a task group, the task's own
// function included, and ignores unlabelled goroutines.
func TestSampleGoCountsLabelledStacks(t *testing.T) {
	var stop atomic.Bool
	done := make(chan struct{})
	go pprof.Do(context.Background(), pprof.Labels(groupLabel, "spin-group"), func(context.Context) {
		defer close(done)
		profiledSpin(&stop)
	})
	defer func() { stop.Store(true); <-done }()
	p := &workerProfiler{}
	var buf bytes.Buffer
	var w *Worker // sampleGo reads nothing of its worker
	for range 20 {
		w.sampleGo(p, &buf)
		time.Sleep(time.Millisecond)
	}
	var found int64
	for k, n := range p.counts {
		if k.group != "spin-group" {
			t.Errorf("a stack of group %q was counted: %s", k.group, k.stack)
		}
		if strings.Contains(k.stack, "profiledSpin (profile_test.go:") {
			found += n
		}
	}
	if found == 0 {
		t.Fatalf("no sample of profiledSpin in %v", p.counts)
	}
}

// Run messages carry the sampling interval only while the profiler is on.
func TestProfileRunsMarksRunsOnlyWhileOn(t *testing.T) {
	w := &Worker{}
	defer profilers.Delete(w)
	msgs := []outMsg{{m: &wire.Msg{Op: "run"}}}
	w.profileRuns(msgs)
	if msgs[0].m.Timeout != 0 {
		t.Fatalf("marked while off: %v", msgs[0].m.Timeout)
	}
	p := w.profiler()
	p.interval.Store(int64(10 * time.Millisecond))
	p.on.Store(true)
	w.profileRuns(msgs)
	if msgs[0].m.Timeout != 0.01 {
		t.Fatalf("interval %v, want 0.01", msgs[0].m.Timeout)
	}
	ts := &task{}
	ts.t.Key = "busy-1"
	w.profileTake(ts, &wire.Msg{Samples: []wire.ProfileItem{{Stack: "busy (x.py:1);spin (x.py:9)", Count: 3}}})
	if got := p.counts[profileKey{"busy", "busy (x.py:1);spin (x.py:9)"}]; got != 3 {
		t.Fatalf("samples of the run's group: %d, want 3 (%v)", got, p.counts)
	}
}
