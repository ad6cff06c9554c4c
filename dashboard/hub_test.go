package dashboard

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNoViewerTouchesNothing(t *testing.T) {
	h := newHarness(t)
	h.sync() // the hub is running and idle
	get(t, h, "/")
	get(t, h, "/health")
	h.sync()
	assert.Zero(t, h.src.calls())
	assert.False(t, h.src.Active())
	h.mu.Lock()
	assert.Empty(t, h.tickers, "no ticker without a viewer")
	h.mu.Unlock()
}

func TestViewerGetsFullThenDeltaFrames(t *testing.T) {
	h := newHarness(t)
	c := h.dial()
	h.waitViewers(1)
	require.True(t, h.src.Active(), "the first viewer subscribes")

	h.tick()
	env := readEnvelope(t, c)
	assert.Zero(t, env.Dropped)
	f := env.Frame
	assert.True(t, f.Full)
	assert.EqualValues(t, 1, f.Seq)
	assert.Len(t, f.Workers, 2)
	assert.Len(t, f.Groups, 2)
	assert.Equal(t, ClusterMemory{Used: 400, Limit: 3000, Spilled: 5}, f.Memory)
	assert.Empty(t, f.Events)

	// Events published between ticks arrive batched in the next frame; unchanged workers and
	// groups are left out of a delta.
	h.src.Publish(Event{Kind: EventTask, Key: "load-1", Group: "load", Worker: "127.0.0.1:9000", Thread: 1, Start: 1, Stop: 2, State: "memory"})
	h.src.Publish(Event{Kind: EventTransfer, Key: "load-1", Worker: "127.0.0.1:9001", Peer: "127.0.0.1:9000", NBytes: 64})
	h.src.setSnapshot(func(s *Snapshot) {
		s.Time += int64(time.Second)
		s.Groups[1].Processing, s.Groups[1].Waiting = 1, 0
		s.Totals.Completed += 10
	})
	h.sync()
	h.tick()
	f = readEnvelope(t, c).Frame
	assert.False(t, f.Full)
	assert.EqualValues(t, 2, f.Seq)
	assert.Empty(t, f.Workers)
	require.Len(t, f.Groups, 1)
	assert.Equal(t, "sum", f.Groups[0].Name)
	require.Len(t, f.Events, 2)
	assert.Equal(t, EventTask, f.Events[0].Kind)
	assert.Equal(t, EventTransfer, f.Events[1].Kind)
	assert.InDelta(t, 10.0, f.TasksPerSecond, 1e-9)

	// A worker that leaves is named in the next delta.
	h.src.setSnapshot(func(s *Snapshot) { s.Workers = s.Workers[:1] })
	h.tick()
	f = readEnvelope(t, c).Frame
	assert.Equal(t, []string{"127.0.0.1:9001"}, f.WorkersRemoved)
	assert.Empty(t, f.Events, "events are sent once")
}

func TestLateViewerGetsFullFrame(t *testing.T) {
	h := newHarness(t)
	a := h.dial()
	h.waitViewers(1)
	h.tick()
	assert.True(t, readEnvelope(t, a).Frame.Full)
	b := h.dial()
	h.waitViewers(2)
	h.tick()
	assert.False(t, readEnvelope(t, a).Frame.Full)
	fb := readEnvelope(t, b).Frame
	assert.True(t, fb.Full)
	assert.Len(t, fb.Workers, 2)
}

func TestLastViewerLeavingUnsubscribes(t *testing.T) {
	h := newHarness(t)
	c := h.dial()
	h.waitViewers(1)
	h.tick()
	readEnvelope(t, c)
	mt := h.ticker()
	require.NoError(t, c.Close())
	h.waitViewers(0)
	assert.False(t, h.src.Active(), "no subscription without viewers")
	assert.True(t, mt.stopped.Load(), "no ticks without viewers")
	before := h.src.calls()
	h.src.Publish(Event{Kind: EventTask}) // costs nothing: nobody is subscribed
	h.sync()
	assert.Equal(t, before, h.src.calls())
	assert.Zero(t, h.src.Dropped())

	// A new viewer starts over with a new subscription and a full frame.
	c2 := h.dial()
	h.waitViewers(1)
	assert.EqualValues(t, 2, h.src.subscribes.Load())
	h.tick()
	assert.True(t, readEnvelope(t, c2).Frame.Full)
}

func TestSnapshotErrorIsReported(t *testing.T) {
	h := newHarness(t)
	c := h.dial()
	h.waitViewers(1)
	h.src.mu.Lock()
	h.src.mu.snapErr = fmt.Errorf("scheduler: busy")
	h.src.mu.Unlock()
	h.tick()
	f := readEnvelope(t, c).Frame
	assert.Equal(t, "scheduler: busy", f.Error)
	h.src.mu.Lock()
	h.src.mu.snapErr = nil
	h.src.mu.Unlock()
	h.tick()
	f = readEnvelope(t, c).Frame
	assert.True(t, f.Full, "the viewer still needs its first full frame")
	assert.Empty(t, f.Error)
}

// Beyond MaxEventsPerFrame single events a frame aggregates task-stream events into spans per
// worker thread and group, so every task that ran is represented; only when the span budget is
// spent is an event lost, and the loss is counted.
func TestEventsBeyondTheFrameBudgetAreAggregated(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxEventsPerFrame, c.MaxSpansPerFrame = 3, 2 })
	c := h.dial()
	h.waitViewers(1)
	var want int64
	for i := range 10 {
		e := Event{Kind: EventTask, Key: fmt.Sprint("a-", i), Group: "a", Worker: "w0", Thread: i % 2,
			Start: int64(100 * i), Stop: int64(100*i + 10), NBytes: 1}
		want += e.Stop - e.Start
		h.src.Publish(e)
	}
	h.src.Publish(Event{Kind: EventTask, Key: "b-0", Group: "b", Worker: "w0", Start: 5, Stop: 6}) // needs a third span
	for h.srv.hub.pendingLen() < 11 {
		h.sync()
	}
	h.tick()
	f := readEnvelope(t, c).Frame
	singles, counted, spans := 0, 0, 0
	var busy int64
	for _, e := range f.Events {
		if e.Count == 0 {
			singles++
			busy += e.Stop - e.Start
			continue
		}
		spans++
		counted += e.Count
		busy += e.Busy
		assert.Empty(t, e.Key)
		assert.LessOrEqual(t, e.Start, e.Stop)
	}
	assert.Equal(t, 3, singles)
	assert.Equal(t, 2, spans, "one span per thread of group a")
	assert.Equal(t, 7, counted, "every event beyond the first three is in a span")
	assert.Equal(t, want, busy, "spans carry the busy time of their tasks")
	assert.Equal(t, 7, f.EventsAggregated)
	assert.Equal(t, 1, f.EventsLost, "b-0 found no span")
}

// pendingLen is read on the hub goroutine: events taken for the next frame.
func (h *hub) pendingLen() int {
	n := make(chan int)
	h.inspect <- func() { n <- len(h.pending) + h.spans.events + h.spans.lost }
	return <-n
}

// A viewer whose queue is full loses frames, is told how many, and resynchronises with a full
// frame; meanwhile the hub keeps sampling and the Source's Publish never waits.
func TestSlowViewerDropsFramesWithoutBlocking(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ViewerQueue = 1 })
	v := newViewer(1) // registered directly: nobody drains its queue
	require.True(t, h.srv.hub.join(v))
	h.sync()

	const ticks = 20
	for range ticks {
		for range 1000 {
			h.src.Publish(Event{Kind: EventTask}) // must return at once even though v is stuck
		}
		h.tick()
	}
	assert.EqualValues(t, ticks, h.src.snapshots.Load(), "the hub sampled on every tick")
	assert.EqualValues(t, ticks-1, v.dropped.Load(), "one frame fits in the queue, the rest are dropped")
	assert.EqualValues(t, ticks-1, counterValue(t, h.srv.hub.metrics.framesDropped))

	<-v.send // the viewer catches up
	h.tick()
	env := string(<-v.send)
	assert.Contains(t, env, `"full":true`, "after a drop the next frame is full")
	h.srv.hub.leave(v)
}

// The same over a real socket: a browser that stops reading fills the socket buffers, then
// its queue; frames are dropped and the count reaches the page once it reads again.
func TestBlockedSocketDropsAndReportsCount(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.ViewerQueue = 2
		c.WriteTimeout = time.Hour // stalled, not dead: keep it connected
	})
	big := strings.Repeat("g", 200)
	h.src.setSnapshot(func(s *Snapshot) {
		s.Groups = nil
		for i := range 3000 { // ~ 0.7 MB per frame, so socket buffers fill after a few frames
			s.Groups = append(s.Groups, GroupProgress{Name: fmt.Sprintf("%s-%d", big, i), Total: i})
		}
	})
	c := h.dial()
	h.waitViewers(1)
	for i := 0; counterValue(t, h.srv.hub.metrics.framesDropped) == 0; i++ {
		require.Less(t, i, 100000, "frames were never dropped")
		h.src.setSnapshot(func(s *Snapshot) { // every group changes: each delta is big
			for i := range s.Groups {
				s.Groups[i].Done++
			}
		})
		h.tick()
	}
	// The page reads again: the drop count arrives with the next frame written, and once the
	// frames queued before the drop are through, a full frame resynchronises it.
	var env envelope
	for env.Dropped == 0 {
		env = readEnvelope(t, c)
		h.tick()
	}
	for i := 0; !env.Frame.Full; i++ {
		require.LessOrEqual(t, i, 2+1, "no full frame after the drop")
		env = readEnvelope(t, c)
		h.tick()
	}
	assert.Positive(t, env.Dropped)
}

func TestCloseDisconnectsViewers(t *testing.T) {
	h := newHarness(t)
	c := h.dial()
	h.waitViewers(1)
	require.NoError(t, h.srv.Close())
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, websocket.CloseGoingAway, ce.Code)
	assert.False(t, h.src.Active())
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}
