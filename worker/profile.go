package worker

import (
	"bufio"
	"bytes"
	"context"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// The statistical profiler's worker side (docs/protocol.md, "profile"). The scheduler turns it
// on and off (handleProfile). While on:
//   - Python tasks: each run message to an executor carries the sampling interval (Timeout);
//     the executor's sampling thread reads the task thread's stack every interval and the run's
//     answer carries its samples (profileTake).
//   - Go tasks run under pprof labels naming their task group (rungo.go); a sampler goroutine
//     reads the goroutine profile every interval and counts the stacks of labelled goroutines.
//
// Samples are aggregated per (group, stack) and shipped to the scheduler about once a second
// (OpProfileSamples) with the worker's ordinary send. While off nothing runs: one atomic load
// per task.

const (
	profileFlush      = time.Second
	maxProfileEntries = 20_000 // distinct (group, stack) pairs between two flushes; more are dropped
	groupLabel        = "shoal_group"
)

type profileKey struct{ group, stack string }

type workerProfiler struct {
	on       atomic.Bool
	goTasks  atomic.Int64 // Go tasks running under the group label: the Go sampler runs only then
	interval atomic.Int64 // nanoseconds
	mu       sync.Mutex
	counts   map[profileKey]int64
	dropped  int64
	stop     chan struct{} // closed when the profiler turns off
}

// profilers holds each Worker's profiler (a Worker has no field for it).
var profilers sync.Map // *Worker → *workerProfiler

func (w *Worker) profiler() *workerProfiler {
	if p, ok := profilers.Load(w); ok {
		return p.(*workerProfiler)
	}
	p, _ := profilers.LoadOrStore(w, &workerProfiler{})
	return p.(*workerProfiler)
}

// profiling reports whether the profiler is on, and its interval.
func (w *Worker) profiling() (time.Duration, bool) {
	p, ok := profilers.Load(w)
	if !ok {
		return 0, false
	}
	wp := p.(*workerProfiler)
	if !wp.on.Load() {
		return 0, false
	}
	return time.Duration(wp.interval.Load()), true
}

// handleProfile turns the profiler on (N 1, Timeout the interval in seconds) or off (N 0).
func (w *Worker) handleProfile(m *wire.Msg) {
	p := w.profiler()
	p.mu.Lock()
	defer p.mu.Unlock()
	on := m.N > 0
	if on == p.on.Load() {
		return
	}
	if !on {
		p.on.Store(false)
		close(p.stop)
		return
	}
	iv := time.Duration(m.Timeout * float64(time.Second))
	if iv < time.Millisecond || iv > time.Second {
		iv = 10 * time.Millisecond
	}
	p.interval.Store(int64(iv))
	p.stop = make(chan struct{})
	p.on.Store(true)
	stop := p.stop
	w.goFunc(func() { w.profileLoop(p, stop, iv) })
}

// profileLoop samples Go tasks every interval and flushes every profileFlush until stop, then
// flushes what is left.
func (w *Worker) profileLoop(p *workerProfiler, stop chan struct{}, iv time.Duration) {
	sample := time.NewTicker(iv)
	flush := time.NewTicker(profileFlush)
	defer sample.Stop()
	defer flush.Stop()
	var buf bytes.Buffer
	for {
		select {
		case <-stop:
			w.profileFlush(p)
			return
		case <-w.ctx.Done():
			return
		case <-sample.C:
			if p.goTasks.Load() > 0 { // the goroutine profile stops the world: only when needed
				w.sampleGo(p, &buf)
			}
		case <-flush.C:
			w.profileFlush(p)
		}
	}
}

func (w *Worker) profileFlush(p *workerProfiler) {
	p.mu.Lock()
	counts := p.counts
	p.counts = nil
	p.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	items := make([]wire.ProfileItem, 0, len(counts))
	for k, n := range counts {
		items = append(items, wire.ProfileItem{Group: k.group, Stack: k.stack, Count: n})
	}
	w.send(&wire.Msg{Op: wire.OpProfileSamples, Samples: items})
}

func (p *workerProfiler) add(group, stack string, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := profileKey{group, stack}
	if _, ok := p.counts[k]; !ok {
		if len(p.counts) >= maxProfileEntries {
			p.dropped += n
			return
		}
		if p.counts == nil {
			p.counts = make(map[profileKey]int64)
		}
	}
	p.counts[k] += n
}

// profileRuns marks run messages for an executor with the sampling interval while on (a hook
// in runPyOnce).
func (w *Worker) profileRuns(msgs []outMsg) {
	iv, on := w.profiling()
	for i := range msgs {
		if msgs[i].m == nil {
			continue
		}
		if on {
			msgs[i].m.Timeout = iv.Seconds()
		} else {
			msgs[i].m.Timeout = 0
		}
	}
}

// profileTake adds the samples an executor's answer carries to ts's group (a hook in
// runPyOnce).
func (w *Worker) profileTake(ts *task, reply *wire.Msg) {
	if len(reply.Samples) == 0 {
		return
	}
	p := w.profiler()
	g := graph.GroupOf(&ts.t)
	for _, s := range reply.Samples {
		p.add(g, s.Stack, s.Count)
	}
}

// runLabelled runs f under a pprof label naming the task group when the profiler is on, so
// the Go sampler can tell which group a goroutine works for (a hook in runGo).
func (w *Worker) runLabelled(ctx context.Context, group string, f func(context.Context)) {
	if _, on := w.profiling(); !on {
		f(ctx)
		return
	}
	p := w.profiler()
	p.goTasks.Add(1)
	defer p.goTasks.Add(-1)
	pprof.Do(ctx, pprof.Labels(groupLabel, group), f)
}

var labelLine = regexp.MustCompile(`^# labels: \{.*"` + groupLabel + `":"((?:[^"\\]|\\.)*)"`)

// sampleGo reads the goroutine profile and counts the stacks of goroutines running Go tasks
// (those carrying the group label), innermost frames last.
func (w *Worker) sampleGo(p *workerProfiler, buf *bytes.Buffer) {
	buf.Reset()
	if err := pprof.Lookup("goroutine").WriteTo(buf, 1); err != nil {
		return
	}
	sc := bufio.NewScanner(buf)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var n int64
	var group string
	var frames []string
	emit := func() {
		if group != "" && len(frames) > 0 {
			for i, j := 0, len(frames)-1; i < j; i, j = i+1, j-1 {
				frames[i], frames[j] = frames[j], frames[i]
			}
			p.add(group, strings.Join(trimRuntime(frames), ";"), n)
		}
		n, group, frames = 0, "", frames[:0]
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			emit()
		case !strings.HasPrefix(line, "#"):
			// "N @ 0x... 0x...": a new block of N goroutines with this stack
			if sp := strings.IndexByte(line, ' '); sp > 0 {
				n, _ = strconv.ParseInt(line[:sp], 10, 64)
			}
		case strings.HasPrefix(line, "# labels:"):
			if m := labelLine.FindStringSubmatch(line); m != nil {
				group, _ = strconv.Unquote(`"` + m[1] + `"`)
			}
		case strings.HasPrefix(line, "#\t0x"):
			// "#\t0x4a1b2c\tpkg.fn+0x1f\t\t\t/path/file.go:123" (tabs pad the name)
			f := strings.Split(line, "\t")
			if len(f) >= 4 {
				name := f[2]
				if i := strings.LastIndex(name, "+0x"); i > 0 {
					name = name[:i]
				}
				frames = append(frames, name+" ("+baseName(f[len(f)-1])+")")
			}
		}
	}
	emit()
}

// trimRuntime drops the frames above the task's function: the worker's own run machinery and
// pprof.Do (outermost first).
func trimRuntime(frames []string) []string {
	for i := len(frames) - 1; i >= 0; i-- {
		if strings.HasPrefix(frames[i], "runtime/pprof.Do") || strings.Contains(frames[i], "worker.callGo") {
			return frames[i+1:]
		}
	}
	return frames
}

func baseName(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}
