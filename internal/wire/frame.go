package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Limits bound the messages a peer may send. A declared length is never allocated up front
// (frames grow as their bytes arrive), so the frame and message limits are sanity bounds on
// values, not on memory: a value of many gigabytes moves as one frame.
type Limits struct {
	MaxFrames  int   // frames per message
	MaxFrame   int64 // bytes per payload frame
	MaxHeader  int64 // bytes of frame 0 (the msgpack header)
	MaxMessage int64 // bytes of all frames of one message
}

// DefaultLimits returns the limits documented in docs/protocol.md.
func DefaultLimits() Limits {
	return Limits{MaxFrames: 4096, MaxFrame: 16 << 30, MaxHeader: 64 << 20, MaxMessage: 16 << 30}
}

// ErrFrameTooLarge is returned when a peer declares a frame, header or message beyond Limits.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// ErrProtocol is returned for malformed framing or headers.
var ErrProtocol = errors.New("wire: protocol error")

// ReadFrames reads one message (a frame list) from r. The declared frame count and lengths are
// validated against lim before any payload is allocated.
func ReadFrames(r io.Reader, lim Limits) ([][]byte, error) { return readFrames(r, lim, nil, Dest{}) }

// Dest says where ReadFramesTo puts a message's payload frames (all but the header frame).
type Dest struct {
	// Alloc returns a buffer of exactly the length asked for (a recycled buffer, say), or nil
	// for a length it does not trust (the frame then grows as its bytes arrive). Nil: every
	// frame grows as its bytes arrive.
	Alloc func(n int) []byte
	// Sink, when set, is asked first about every payload frame, with the header frame, the
	// frame's index and its declared length. A Sink it returns reads that frame; nil: Alloc's
	// buffer does.
	Sink func(hdr []byte, i int, n int64) Sink
}

// A Sink reads a payload frame's bytes as they arrive (Dest.Sink): into a buffer of its own
// choosing, chunk by chunk, so that it can act on each chunk (copy it on) while the next one is
// read. A declared length is still a claim: Filled hands over the bytes that arrived, and a
// message that ends early is an error before the frame's last Filled (and Frame is not called).
type Sink interface {
	// Buf returns a buffer for the frame's next bytes (at least one byte long).
	Buf() ([]byte, error)
	// Filled says that the first n bytes of the buffer Buf returned last hold the next bytes.
	Filled(n int) error
	// Frame returns the frame, once all its bytes were handed over.
	Frame() []byte
}

// ReadFramesTo is ReadFrames with the payload frames read where dest says.
func ReadFramesTo(r io.Reader, lim Limits, dest Dest) ([][]byte, error) {
	return readFrames(r, lim, nil, dest)
}

// recvScratch holds a connection's reusable read buffers: the frame lengths and a header
// frame of up to maxScratchHeader bytes. Conn.Recv decodes the header (which copies every
// string and byte slice out of it) before the next read, so the header buffer can be reused.
//
// A larger header (a graph's update_graph chunks are megabytes each) is read into a buffer from
// hdrPool when one of its size class is there (readPooled), and big keeps it until release
// gives it back: a fresh buffer per such message, zeroed and then copied as it doubled, was
// 12 % of the scheduler's CPU on the million-task graph (docs/performance.md).
type recvScratch struct {
	lens  []byte
	sizes []int64
	hdr   []byte
	big   []byte // the last header read into a pooled buffer, until release
	// the frame count's bytes, and the frame list of a message of a header alone (the
	// caller keeps only frames[1:], empty): both were an allocation per message
	count [4]byte
	one   [1][]byte
}

const maxScratchHeader = 64 << 10

// release gives the last large header's buffer back to the pool, or to the collector when
// the header was not valid (!ok: a peer sending junk does not fill the pool); the header is
// not used after.
func (s *recvScratch) release(ok bool) {
	if s.big != nil && ok {
		putHdr(s.big)
	}
	s.big = nil
}

// hdrPool holds the buffers of large headers once decoded, by size class: class i holds
// buffers of growFrom<<i bytes, up to the largest header DefaultLimits allows. Only a header's
// final buffer is kept, never the smaller ones it grew through, so what the pool holds is at
// most one buffer per large header recently read (and the collector empties it when unused).
var hdrPool [hdrClasses]sync.Pool

const hdrClasses = 11 // 64 KiB … 64 MiB

// hdrClass is the class of buffers of n bytes, or -1 if n is not a class's size.
func hdrClass(n int) int {
	if i := classFor(int64(n)); i >= 0 && n == growFrom<<i {
		return i
	}
	return -1
}

// classFor is the smallest class whose buffers hold n bytes, or -1 if none does.
func classFor(n int64) int {
	for i := range hdrClasses {
		if n <= growFrom<<i {
			return i
		}
	}
	return -1
}

// putHdr gives a header's buffer back (one not of a class's size is left to the collector).
func putHdr(b []byte) {
	if i := hdrClass(cap(b)); i >= 0 {
		b = b[:cap(b)]
		hdrPool[i].Put(&b)
	}
}

// readPooled reads a large header of sz bytes. A pooled buffer of its class, memory this
// process already has, takes it whole; otherwise it is read as readGrowing reads a frame (a
// declared length still costs nothing before its bytes arrive), growing up to its class's
// size so that the buffer can be pooled. The buffer is for putHdr once the header is no
// longer used.
func readPooled(r io.Reader, sz int64) ([]byte, error) {
	i := classFor(sz)
	if i < 0 { // larger than DefaultLimits allows: not pooled
		return readGrowing(r, sz)
	}
	p, ok := hdrPool[i].Get().(*[]byte)
	if !ok {
		return readGrowingTo(r, sz, growFrom<<i)
	}
	b := (*p)[:sz]
	if _, err := io.ReadFull(r, b); err != nil {
		putHdr(b)
		return nil, unexpected(err)
	}
	return b, nil
}

func readFrames(r io.Reader, lim Limits, s *recvScratch, dest Dest) ([][]byte, error) {
	var count []byte
	if s != nil {
		count = s.count[:]
	} else {
		count = make([]byte, 4)
	}
	if _, err := io.ReadFull(r, count); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(count)
	if n == 0 || int64(n) > int64(lim.MaxFrames) {
		return nil, fmt.Errorf("%w: %d frames declared (limit %d)", ErrProtocol, n, lim.MaxFrames)
	}
	var lens []byte
	var sizes []int64
	if s != nil {
		if cap(s.lens) < 8*int(n) {
			s.lens, s.sizes = make([]byte, 8*int(n)), make([]int64, n)
		}
		lens, sizes = s.lens[:8*int(n)], s.sizes[:n]
	} else {
		lens, sizes = make([]byte, 8*int(n)), make([]int64, n)
	}
	if _, err := io.ReadFull(r, lens); err != nil {
		return nil, unexpected(err)
	}
	var total int64
	for i := range sizes {
		sz := binary.BigEndian.Uint64(lens[8*i:])
		limit := lim.MaxFrame
		if i == 0 {
			limit = lim.MaxHeader
		}
		if sz > uint64(limit) {
			return nil, fmt.Errorf("%w: frame %d declares %d bytes (limit %d)", ErrFrameTooLarge, i, sz, limit)
		}
		total += int64(sz)
		if total > lim.MaxMessage {
			return nil, fmt.Errorf("%w: message declares more than %d bytes", ErrFrameTooLarge, lim.MaxMessage)
		}
		sizes[i] = int64(sz)
	}
	var frames [][]byte
	if n == 1 && s != nil {
		frames = s.one[:]
		frames[0] = nil
	} else {
		frames = make([][]byte, n)
	}
	for i, sz := range sizes {
		if i == 0 && s != nil && sz <= maxScratchHeader {
			if int64(cap(s.hdr)) < sz {
				s.hdr = make([]byte, max(sz, 512))
			}
			frames[0] = s.hdr[:sz]
		} else if i == 0 && s != nil {
			f, err := readPooled(r, sz)
			if err != nil {
				return nil, err
			}
			frames[0], s.big = f, f
			continue
		} else if i > 0 && sz > 0 {
			if dest.Sink != nil {
				if sink := dest.Sink(frames[0], i, sz); sink != nil {
					if err := readInto(r, sz, sink); err != nil {
						return nil, err
					}
					frames[i] = sink.Frame()
					continue
				}
			}
			if dest.Alloc != nil {
				frames[i] = dest.Alloc(int(sz)) // nil: not trusted with that much
			}
		}
		if frames[i] == nil {
			f, err := readGrowing(r, sz)
			if err != nil {
				return nil, err
			}
			frames[i] = f
			continue
		}
		if _, err := io.ReadFull(r, frames[i]); err != nil {
			return nil, unexpected(err)
		}
	}
	return frames, nil
}

// growFrom is the most a frame's buffer holds before its bytes arrive: a declared length is a
// claim, so a larger frame's buffer doubles as its bytes come in. A peer that declares a
// gigabyte and sends a byte costs this much, not a gigabyte; one that sends it all costs at
// most one extra copy of it.
const growFrom = 64 << 10

// readGrowing reads a frame of sz bytes into a buffer that grows with what has arrived.
func readGrowing(r io.Reader, sz int64) ([]byte, error) { return readGrowingTo(r, sz, sz) }

// readGrowingTo is readGrowing into a buffer that doubles up to limit bytes (limit >= sz):
// the frame is the first sz bytes of the last one.
func readGrowingTo(r io.Reader, sz, limit int64) ([]byte, error) {
	b := make([]byte, min(limit, growFrom))
	var n int64
	for {
		m, err := io.ReadFull(r, b[n:min(sz, int64(len(b)))])
		n += int64(m)
		if err != nil {
			return nil, unexpected(err)
		}
		if n == sz {
			return b[:sz], nil
		}
		nb := make([]byte, min(limit, 2*int64(len(b))))
		copy(nb, b[:n])
		b = nb
	}
}

// readInto reads a frame of sz bytes into sink.
func readInto(r io.Reader, sz int64, sink Sink) error {
	for sz > 0 {
		b, err := sink.Buf()
		if err != nil {
			return err
		}
		if int64(len(b)) > sz {
			b = b[:sz]
		}
		n, err := io.ReadFull(r, b)
		if n > 0 {
			if ferr := sink.Filled(n); ferr != nil {
				return ferr
			}
		}
		if err != nil {
			return unexpected(err)
		}
		sz -= int64(n)
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// frameHeader returns the count-and-lengths prefix for frames.
func frameHeader(frames [][]byte) []byte {
	b := make([]byte, 4+8*len(frames))
	binary.BigEndian.PutUint32(b, uint32(len(frames)))
	for i, f := range frames {
		binary.BigEndian.PutUint64(b[4+8*i:], uint64(len(f)))
	}
	return b
}

// WriteFrames writes one message. Small messages are copied into w; payload frames of 64 KiB
// or more bypass the buffer when w is a *bufio.Writer over a net.Conn (see Conn).
func WriteFrames(w io.Writer, frames [][]byte) error {
	if _, err := w.Write(frameHeader(frames)); err != nil {
		return err
	}
	for _, f := range frames {
		if _, err := w.Write(f); err != nil {
			return err
		}
	}
	return nil
}
