package dashboard

import (
	"sync"
	"sync/atomic"
)

// EventKind says what an Event reports.
type EventKind string

// Event kinds. Task and transfer events feed the task stream; the others are cluster events,
// kept in the Events log.
const (
	// EventTask: a task finished running (State "memory") or failed (State "erred") on
	// Worker's thread Thread between Start and Stop.
	EventTask EventKind = "task"
	// EventTransfer: Worker fetched Key (NBytes) from Peer between Start and Stop.
	EventTransfer EventKind = "transfer"
	// EventWorkerJoined: Worker (its data address; Name is its name) registered.
	EventWorkerJoined EventKind = "worker-joined"
	// EventWorkerLeft: Worker left; Reason says why ("goodbye", "heartbeat timeout",
	// "exit code 137", ...).
	EventWorkerLeft EventKind = "worker-left"
	// EventError: task Key failed on Worker; Reason is the error message.
	EventError EventKind = "error"
	// EventRetry: task Key is retried after a failure; Attempt counts from 1.
	EventRetry EventKind = "retry"
)

// Event is one thing that happened in the cluster. Which fields are set depends on Kind.
// Times are unix nanoseconds.
type Event struct {
	Kind    EventKind `json:"kind"`
	Time    int64     `json:"time"`
	Key     string    `json:"key,omitempty"`
	Group   string    `json:"group,omitempty"`
	Worker  string    `json:"worker,omitempty"` // a worker's data address
	Name    string    `json:"name,omitempty"`   // a worker's name
	Thread  int       `json:"thread,omitempty"`
	Start   int64     `json:"start,omitempty"`
	Stop    int64     `json:"stop,omitempty"`
	State   string    `json:"state,omitempty"`
	Peer    string    `json:"peer,omitempty"` // the sending worker of a transfer
	NBytes  int64     `json:"nbytes,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	// Count > 0 makes the event an aggregate span of Count task or transfer events of Group
	// on Worker's Thread, from the first Start to the last Stop; Busy is their summed run
	// time (nanoseconds) and NBytes their summed bytes; Key is empty.
	Count int   `json:"count,omitempty"`
	Busy  int64 `json:"busy,omitempty"`
}

// IsCluster reports whether e belongs in the Events log (as opposed to the task stream).
func (e Event) IsCluster() bool {
	switch e.Kind {
	case EventWorkerJoined, EventWorkerLeft, EventError, EventRetry:
		return true
	}
	return false
}

// Feed is a ready-made implementation of Source.Subscribe: a fan-out that never blocks the
// publisher. The scheduler's driver calls Publish; when nobody is subscribed Publish costs one
// atomic load, and Active lets the driver skip building events altogether. Publish takes no
// lock: it reads the current subscriber list through an atomic pointer (Subscribe and cancel
// replace the list). The zero value is ready to use.
type Feed struct {
	active  atomic.Int32
	dropped atomic.Uint64
	subs    atomic.Pointer[[]chan Event]
	mu      struct {
		sync.Mutex
		subs   map[uint64]chan Event
		nextID uint64
	}
}

// Active reports whether anyone is subscribed.
func (f *Feed) Active() bool { return f.active.Load() > 0 }

// Dropped is the number of events lost because a subscriber's channel was full.
func (f *Feed) Dropped() uint64 { return f.dropped.Load() }

// publishLocked makes the subscriber set visible to Publish; f.mu is held.
func (f *Feed) publishLocked() {
	list := make([]chan Event, 0, len(f.mu.subs))
	for _, ch := range f.mu.subs {
		list = append(list, ch)
	}
	f.subs.Store(&list)
	f.active.Store(int32(len(list)))
}

// Subscribe implements Source.Subscribe.
func (f *Feed) Subscribe(buf int) (<-chan Event, func()) {
	ch := make(chan Event, buf)
	f.mu.Lock()
	if f.mu.subs == nil {
		f.mu.subs = make(map[uint64]chan Event)
	}
	id := f.mu.nextID
	f.mu.nextID++
	f.mu.subs[id] = ch
	f.publishLocked()
	f.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.mu.subs, id)
			f.publishLocked()
			f.mu.Unlock()
		})
	}
}

// Publish delivers e to every subscriber without blocking; a full subscriber loses e and the
// loss is counted. A subscriber that cancels concurrently may still receive e.
func (f *Feed) Publish(e Event) {
	if f.active.Load() == 0 {
		return
	}
	subs := f.subs.Load()
	if subs == nil {
		return
	}
	for _, ch := range *subs {
		select {
		case ch <- e:
		default:
			f.dropped.Add(1)
		}
	}
}

// EventLog is a bounded, concurrency-safe log of the most recent cluster events; it
// implements the body of Source.Events. The scheduler keeps it whether or not anyone watches
// (cluster events are rare). Create it with NewEventLog.
type EventLog struct {
	mu struct {
		sync.Mutex
		ring  []Event
		next  int
		count int
	}
}

// NewEventLog returns a log keeping the last size events (size ≥ 1).
func NewEventLog(size int) *EventLog {
	l := new(EventLog)
	l.mu.ring = make([]Event, max(size, 1))
	return l
}

// Add appends e, overwriting the oldest event when full.
func (l *EventLog) Add(e Event) {
	l.mu.Lock()
	l.mu.ring[l.mu.next] = e
	l.mu.next = (l.mu.next + 1) % len(l.mu.ring)
	l.mu.count = min(l.mu.count+1, len(l.mu.ring))
	l.mu.Unlock()
}

// Last returns up to n of the most recent events, oldest first.
func (l *EventLog) Last(n int) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	n = min(max(n, 0), l.mu.count)
	out := make([]Event, n)
	size := len(l.mu.ring)
	first := (l.mu.next - n + size) % size
	for i := range out {
		out[i] = l.mu.ring[(first+i)%size]
	}
	return out
}
