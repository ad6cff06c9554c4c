package dashboard

import (
	"reflect"
	"time"
)

// frame is one websocket update. A full frame carries every worker and group; a delta frame
// carries only those that changed since the previous frame and the names of those that went
// away. Events are the task-stream and cluster events received since the previous frame.
//
// On the wire each frame is wrapped per viewer as {"dropped": N, "frame": {...}}, where N is
// how many frames were dropped for that viewer so far.
type frame struct {
	Seq            uint64          `json:"seq"`
	Full           bool            `json:"full"`
	Time           int64           `json:"time"`
	Workers        []WorkerStatus  `json:"workers"`
	WorkersRemoved []string        `json:"workers_removed,omitempty"`
	Groups         []GroupProgress `json:"groups"`
	GroupsRemoved  []string        `json:"groups_removed,omitempty"`
	Totals         Totals          `json:"totals"`
	Memory         ClusterMemory   `json:"memory"`
	TasksPerSecond float64         `json:"tasks_per_second"`
	Events         []Event         `json:"events"`
	// EventsAggregated counts the task-stream events carried in aggregate spans (events with
	// Count > 0) rather than one by one: nothing is lost, the page draws them as spans.
	EventsAggregated int `json:"events_aggregated,omitempty"`
	// EventsLost counts task-stream events the dashboard could not carry at all (the frame's
	// span budget, Config.MaxSpansPerFrame, was spent). Shown to the viewer as lost data.
	EventsLost int `json:"events_lost,omitempty"`
	// SourceDropped is Snapshot.EventsDropped: events the Source could not deliver.
	SourceDropped uint64 `json:"source_dropped"`
	// Error is set when the Snapshot failed; the frame then carries only events.
	Error string `json:"error,omitempty"`
}

// ClusterMemory sums the workers' memory: Used from their heartbeats, Managed from the
// scheduler's record of the results they hold (current), Limit and Spilled from heartbeats.
type ClusterMemory struct {
	Used    int64 `json:"used"`
	Managed int64 `json:"managed"`
	Limit   int64 `json:"limit"`
	Spilled int64 `json:"spilled"`
}

// differ remembers the previous snapshot and computes deltas against it. Owned by the hub
// goroutine.
type differ struct {
	workers map[string]WorkerStatus
	groups  map[string]GroupProgress
	rate    rateMeter
}

func (d *differ) reset() {
	d.workers, d.groups = nil, nil
	d.rate = rateMeter{}
}

// frames builds the full and the delta frame for snap and remembers snap.
func (d *differ) frames(snap Snapshot) (full, delta frame) {
	if snap.Time == 0 {
		snap.Time = time.Now().UnixNano()
	}
	base := frame{
		Time:           snap.Time,
		Totals:         snap.Totals,
		Memory:         clusterMemory(snap.Workers),
		TasksPerSecond: d.rate.observe(snap.Time, snap.Totals.Completed),
		SourceDropped:  snap.EventsDropped,
	}
	full, delta = base, base
	full.Full = true
	full.Workers, full.Groups = nonNil(snap.Workers), nonNil(snap.Groups)

	workers := make(map[string]WorkerStatus, len(snap.Workers))
	delta.Workers = []WorkerStatus{}
	for _, w := range snap.Workers {
		workers[w.Address] = w
		if old, ok := d.workers[w.Address]; !ok || !reflect.DeepEqual(old, w) {
			delta.Workers = append(delta.Workers, w)
		}
	}
	for addr := range d.workers {
		if _, ok := workers[addr]; !ok {
			delta.WorkersRemoved = append(delta.WorkersRemoved, addr)
		}
	}
	groups := make(map[string]GroupProgress, len(snap.Groups))
	delta.Groups = []GroupProgress{}
	for _, g := range snap.Groups {
		groups[g.Name] = g
		if old, ok := d.groups[g.Name]; !ok || old != g {
			delta.Groups = append(delta.Groups, g)
		}
	}
	for name := range d.groups {
		if _, ok := groups[name]; !ok {
			delta.GroupsRemoved = append(delta.GroupsRemoved, name)
		}
	}
	d.workers, d.groups = workers, groups
	return full, delta
}

func clusterMemory(ws []WorkerStatus) ClusterMemory {
	var m ClusterMemory
	for _, w := range ws {
		m.Used += w.Memory
		m.Managed += w.Managed
		m.Limit += w.MemoryLimit
		m.Spilled += w.Spilled
	}
	return m
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// rateMeter turns a cumulative counter into a rate over about the last second.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	t int64 // unix nanoseconds
	n uint64
}

func (r *rateMeter) observe(t int64, n uint64) float64 {
	if len(r.samples) > 0 && (t <= r.samples[len(r.samples)-1].t || n < r.samples[len(r.samples)-1].n) {
		r.samples = r.samples[:0] // clock or counter went backwards: start over
	}
	r.samples = append(r.samples, rateSample{t, n})
	for len(r.samples) > 2 && r.samples[1].t <= t-int64(time.Second) {
		r.samples = r.samples[1:]
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	if last.t == first.t {
		return 0
	}
	return float64(last.n-first.n) / (float64(last.t-first.t) / 1e9)
}
