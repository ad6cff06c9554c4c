package scheduler

import (
	"sort"
	"time"

	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// observers feeds the dashboard: live events go to a dashboard.Feed, which never blocks the
// driver (a slow subscriber loses events and the loss is counted) and costs one atomic load
// per event while nobody watches; cluster events are also kept in a bounded log.
type observers struct {
	feed dashboard.Feed
	log  *dashboard.EventLog
}

const recentEvents = 1000

func newObservers() *observers { return &observers{log: dashboard.NewEventLog(recentEvents)} }

func (o *observers) taskDone(w *workerConn, m *wire.Msg, state string) {
	if !o.feed.Active() {
		return
	}
	o.feed.Publish(dashboard.Event{Kind: dashboard.EventTask, Time: m.Stop, Key: m.Key, Group: graph.KeySplit(m.Key),
		Worker: w.info.Address, Name: w.info.Name, Thread: m.Thread, Start: m.Start, Stop: m.Stop, State: state, NBytes: m.NBytes})
}

func (o *observers) transfers(w *workerConn, items []wire.Item) {
	if !o.feed.Active() {
		return
	}
	now := time.Now().UnixNano()
	for _, it := range items {
		o.feed.Publish(dashboard.Event{Kind: dashboard.EventTransfer, Time: now, Key: it.Key, Group: graph.KeySplit(it.Key),
			Worker: w.info.Address, Name: w.info.Name, NBytes: it.NBytes})
	}
}

// cluster records a notable event (joins, leaves, errors, retries) and publishes it.
func (o *observers) cluster(e dashboard.Event) {
	if e.Time == 0 {
		e.Time = time.Now().UnixNano()
	}
	o.log.Add(e)
	o.feed.Publish(e)
}

type serverStats struct {
	finished, failed uint64 // tasks reported finished / finally erred
	msgsIn, msgsOut  uint64
	busy             int64 // nanoseconds the driver spent handling input
}

func sortWorkers(ws []wire.WorkerInfo) {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
}
