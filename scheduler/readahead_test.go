package scheduler

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/internal/wire"
)

// takeAsync starts a take and returns the channel its grant arrives on.
func takeAsync(r *readAhead) <-chan int {
	got := make(chan int, 1)
	go func() { got <- r.take() }()
	return got
}

func requireWaiting(t *testing.T, r *readAhead, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.waiters) == n
	}, 5*time.Second, time.Millisecond)
}

func TestReadAheadGrants(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	r := newReadAhead(ctx, 10, 4)
	require.Equal(t, 4, r.take())
	require.Equal(t, 4, r.take())
	require.Equal(t, 2, r.take(), "the last grant is what is left")
	require.Equal(t, 10, r.taken())

	first := takeAsync(r)
	requireWaiting(t, r, 1)
	second := takeAsync(r)
	requireWaiting(t, r, 2)
	r.give(3) // less than a grant: nobody is woken, or batches would shrink to one message
	requireWaiting(t, r, 2)
	r.give(1)
	require.Equal(t, 4, <-first, "the reader that waited first is woken first, with a whole grant")
	requireWaiting(t, r, 1)
	third := takeAsync(r)
	requireWaiting(t, r, 2)
	r.give(8)
	require.Equal(t, 4, <-second)
	require.Equal(t, 4, <-third)
	require.Equal(t, 10, r.taken())

	// while a reader waits, a newcomer waits behind it even though shares are free
	waiting := takeAsync(r)
	requireWaiting(t, r, 1)
	r.give(2)
	require.Zero(t, r.tryTake(), "free shares are the waiting reader's first")
	late := takeAsync(r)
	requireWaiting(t, r, 2)
	stop()
	require.Equal(t, 0, <-waiting, "a waiting take returns nothing once the server stops")
	require.Equal(t, 0, <-late)
}

// takeOr's callbacks are served in turn with the takes, each with a whole grant, and with 0
// once the server stops; a takeOr after the stop is told at once.
func TestReadAheadCallbacks(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	r := newReadAhead(ctx, 8, 4)
	var got []string
	cb := func(name string) func(int) { return func(n int) { got = append(got, fmt.Sprint(name, n)) } }
	require.Equal(t, 4, r.takeOr(cb("unused")))
	require.Equal(t, 4, r.takeOr(cb("unused")))
	require.Zero(t, r.takeOr(cb("a")))
	waiting := takeAsync(r)
	requireWaiting(t, r, 2)
	require.Zero(t, r.takeOr(cb("b")))
	require.Zero(t, r.takeOr(cb("c")))
	r.give(3)
	require.Empty(t, got, "less than a grant free: nobody is served")
	r.give(1)
	require.Equal(t, []string{"a4"}, got)
	r.give(4)
	require.Equal(t, 4, <-waiting, "the take that waited second is served second")
	require.Equal(t, []string{"a4"}, got)
	r.give(4)
	require.Equal(t, []string{"a4", "b4"}, got)
	require.Equal(t, uint64(3), r.deferred)
	stop()
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(got) == 3
	}, 5*time.Second, time.Millisecond)
	require.Equal(t, []string{"a4", "b4", "c0"}, got, "a waiting callback is told of the stop")
	require.Zero(t, r.takeOr(cb("d")))
	require.Equal(t, "d0", got[3], "a takeOr after the stop is told at once")
	require.Zero(t, r.take())
}

// While the driver is busy, worker readers decode no more than the read-ahead budget: the
// rest of what the workers send waits in the sockets. Once the driver runs again everything
// is handled, and every share comes back (a share lost for good would, in time, stop the
// scheduler reading from any worker).
func TestReadAheadBoundsDecodedMessages(t *testing.T) {
	const limit, grant, workers, beats = 24, 4, 5, 200
	cfg := DefaultServerConfig()
	cfg.Port = 0
	s, err := NewServer(cfg)
	require.NoError(t, err)
	s.ahead = newReadAhead(s.stopped, limit, grant) // before Serve: nothing reads it yet
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	release := make(chan struct{})
	var released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	defer func() { unblock(); cancel(); <-done }() // also when an assertion fails
	conns := make([]*wire.Conn, workers)
	for i := range conns {
		conns[i] = dialWorker(t, s, fmt.Sprintf("w%d", i), 1+i)
	}
	var before uint64
	query(t, s, func(require.TestingT) { before = s.stats.msgsIn })

	busy := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Query(func(*Core) { close(busy); <-release }) // the driver is busy until released
	}()
	<-busy
	for _, c := range conns {
		for range beats {
			require.NoError(t, c.Send(&wire.Msg{Op: wire.OpHeartbeat, MemLimit: 1 << 30, Memory: 1 << 20}))
		}
	}
	// (the budget may settle a few shares short of its limit: a reader gives back what its
	// grant held more than its buffered messages, too few to wake the next one)
	require.Eventually(t, func() bool {
		s.ahead.mu.Lock()
		defer s.ahead.mu.Unlock()
		return s.ahead.limit-s.ahead.inflight < grant && len(s.ahead.waiters) > 0
	}, 10*time.Second, time.Millisecond, "the readers used the budget up and wait, not decoding more")

	unblock()
	wg.Wait()
	require.Eventually(t, func() bool {
		var n uint64
		s.Query(func(*Core) { n = s.stats.msgsIn })
		return n-before >= workers*beats
	}, 10*time.Second, 5*time.Millisecond, "every heartbeat is handled once the driver runs again")
	require.Eventually(t, func() bool { return s.ahead.taken() == 0 }, 5*time.Second, time.Millisecond,
		"every share came back")
}
