package dashboard

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
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
	pending []Event
	trunc   int // task-stream events sampled out of this frame
	seen    int // task-stream events offered for this frame
	sampled int // task-stream events kept in pending
	seq     uint64
	diff    differ
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

// stop releases the subscription and the ticker and forgets all per-stream state.
func (h *hub) stop() {
	if h.cancel != nil {
		h.cancel()
	}
	if h.tick != nil {
		h.tick.Stop()
	}
	h.events, h.cancel, h.tick = nil, nil, nil
	h.pending, h.trunc, h.seen, h.sampled = nil, 0, 0, 0
	h.diff.reset()
}

// queue keeps every cluster event and a uniform sample (reservoir) of at most
// MaxEventsPerFrame task-stream events per frame: at tens of thousands of tasks a second a
// viewer sees a fair picture of the whole interval, and the frame stays small. What was
// sampled out is counted in the frame.
func (h *hub) queue(ev Event) {
	if ev.IsCluster() {
		h.pending = append(h.pending, ev)
		return
	}
	h.seen++
	if h.sampled < h.cfg.MaxEventsPerFrame {
		h.sampled++
		h.pending = append(h.pending, ev)
		return
	}
	h.trunc++
	if j := rand.IntN(h.seen); j < len(h.pending) && !h.pending[j].IsCluster() {
		h.pending[j] = ev
	}
}

// broadcast samples the Source once and offers the frame to every viewer without blocking.
func (h *hub) broadcast(ctx context.Context) {
	full, delta, ok := h.build(ctx)
	h.pending, h.trunc, h.seen, h.sampled = nil, 0, 0, 0
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
	for _, f := range []*frame{&full, &delta} {
		f.Seq = h.seq
		f.Events = nonNil(h.pending)
		f.EventsTruncated = h.trunc
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
