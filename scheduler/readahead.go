package scheduler

import (
	"context"
	"sync"
)

// readAhead bounds the worker messages read and decoded but not yet handled by the driver,
// over all worker connections: at most limit, plus the one message each reader that read a
// message split across reads holds while it waits for a grant (take).
//
// The inbound queue alone did not: behind it, each connection's reader held the batch it was
// waiting to hand on. Zero-cost workers are sent a block of queued tasks at a time (latency
// hiding), so at 10,000 of them ~150,000 decoded task_finished messages waited for the driver
// (124 MB of headers, all freshly allocated, and 50 MB of batches): the collector marked them
// over and over, the readers paid for new pages and the driver found them cold in the cache
// (docs/performance.md, "10,000 workers: the read-ahead budget").
//
// A reader takes a grant of shares (takeOr) before it decodes the messages whole in its
// buffer, reads as many as the grant covers, gives back what it did not use, and hands the
// batch on; the driver gives back a share per message it handled. A reader never holds
// shares while it waits for the network. When none are left, a reader leaves a callback in
// the queue of waiters and returns: it holds no goroutine and no decoded message meanwhile,
// and what its peer sends stays in the socket (TCP's flow control slows the peer). At 10,000
// workers a reader each waited in take, holding the message it had read: ~2,000 goroutines,
// 16–19 MB of stacks for the collector to scan (docs/performance.md, "10,000 workers:
// buffers for the connections that read"). Waiters are served in the order they came,
// each only once a whole grant is free, so batches stay batches while the budget is tight.
type readAhead struct {
	limit, grant int // shares in all; most shares one take hands out

	mu       sync.Mutex
	inflight int           // shares taken and not given back
	waiters  []grantWaiter // readers waiting for a grant, first first
	spare    []chan int    // (take's channels, for reuse)
	stopped  bool          // the server stopped: no grant is handed out again
	deferred uint64        // callbacks left by takeOr, in all
}

// grantWaiter is a reader waiting for a grant: in take (ch), or by a callback (fn, takeOr).
type grantWaiter struct {
	ch chan int
	fn func(int)
}

// maxSpareWaits bounds the waiters' channels kept for reuse.
const maxSpareWaits = 256

// newReadAhead returns a budget of limit shares, handed out in grants of at most grant; once
// ctx is done it hands out nothing more, and every waiter gets 0.
func newReadAhead(ctx context.Context, limit, grant int) *readAhead {
	r := &readAhead{limit: limit, grant: min(grant, limit)}
	context.AfterFunc(ctx, r.stopWaiters)
	return r
}

// tryTake returns a grant of 1 to r.grant shares, or 0 when none is free or another reader
// waits.
func (r *readAhead) tryTake() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.takeLocked()
}

func (r *readAhead) takeLocked() int {
	if r.stopped || len(r.waiters) > 0 || r.inflight >= r.limit {
		return 0
	}
	n := min(r.limit-r.inflight, r.grant)
	r.inflight += n
	return n
}

// takeOr is tryTake that, when it returns 0, has fn called with a whole grant once one is
// free and the readers that waited before have theirs, or with 0 once the server stops (maybe
// at once). fn is called with the budget's lock held (by give, on the driver's goroutine), so
// it must only start a goroutine.
func (r *readAhead) takeOr(fn func(int)) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := r.takeLocked(); n > 0 {
		return n
	}
	if r.stopped {
		fn(0)
	} else {
		r.waiters = append(r.waiters, grantWaiter{fn: fn})
		r.deferred++
	}
	return 0
}

// take is tryTake that waits, while fewer than a whole grant are free or another reader
// waits; 0 once the server stops.
func (r *readAhead) take() int {
	r.mu.Lock()
	if n := r.takeLocked(); n > 0 || r.stopped {
		r.mu.Unlock()
		return n
	}
	var ch chan int
	if k := len(r.spare); k > 0 {
		ch, r.spare = r.spare[k-1], r.spare[:k-1]
	} else {
		ch = make(chan int, 1) // buffered: give never waits for the reader
	}
	r.waiters = append(r.waiters, grantWaiter{ch: ch})
	r.mu.Unlock()
	n := <-ch // a grant from give, or 0 from stopWaiters: one or the other, once
	r.mu.Lock()
	if len(r.spare) < maxSpareWaits {
		r.spare = append(r.spare, ch)
	}
	r.mu.Unlock()
	return n
}

// give returns n shares and hands whole grants to the waiting readers they are free for.
func (r *readAhead) give(n int) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	r.inflight -= n
	for len(r.waiters) > 0 && r.limit-r.inflight >= r.grant && !r.stopped {
		w := r.waiters[0]
		r.waiters[0] = grantWaiter{}
		r.waiters = r.waiters[1:]
		r.inflight += r.grant
		if w.fn != nil {
			w.fn(r.grant)
		} else {
			w.ch <- r.grant
		}
	}
	if len(r.waiters) == 0 {
		r.waiters = nil // the slice walked forward from its start: the next wait begins anew
	}
	r.mu.Unlock()
}

// stopWaiters, once the server stops, tells every waiter, in take or by a callback, that
// no grant comes: 0.
func (r *readAhead) stopWaiters() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	for _, w := range r.waiters {
		if w.fn != nil {
			w.fn(0)
		} else {
			w.ch <- 0 // buffered, and nothing else sends once the waiter is off the list
		}
	}
	r.waiters = nil
}

// taken is the number of shares in use.
func (r *readAhead) taken() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight
}
