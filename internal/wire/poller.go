package wire

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// A Poller lets connections that wait for their peer's next message do so without a goroutine
// each. A reader that has read everything its peer sent so far parks its connection (Park)
// and returns; one goroutine waits on an epoll set holding every parked connection, and starts
// the connection's resume function once bytes arrive or the connection is closed. resume runs
// on the poller's goroutine and takes what is whole in the buffer without waiting: a
// heartbeat costs no goroutine at all. With 10,000 workers, the scheduler's readers waiting in
// read(2) were 10,000 goroutines whose stacks every garbage collection scanned, and each
// wake-up cost a read that found nothing before the reader could wait again
// (docs/performance.md, "10,000 workers: one waiter for idle connections").
//
// Only a reader that owns a whole connection parks it, and only at a message boundary with
// nothing buffered: a message whose bytes are under way is read to its end by the reader, with
// the connection's message timeout, as before. Connections the epoll set cannot watch (TLS,
// anything but a plain TCP socket) are never parked.
//
// The epoll set is edge-triggered. That is why a reader may park only after a read that
// brought fewer bytes than it had room for (Conn.Drained): the socket was empty then, and any
// byte that arrives later raises a new edge. An edge that arrives while the reader still runs
// is remembered, and Park then refuses, so that the reader reads once more (TryFill).
type Poller struct {
	set  *pollSet // the epoll set (poller_linux.go)
	log  *slog.Logger
	mu   sync.Mutex
	regs map[int32]*pollReg // by the id the epoll set reports
	next int32
	// broken: the set failed (not closed): nothing parks any more, and readers wait in read
	broken  atomic.Bool
	closing atomic.Bool   // Close was called
	done    chan struct{} // closed when the waiting goroutine returned
	shut    sync.Once
}

// pollReg is a connection in the epoll set.
type pollReg struct {
	id    int32
	p     *Poller
	state atomic.Int32 // pollParked, pollRunning, pollWoken or pollGone
	// hup: the peer hung up (or the socket failed). The read that took the last bytes may
	// have taken the end with them and still come short, and no edge follows the end: the
	// reader must not park again, but read on to the end (Drained).
	hup    atomic.Bool
	resume func()
}

const (
	pollParked  = iota // no goroutine reads: an edge starts resume
	pollRunning        // the reader runs
	pollWoken          // the reader runs, and an edge (or a close) came meanwhile
	pollGone           // out of the set for good
)

// NewPoller makes an epoll set and starts the goroutine that waits on it; log hears if the set
// ever fails. It fails where there is no epoll (not Linux): connections are then not parked.
func NewPoller(log *slog.Logger) (*Poller, error) {
	set, err := newPollSet()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Poller{set: set, log: log, regs: map[int32]*pollReg{}, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// Close stops the waiting goroutine. Connections still parked are not resumed: close them
// first (each close resumes its reader, which sees the end).
func (p *Poller) Close() error {
	var err error
	p.shut.Do(func() {
		p.closing.Store(true)
		err = p.set.close()
		<-p.done
	})
	return err
}

// wait hands each batch of edges to the connections' readers until the poller is closed.
func (p *Poller) wait() {
	defer close(p.done)
	type edge struct {
		id  int32
		hup bool
	}
	var edges []edge
	var woken []*pollReg
	for {
		err := p.set.next(func(id int32, hup bool) { edges = append(edges, edge{id, hup}) })
		if err != nil {
			if !p.closing.Load() {
				p.fail(err)
			}
			return
		}
		p.mu.Lock()
		for _, e := range edges {
			if r := p.regs[e.id]; r != nil {
				if e.hup {
					r.hup.Store(true) // before the wake: the reader sees it when it tries to park
				}
				woken = append(woken, r)
			}
		}
		p.mu.Unlock()
		edges = edges[:0]
		for i, r := range woken {
			r.wake(true)
			woken[i] = nil
		}
		woken = woken[:0]
	}
}

// fail gives up on the set: every parked connection is resumed, and none parks again (Park
// returns an error, and its reader waits in read(2) from then on).
func (p *Poller) fail(err error) {
	p.log.Error("the poller of idle connections failed: their readers wait in read from now on", "err", err)
	p.mu.Lock()
	p.broken.Store(true) // no connection is added from now on (add)
	regs := make([]*pollReg, 0, len(p.regs))
	for _, r := range p.regs {
		regs = append(regs, r)
	}
	p.mu.Unlock()
	for _, r := range regs {
		r.wake(false)
	}
}

// wake resumes the reader if it is parked (on this goroutine when inline, which is the
// poller's), or tells the running reader to read once more.
func (r *pollReg) wake(inline bool) {
	for {
		switch s := r.state.Load(); s {
		case pollParked:
			if r.state.CompareAndSwap(pollParked, pollRunning) {
				if inline {
					r.resume()
				} else {
					go r.resume()
				}
				return
			}
		case pollRunning:
			if r.state.CompareAndSwap(pollRunning, pollWoken) {
				return
			}
		default: // woken already, or gone
			return
		}
	}
}

// errWouldBlock is what TryFill's read returns when the socket holds nothing.
var errWouldBlock = errors.New("wire: nothing to read yet")

// errIdleTimeout is returned by Park for a connection with an idle timeout, which a parked
// connection could not keep.
var errIdleTimeout = errors.New("wire: a connection with an idle timeout cannot be parked")

// errPollerBroken is returned by Park once the poller's set failed.
var errPollerBroken = errors.New("wire: the poller failed")

// errNotPollable is returned by Park for a connection the epoll set cannot watch.
var errNotPollable = errors.New("wire: connection cannot be polled")

// Park hands c to p until its peer sends more or c is closed: resume then runs, on the
// poller's goroutine (or, after a close, on a new one), and the caller, which must be c's only
// reader, must return at once without touching c's reading side again. resume must not wait
// for anything (the network, a lock held for long, a full channel): every parked connection
// waits behind it. What would wait, it hands to a goroutine of its own. Call Park only when
// Drained reports true. It returns false (and parks nothing) when bytes arrived meanwhile, or
// might have: the caller goes on reading (TryFill, then Park again if nothing came). The first
// Park of a connection sets resume for good.
func (c *Conn) Park(p *Poller, resume func()) (bool, error) {
	// A deadline a message's reading set (the message timeout) would still be armed, and the
	// next TryFill, any time later, would fail on it: a parked connection waits without one,
	// as Recv waits for the start of a message (and so does a reader told to go on reading).
	c.tr.dl.arm(c.nc, 0)
	if c.tr.idle > 0 {
		return false, errIdleTimeout
	}
	r := c.poll.Load()
	if r == nil {
		var err error
		if r, err = p.add(c, resume); err != nil {
			return false, err
		}
	} else if p.broken.Load() {
		// (a Park racing with fail finds its reader woken by fail, reads once more, and
		// comes back here)
		return false, errPollerBroken
	}
	// nothing is buffered (Drained): a parked connection holds no read buffer, and the
	// resumed reader takes one from the pool at its first read (before the state changes:
	// the poller's goroutine may resume the reader as soon as it does)
	c.br.release()
	if r.state.CompareAndSwap(pollRunning, pollParked) {
		return true, nil
	}
	r.state.CompareAndSwap(pollWoken, pollRunning) // read once more, then park
	return false, nil
}

// add puts c in the epoll set, as running.
func (p *Poller) add(c *Conn, resume func()) (*pollReg, error) {
	if c.raw == nil {
		return nil, errNotPollable
	}
	r := &pollReg{p: p, resume: resume}
	r.state.Store(pollRunning)
	p.mu.Lock()
	if p.broken.Load() { // (set under p.mu: fail resumes every connection added before)
		p.mu.Unlock()
		return nil, errPollerBroken
	}
	for {
		p.next++
		if p.next <= 0 {
			p.next = 1
		}
		if p.regs[p.next] == nil {
			break
		}
	}
	r.id = p.next
	p.regs[r.id] = r
	p.mu.Unlock()
	// stored before the descriptor is in the set: a close from now on wakes the reader
	c.poll.Store(r)
	var cerr error
	err := c.raw.Control(func(fd uintptr) { cerr = p.set.add(fd, r.id) })
	if err == nil {
		err = cerr
	}
	if err != nil {
		c.poll.Store(nil)
		p.remove(r)
		return nil, fmt.Errorf("wire: poll: %w", err)
	}
	return r, nil
}

func (p *Poller) remove(r *pollReg) {
	r.state.Store(pollGone)
	p.mu.Lock()
	delete(p.regs, r.id)
	p.mu.Unlock()
}

// Unpoll takes c out of its poller for good, if it was ever parked: its reader calls it once
// it is done with c, before closing it. Nothing resumes it after.
func (c *Conn) Unpoll() {
	r := c.poll.Swap(nil)
	if r == nil {
		return
	}
	r.p.remove(r)
	// a closed descriptor has left the set by itself; Control fails then, and that is fine
	c.raw.Control(func(fd uintptr) { r.p.set.del(fd) })
}

// wakePoll resumes c's parked reader (or has its running reader read once more) after c was
// closed: a closed descriptor leaves the epoll set without an edge, and the reader must see
// the end.
func (c *Conn) wakePoll() {
	if r := c.poll.Load(); r != nil {
		r.wake(false)
	}
}

// Pollable reports whether c can be parked in a Poller (a plain TCP socket).
func (c *Conn) Pollable() bool { return c.raw != nil }

// Drained reports whether the reader may park c: nothing is buffered, no error is pending,
// the last read brought fewer bytes than there was room for (the socket was empty then), and
// the peer has not hung up.
func (c *Conn) Drained() bool {
	if r := c.poll.Load(); r != nil && r.hup.Load() {
		return false
	}
	return c.br.drained()
}

// TryFill reads what the socket holds, without waiting, into c's buffer; it reports whether
// bytes came. An error (or the end) is kept for the next Recv, which returns it.
func (c *Conn) TryFill() bool {
	if c.raw == nil {
		return false
	}
	return c.br.tryFill(c.rio.read)
}
