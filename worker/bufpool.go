package worker

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// bufPool recycles the buffers large fetched frames are read into.
//
// A fetched value lands in fresh memory, and on the machines we measured the first touch of
// fresh memory (a page fault per 4 KiB) costs several times the copy from the socket: 200 MB
// took ~90 ms of page faults against ~35 ms of copying. Reading into a buffer whose pages are
// already there avoids that.
//
// A stored value's frames are borrowed without reference counts (queued for a peer by the data
// server's writer, decoded zero-copy into Arrow tables by Go tasks, cached in the store), so
// only the garbage collector knows when a buffer is no longer used. Each buffer handed out
// carries a finalizer, which runs once nothing refers to the buffer any more and puts it back
// into the pool instead of letting it be freed. A buffer in the pool is referenced by nothing
// else, so it can be written again safely. The pool keeps at most max bytes, each buffer for at
// most bufPoolIdle; beyond that buffers are dropped and freed by the next collection.
type bufPool struct {
	min   int   // frames smaller than this are plain allocations
	max   int64 // bytes kept
	reuse atomic.Int64
	mu    struct {
		sync.Mutex
		free    []pooledBuf
		bytes   int64
		out     int64         // bytes handed out and not back yet
		lastGC  time.Time     // last collection get forced
		backoff time.Duration // how long after it get may force another
		timer   *time.Timer
	}
}

type pooledBuf struct {
	b    []byte
	when time.Time
}

const (
	bufPoolMin  = 4 << 20
	bufPoolIdle = 10 * time.Second
)

// poolBytesFor is the pool size for a worker with this memory limit: a sixteenth of it, at
// most 512 MiB (the pool's buffers are memory the store does not account for).
func poolBytesFor(limit int64) int64 {
	if limit <= 0 {
		limit = DefaultMemoryLimit
	}
	return min(limit/16, 512<<20)
}

func newBufPool(max int64) *bufPool { return &bufPool{min: bufPoolMin, max: max} }

// get returns a buffer of n bytes (its contents are undefined).
func (p *bufPool) get(n int) []byte {
	if n < p.min || int64(n) > p.max {
		return make([]byte, n)
	}
	b := p.take(n)
	if b == nil && n >= bufPoolCollectFrom && p.shouldCollect(n) {
		// Buffers handed out earlier may be garbage the collector has not found yet (a
		// collection starts when the heap grows, i.e. during this very allocation, too late
		// for it): collect now and give their finalizers a moment. A collection that finds
		// nothing doubles the time before the next one may be forced (buffers still in use
		// must not cost a collection per fetch).
		runtime.GC()
		for i := 0; i < 20 && b == nil; i++ {
			time.Sleep(100 * time.Microsecond)
			b = p.take(n)
		}
		p.mu.Lock()
		if b != nil {
			p.mu.backoff = bufPoolMinBackoff
		} else {
			p.mu.backoff = min(2*p.mu.backoff, bufPoolMaxBackoff)
		}
		p.mu.Unlock()
	}
	if b == nil {
		// room to grow: a value of about the same size can reuse it
		b = make([]byte, n, n+n/16)
	}
	c := cap(b)
	p.mu.Lock()
	p.mu.out += int64(c)
	p.mu.Unlock()
	runtime.SetFinalizer(&b[:1][0], func(ptr *byte) { p.put(unsafe.Slice(ptr, c)) })
	return b[:n:n]
}

// bufPoolCollectFrom is the size from which get may force a collection to find a buffer; it
// does so at most every bufPoolMinBackoff, backing off to bufPoolMaxBackoff while collections
// find nothing.
const (
	bufPoolCollectFrom = 32 << 20
	bufPoolMinBackoff  = 100 * time.Millisecond
	bufPoolMaxBackoff  = 5 * time.Second
)

// shouldCollect tells whether a collection might give back a buffer for n bytes.
func (p *bufPool) shouldCollect(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.out < int64(n) || time.Since(p.mu.lastGC) < max(p.mu.backoff, bufPoolMinBackoff) {
		return false
	}
	p.mu.lastGC = time.Now()
	return true
}

// take removes from the pool the smallest buffer that fits n bytes well, or returns nil.
func (p *bufPool) take(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, f := range p.mu.free {
		if c := cap(f.b); c >= n && c <= n+n/4 && (best < 0 || c < cap(p.mu.free[best].b)) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	p.reuse.Add(1)
	b := p.mu.free[best].b[:n]
	p.mu.bytes -= int64(cap(b))
	p.mu.free = slices.Delete(p.mu.free, best, best+1)
	return b
}

// put takes back a buffer nothing refers to any more (from its finalizer).
func (p *bufPool) put(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.out -= int64(cap(b))
	now := time.Now()
	p.trimLocked(now)
	if p.mu.bytes+int64(cap(b)) > p.max {
		return // dropped: the collector frees it
	}
	p.mu.free = append(p.mu.free, pooledBuf{b: b, when: now})
	p.mu.bytes += int64(cap(b))
	if p.mu.timer == nil {
		p.mu.timer = time.AfterFunc(bufPoolIdle, p.trim)
	} else {
		p.mu.timer.Reset(bufPoolIdle)
	}
}

// trim drops the buffers kept longer than bufPoolIdle.
func (p *bufPool) trim() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trimLocked(time.Now())
	if len(p.mu.free) > 0 {
		p.mu.timer.Reset(bufPoolIdle)
	}
}

func (p *bufPool) trimLocked(now time.Time) {
	p.mu.free = slices.DeleteFunc(p.mu.free, func(f pooledBuf) bool {
		if now.Sub(f.when) < bufPoolIdle {
			return false
		}
		p.mu.bytes -= int64(cap(f.b))
		return true
	})
}

// held returns the bytes kept in the pool.
func (p *bufPool) held() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.bytes
}
