package dashboard

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"
)

// viewer is one connected browser. The hub offers it encoded frames on send without blocking;
// its writer goroutine drains send onto the websocket.
type viewer struct {
	send    chan []byte
	dropped atomic.Uint64 // frames dropped for this viewer so far
	// needFull is owned by the hub goroutine: the next frame for this viewer must be full
	// (it just joined, or it missed a delta).
	needFull bool
}

func newViewer(queue int) *viewer {
	return &viewer{send: make(chan []byte, queue), needFull: true}
}

// ticker is the clock seam: the hub asks for ticks only while someone watches.
type ticker interface {
	C() <-chan time.Time
	Stop()
}

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

func newRealTicker(d time.Duration) ticker { return realTicker{time.NewTicker(d)} }

// hub is the broadcaster. One goroutine (run) owns the viewer set and everything below; while
// the set is empty it holds no subscription and no ticker, and calls nothing on the Source.
type hub struct {
	cfg        Config
	log        *slog.Logger
	metrics    *metrics
	newTicker  func(time.Duration) ticker
	register   chan *viewer
	unregister chan *viewer
	inspect    chan func()   // runs a func on the hub goroutine (tests look at its state)
	done       chan struct{} // closed when run returns

	viewers map[*viewer]struct{}
	events  <-chan Event
	cancel  func()
	tick    ticker
	pending []Event // cluster events and single task-stream events of this frame
	singles int     // task-stream events kept one by one in pending
	spans   spanSet // the rest of this frame's task-stream events, aggregated
	seq     uint64
	diff    differ
	// recording: the hub holds a recording session of a Recorder source (report.go)
	recording bool
}

func newHub(cfg Config, log *slog.Logger, m *metrics, nt func(time.Duration) ticker) *hub {
	return &hub{
		cfg:        cfg,
		log:        log,
		metrics:    m,
		newTicker:  nt,
		register:   make(chan *viewer),
		unregister: make(chan *viewer),
		inspect:    make(chan func()),
		done:       make(chan struct{}),
		viewers:    make(map[*viewer]struct{}),
	}
}

// join registers v; false when the hub has stopped.
func (h *hub) join(v *viewer) bool {
	select {
	case h.register <- v:
		return true
	case <-h.done:
		return false
	}
}

// leave unregisters v; the hub closes v.send.
func (h *hub) leave(v *viewer) {
	select {
	case h.unregister <- v:
	case <-h.done:
	}
}

// run is the hub goroutine; it returns when ctx is done, after closing every viewer's queue.
func (h *hub) run(ctx context.Context) {
	defer close(h.done)
	defer h.stop()
	for {
		var tickC <-chan time.Time
		if h.tick != nil {
			tickC = h.tick.C()
		}
		select {
		case <-ctx.Done():
			for v := range h.viewers {
				h.drop(v)
			}
			return
		case v := <-h.register:
			h.add(v)
		case v := <-h.unregister:
			if _, ok := h.viewers[v]; ok {
				h.drop(v)
			}
		case ev := <-h.events:
			h.queue(ev)
			h.drainQueued() // the rest of a burst without a select each
		case f := <-h.inspect:
			f()
		case <-tickC:
			h.broadcast(ctx)
		}
	}
}

func (h *hub) add(v *viewer) {
	h.viewers[v] = struct{}{}
	h.metrics.viewers.Set(float64(len(h.viewers)))
	if len(h.viewers) == 1 {
		h.record(true) // while someone watches, a report can be downloaded for what they saw
		h.events, h.cancel = h.cfg.Source.Subscribe(h.cfg.EventBuffer)
		h.tick = h.newTicker(time.Second / time.Duration(h.cfg.MaxUpdatesPerSecond))
		h.log.Debug("dashboard: first viewer, subscribed")
	}
}

func (h *hub) drop(v *viewer) {
	delete(h.viewers, v)
	close(v.send)
	h.metrics.viewers.Set(float64(len(h.viewers)))
	if len(h.viewers) == 0 {
		h.stop()
		h.log.Debug("dashboard: no viewers, unsubscribed")
	}
}

// record opens or closes the hub's recording session on a Source that records.
func (h *hub) record(on bool) {
	rec, ok := h.cfg.Source.(Recorder)
	if !ok || h.recording == on {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.CallTimeout)
	defer cancel()
	if err := rec.Record(ctx, on); err != nil {
		h.log.Debug("dashboard: recording", "on", on, "err", err) // at shutdown the scheduler has stopped
		return
	}
	h.recording = on
}

// stop releases the subscription, the ticker and the recording session and forgets all
// per-stream state.
func (h *hub) stop() {
	h.record(false)
	if h.cancel != nil {
		h.cancel()
	}
	if h.tick != nil {
		h.tick.Stop()
	}
	h.events, h.cancel, h.tick = nil, nil, nil
	h.resetEvents()
	h.diff.reset()
}

// queue keeps every cluster event, the first MaxEventsPerFrame task-stream events of the
// frame one by one, and aggregates the rest into spans per (kind, worker, thread, group): a
// span covers its tasks' first start to last stop and carries their count and busy time, so
// the page can draw every task that ran even at 100k tasks/s while a frame stays small. Only
// when MaxSpansPerFrame distinct spans are already open is an event lost (and counted).
func (h *hub) queue(ev Event) {
	if ev.IsCluster() {
		h.pending = append(h.pending, ev)
		return
	}
	if h.singles < h.cfg.MaxEventsPerFrame {
		h.singles++
		h.pending = append(h.pending, ev)
		return
	}
	h.spans.add(ev, h.cfg.MaxSpansPerFrame)
}

func (h *hub) resetEvents() {
	h.pending, h.singles = nil, 0
	h.spans.reset()
}

// drainQueued takes up to a burst of events already in the subscription channel without a
// full select per event (at 100k tasks/s the select was most of the hub's cost).
func (h *hub) drainQueued() {
	for range maxBurst {
		select {
		case ev := <-h.events:
			h.queue(ev)
		default:
			return
		}
	}
}

// maxBurst bounds drainQueued, so that ticks, viewers and inspections are served in between.
const maxBurst = 4096

// drain takes the events already in the subscription channel, without waiting: called after
// the Snapshot, so that a frame's events include every task its totals count.
func (h *hub) drain() {
	for range len(h.events) {
		select {
		case ev := <-h.events:
			h.queue(ev)
			h.drainQueued() // the rest of a burst without a select each
		default:
			return
		}
	}
}

// broadcast samples the Source once and offers the frame to every viewer without blocking.
func (h *hub) broadcast(ctx context.Context) {
	full, delta, ok := h.build(ctx)
	h.resetEvents()
	var fullData, deltaData []byte
	for v := range h.viewers {
		wantFull := v.needFull && ok
		var data []byte
		if wantFull {
			if fullData == nil {
				fullData = h.encode(&full)
			}
			data = fullData
		} else {
			if deltaData == nil {
				deltaData = h.encode(&delta)
			}
			data = deltaData
		}
		select {
		case v.send <- data:
			if wantFull {
				v.needFull = false
			}
			h.metrics.framesSent.Inc()
		default:
			v.dropped.Add(1)
			v.needFull = true // it missed a delta: resynchronise with a full frame
			h.metrics.framesDropped.Inc()
		}
	}
}

// build makes the frames for this tick; ok is false when the Snapshot failed, in which case
// both frames carry only the events and the error.
func (h *hub) build(ctx context.Context) (full, delta frame, ok bool) {
	h.seq++
	cctx, cancel := context.WithTimeout(ctx, h.cfg.CallTimeout)
	snap, err := h.cfg.Source.Snapshot(cctx)
	cancel()
	if err != nil {
		h.metrics.snapshotErrors.Inc()
		h.log.Warn("dashboard: snapshot failed", "err", err)
		delta = frame{Time: time.Now().UnixNano(), Error: err.Error(), Workers: []WorkerStatus{}, Groups: []GroupProgress{}}
		full = delta
	} else {
		full, delta = h.diff.frames(snap)
		ok = true
	}
	h.drain()
	events := append(nonNil(h.pending), h.spans.list...)
	for _, f := range []*frame{&full, &delta} {
		f.Seq = h.seq
		f.Events = events
		f.EventsAggregated = h.spans.events
		f.EventsLost = h.spans.lost
	}
	return full, delta, ok
}

func (h *hub) encode(f *frame) []byte {
	data, err := json.Marshal(f)
	if err != nil { // only a bug (an unencodable float) gets here
		h.log.Error("dashboard: encoding frame", "err", err)
		data, _ = json.Marshal(frame{Seq: f.Seq, Error: err.Error()})
	}
	return data
}

// spanSet aggregates task-stream events into spans; owned by the hub goroutine.
type spanSet struct {
	index  map[spanKey]int // position in list
	list   []Event
	events int // events aggregated into list
	lost   int // events that found no span (the set was full)
}

type spanKey struct {
	kind          EventKind
	worker, group string
	thread        int
	erred         bool
}

func (s *spanSet) add(ev Event, maxSpans int) {
	k := spanKey{ev.Kind, ev.Worker, ev.Group, ev.Thread, ev.State == "erred"}
	if i, ok := s.index[k]; ok {
		sp := &s.list[i]
		sp.Start, sp.Stop = min(sp.Start, ev.Start), max(sp.Stop, ev.Stop)
		sp.Time = max(sp.Time, ev.Time)
		sp.Count++
		sp.Busy += ev.Stop - ev.Start
		sp.NBytes += ev.NBytes
		s.events++
		return
	}
	if len(s.list) >= maxSpans {
		s.lost++
		return
	}
	if s.index == nil {
		s.index = make(map[spanKey]int)
	}
	s.index[k] = len(s.list)
	ev.Key, ev.Count, ev.Busy = "", 1, ev.Stop-ev.Start
	s.list = append(s.list, ev)
	s.events++
}

func (s *spanSet) reset() {
	clear(s.index)
	s.list, s.events, s.lost = nil, 0, 0
}
