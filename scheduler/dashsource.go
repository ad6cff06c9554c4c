package scheduler

import (
	"context"
	"time"

	"github.com/shoal-dev/shoal/dashboard"
)

// DashboardSource returns the scheduler as seen by the dashboard. Every method asks the driver
// goroutine (Query) and is called only while someone watches the dashboard.
func (s *Server) DashboardSource() dashboard.Source { return dashSource{s} }

type dashSource struct{ s *Server }

// maxDashGroups bounds the groups a snapshot carries (the most recent ones).
const maxDashGroups = 200

func (d dashSource) Snapshot(ctx context.Context) (dashboard.Snapshot, error) {
	var snap dashboard.Snapshot
	err := d.s.QueryContext(ctx, func(c *Core) {
		s := d.s
		snap.Time = time.Now().UnixNano()
		processing := map[WorkerID]int{}
		for _, ws := range c.Workers() {
			processing[ws.ID] = ws.Processing
		}
		for _, w := range s.workers {
			wi := w.info
			wi.LastSeen = float64(w.lastSeen.UnixNano()) / 1e9
			snap.Workers = append(snap.Workers, dashboard.WorkerStatus{WorkerInfo: wi, Processing: processing[w.id]})
			snap.Totals.BytesTransferred += wi.BytesRecv
		}
		for _, g := range c.RecentGroups(maxDashGroups, true) {
			snap.Groups = append(snap.Groups, groupProgress(g))
		}
		counts, st := c.Counts(), c.Stats()
		snap.Totals.TaskCounts = taskCounts(counts)
		snap.Totals.Tasks = st.TasksAlive
		snap.Totals.Completed, snap.Totals.Failed = s.stats.finished, s.stats.failed
		snap.Totals.Transitions = st.Transitions
	})
	snap.EventsDropped = d.s.obs.feed.Dropped()
	return snap, err
}

func taskCounts(c [NumStates]int) dashboard.TaskCounts {
	return dashboard.TaskCounts{Released: c[Released], Waiting: c[Waiting], NoWorker: c[NoWorker], Queued: c[Queued],
		Processing: c[Processing], Memory: c[Memory], Erred: c[Erred]}
}

func groupProgress(g GroupStats) dashboard.GroupProgress {
	return dashboard.GroupProgress{Name: g.Name, TaskCounts: taskCounts(g.States), Total: g.Added, Done: g.Done,
		NBytes: g.NBytes, Duration: g.MeanDuration.Seconds()}
}

func (d dashSource) Task(ctx context.Context, key string) (dashboard.TaskInfo, error) {
	var out dashboard.TaskInfo
	found := false
	err := d.s.QueryContext(ctx, func(c *Core) {
		ti, ok := c.TaskInfo(key)
		if !ok {
			return
		}
		found = true
		out = dashboard.TaskInfo{Key: ti.Key, Group: ti.Group, State: ti.State.String(), NBytes: ti.NBytes,
			Priority: int(ti.Order), Retries: ti.RetriesLeft, WhoHas: d.s.addrs(ti.WhoHas)}
		if w, ok := d.s.workers[ti.Worker]; ok {
			out.Worker = w.info.Address
		} else if len(out.WhoHas) > 0 {
			out.Worker = out.WhoHas[0]
		}
		for _, dep := range ti.Deps {
			out.Deps = append(out.Deps, dashboard.TaskDep{Key: dep.Key, State: dep.State.String(), NBytes: dep.NBytes,
				WhoHas: d.s.addrs(c.WhoHas(dep.Key))})
		}
		for _, st := range ti.Story {
			out.Story = append(out.Story, dashboard.Transition{From: st.From.String(), To: st.To.String(), Cause: st.Event, EventID: st.Seq})
		}
		if ti.Err != nil {
			out.Error = &dashboard.TaskError{Code: ti.Err.Code, Type: ti.Err.Type, Message: ti.Err.Message, Traceback: ti.Err.Traceback}
		}
		if ti.Duration > 0 {
			out.Stop = time.Now().UnixNano()
			out.Start = out.Stop - int64(ti.Duration)
		}
	})
	if err == nil && !found {
		err = dashboard.ErrNotFound
	}
	return out, err
}

func (d dashSource) GroupGraph(ctx context.Context) (dashboard.GroupGraph, error) {
	var gg dashboard.GroupGraph
	err := d.s.QueryContext(ctx, func(c *Core) {
		for _, g := range c.RecentGroups(maxDashGroups, true) {
			gg.Nodes = append(gg.Nodes, groupProgress(g))
			for _, dep := range g.Dependencies {
				gg.Edges = append(gg.Edges, dashboard.GroupEdge{From: dep, To: g.Name})
			}
		}
	})
	return gg, err
}

func (d dashSource) Subscribe(buf int) (<-chan dashboard.Event, func()) {
	return d.s.obs.feed.Subscribe(buf)
}

func (d dashSource) Events(ctx context.Context, n int) ([]dashboard.Event, error) {
	return d.s.obs.log.Last(n), nil
}
