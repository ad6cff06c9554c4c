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
	stop := make(chan struct{})
	r := newReadAhead(10, 4, stop)
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
	close(stop)
	require.Equal(t, 0, <-waiting, "a waiting take returns nothing once the server stops")
	require.Equal(t, 0, <-late)
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
	s.ahead = newReadAhead(limit, grant, s.stop) // before Serve: nothing reads it yet
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
