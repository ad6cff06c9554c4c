package worker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/internal/wire"
)

// A scheduler that goes silent (no answer to heartbeats: a cut link) is taken for lost: the
// worker keeps its results, registers again and lists them; a task that had not started is
// dropped (the scheduler gives it out again).
func TestWorkerRegistersAgainWithWhatItHolds(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.Reconnect = 30 * time.Second
	w, sc, _, done := s.startWorker(cfg)
	require.Empty(t, sc.reg.Items, "a first registration holds nothing")
	sc.send(goTask("x", "inc", 0, 41))
	sc.expect(wire.OpTaskFinished)
	sc.send(goTaskDeps("waits", "inc", 1, []wire.Dep{{Key: "from-a-peer", WhoHas: []string{"127.0.0.1:1"}}}, ref("from-a-peer")))

	sc.deaf.Store(true)
	var again *schedConn
	select {
	case again = <-s.joined:
	case err := <-done:
		t.Fatalf("Run returned instead of registering again: %v", err)
	case <-time.After(hangGuard):
		t.Fatal("the worker did not register again")
	}
	require.Equal(t, sc.reg.Name, again.reg.Name)
	require.Equal(t, sc.reg.PID, again.reg.PID)
	require.Len(t, again.reg.Items, 1)
	require.Equal(t, "x", again.reg.Items[0].Key)
	require.True(t, w.Store().Has("x"), "the result was kept")
	w.mu.Lock()
	_, queued := w.mu.tasks["waits"]
	w.mu.Unlock()
	require.False(t, queued, "a task that had not started was dropped")

	// the new session works
	again.send(goTask("y", "inc", 0, 1))
	m := again.expect(wire.OpTaskFinished)
	require.Equal(t, "y", m.Key)
}

// With Reconnect 0, losing the scheduler ends Run with an error that says why.
func TestWorkerWithoutReconnectReturnsWhenTheSchedulerGoesSilent(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	_, sc, _, done := s.startWorker(cfg)
	sc.deaf.Store(true)
	select {
	case err := <-done:
		require.ErrorContains(t, err, "lost the scheduler")
		require.ErrorContains(t, err, "nothing arrived for")
	case <-time.After(hangGuard):
		t.Fatal("Run did not return")
	}
}

// Every transition a task makes is checked: an illegal one panics under go test.
func TestTaskTransitionsAreChecked(t *testing.T) {
	w := &Worker{}
	ts := &task{state: stateNew}
	w.setStateLocked(ts, stateReady)
	w.setStateLocked(ts, stateRunning)
	w.setStateLocked(ts, stateDone)
	require.PanicsWithValue(t, "worker: task : illegal transition done → running", func() { w.setStateLocked(ts, stateRunning) })
	require.Panics(t, func() { w.setStateLocked(&task{state: stateFetching}, stateRunning) }, "fetching → running skips ready")
}

// A worker heartbeats as often as configured until the scheduler's answer asks for a longer
// interval (a large cluster), then that often, and waits correspondingly longer before it
// calls the scheduler silent.
func TestWorkerHeartbeatsAsOftenAsTheSchedulerAsks(t *testing.T) {
	s := newFakeSched(t, "")
	cfg := testConfig(t)
	cfg.HeartbeatInterval = 20 * time.Millisecond
	w, sc, _, _ := s.startWorker(cfg)
	beat := func() time.Time {
		t.Helper()
		for {
			select {
			case m, ok := <-sc.in:
				require.True(t, ok, "worker connection closed")
				if m.Op == wire.OpHeartbeat {
					return time.Now()
				}
			case <-time.After(hangGuard):
				t.Fatal("no heartbeat")
			}
		}
	}
	beat()
	require.Less(t, beat().Sub(beat()).Abs(), 500*time.Millisecond, "configured: every 20 ms")
	sc.interval.Store(0.6)
	require.Eventually(t, func() bool { return w.heartbeatEvery() == 600*time.Millisecond }, hangGuard, 5*time.Millisecond)
	beat() // the tick already due
	first := beat()
	require.GreaterOrEqual(t, beat().Sub(first), 500*time.Millisecond, "asked: every 600 ms")
	require.Equal(t, 3*time.Second, w.schedulerTimeout(), "silence is judged over five intervals")
	sc.interval.Store(0.0)
	require.Eventually(t, func() bool { return w.heartbeatEvery() == cfg.HeartbeatInterval }, 5*time.Second, 5*time.Millisecond,
		"an answer without an interval goes back to the configured one")
	require.Equal(t, cfg.SchedulerTimeout, w.schedulerTimeout())
}

// A worker joining a large cluster heartbeats at the interval the registered answer asks for
// from the start, not at its own until the first heartbeat's answer.
func TestHeartbeatIntervalAskedAtRegistration(t *testing.T) {
	s := newFakeSched(t, "")
	s.regInterval.Store(0.6)
	cfg := testConfig(t)
	cfg.HeartbeatInterval = 20 * time.Millisecond
	w, sc, _, _ := s.startWorker(cfg)
	joined := time.Now()
	require.Eventually(t, func() bool { return w.heartbeatEvery() == 600*time.Millisecond }, 5*time.Second, time.Millisecond,
		"the interval the registered answer asked for")
	for {
		select {
		case m, ok := <-sc.in:
			require.True(t, ok, "worker connection closed")
			if m.Op == wire.OpHeartbeat {
				require.GreaterOrEqual(t, time.Since(joined), 500*time.Millisecond, "a heartbeat before the interval asked for")
				return
			}
		case <-time.After(hangGuard):
			t.Fatal("no heartbeat")
		}
	}
}
