package dashboard

import (
	"context"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// fakeSource is a Source whose state the test sets, and which counts every call.
type fakeSource struct {
	Feed
	log *EventLog

	snapshots, tasks, graphs, events, subscribes atomic.Int64

	mu struct {
		sync.Mutex
		snap    Snapshot
		tasks   map[string]TaskInfo
		graph   GroupGraph
		snapErr error
	}
}

func newFakeSource() *fakeSource {
	f := &fakeSource{log: NewEventLog(100)}
	f.mu.tasks = make(map[string]TaskInfo)
	f.mu.snap = Snapshot{
		Time: 1_700_000_000_000_000_000,
		Workers: []WorkerStatus{
			{WorkerInfo: wire.WorkerInfo{Name: "w0", Address: "127.0.0.1:9000", NThreads: 2, MemoryLimit: 1000, Memory: 100, Spilled: 5, LastSeen: 1.7e9}, Processing: 3},
			{WorkerInfo: wire.WorkerInfo{Name: "w1", Address: "127.0.0.1:9001", NThreads: 4, MemoryLimit: 2000, Memory: 300}, Processing: 1},
		},
		Groups: []GroupProgress{
			{Name: "load", TaskCounts: TaskCounts{Memory: 2, Processing: 1, Waiting: 1}, Total: 4, Done: 2, NBytes: 64},
			{Name: "sum", TaskCounts: TaskCounts{Waiting: 1}, Total: 1},
		},
		Totals: Totals{Tasks: 5, Completed: 2},
	}
	return f
}

func (f *fakeSource) setSnapshot(mut func(*Snapshot)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mut(&f.mu.snap)
}

func (f *fakeSource) Snapshot(context.Context) (Snapshot, error) {
	f.snapshots.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.mu.snap
	s.Workers = append([]WorkerStatus(nil), s.Workers...)
	s.Groups = append([]GroupProgress(nil), s.Groups...)
	s.EventsDropped = f.Dropped()
	return s, f.mu.snapErr
}

func (f *fakeSource) Task(_ context.Context, key string) (TaskInfo, error) {
	f.tasks.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.mu.tasks[key]
	if !ok {
		return TaskInfo{}, ErrNotFound
	}
	return t, nil
}

func (f *fakeSource) GroupGraph(context.Context) (GroupGraph, error) {
	f.graphs.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.graph, nil
}

func (f *fakeSource) Subscribe(buf int) (<-chan Event, func()) {
	f.subscribes.Add(1)
	return f.Feed.Subscribe(buf)
}

func (f *fakeSource) Events(_ context.Context, n int) ([]Event, error) {
	f.events.Add(1)
	return f.log.Last(n), nil
}

func (f *fakeSource) calls() int64 {
	return f.snapshots.Load() + f.tasks.Load() + f.graphs.Load() + f.events.Load() + f.subscribes.Load()
}

// manualTicker hands the hub ticks that the test sends, so frames happen exactly when the
// test says.
type manualTicker struct {
	c       chan time.Time
	stopped atomic.Bool
}

func (m *manualTicker) C() <-chan time.Time { return m.c }
func (m *manualTicker) Stop()               { m.stopped.Store(true) }

// harness is a running Server over a fakeSource, with manual ticks.
type harness struct {
	t   *testing.T
	src *fakeSource
	srv *Server
	reg *prometheus.Registry
	web *httptest.Server

	mu      sync.Mutex
	tickers []*manualTicker
}

func newHarness(t *testing.T, mut ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, src: newFakeSource(), reg: prometheus.NewRegistry()}
	cfg := DefaultConfig()
	cfg.Source, cfg.Registry = h.src, h.reg
	for _, m := range mut {
		m(&cfg)
	}
	srv, err := newServer(cfg, func(time.Duration) ticker {
		mt := &manualTicker{c: make(chan time.Time)}
		h.mu.Lock()
		h.tickers = append(h.tickers, mt)
		h.mu.Unlock()
		return mt
	})
	require.NoError(t, err)
	h.srv = srv
	h.web = httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		h.web.Close()
		require.NoError(t, srv.Close())
	})
	return h
}

// ticker returns the hub's current ticker (the one made for the latest first viewer).
func (h *harness) ticker() *manualTicker {
	h.mu.Lock()
	defer h.mu.Unlock()
	require.NotEmpty(h.t, h.tickers, "the hub made no ticker")
	return h.tickers[len(h.tickers)-1]
}

// tick makes the hub send one frame, and returns once the hub has finished sending it.
func (h *harness) tick() {
	h.t.Helper()
	mt := h.ticker()
	for sent := false; !sent; {
		select {
		case mt.c <- time.Now():
			sent = true
		default:
			require.False(h.t, mt.stopped.Load(), "tick: the hub stopped its ticker (no viewer left)")
			runtime.Gosched()
		}
	}
	h.sync()
}

// sync waits until the hub has handled everything sent to it before.
func (h *harness) sync() {
	done := make(chan struct{})
	h.srv.hub.inspect <- func() { close(done) }
	<-done
}

// viewers counts the hub's viewers.
func (h *harness) viewers() int {
	var n int
	done := make(chan struct{})
	h.srv.hub.inspect <- func() { n = len(h.srv.hub.viewers); close(done) }
	<-done
	return n
}

// waitViewers waits until the hub has exactly n viewers (connects and disconnects are
// noticed asynchronously; the test's own deadline bounds the wait).
func (h *harness) waitViewers(n int) {
	h.t.Helper()
	for h.viewers() != n {
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) dial() *websocket.Conn {
	h.t.Helper()
	url := "ws" + strings.TrimPrefix(h.web.URL, "http") + "/ws"
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(h.t, err)
	_ = resp.Body.Close()
	h.t.Cleanup(func() { _ = c.Close() })
	return c
}

// envelope is a frame as one viewer receives it.
type envelope struct {
	Dropped uint64 `json:"dropped"`
	Frame   frame  `json:"frame"`
}

func readEnvelope(t *testing.T, c *websocket.Conn) envelope {
	t.Helper()
	var env envelope
	require.NoError(t, c.ReadJSON(&env))
	return env
}
