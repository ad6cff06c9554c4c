package sim

import (
	"context"

	"github.com/shoal-dev/shoal/dashboard"
)

var _ dashboard.Source = (*Sim)(nil)

// Snapshot implements dashboard.Source.
func (s *Sim) Snapshot(context.Context) (dashboard.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := dashboard.Snapshot{Time: s.mu.now.UnixNano(), EventsDropped: s.feed.Dropped()}
	for _, w := range s.mu.workers {
		ws := dashboard.WorkerStatus{WorkerInfo: w.info, Processing: w.info.Executing}
		snap.Workers = append(snap.Workers, ws)
	}
	for _, g := range s.mu.groups {
		gp := s.progressLocked(g)
		snap.Groups = append(snap.Groups, gp)
		addCounts(&snap.Totals.TaskCounts, gp.TaskCounts)
	}
	snap.Totals.Tasks = len(s.mu.order)
	snap.Totals.Completed = s.mu.completed
	snap.Totals.Failed = s.mu.failed
	snap.Totals.Transitions = s.mu.trans
	snap.Totals.BytesTransferred = s.mu.moved
	return snap, nil
}

func (s *Sim) progressLocked(g *group) dashboard.GroupProgress {
	gp := dashboard.GroupProgress{Name: g.name, Total: len(g.tasks), Duration: g.mean.Seconds()}
	for _, t := range g.tasks {
		switch t.state {
		case "waiting":
			gp.Waiting++
		case "processing":
			gp.Processing++
		case "memory":
			gp.Memory++
			gp.Done++
			gp.NBytes += t.nbytes
		case "released":
			gp.Done++
		case "erred":
			gp.Erred++
		}
	}
	return gp
}

func addCounts(dst *dashboard.TaskCounts, c dashboard.TaskCounts) {
	dst.Released += c.Released
	dst.Waiting += c.Waiting
	dst.NoWorker += c.NoWorker
	dst.Queued += c.Queued
	dst.Processing += c.Processing
	dst.Memory += c.Memory
	dst.Erred += c.Erred
}

// Task implements dashboard.Source.
func (s *Sim) Task(_ context.Context, key string) (dashboard.TaskInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.mu.tasks[key]
	if !ok {
		return dashboard.TaskInfo{}, dashboard.ErrNotFound
	}
	info := dashboard.TaskInfo{
		Key: t.key, Group: t.group.name, State: t.state, NBytes: t.nbytes,
		Story: append([]dashboard.Transition(nil), t.story...), Error: t.err,
	}
	if t.worker != nil {
		info.Worker = t.worker.info.Address
		if t.state == "memory" {
			info.WhoHas = []string{info.Worker}
		}
	}
	if !t.start.IsZero() {
		info.Start, info.Stop = t.start.UnixNano(), t.stop.UnixNano()
	}
	for _, d := range t.deps {
		dep := dashboard.TaskDep{Key: d.key, State: d.state, NBytes: d.nbytes}
		if d.worker != nil {
			dep.WhoHas = []string{d.worker.info.Address}
		}
		info.Deps = append(info.Deps, dep)
	}
	for _, x := range s.mu.order {
		for _, d := range x.deps {
			if d == t {
				info.Dependents = append(info.Dependents, x.key)
			}
		}
	}
	return info, nil
}

// GroupGraph implements dashboard.Source.
func (s *Sim) GroupGraph(context.Context) (dashboard.GroupGraph, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var g dashboard.GroupGraph
	for _, gr := range s.mu.groups {
		g.Nodes = append(g.Nodes, s.progressLocked(gr))
		for _, d := range gr.deps {
			g.Edges = append(g.Edges, dashboard.GroupEdge{From: d, To: gr.name})
		}
	}
	return g, nil
}

// Subscribe implements dashboard.Source.
func (s *Sim) Subscribe(buf int) (<-chan dashboard.Event, func()) { return s.feed.Subscribe(buf) }

// Events implements dashboard.Source.
func (s *Sim) Events(_ context.Context, n int) ([]dashboard.Event, error) { return s.log.Last(n), nil }
