package wire

import (
	"errors"
	"io"
	"sync"
)

// A connection reads through a buffer of bigRead bytes while bytes stream in, and through one
// of smallRead bytes otherwise. The big buffers are shared: a connection takes one from a pool
// when a read fills its small buffer, and gives it back once a read brings less than the small
// buffer holds and everything buffered has been consumed. An idle connection, or one that
// sees a message now and then (a worker's heartbeat, one task at a time), holds smallRead
// bytes instead of bigRead. With 10,000 workers a fixed 64 KiB per connection was 655 MB of
// live heap that nothing read (docs/performance.md, "Zero-cost workers"). The small buffer
// holds a burst of a few dozen small messages (a worker's answers to a block of tasks): at
// 2 KiB most bursts filled it and took a big buffer for the rest, at 10,000 workers so many
// at once that the pool ran dry, and the fresh 64 KiB buffers were a quarter of the readers'
// CPU (their zeroing, page faults and the collector's assists); 8 KiB each is 80 MB at 10,000
// connections (docs/performance.md, "10,000 workers: the read-ahead budget").
//
// The small buffers are pooled too, and taken at a connection's first read: a reader that
// parks its connection (wire.Poller) gives its buffer back (release), and the connection
// holds none while idle. At 10,000 parked workers a buffer each was 80 MB that the first read
// of each connection faulted in page by page, and whose pages every read found cold; pooled,
// the few connections reading at a time share buffers that stay warm (docs/performance.md,
// "10,000 workers: buffers for the connections that read").
const (
	bigRead   = 64 << 10
	smallRead = 8 << 10
)

var (
	bigReads   = sync.Pool{New: func() any { b := make([]byte, bigRead); return &b }}
	smallReads = sync.Pool{New: func() any { return new([smallRead]byte) }}
)

// errPeekTooLarge is returned by Peek for more than a big buffer holds.
var errPeekTooLarge = errors.New("wire: peek larger than the read buffer")

// connReader is a buffered reader (the subset of bufio.Reader a Conn uses) whose buffer is
// small unless bytes keep coming. Not safe for concurrent use.
type connReader struct {
	rd    io.Reader
	buf   []byte           // small[:], *big, or nil before the first read and after release
	small *[smallRead]byte // the pooled small buffer held, or nil
	big   *[]byte          // the pooled big buffer held, or nil
	r, w  int              // buf[r:w] is buffered
	err   error            // a read error not yet returned
	short bool             // the last read brought fewer bytes than there was room for
}

func (b *connReader) init(rd io.Reader) { b.rd = rd }

// smallBuf returns the small buffer, taking one from the pool when none is held.
func (b *connReader) smallBuf() []byte {
	if b.small == nil {
		b.small = smallReads.Get().(*[smallRead]byte)
	}
	return b.small[:]
}

// release gives the buffers back to their pools when nothing is buffered (it reports whether
// it did): the next read takes one again.
func (b *connReader) release() bool {
	if b.r != b.w {
		return false
	}
	if b.big != nil {
		bigReads.Put(b.big)
		b.big = nil
	}
	if b.small != nil {
		smallReads.Put(b.small)
		b.small = nil
	}
	b.buf, b.r, b.w = nil, 0, 0
	return true
}

// Buffered is the number of bytes that can be read without reading the connection.
func (b *connReader) Buffered() int { return b.w - b.r }

// compact moves the buffered bytes to the front of the buffer, trading the buffer for the
// small one when a read into the big one brought few bytes (and the rest fits), or for a big
// one when want bytes must be buffered at once or the last read filled the small buffer.
func (b *connReader) compact(want int, lastFilled bool) {
	n := b.w - b.r
	switch {
	case b.big == nil && (want > smallRead || lastFilled):
		big := bigReads.Get().(*[]byte)
		copy(*big, b.buf[b.r:b.w])
		b.big, b.buf = big, *big
	case b.big != nil && !lastFilled && want <= smallRead && n <= smallRead:
		small := b.smallBuf()
		copy(small, b.buf[b.r:b.w])
		bigReads.Put(b.big)
		b.big, b.buf = nil, small
	case b.buf == nil: // released: nothing is buffered
		b.buf = b.smallBuf()
	default:
		copy(b.buf, b.buf[b.r:b.w])
	}
	b.r, b.w = 0, n
}

// fill reads once into the free end of the buffer, first making room for want bytes in all.
func (b *connReader) fill(want int) {
	b.prepare(want)
	var n int
	var err error
	for tries := 0; n == 0 && err == nil; tries++ {
		if tries == 100 { // as bufio: a reader that keeps returning nothing is broken
			err = io.ErrNoProgress
			break
		}
		n, err = b.rd.Read(b.buf[b.w:])
		if n < 0 {
			n, err = 0, io.ErrNoProgress
		}
	}
	b.filled(n, err)
}

// prepare makes room at the free end of the buffer for want bytes in all.
func (b *connReader) prepare(want int) {
	if b.r > 0 || b.w == len(b.buf) || want > len(b.buf) {
		b.compact(want, false)
	}
}

// filled takes in a read of n bytes into the free end of the buffer, and its error.
func (b *connReader) filled(n int, err error) {
	b.short = n < len(b.buf)-b.w
	b.w += n
	if err != nil {
		b.err = err
	}
	if b.w == len(b.buf) && b.big == nil {
		// the read filled the small buffer: more is likely coming, so read into a big one next
		b.compact(b.w, true)
	} else if b.big != nil && n < smallRead && b.r == 0 && b.w <= smallRead {
		b.compact(0, false) // a trickle: back to the small buffer
	}
}

// tryFill is fill with one read that does not wait (read returns errWouldBlock when there is
// nothing): it reports whether bytes came.
func (b *connReader) tryFill(read func([]byte) (int, error)) bool {
	if b.err != nil {
		return false
	}
	b.prepare(0)
	if b.w == len(b.buf) {
		return false // no room (nothing was consumed): not a sign of anything
	}
	n, err := read(b.buf[b.w:])
	if err == errWouldBlock {
		b.short = true // the socket is empty
		return false
	}
	if n < 0 {
		n, err = 0, io.ErrNoProgress
	}
	b.filled(n, err)
	return n > 0
}

// drained reports whether nothing is buffered or pending, and the last read came short.
func (b *connReader) drained() bool { return b.r == b.w && b.err == nil && b.short }

// shrink gives the big buffer back when what is buffered fits the small one: a reader that is
// about to wait (for the scheduler's driver to take what it read) should not hold 64 KiB
// meanwhile. With 10,000 workers answering at once, those held were 114 MB of live heap.
func (b *connReader) shrink() {
	if b.big != nil && b.w-b.r <= smallRead {
		b.compact(0, false)
	}
}

func (b *connReader) readErr() error {
	err := b.err
	b.err = nil
	return err
}

// Peek returns the next n bytes without consuming them, valid until the next read.
func (b *connReader) Peek(n int) ([]byte, error) {
	if n > bigRead {
		return nil, errPeekTooLarge
	}
	for b.w-b.r < n && b.err == nil {
		b.fill(n)
	}
	if b.w-b.r < n {
		return b.buf[b.r:b.w], b.readErr()
	}
	return b.buf[b.r : b.r+n], nil
}

// Read reads into p: buffered bytes if there are any, else straight from the connection when
// p is at least as large as the buffer, else through the buffer.
func (b *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		if b.Buffered() > 0 {
			return 0, nil
		}
		return 0, b.readErr()
	}
	if b.r == b.w {
		if b.err != nil {
			return 0, b.readErr()
		}
		if len(p) >= max(len(b.buf), smallRead) { // (buf is nil when released)
			if b.big != nil { // a large read: the big buffer is not needed for it
				b.r, b.w = 0, 0
				b.compact(0, false)
			}
			b.short = false // (a payload's bytes: not a sign that the socket is empty)
			n, err := b.rd.Read(p)
			if n < 0 {
				n, err = 0, io.ErrNoProgress
			}
			return n, err
		}
		b.r, b.w = 0, 0
		b.fill(0)
		if b.r == b.w {
			return 0, b.readErr()
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}
