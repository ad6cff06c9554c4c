package dashboard

import (
	"context"
	"errors"

	"github.com/shoal-dev/shoal/internal/wire"
)

// ErrNotFound is returned by Source.Task for a key the scheduler does not know (or has
// forgotten). The API answers it with 404.
var ErrNotFound = errors.New("dashboard: not found")

// Source is what the dashboard reads from the scheduler. The scheduler's driver implements it;
// the dashboard never touches the scheduler's state any other way.
//
// Contract:
//   - Every method is safe for concurrent use; the dashboard calls them from HTTP handler
//     goroutines and from its broadcaster.
//   - Snapshot is called at most Config.MaxUpdatesPerSecond times a second, and only while at
//     least one browser is connected. Task, GroupGraph and Events are called only when a
//     viewer asks for them (an HTTP request). With no viewer the dashboard calls nothing.
//   - Subscribe is called when the first viewer connects; the returned cancel func is called
//     when the last one leaves. The Source must never block on the channel: it delivers with
//     a non-blocking send, drops the event when the channel is full and counts the drop in
//     Snapshot.EventsDropped. Feed implements exactly this and can be embedded.
//   - Methods that may wait (for instance on a reply from the driver goroutine) honour ctx.
type Source interface {
	// Snapshot returns the current load: workers, per-group progress and totals. Cheap.
	Snapshot(ctx context.Context) (Snapshot, error)
	// Task describes one task, or returns ErrNotFound.
	Task(ctx context.Context, key string) (TaskInfo, error)
	// GroupGraph returns the graph of task groups (never of individual tasks).
	GroupGraph(ctx context.Context) (GroupGraph, error)
	// Subscribe starts delivering live events (task-stream, transfers, cluster events) on a
	// channel with buf slots. cancel stops delivery; it is idempotent. The Source need not
	// close the channel.
	Subscribe(buf int) (events <-chan Event, cancel func())
	// Events returns up to n of the most recent cluster events (EventWorkerJoined,
	// EventWorkerLeft, EventError, EventRetry), oldest first. EventLog implements this.
	Events(ctx context.Context, n int) ([]Event, error)
}

// CallStacker is a Source that can read a running task's call stack from its worker.
type CallStacker interface {
	// CallStack returns the worker running key and its stack's lines, or ErrNotRunning.
	CallStack(ctx context.Context, key string) (worker string, lines []string, err error)
}

// ErrNotRunning: the task has no call stack now (not running).
var ErrNotRunning = errors.New("dashboard: the task is not running")

// Snapshot is the scheduler's state at one instant, cheap to build: no per-task data.
type Snapshot struct {
	// Time is when the snapshot was taken, unix nanoseconds.
	Time    int64           `json:"time"`
	Workers []WorkerStatus  `json:"workers"`
	Groups  []GroupProgress `json:"groups"`
	Totals  Totals          `json:"totals"`
	// EventsDropped counts events the Source dropped because a subscriber's channel was full,
	// since the Source started (Feed.Dropped).
	EventsDropped uint64 `json:"events_dropped"`
}

// WorkerStatus is one worker as the scheduler sees it. WorkerInfo comes from the worker's
// registration and latest heartbeat (LastSeen is unix seconds of that heartbeat; Executing is
// the number of tasks it is running).
type WorkerStatus struct {
	wire.WorkerInfo
	// Processing is how many tasks the scheduler has assigned to this worker that have not
	// finished (running or waiting in its queue).
	Processing int `json:"processing"`
	// Managed is the bytes of results the scheduler knows the worker holds, current to the
	// last finished task (Memory, from the heartbeat, lags by up to a heartbeat interval).
	Managed int64 `json:"managed"`
	// Keys is how many results it holds.
	Keys int `json:"keys"`
}

// TaskCounts counts tasks by their current scheduler state.
type TaskCounts struct {
	Released   int `json:"released"`
	Waiting    int `json:"waiting"`
	NoWorker   int `json:"no_worker"`
	Queued     int `json:"queued"`
	Processing int `json:"processing"`
	Memory     int `json:"memory"`
	Erred      int `json:"erred"`
}

// GroupProgress is the progress of one task group (tasks sharing graph.Task.Group, or the key
// prefix when Group is empty).
type GroupProgress struct {
	Name string `json:"name"`
	TaskCounts
	// Total is every task ever added to the group, including those since forgotten.
	Total int `json:"total"`
	// Done is how many of them finished successfully, including those whose results have since
	// been released or forgotten. Done == Total means the group is complete.
	Done int `json:"done"`
	// NBytes is the size of the group's results currently held in memory.
	NBytes int64 `json:"nbytes"`
	// Duration is the learned mean run time of a task of this group, seconds (0 if unknown).
	Duration float64 `json:"duration"`
}

// Totals are cluster-wide counters.
type Totals struct {
	TaskCounts
	// Tasks is how many tasks the scheduler currently knows (not forgotten).
	Tasks int `json:"tasks"`
	// Completed and Failed are cumulative since the scheduler started; the dashboard derives
	// tasks per second from Completed.
	Completed uint64 `json:"completed"`
	Failed    uint64 `json:"failed"`
	// Transitions is the cumulative number of task state transitions.
	Transitions uint64 `json:"transitions"`
	// BytesTransferred is the cumulative number of bytes moved between workers.
	BytesTransferred int64 `json:"bytes_transferred"`
}

// TaskInfo is everything the Task view shows about one key.
type TaskInfo struct {
	Key   string `json:"key"`
	Group string `json:"group"`
	State string `json:"state"`
	// Worker is the data address of the worker running it or holding its result ("" if none).
	Worker string `json:"worker,omitempty"`
	// WhoHas lists every worker holding its result.
	WhoHas []string `json:"who_has,omitempty"`
	// NBytes is the size of its result when in memory.
	NBytes int64 `json:"nbytes"`
	// Start and Stop bound its last run, unix nanoseconds (0 if it has not run).
	Start    int64     `json:"start,omitempty"`
	Stop     int64     `json:"stop,omitempty"`
	Priority int       `json:"priority"`
	Retries  int       `json:"retries"` // retries left
	Deps     []TaskDep `json:"deps"`
	// Dependents are the keys that need this one (may be truncated by the Source).
	Dependents []string     `json:"dependents,omitempty"`
	Story      []Transition `json:"story"`
	Error      *TaskError   `json:"error,omitempty"`
}

// TaskDep is one input of a task.
type TaskDep struct {
	Key    string   `json:"key"`
	State  string   `json:"state"`
	NBytes int64    `json:"nbytes"`
	WhoHas []string `json:"who_has,omitempty"`
}

// Transition is one entry of a task's story: why it moved from one state to another.
type Transition struct {
	Time  int64  `json:"time"` // unix nanoseconds
	From  string `json:"from"`
	To    string `json:"to"`
	Cause string `json:"cause"` // the event that caused it, e.g. "task-finished"
	// EventID is the id of the causing event in the scheduler's log (0 if none).
	EventID uint64 `json:"event_id,omitempty"`
	Worker  string `json:"worker,omitempty"`
}

// TaskError is why a task failed, as the client will see it.
type TaskError struct {
	Code      string `json:"code"`
	Type      string `json:"type,omitempty"`
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// GroupGraph is the graph of task groups: a node per group, an edge From → To when a task of
// group To depends on a task of group From.
type GroupGraph struct {
	Nodes []GroupProgress `json:"nodes"`
	Edges []GroupEdge     `json:"edges"`
}

// GroupEdge is a dependency between two task groups.
type GroupEdge struct {
	From string `json:"from"`
	To   string `json:"to"`
}
