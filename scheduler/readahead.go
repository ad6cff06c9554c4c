package scheduler

import "sync"

// readAhead bounds the worker messages read and decoded but not yet handled by the driver,
// over all worker connections: at most limit, plus the one message each reader waiting for a
// grant holds.
//
// The inbound queue alone did not: behind it, each connection's reader held the batch it was
// waiting to hand on. Zero-cost workers are sent a block of queued tasks at a time (latency
// hiding), so at 10,000 of them ~150,000 decoded task_finished messages waited for the driver
// (124 MB of headers, all freshly allocated, and 50 MB of batches): the collector marked them
// over and over, the readers paid for new pages and the driver found them cold in the cache
// (docs/performance.md, "10,000 workers: the read-ahead budget").
//
// A reader decodes a message, then takes a grant of shares (take) for it and for the
// messages already whole in its buffer, reads those, gives back what it did not use, and
// hands the batch on; the driver gives back a share per message it handled. A reader never
// holds shares while it waits for the network. When none are left, readers wait in the
// order they came, each holding the one message it read, and what their peers send meanwhile
// stays in the sockets (TCP's flow control slows the peers). A waiting reader is woken only
// once a whole grant is free, so batches stay batches while the budget is tight.
type readAhead struct {
	limit, grant int // shares in all; most shares one take hands out

	mu       sync.Mutex
	inflight int             // shares taken and not given back
	waiters  []chan int      // readers waiting for a grant, first first
	spare    []chan int      // (waiters' channels, for reuse)
	stop     <-chan struct{} // closed: take returns 0
}

// maxSpareWaits bounds the waiters' channels kept for reuse.
const maxSpareWaits = 256

func newReadAhead(limit, grant int, stop <-chan struct{}) *readAhead {
	return &readAhead{limit: limit, grant: min(grant, limit), stop: stop}
}

// tryTake returns a grant of 1 to r.grant shares, or 0 when none is free or another reader
// waits.
func (r *readAhead) tryTake() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.takeLocked()
}

func (r *readAhead) takeLocked() int {
	if len(r.waiters) > 0 || r.inflight >= r.limit {
		return 0
	}
	n := min(r.limit-r.inflight, r.grant)
	r.inflight += n
	return n
}

// take is tryTake that waits, while fewer than a whole grant are free or another reader
// waits; 0 once stop is closed.
func (r *readAhead) take() int {
	r.mu.Lock()
	if n := r.takeLocked(); n > 0 {
		r.mu.Unlock()
		return n
	}
	var ch chan int
	if k := len(r.spare); k > 0 {
		ch, r.spare = r.spare[k-1], r.spare[:k-1]
	} else {
		ch = make(chan int, 1) // buffered: give never waits for the reader
	}
	r.waiters = append(r.waiters, ch)
	r.mu.Unlock()
	select {
	case n := <-ch:
		r.mu.Lock()
		if len(r.spare) < maxSpareWaits {
			r.spare = append(r.spare, ch)
		}
		r.mu.Unlock()
		return n
	case <-r.stop:
		return 0 // a grant sent to ch, then or later, is never given back: the server stops
	}
}

// give returns n shares and wakes the waiting readers whole grants are free for.
func (r *readAhead) give(n int) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	r.inflight -= n
	for len(r.waiters) > 0 && r.limit-r.inflight >= r.grant {
		ch := r.waiters[0]
		r.waiters[0] = nil
		r.waiters = r.waiters[1:]
		r.inflight += r.grant
		ch <- r.grant
	}
	if len(r.waiters) == 0 {
		r.waiters = nil // the slice walked forward from its start: the next wait begins anew
	}
	r.mu.Unlock()
}

// taken is the number of shares in use.
func (r *readAhead) taken() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight
}
