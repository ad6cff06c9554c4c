package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
func ReadFrames(r io.Reader, lim Limits) ([][]byte, error) { return readFrames(r, lim, nil, nil) }

// ReadFramesAlloc is ReadFrames with the payload frames (all but the header frame) allocated
// by alloc, which must return a slice of exactly the length asked for (a recycled buffer, say),
// or nil for a length it does not trust (the frame then grows as its bytes arrive).
func ReadFramesAlloc(r io.Reader, lim Limits, alloc func(int) []byte) ([][]byte, error) {
	return readFrames(r, lim, nil, alloc)
}

// recvScratch holds a connection's reusable read buffers: the frame lengths and a header
// frame of up to maxScratchHeader bytes. Conn.Recv decodes the header (which copies every
// string and byte slice out of it) before the next read, so the header buffer can be reused.
type recvScratch struct {
	lens  []byte
	sizes []int64
	hdr   []byte
}

const maxScratchHeader = 64 << 10

func readFrames(r io.Reader, lim Limits, s *recvScratch, alloc func(int) []byte) ([][]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
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
	frames := make([][]byte, n)
	for i, sz := range sizes {
		if i == 0 && s != nil && sz <= maxScratchHeader {
			if int64(cap(s.hdr)) < sz {
				s.hdr = make([]byte, max(sz, 512))
			}
			frames[0] = s.hdr[:sz]
		} else if i > 0 && alloc != nil && sz > 0 {
			frames[i] = alloc(int(sz)) // nil: not trusted with that much
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
func readGrowing(r io.Reader, sz int64) ([]byte, error) {
	b := make([]byte, min(sz, growFrom))
	var n int64
	for {
		m, err := io.ReadFull(r, b[n:])
		n += int64(m)
		if err != nil {
			return nil, unexpected(err)
		}
		if n == sz {
			return b, nil
		}
		nb := make([]byte, min(sz, 2*int64(len(b))))
		copy(nb, b)
		b = nb
	}
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
