package scheduler

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// ClusterEvent is a notable event for humans: workers joining and leaving (with the reason),
// errors, retries, rejected graphs.
type ClusterEvent struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Worker string    `json:"worker,omitempty"`
	Key    string    `json:"key,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// TaskDone is one finished (or failed) task run, for the dashboard's task stream.
type TaskDone struct {
	Key    string `json:"key"`
	Group  string `json:"group"`
	Worker string `json:"worker"`
	Thread int    `json:"thread"`
	Start  int64  `json:"start"`
	Stop   int64  `json:"stop"`
	State  string `json:"state"`
}

// observers fans events out to subscribers without ever blocking the driver: a full
// subscriber channel loses the event and the loss is counted. With no subscriber, the cost is
// one atomic load per event.
type observers struct {
	n  atomic.Int32
	mu struct {
		sync.Mutex
		subs   map[int]chan any
		next   int
		recent []ClusterEvent // ring of the last recentCap
		pos    int
	}
	dropped atomic.Uint64
}

const recentCap = 500

func newObservers() *observers {
	o := &observers{}
	o.mu.subs = map[int]chan any{}
	return o
}

// Subscribe returns a channel of TaskDone and ClusterEvent values and a cancel function.
func (o *observers) Subscribe(buf int) (<-chan any, func()) {
	ch := make(chan any, buf)
	o.mu.Lock()
	id := o.mu.next
	o.mu.next++
	o.mu.subs[id] = ch
	o.n.Store(int32(len(o.mu.subs)))
	o.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			o.mu.Lock()
			delete(o.mu.subs, id)
			o.n.Store(int32(len(o.mu.subs)))
			o.mu.Unlock()
		})
	}
}

func (o *observers) publish(v any) {
	o.mu.Lock()
	for _, ch := range o.mu.subs {
		select {
		case ch <- v:
		default:
			o.dropped.Add(1)
		}
	}
	o.mu.Unlock()
}

func (o *observers) taskDone(w *workerConn, m *wire.Msg, state string) {
	if o.n.Load() == 0 {
		return
	}
	grp := graph.KeySplit(m.Key)
	o.publish(TaskDone{Key: m.Key, Group: grp, Worker: w.info.Name, Thread: m.Thread, Start: m.Start, Stop: m.Stop, State: state})
}

func (o *observers) cluster(e ClusterEvent) {
	e.Time = time.Now()
	o.mu.Lock()
	if len(o.mu.recent) < recentCap {
		o.mu.recent = append(o.mu.recent, e)
	} else {
		o.mu.recent[o.mu.pos] = e
		o.mu.pos = (o.mu.pos + 1) % recentCap
	}
	o.mu.Unlock()
	if o.n.Load() > 0 {
		o.publish(e)
	}
}

// event records retries and errors as cluster events; cheap for everything else.
func (o *observers) event(ev Event) {
	if e, ok := ev.(EvTaskErred); ok {
		o.cluster(ClusterEvent{Kind: "task-erred", Key: e.Key, Detail: e.Err.Error()})
	}
}

// Recent returns up to n recent cluster events, oldest first.
func (o *observers) Recent(n int) []ClusterEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	all := make([]ClusterEvent, 0, len(o.mu.recent))
	all = append(all, o.mu.recent[o.mu.pos:]...)
	all = append(all, o.mu.recent[:o.mu.pos]...)
	if n > 0 && len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

type serverStats struct {
	events, submitted, dispatched, finished uint64
	msgsIn, msgsOut                         uint64
	busy                                    int64 // nanoseconds the driver spent handling input
}

func sortWorkers(ws []wire.WorkerInfo) {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
}
