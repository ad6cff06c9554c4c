// Package sim is a simulated cluster implementing dashboard.Source with moving, synthetic data:
// workers with threads run a layered graph of task groups in real time, move inputs between
// each other, sometimes fail and retry. It exists to develop and test the web page without a
// scheduler (cmd/shoal-dashdemo, the e2e test's demo mode); it is not a model of Shoal.
package sim

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/internal/wire"
)

// Config shapes the simulation.
type Config struct {
	Workers  int           // number of workers
	Threads  int           // threads per worker
	Width    int           // tasks per wide layer; the graph has about 3.2 × Width tasks
	TaskTime time.Duration // mean task duration
	Failures float64       // probability that a run of a "clean" task fails (then retried once)
	Loop     bool          // start a new graph when one completes
	Seed     uint64
}

// Sim is a running simulation. Create with New, stop with Close.
type Sim struct {
	cfg  Config
	feed dashboard.Feed
	log  *dashboard.EventLog
	stop chan struct{}
	wg   sync.WaitGroup

	mu struct {
		sync.Mutex
		rng       *rand.Rand
		now       time.Time
		run       int // graph generation
		workers   []*worker
		tasks     map[string]*task
		order     []*task // graph order
		groups    []*group
		completed uint64
		failed    uint64
		trans     uint64
		moved     int64
		done      bool
	}
}

type worker struct {
	info    wire.WorkerInfo
	threads []*task // running task per thread, nil when idle
}

type group struct {
	name  string
	tasks []*task
	deps  []string
	mean  time.Duration
}

type task struct {
	key      string
	group    *group
	deps     []*task
	state    string
	worker   *worker
	thread   int
	start    time.Time
	stop     time.Time
	nbytes   int64
	attempts int
	story    []dashboard.Transition
	err      *dashboard.TaskError
}

// New starts a simulation.
func New(cfg Config) *Sim {
	s := &Sim{cfg: cfg, log: dashboard.NewEventLog(1000), stop: make(chan struct{})}
	s.mu.rng = rand.New(rand.NewPCG(cfg.Seed, 7))
	s.mu.now = time.Now()
	for i := range cfg.Workers {
		w := &worker{threads: make([]*task, cfg.Threads)}
		w.info = wire.WorkerInfo{
			Name: fmt.Sprintf("worker-%d", i), Address: fmt.Sprintf("127.0.0.1:%d", 40000+i),
			NThreads: cfg.Threads, MemoryLimit: 2 << 30,
		}
		s.mu.workers = append(s.mu.workers, w)
		s.cluster(dashboard.Event{Kind: dashboard.EventWorkerJoined, Worker: w.info.Address, Name: w.info.Name})
	}
	s.newGraphLocked()
	s.wg.Add(1)
	go s.loop()
	return s
}

// Close stops the simulation.
func (s *Sim) Close() {
	close(s.stop)
	s.wg.Wait()
}

// Done reports whether the current graph has completed (only meaningful without Loop).
func (s *Sim) Done() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.done
}

func (s *Sim) loop() {
	defer s.wg.Done()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			s.stepLocked(now)
			s.mu.Unlock()
		}
	}
}

func (s *Sim) cluster(e dashboard.Event) {
	if e.Time == 0 {
		e.Time = time.Now().UnixNano()
	}
	s.log.Add(e)
	s.feed.Publish(e)
}

// newGraphLocked builds: load-data → clean → features (2 inputs) → aggregate (8 inputs) → total.
func (s *Sim) newGraphLocked() {
	s.mu.run++
	s.mu.tasks = make(map[string]*task)
	s.mu.order, s.mu.groups, s.mu.done = nil, nil, false
	w := max(s.cfg.Width, 8)
	tt := s.cfg.TaskTime
	load := s.groupLocked("load-data", nil, tt, w, nil)
	clean := s.groupLocked("clean", []string{"load-data"}, tt/2, w, func(i int) []*task { return []*task{load.tasks[i]} })
	feat := s.groupLocked("features", []string{"clean"}, tt, w, func(i int) []*task {
		return []*task{clean.tasks[i], clean.tasks[(i+1)%w]}
	})
	agg := s.groupLocked("aggregate", []string{"features"}, tt/2, w/8, func(i int) []*task { return feat.tasks[i*8 : i*8+8] })
	s.groupLocked("total", []string{"aggregate"}, tt, 1, func(int) []*task { return agg.tasks })
}

func (s *Sim) groupLocked(name string, deps []string, mean time.Duration, n int, in func(int) []*task) *group {
	g := &group{name: name, deps: deps, mean: mean}
	for i := range n {
		t := &task{key: fmt.Sprintf("%s-%d", name, i), group: g, state: "waiting"}
		if s.mu.run > 1 {
			t.key = fmt.Sprintf("%s-r%d-%d", name, s.mu.run, i)
		}
		if in != nil {
			t.deps = in(i)
		}
		s.transitionLocked(t, "released", "waiting", "update-graph", nil)
		g.tasks = append(g.tasks, t)
		s.mu.tasks[t.key] = t
		s.mu.order = append(s.mu.order, t)
	}
	s.mu.groups = append(s.mu.groups, g)
	return g
}

func (s *Sim) transitionLocked(t *task, from, to, cause string, w *worker) {
	s.mu.trans++
	tr := dashboard.Transition{Time: s.mu.now.UnixNano(), From: from, To: to, Cause: cause, EventID: s.mu.trans}
	if w != nil {
		tr.Worker = w.info.Address
	}
	t.story = append(t.story, tr)
	t.state = to
}
