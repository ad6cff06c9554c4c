package scheduler

import (
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// EventListener receives what happens in the scheduler, in the scheduler's own vocabulary, for
// observers such as the dashboard (which adapts these events; the scheduler knows nothing of
// it). It is a struct of optional callbacks, after pebble's EventListener: a nil callback is
// not called, and the zero value listens to nothing.
//
// Every callback runs on the driver goroutine, in the order the events happened. A callback
// must return at once: it must not block, wait on a lock held across I/O, or call back into
// the Server (Query would deadlock). Observers that do real work hand the event to their own
// goroutine through a bounded, non-blocking queue and drop (and count) when it is full.
type EventListener struct {
	// Active gates the high-volume events (TaskRan, TransferDone): when it is set and returns
	// false the scheduler builds none of them, so an observer nobody watches costs one call
	// per event. Nil means always active.
	Active func() bool

	// TaskRan: a task finished running on a worker thread (successfully or not).
	TaskRan func(TaskRun)
	// TransferDone: a worker now holds a copy of keys it fetched from a peer (or that were
	// scattered to it); one call per key.
	TransferDone func(Transfer)
	// WorkerJoined: a worker registered.
	WorkerJoined func(WorkerEvent)
	// WorkerLeft: a worker was removed; Reason says why.
	WorkerLeft func(WorkerEvent)
	// TaskFailed: a task raised; Retry says whether it will run again.
	TaskFailed func(TaskFailure)
	// GraphRejected: a client's graph was refused.
	GraphRejected func(GraphRejection)
}

// TaskRun is one run of a task on a worker thread. Times are unix nanoseconds as the worker
// measured them.
type TaskRun struct {
	Key, Group string
	Worker     string // the worker's data address
	WorkerName string
	Thread     int
	Start      int64
	Stop       int64
	NBytes     int64 // result size (0 when it failed)
	Erred      bool
}

// Transfer is one key arriving on a worker.
type Transfer struct {
	Key, Group string
	Worker     string // the receiving worker's data address
	WorkerName string
	NBytes     int64
	Time       int64 // when the scheduler heard of it, unix nanoseconds
}

// WorkerEvent is a worker joining or leaving.
type WorkerEvent struct {
	Worker string // data address
	Name   string
	Reason string // why it left (empty on join)
	Time   int64
}

// TaskFailure is a task that raised on a worker.
type TaskFailure struct {
	Key, Group string
	Worker     string
	WorkerName string
	Reason     string // the error message
	Retry      bool   // it will run again (retries left)
	Time       int64
}

// GraphRejection is a client graph the scheduler refused.
type GraphRejection struct {
	Key    string // the first key of the graph
	Reason string
	Time   int64
}

// SetListener installs l. Call it before Serve; it is read only by the driver goroutine.
func (s *Server) SetListener(l EventListener) { s.obs.l = l }

// observers holds the installed listener and the helpers the driver calls; each returns at
// once when its callback is nil (or when nobody is active, for the high-volume ones).
type observers struct {
	l    EventListener
	rec  recorder // record.go
	prof profiler // profile.go
}

func newObservers() *observers { return &observers{} }

func (o *observers) active() bool { return o.l.Active == nil || o.l.Active() }

func (o *observers) taskDone(w *workerConn, key string, thread int, start, stop, nbytes int64, erred bool) {
	rec := o.rec.on()
	listen := o.l.TaskRan != nil && o.active()
	if !rec && !listen {
		return
	}
	group := graph.KeySplit(key)
	if rec {
		o.rec.task(RecordedTask{Key: key, Group: group, Worker: w.info.Address, WorkerName: w.info.Name,
			Thread: thread, Start: start, Stop: stop, NBytes: nbytes, Erred: erred})
	}
	if listen {
		o.l.TaskRan(TaskRun{Key: key, Group: group, Worker: w.info.Address, WorkerName: w.info.Name,
			Thread: thread, Start: start, Stop: stop, NBytes: nbytes, Erred: erred})
	}
}

func (o *observers) transfers(w *workerConn, items []wire.Item) {
	if o.l.TransferDone == nil || !o.active() {
		return
	}
	now := time.Now().UnixNano()
	for _, it := range items {
		o.l.TransferDone(Transfer{Key: it.Key, Group: graph.KeySplit(it.Key), Worker: w.info.Address,
			WorkerName: w.info.Name, NBytes: it.NBytes, Time: now})
	}
}

func (o *observers) workerJoined(w *workerConn) {
	if o.l.WorkerJoined != nil {
		o.l.WorkerJoined(WorkerEvent{Worker: w.info.Address, Name: w.info.Name, Time: time.Now().UnixNano()})
	}
}

func (o *observers) workerLeft(w *workerConn, reason string) {
	if o.l.WorkerLeft != nil {
		o.l.WorkerLeft(WorkerEvent{Worker: w.info.Address, Name: w.info.Name, Reason: reason, Time: time.Now().UnixNano()})
	}
}

func (o *observers) taskFailed(w *workerConn, key string, err *wire.Error, retry bool) {
	if o.l.TaskFailed != nil {
		o.l.TaskFailed(TaskFailure{Key: key, Group: graph.KeySplit(key), Worker: w.info.Address, WorkerName: w.info.Name,
			Reason: err.Error(), Retry: retry, Time: time.Now().UnixNano()})
	}
}

func (o *observers) graphRejected(keys []string, err *wire.Error) {
	if o.l.GraphRejected != nil {
		o.l.GraphRejected(GraphRejection{Key: firstKey(keys), Reason: err.Error(), Time: time.Now().UnixNano()})
	}
}
