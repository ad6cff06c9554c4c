package scheduler

import (
	"context"
	"encoding/json"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Recording for reports (client.get_task_stream, performance_report, the dashboard's report
// download): while at least one session is open the driver keeps the last maxRecordedTasks
// task runs and a cluster memory sample a second, in bounded rings. With no session open it
// keeps nothing and costs one integer comparison per finished task.

const (
	maxRecordedTasks   = 100_000
	maxMemorySamples   = 3600 // an hour at one a second
	memorySampleEvery  = time.Second
	maxRecordedWindows = 1 << 20 // sessions: a bound on a misbehaving client
)

// MemorySample is the cluster's memory at one instant.
type MemorySample struct {
	Time    int64 `json:"time"`    // unix nanoseconds
	Managed int64 `json:"managed"` // bytes of results held (the scheduler's record)
	Memory  int64 `json:"memory"`  // bytes the workers' stores reported in their heartbeats
	Spilled int64 `json:"spilled"`
	Limit   int64 `json:"limit"`
}

// RecordedTask is one task run, as kept by the recorder.
type RecordedTask struct {
	Key        string `json:"key"`
	Group      string `json:"group"`
	Worker     string `json:"worker"`
	WorkerName string `json:"worker_name"`
	Thread     int    `json:"thread"`
	Start      int64  `json:"start"`
	Stop       int64  `json:"stop"`
	NBytes     int64  `json:"nbytes"`
	Erred      bool   `json:"erred,omitempty"`
}

// Recording is what the recorder holds for a window, with the cluster's state now.
type Recording struct {
	Recording bool              `json:"recording"` // a session is open
	Since     int64             `json:"since"`     // the oldest task kept (0: none)
	Tasks     []RecordedTask    `json:"tasks"`
	Memory    []MemorySample    `json:"memory"`
	Workers   []wire.WorkerInfo `json:"workers"`
	Managed   map[string]int64  `json:"managed"` // worker address → managed bytes now
	Groups    []RecordedGroup   `json:"groups"`
	Dropped   uint64            `json:"dropped"` // task runs pushed out of the ring since start
}

// RecordedGroup is a task group's learned duration and counts.
type RecordedGroup struct {
	Name         string  `json:"name"`
	Total        int     `json:"total"`
	Done         int     `json:"done"`
	MeanDuration float64 `json:"mean_duration"` // seconds
}

type ring[T any] struct {
	buf  []T
	next int
	full bool
}

func (r *ring[T]) add(v T, size int) (overwrote bool) {
	if r.buf == nil {
		r.buf = make([]T, 0, size) // once: growing it by appends copied it again and again
	}
	if len(r.buf) < size {
		r.buf = append(r.buf, v)
		return false
	}
	r.buf[r.next] = v
	r.next = (r.next + 1) % size
	r.full = true
	return true
}

// each calls f oldest first.
func (r *ring[T]) each(f func(T)) {
	if !r.full {
		for _, v := range r.buf {
			f(v)
		}
		return
	}
	for i := range r.buf {
		f(r.buf[(r.next+i)%len(r.buf)])
	}
}

type recorder struct {
	sessions   int
	tasks      ring[RecordedTask]
	memory     ring[MemorySample]
	dropped    uint64
	lastSample time.Time
}

func (r *recorder) on() bool { return r.sessions > 0 }

func (r *recorder) task(t RecordedTask) {
	if r.tasks.add(t, maxRecordedTasks) {
		r.dropped++
	}
}

// sample adds a memory sample at most once a second (called on every tick).
func (o *observers) sample(s *Server, now time.Time) {
	r := &o.rec
	if !r.on() || now.Sub(r.lastSample) < memorySampleEvery {
		return
	}
	r.lastSample = now
	m := MemorySample{Time: now.UnixNano()}
	for _, ws := range s.core.Workers() {
		m.Managed += ws.NBytes
	}
	for w := range s.workers.all() {
		m.Memory += w.info.Memory
		m.Spilled += w.info.Spilled
		m.Limit += w.info.MemoryLimit
	}
	r.memory.add(m, maxMemorySamples)
}

// Record opens (on) or closes a recording session. Recording runs while any session is open;
// the dashboard holds one while a viewer is connected.
func (s *Server) Record(ctx context.Context, on bool) error {
	d := -1
	if on {
		d = 1
	}
	return s.QueryContext(ctx, func(*Core) { s.openSession(d) })
}

func (s *Server) openSession(d int) {
	r := &s.obs.rec
	r.sessions = min(max(r.sessions+d, 0), maxRecordedWindows)
	if d > 0 && r.sessions == 1 {
		r.lastSample = time.Time{}
		s.obs.sample(s, time.Now())
	}
}

// Recorded returns what the recorder holds between start and stop (unix nanoseconds; 0: no
// bound): task runs that ended in the window and memory samples taken in it.
func (s *Server) Recorded(ctx context.Context, start, stop int64) (Recording, error) {
	var out Recording
	err := s.QueryContext(ctx, func(c *Core) { out = s.recorded(c, start, stop) })
	return out, err
}

func (s *Server) recorded(c *Core, start, stop int64) Recording {
	r := &s.obs.rec
	out := Recording{Recording: r.on(), Tasks: []RecordedTask{}, Memory: []MemorySample{}, Managed: map[string]int64{}, Dropped: r.dropped}
	in := func(t int64) bool { return (start == 0 || t >= start) && (stop == 0 || t <= stop) }
	r.tasks.each(func(t RecordedTask) {
		if out.Since == 0 {
			out.Since = t.Stop
		}
		if in(t.Stop) {
			out.Tasks = append(out.Tasks, t)
		}
	})
	r.memory.each(func(m MemorySample) {
		if in(m.Time) {
			out.Memory = append(out.Memory, m)
		}
	})
	byID := map[WorkerID]int64{}
	for _, ws := range c.Workers() {
		byID[ws.ID] = ws.NBytes
	}
	for w := range s.workers.all() {
		out.Workers = append(out.Workers, w.info)
		out.Managed[w.info.Address] = byID[w.id]
	}
	sortWorkers(out.Workers)
	for _, g := range c.RecentGroups(maxGroupsRecorded, true) {
		out.Groups = append(out.Groups, RecordedGroup{Name: g.Name, Total: g.Added, Done: g.Done, MeanDuration: g.MeanDuration.Seconds()})
	}
	return out
}

const maxGroupsRecorded = 1000

// onTaskStream serves the task_stream op: N > 0 opens a session, N < 0 closes one, then the
// recording between Start and Stop is returned as JSON in Payload (docs/protocol.md).
func (s *Server) onTaskStream(m *wire.Msg, reply func(*wire.Msg)) {
	switch {
	case m.N > 0:
		s.openSession(1)
	case m.N < 0:
		s.openSession(-1)
	}
	rec := s.recorded(s.core, m.Start, m.Stop)
	b, err := json.Marshal(rec)
	if err != nil {
		reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "task_stream: " + err.Error()})
		return
	}
	reply(&wire.Msg{Op: wire.OpOK, Payload: b, Start: time.Now().UnixNano()})
}
