package worker

import "github.com/shoal-dev/shoal/internal/wire"

// Prefill: a large frame of a value fetched from a peer for a Python task is copied into a
// shared-memory window of the executor expected to run the task (executor_shm.go) while the
// frame is still arriving, chunk by chunk, by a goroutine that writes each chunk while the next
// one is read from the socket. The frame is read into a recycled Go buffer as before, and the
// store keeps that buffer as the value (peers, clients, spilling and Go tasks read it as any
// other); the window holds a copy for the run, which then sends the executor the window's id
// instead of writing it. Without prefill that copy is made when the task runs, after the whole
// value arrived: on the test hosts' link it added 25–40 ms to a ~90 ms transfer of a 200 MB
// array (docs/performance.md).
//
// The executor is a guess: an idle one, the one acquire hands out next, or any. A run prefers
// an idle executor holding a prefilled copy of its dependencies; a run on another executor
// copies as before, and the prefilled window counts as free again after prefillTTL.
//
// Why not land the bytes in a fresh memfd and keep that as the value (a segment, segment.go),
// which would need no window: fresh shared memory costs twice the copy to write, its pages
// being allocated as they are written (~65 ms for 200 MB here against ~30 ms into a reused
// window), so that fetch took longer (125–140 ms) than fetch and copy did.
const (
	prefillMin   = 4 << 20 // frames from this size are prefilled; copying smaller ones later is cheap
	prefillChunk = 1 << 20 // bytes read from the socket at a time
)

// prefills collects the prefilled frames of one get_data answer. Its Sink is the wire.Dest
// Sink of the answer; every prefills ends with exactly one call of finish.
type prefills struct {
	ws    *execWindows
	want  map[string]bool // the keys whose frames are prefilled
	alloc func(int) []byte

	decoded bool
	items   []wire.Item // the answer's items (decoded from its header, at its first payload frame)
	sinks   []*prefillSink
}

func newPrefills(ws *execWindows, want map[string]bool, alloc func(int) []byte) *prefills {
	return &prefills{ws: ws, want: want, alloc: alloc}
}

// Sink is the wire.Dest.Sink of a get_data answer: payload frame i (1-based: frame 0 is the
// header) of n bytes is prefilled when it is large, belongs to an item that is wanted, and a
// window and a buffer trusted with n bytes are to be had.
func (p *prefills) Sink(hdr []byte, i int, n int64) wire.Sink {
	if n < prefillMin || n > int64(shmMaxBytes) {
		return nil
	}
	if !p.decoded {
		p.decoded = true
		if m, err := wire.DecodeHeader(hdr); err == nil && m.Op == wire.OpData {
			p.items = m.Items
		}
	}
	frame := i - 1
	var key string
	for _, it := range p.items {
		if frame < it.NFrames {
			key = it.Key
			break
		}
		frame -= it.NFrames
	}
	if key == "" || !p.want[key] {
		return nil
	}
	buf := p.alloc(int(n)) // first: the trust in the declared length bounds the window too
	if buf == nil {
		return nil
	}
	win := p.ws.reserve(int(n))
	if win == nil {
		return &plainSink{frame: buf} // the buffer is the frame's now: read into it
	}
	s := &prefillSink{win: win, frame: buf, work: make(chan [2]int, 4), done: make(chan struct{})}
	go s.write() // ends in finish, which every answer read with these sinks reaches
	p.sinks = append(p.sinks, s)
	return s
}

// finish waits for the copies. The windows of the copies that succeeded, of frames of the
// items the answer was checked to hold (kept: nil when it was not read whole or failed its
// checks), hold their frames for a run; the others are given back.
func (p *prefills) finish(kept []received) {
	if p == nil {
		return
	}
	ok := make(map[*byte]bool)
	for _, r := range kept {
		for _, f := range r.frames {
			if len(f) >= prefillMin {
				ok[&f[0]] = true
			}
		}
	}
	for _, s := range p.sinks {
		close(s.work)
		<-s.done // the writer is done
		if s.err == nil && s.off == len(s.frame) && ok[&s.frame[0]] {
			p.ws.filled(s.win, s.frame)
		} else {
			p.ws.cancel(s.win)
		}
	}
	p.sinks = nil
}

// plainSink reads a frame into a buffer already allocated for it (no window was to be had).
type plainSink struct {
	frame []byte
	off   int
}

func (s *plainSink) Buf() ([]byte, error) { return s.frame[s.off:], nil }
func (s *plainSink) Filled(n int) error   { s.off += n; return nil }
func (s *plainSink) Frame() []byte        { return s.frame }

// prefillSink reads one frame into its buffer and copies each chunk into its window.
type prefillSink struct {
	win   *shmWindow
	frame []byte
	off   int           // bytes read
	work  chan [2]int   // [from, to) of frame to copy; closed by finish
	done  chan struct{} // closed when the writer is done
	err   error         // the writer's, read after done
}

func (s *prefillSink) Buf() ([]byte, error) {
	return s.frame[s.off:min(s.off+prefillChunk, len(s.frame))], nil
}

func (s *prefillSink) Filled(n int) error {
	s.work <- [2]int{s.off, s.off + n}
	s.off += n
	return nil
}

func (s *prefillSink) Frame() []byte { return s.frame }

// write copies the chunks into the window; after a failure it only drains them.
func (s *prefillSink) write() {
	defer close(s.done)
	for span := range s.work {
		if s.err == nil {
			s.err = s.win.write(s.frame[span[0]:span[1]], int64(span[0]))
		}
	}
}
