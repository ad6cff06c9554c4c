package scheduler

import (
	"context"
	"sort"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

type serverStats struct {
	finished, failed uint64 // tasks reported finished / finally erred
	msgsIn, msgsOut  uint64
	registrations    uint64 // workers registered since start, a worker that came back again
	busy             int64  // nanoseconds the driver spent handling input
	dispatches       uint64 // EvDispatch events: batches of queued root tasks left pending (DispatchBatch)
}

func sortWorkers(ws []wire.WorkerInfo) {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
}

// Observation: what an observer (the dashboard, a report) may read of the scheduler's state.
// Every call asks the driver goroutine (QueryContext) and costs O(answer); nothing here runs
// unless someone asks.

// ObservedWorker is one worker as the scheduler sees it.
type ObservedWorker struct {
	// WorkerInfo is its registration and latest heartbeat (Memory, Spilled, CPU, ...);
	// LastSeen is the unix time of that heartbeat, in seconds.
	wire.WorkerInfo
	// Processing is how many tasks are assigned to it and not finished.
	Processing int
	// Managed is the bytes of results the scheduler knows it holds, up to date with the last
	// task-finished message (the heartbeat's Memory lags by up to a heartbeat interval).
	Managed int64
	// Keys is how many results it holds.
	Keys int
}

// ClusterStatus is the cluster at one instant: no per-task data.
type ClusterStatus struct {
	Time        int64 // unix nanoseconds
	Workers     []ObservedWorker
	Groups      []GroupStats // the most recent groups, finished ones included
	Counts      [NumStates]int
	Tasks       int    // tasks not forgotten
	Completed   uint64 // task runs reported finished since start
	Failed      uint64 // tasks finally erred since start
	Transitions uint64
}

// Status returns the cluster's status with at most maxGroups groups (the most recent).
func (s *Server) Status(ctx context.Context, maxGroups int) (ClusterStatus, error) {
	var st ClusterStatus
	err := s.QueryContext(ctx, func(c *Core) {
		st.Time = time.Now().UnixNano()
		byID := map[WorkerID]WorkerStats{}
		for _, ws := range c.Workers() {
			byID[ws.ID] = ws
		}
		for w := range s.workers.all() {
			wi := w.info
			wi.LastSeen = float64(w.lastSeen.UnixNano()) / 1e9
			cs := byID[w.id]
			st.Workers = append(st.Workers, ObservedWorker{WorkerInfo: wi, Processing: cs.Processing, Managed: cs.NBytes, Keys: cs.NKeys})
		}
		sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].Name < st.Workers[j].Name })
		st.Groups = c.RecentGroups(maxGroups, true)
		st.Counts = c.Counts()
		cst := c.Stats()
		st.Tasks, st.Transitions = cst.TasksAlive, cst.Transitions
		st.Completed, st.Failed = s.stats.finished, s.stats.failed
	})
	return st, err
}

// TaskDetail is TaskInfo with worker ids resolved to data addresses.
type TaskDetail struct {
	TaskInfo
	WorkerAddr string   // the worker running it, else the first holding it ("" if none)
	WhoHasAddr []string // every worker holding its result
	DepWhoHas  [][]string
}

// Task describes one task; ok is false when the scheduler does not know key.
func (s *Server) Task(ctx context.Context, key string) (d TaskDetail, ok bool, err error) {
	err = s.QueryContext(ctx, func(c *Core) {
		ti, found := c.TaskInfo(key)
		if !found {
			return
		}
		ok = true
		d.TaskInfo, d.WhoHasAddr = ti, s.addrs(ti.WhoHas)
		if w := s.workers.get(ti.Worker); w != nil {
			d.WorkerAddr = w.info.Address
		} else if len(d.WhoHasAddr) > 0 {
			d.WorkerAddr = d.WhoHasAddr[0]
		}
		for _, dep := range ti.Deps {
			d.DepWhoHas = append(d.DepWhoHas, s.addrs(c.WhoHas(dep.Key)))
		}
	})
	return d, ok, err
}

// GroupsContext returns at most n of the most recent task groups (finished ones included), with the
// groups each depends on.
func (s *Server) GroupsContext(ctx context.Context, n int) ([]GroupStats, error) {
	var gs []GroupStats
	err := s.QueryContext(ctx, func(c *Core) { gs = c.RecentGroups(n, true) })
	return gs, err
}
