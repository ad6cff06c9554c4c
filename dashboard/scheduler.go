package dashboard

import (
	"context"
	"errors"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
)

// SchedulerSource adapts a scheduler.Server to Source: the scheduler publishes its own typed
// events through a scheduler.EventListener (Listener) and answers status queries in its own
// types; this file is the only place that translates them into the dashboard's vocabulary.
// The scheduler does not import the dashboard.
//
//	src := dashboard.NewSchedulerSource(srv)
//	srv.SetListener(src.Listener()) // before srv.Serve
//	cfg.Source = src
type SchedulerSource struct {
	srv  *scheduler.Server
	feed Feed
	log  *EventLog
	// MaxGroups bounds the groups a snapshot and the group graph carry (the most recent).
	MaxGroups int
}

var _ Source = (*SchedulerSource)(nil)

// recentEvents is how many cluster events the log keeps.
const recentEvents = 1000

// NewSchedulerSource returns the adapter for srv; install its Listener on srv before Serve.
func NewSchedulerSource(srv *scheduler.Server) *SchedulerSource {
	return &SchedulerSource{srv: srv, log: NewEventLog(recentEvents), MaxGroups: 200}
}

// Listener returns the scheduler listener that feeds this source. Its callbacks never block:
// task and transfer events cost one atomic load while no browser watches (Active), and are
// otherwise offered to the hub's bounded channel (dropped and counted when it is full).
func (s *SchedulerSource) Listener() scheduler.EventListener {
	return ListenerFor(&s.feed, s.log)
}

// ListenerFor returns a scheduler listener that publishes the scheduler's events to feed as
// dashboard Events and records cluster events in log (nil: not recorded).
func ListenerFor(feed *Feed, log *EventLog) scheduler.EventListener {
	cluster := func(e Event) {
		if log != nil {
			log.Add(e)
		}
		feed.Publish(e)
	}
	return scheduler.EventListener{
		Active: feed.Active,
		TaskRan: func(r scheduler.TaskRun) {
			st := "memory"
			if r.Erred {
				st = "erred"
			}
			feed.Publish(Event{Kind: EventTask, Time: r.Stop, Key: r.Key, Group: r.Group, Worker: r.Worker, Name: r.WorkerName,
				Thread: r.Thread, Start: r.Start, Stop: r.Stop, State: st, NBytes: r.NBytes})
		},
		TransferDone: func(t scheduler.Transfer) {
			feed.Publish(Event{Kind: EventTransfer, Time: t.Time, Key: t.Key, Group: t.Group, Worker: t.Worker,
				Name: t.WorkerName, NBytes: t.NBytes, Start: t.Time, Stop: t.Time})
		},
		WorkerJoined: func(w scheduler.WorkerEvent) {
			cluster(Event{Kind: EventWorkerJoined, Time: w.Time, Worker: w.Worker, Name: w.Name})
		},
		WorkerLeft: func(w scheduler.WorkerEvent) {
			cluster(Event{Kind: EventWorkerLeft, Time: w.Time, Worker: w.Worker, Name: w.Name, Reason: w.Reason})
		},
		TaskFailed: func(f scheduler.TaskFailure) {
			kind := EventError
			if f.Retry {
				kind = EventRetry
			}
			cluster(Event{Kind: kind, Time: f.Time, Key: f.Key, Group: f.Group, Worker: f.Worker, Name: f.WorkerName, Reason: f.Reason})
		},
		GraphRejected: func(g scheduler.GraphRejection) {
			cluster(Event{Kind: EventError, Time: g.Time, Key: g.Key, Reason: "graph rejected: " + g.Reason})
		},
	}
}

// Snapshot implements Source.
func (s *SchedulerSource) Snapshot(ctx context.Context) (Snapshot, error) {
	st, err := s.srv.Status(ctx, s.MaxGroups)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Time: st.Time, EventsDropped: s.feed.Dropped()}
	for _, w := range st.Workers {
		snap.Workers = append(snap.Workers, WorkerStatus{WorkerInfo: w.WorkerInfo, Processing: w.Processing, Managed: w.Managed, Keys: w.Keys})
		snap.Totals.BytesTransferred += w.BytesRecv
	}
	for _, g := range st.Groups {
		snap.Groups = append(snap.Groups, groupProgress(g))
	}
	snap.Totals.TaskCounts = taskCounts(st.Counts)
	snap.Totals.Tasks = st.Tasks
	snap.Totals.Completed, snap.Totals.Failed = st.Completed, st.Failed
	snap.Totals.Transitions = st.Transitions
	return snap, nil
}

func taskCounts(c [scheduler.NumStates]int) TaskCounts {
	return TaskCounts{Released: c[scheduler.Released], Waiting: c[scheduler.Waiting], NoWorker: c[scheduler.NoWorker],
		Queued: c[scheduler.Queued], Processing: c[scheduler.Processing], Memory: c[scheduler.Memory], Erred: c[scheduler.Erred]}
}

func groupProgress(g scheduler.GroupStats) GroupProgress {
	return GroupProgress{Name: g.Name, TaskCounts: taskCounts(g.States), Total: g.Added, Done: g.Done,
		NBytes: g.NBytes, Duration: g.MeanDuration.Seconds()}
}

// Task implements Source.
func (s *SchedulerSource) Task(ctx context.Context, key string) (TaskInfo, error) {
	d, ok, err := s.srv.Task(ctx, key)
	if err != nil {
		return TaskInfo{}, err
	}
	if !ok {
		return TaskInfo{}, ErrNotFound
	}
	out := TaskInfo{Key: d.Key, Group: d.Group, State: d.State.String(), NBytes: d.NBytes, Priority: int(d.Order),
		Retries: d.RetriesLeft, WhoHas: d.WhoHasAddr, Worker: d.WorkerAddr}
	for i, dep := range d.Deps {
		out.Deps = append(out.Deps, TaskDep{Key: dep.Key, State: dep.State.String(), NBytes: dep.NBytes, WhoHas: d.DepWhoHas[i]})
	}
	for _, st := range d.Story {
		out.Story = append(out.Story, Transition{From: st.From.String(), To: st.To.String(), Cause: st.Event, EventID: st.Seq})
	}
	if d.Err != nil {
		out.Error = &TaskError{Code: d.Err.Code, Type: d.Err.Type, Message: d.Err.Message, Traceback: d.Err.Traceback}
	}
	if d.Duration > 0 {
		out.Stop = time.Now().UnixNano()
		out.Start = out.Stop - int64(d.Duration)
	}
	return out, nil
}

// GroupGraph implements Source.
func (s *SchedulerSource) GroupGraph(ctx context.Context) (GroupGraph, error) {
	gs, err := s.srv.GroupsContext(ctx, s.MaxGroups)
	if err != nil {
		return GroupGraph{}, err
	}
	var gg GroupGraph
	for _, g := range gs {
		gg.Nodes = append(gg.Nodes, groupProgress(g))
		for _, dep := range g.Dependencies {
			gg.Edges = append(gg.Edges, GroupEdge{From: dep, To: g.Name})
		}
	}
	return gg, nil
}

// Subscribe implements Source.
func (s *SchedulerSource) Subscribe(buf int) (<-chan Event, func()) { return s.feed.Subscribe(buf) }

// Events implements Source.
func (s *SchedulerSource) Events(_ context.Context, n int) ([]Event, error) {
	return s.log.Last(n), nil
}

// CallStack is the current call stack of a running task (CallStacker).
func (s *SchedulerSource) CallStack(ctx context.Context, key string) (string, []string, error) {
	w, lines, err := s.srv.CallStack(ctx, key)
	if errors.Is(err, scheduler.ErrNotRunning) {
		err = ErrNotRunning
	}
	return w, lines, err
}
