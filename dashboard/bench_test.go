package dashboard

import (
	"fmt"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
)

// BenchmarkPublishNoViewer is what the scheduler pays per event when nobody watches.
func BenchmarkPublishNoViewer(b *testing.B) {
	var f Feed
	e := Event{Kind: EventTask, Key: "k"}
	for b.Loop() {
		f.Publish(e)
	}
}

// BenchmarkPublishBlockedViewer is what the scheduler pays per event while a viewer is
// stalled: a stuck browser never makes Publish wait (the benchmark would hang otherwise).
// The hub keeps draining the subscription and dropping frames for the stalled viewer.
func BenchmarkPublishBlockedViewer(b *testing.B) {
	src := newFakeSource()
	cfg := DefaultConfig()
	cfg.Source = src
	cfg.MaxUpdatesPerSecond = 1000
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	v := newViewer(1) // nobody drains it
	s.hub.join(v)
	e := Event{Kind: EventTask, Key: "k"}
	b.ResetTimer()
	for b.Loop() {
		src.Publish(e)
	}
	b.StopTimer()
	b.ReportMetric(float64(v.dropped.Load()), "frames-dropped")
	b.ReportMetric(float64(src.Dropped()), "events-dropped")
	s.hub.leave(v)
}

// BenchmarkFrame is the hub's cost per frame for a mid-sized cluster (sample, diff, encode).
func BenchmarkFrame(b *testing.B) {
	snap := Snapshot{Time: 1}
	for i := range 100 {
		snap.Workers = append(snap.Workers, WorkerStatus{WorkerInfo: wire.WorkerInfo{Name: fmt.Sprint("w", i), Address: fmt.Sprint("10.0.0.1:", i), NThreads: 8}})
	}
	for i := range 200 {
		snap.Groups = append(snap.Groups, GroupProgress{Name: fmt.Sprint("group-", i), Total: 1000})
	}
	h := &hub{}
	var d differ
	for b.Loop() {
		snap.Time++
		snap.Groups[int(snap.Time)%200].Done++
		full, delta := d.frames(snap)
		h.encode(&full)
		h.encode(&delta)
	}
}
