package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/shoal-dev/shoal/internal/wire"
)

// execConn is the worker's end of an executor's socketpair. It speaks the same framing as
// wire.Conn (docs/protocol.md §3) but is built for one request at a time between two
// processes on the same machine:
//
//   - the socket is in blocking mode and the goroutine running a task does its own I/O: a
//     run message is one write(2) from that goroutine (no writer goroutine to wake) and the
//     answer is one blocking read(2) (no netpoller round: the kernel wakes this thread
//     directly, and the Go scheduler keeps its P while it waits);
//   - the common answer, `done`, is decoded without reflection (decodeExecHeader).
//
// Profiles of a worker running tiny Python tasks showed the wire.Conn path spending most of
// its time in writer wake-ups (futex), netpoll and reflective header decoding.
//
// The socket is read with recvmsg(2) (fdReader), so that descriptors the executor passes with
// SCM_RIGHTS (a result's segment, segment.go) are kept rather than dropped, and handed to the
// message that declares them.
type execConn struct {
	f   *os.File
	fd  int
	fr  *fdReader
	br  *bufio.Reader
	lim wire.Limits

	// answers of a dones message not yet returned by recvExt, in order (reader only), in
	// answers, the array kept from one dones message to the next
	queued, answers []queuedAnswer

	wmu  sync.Mutex // serialises writers (a shutdown from closeAll against nothing else)
	wbuf []byte
	shut atomic.Bool
}

// execSmallFrame is the size up to which payload frames are copied into the message buffer;
// bigger ones are written from their own memory.
const execSmallFrame = 64 << 10

func newExecConn(f *os.File, lim wire.Limits) *execConn {
	fr := newFdReader(f)
	return &execConn{f: f, fd: int(f.Fd()), fr: fr, br: bufio.NewReaderSize(fr, 64<<10), lim: lim}
}

// Read and Write let the handshake functions of package wire run over the connection.
func (c *execConn) Read(b []byte) (int, error)  { return c.br.Read(b) }
func (c *execConn) Write(b []byte) (int, error) { return c.f.Write(b) }

// outMsg is one message for sendMany.
type outMsg struct {
	m       *wire.Msg
	payload [][]byte
	hdr     []byte // the encoded header, when already made (m is then ignored)
	fds     []int  // descriptors passed with the message (SCM_RIGHTS)
}

// send writes one message at once.
func (c *execConn) send(m *wire.Msg, payload ...[]byte) error {
	return c.sendMany(outMsg{m: m, payload: payload})
}

// sendMany writes messages back to back, small ones together in one write(2).
func (c *execConn) sendMany(msgs ...outMsg) error {
	hdrs := make([][]byte, len(msgs))
	for i, om := range msgs {
		if om.hdr != nil {
			hdrs[i] = om.hdr
			continue
		}
		hdr, err := wire.EncodeHeader(om.m)
		if err != nil {
			return err
		}
		hdrs[i] = hdr
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.shut.Load() {
		return wire.ErrClosed
	}
	b := c.wbuf[:0]
	var fds []int // to pass with the next write
	write := func(p []byte) error {
		if len(fds) > 0 {
			n, err := c.sendFds(p, fds)
			if err != nil {
				return err
			}
			fds, p = nil, p[n:]
		}
		if len(p) == 0 {
			return nil
		}
		_, err := c.f.Write(p)
		return err
	}
	for i, om := range msgs {
		hdr := hdrs[i]
		if len(om.fds) > 0 {
			fds = om.fds // they go with the first byte written from here on
		}
		n := 1 + len(om.payload)
		b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		b = appendU64(b, uint64(len(hdr)))
		for _, p := range om.payload {
			b = appendU64(b, uint64(len(p)))
		}
		b = append(b, hdr...)
		for _, p := range om.payload {
			if len(p) < execSmallFrame {
				b = append(b, p...)
				continue
			}
			if len(b) > 0 {
				if err := write(b); err != nil {
					return c.writeErr(err)
				}
				b = b[:0]
			}
			if err := write(p); err != nil {
				return c.writeErr(err)
			}
		}
	}
	if len(b) > 0 || len(fds) > 0 {
		if len(b) == 0 {
			return errors.New("wire: descriptors to pass without a byte to carry them")
		}
		if err := write(b); err != nil {
			return c.writeErr(err)
		}
	}
	if cap(b) <= 1<<20 {
		c.wbuf = b[:0]
	} else {
		c.wbuf = nil
	}
	return nil
}

// sendFds writes (the start of) p with fds attached and returns how much of p it wrote.
func (c *execConn) sendFds(p []byte, fds []int) (int, error) {
	rights := syscall.UnixRights(fds...)
	for {
		n, err := syscall.SendmsgN(c.fd, p, rights, nil, 0)
		if err == syscall.EINTR {
			continue // nothing was sent, descriptors included
		}
		return n, err
	}
}

func (c *execConn) writeErr(err error) error {
	c.wbuf = nil
	return fmt.Errorf("wire: write to executor: %w", err)
}

func appendU64(b []byte, v uint64) []byte {
	return append(b, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// recv reads the next message; only one goroutine may call it at a time.
func (c *execConn) recv() (*wire.Msg, [][]byte, error) {
	m, _, frames, err := c.recvExt()
	return m, frames, err
}

// recvExt is recv that also returns the header's fields that wire.Msg does not have, and the
// descriptors passed with the message (x.fds), which the caller then owns. A message that
// declares descriptors that did not arrive with its bytes, or descriptors that arrived with no
// message declaring them, is a protocol error.
func (c *execConn) recvExt() (*wire.Msg, execExt, [][]byte, error) {
	if len(c.queued) > 0 {
		a := c.queued[0]
		c.queued[0] = queuedAnswer{}
		c.queued = c.queued[1:]
		return a.m, a.x, a.frames, nil
	}
	start := c.fr.offset() - int64(c.br.Buffered())
	frames, err := wire.ReadFrames(c.br, c.lim)
	if err != nil {
		if c.shut.Load() && !errors.Is(err, wire.ErrProtocol) && !errors.Is(err, wire.ErrFrameTooLarge) {
			return nil, execExt{}, nil, wire.ErrClosed
		}
		if errors.Is(err, io.EOF) {
			return nil, execExt{}, nil, fmt.Errorf("executor closed the connection: %w", err)
		}
		return nil, execExt{}, nil, err
	}
	if isDones(frames[0]) {
		if _, err := c.fr.take(start, 0); err != nil {
			return nil, execExt{}, nil, err
		}
		if c.answers, err = decodeDones(frames[0], frames[1:], c.answers[:0]); err != nil {
			return nil, execExt{}, nil, err
		}
		c.queued = c.answers
		return c.recvExt()
	}
	var x execExt
	m, err := decodeExecHeaderExt(frames[0], &x)
	if err == nil {
		want := x.wantFds()
		if m.Op == wire.OpSecede {
			want = 1 // the seceding task's own socket
		}
		x.fds, err = c.fr.take(start, want)
	}
	if err != nil {
		return nil, execExt{}, nil, err
	}
	return m, x, frames[1:], nil
}

// close shuts the socket down, which wakes a goroutine blocked reading it, and releases it.
func (c *execConn) close() {
	if c.shut.Swap(true) {
		return
	}
	syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
	c.f.Close()
	c.fr.closeFds()
}

// fdReader reads a socket with recvmsg(2) and queues the descriptors passed with SCM_RIGHTS,
// each with the span of stream bytes that the recvmsg delivering it returned. The kernel
// delivers descriptors with the first bytes the sender attached them to and ends that
// recvmsg there (it never joins later data to it), so a message starting at stream offset S
// owns descriptors whose span contains S: execConn.recvExt checks exactly that.
type fdReader struct {
	rc  syscall.RawConn
	oob []byte
	n   int64 // stream bytes read so far (only the reading goroutine touches it)

	mu     sync.Mutex
	queue  []recvFd
	closed bool // closeFds ran: descriptors arriving later are closed at once
}

// recvFd is a received descriptor and the stream bytes [from, to) it came with.
type recvFd struct {
	fd       int
	from, to int64
}

// fdReaderMaxFds is how many descriptors one recvmsg takes; more is a protocol error.
const fdReaderMaxFds = 16

func newFdReader(f *os.File) *fdReader {
	r := &fdReader{oob: make([]byte, syscall.CmsgSpace(4*fdReaderMaxFds))}
	var err error
	if r.rc, err = f.SyscallConn(); err != nil {
		panic(err) // an *os.File always has one
	}
	return r
}

func (r *fdReader) Read(p []byte) (int, error) {
	var n, oobn, flags int
	var err error
	// RawConn.Read holds a reference to the descriptor: a concurrent close (which shuts the
	// socket down first, waking this call) takes effect once it returns.
	cerr := r.rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, err = syscall.Recvmsg(int(fd), p, r.oob, syscall.MSG_CMSG_CLOEXEC)
			if err == syscall.EAGAIN {
				return false // a non-blocking socket (a seceded task's): wait in the poller
			}
			if err != syscall.EINTR {
				return true
			}
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	if oobn > 0 {
		if kerr := r.keep(r.oob[:oobn], r.n, r.n+int64(max(n, 0))); kerr != nil && err == nil {
			err = kerr
		}
	}
	if err == nil && flags&syscall.MSG_CTRUNC != 0 {
		err = fmt.Errorf("%w: more than %d descriptors passed with one message", wire.ErrProtocol, fdReaderMaxFds)
	}
	if err != nil {
		return 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	r.n += int64(n)
	return n, nil
}

// keep queues the descriptors of a control message.
func (r *fdReader) keep(oob []byte, from, to int64) error {
	cmsgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: control message: %v", wire.ErrProtocol, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cm := range cmsgs {
		fds, err := syscall.ParseUnixRights(&cm)
		if err != nil {
			continue // not SCM_RIGHTS
		}
		for _, fd := range fds {
			if r.closed {
				syscall.Close(fd)
				continue
			}
			r.queue = append(r.queue, recvFd{fd: fd, from: from, to: to})
		}
	}
	return nil
}

// offset is how many stream bytes have been read from the socket.
func (r *fdReader) offset() int64 { return r.n }

// take returns the n descriptors of the message starting at stream offset start. Queued
// descriptors that arrived before it belong to no message (none declared them): an error.
func (r *fdReader) take(start int64, n int) ([]int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) > 0 && r.queue[0].to <= start {
		return nil, fmt.Errorf("%w: the executor passed a descriptor with no message declaring it", wire.ErrProtocol)
	}
	if n == 0 {
		return nil, nil
	}
	if len(r.queue) < n {
		return nil, fmt.Errorf("%w: a message declares %d descriptors, %d arrived with it", wire.ErrProtocol, n, len(r.queue))
	}
	fds := make([]int, n)
	for i, q := range r.queue[:n] {
		if q.from > start || start >= q.to {
			return nil, fmt.Errorf("%w: a descriptor did not arrive with the message declaring it", wire.ErrProtocol)
		}
		fds[i] = q.fd
	}
	r.queue = append(r.queue[:0], r.queue[n:]...)
	return fds, nil
}

// closeFds closes the descriptors still queued, and those that arrive later.
func (r *fdReader) closeFds() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, q := range r.queue {
		syscall.Close(q.fd)
	}
	r.queue, r.closed = nil, true
}

// readUints reads an array of non-negative integers (window ids).
func readUints(r *wire.Reader) ([]uint64, bool) {
	n, ok := r.ArrayLen()
	if !ok {
		return nil, false
	}
	out := make([]uint64, 0, min(n, 16)) // grows with the values really there
	for range n {
		v, ok := r.Uint()
		if !ok {
			return nil, false
		}
		out = append(out, v)
	}
	return out, true
}

// readSegPlaces reads an array of [frame, offset, length] triples.
func readSegPlaces(r *wire.Reader) ([]segPlace, bool) {
	n, ok := r.ArrayLen()
	if !ok {
		return nil, false
	}
	out := make([]segPlace, 0, min(n, 16)) // grows with the places really there
	for range n {
		if k, ok := r.ArrayLen(); !ok || k != 3 {
			return nil, false
		}
		var v [3]int64
		for j := range v {
			if v[j], ok = r.Int(); !ok {
				return nil, false
			}
		}
		out = append(out, segPlace{Frame: int(v[0]), Off: v[1], Len: v[2]})
	}
	return out, true
}

// readResPlaces reads a done answer's res: [[frame, address, length, row, stride], ...].
func readResPlaces(r *wire.Reader) ([]resPlace, bool) {
	n, ok := r.ArrayLen()
	if !ok {
		return nil, false
	}
	out := make([]resPlace, 0, min(n, 16)) // grows with the placements really present
	for range n {
		k, ok := r.ArrayLen()
		if !ok || k != 5 {
			return nil, false
		}
		var v [5]int64
		for j := range v {
			if v[j], ok = r.Int(); !ok || v[j] < 0 {
				return nil, false
			}
		}
		out = append(out, resPlace{Frame: int(v[0]), Addr: uint64(v[1]), Len: v[2], Row: v[3], Stride: v[4]})
	}
	return out, true
}

// queuedAnswer is one answer of a dones message.
type queuedAnswer struct {
	m      *wire.Msg
	x      execExt
	frames [][]byte
}

// queuedAnswers is how many answers of a dones message are still to be read.
func (c *execConn) queuedAnswers() int { return len(c.queued) }

// donesMax bounds the answers of one dones message (the executor sends at most 64).
const donesMax = 64

// isDones reports whether the header b starts {"op": "dones" (the executor writes op first).
func isDones(b []byte) bool {
	r := wire.NewReader(b)
	if _, ok := r.MapLen(); !ok {
		return false
	}
	if k, ok := r.Key(); !ok || string(k) != "op" {
		return false
	}
	op, ok := r.Key()
	return ok && string(op) == wire.OpDones
}

// decodeDones splits a dones message (docs/protocol.md §3.5: {"op": "dones", "replies":
// [answer headers], "nframes": [their frame counts]}, their frames in order) into its
// answers. Each must be a done or an error that passes no descriptor; the counts must cover
// the frames exactly. The answers are appended to out (empty, its array reused).
func decodeDones(b []byte, frames [][]byte, out []queuedAnswer) ([]queuedAnswer, error) {
	bad := func(why string) error { return fmt.Errorf("%w: executor's dones: %s", wire.ErrProtocol, why) }
	r := wire.NewReader(b)
	n, ok := r.MapLen()
	if !ok {
		return nil, bad("not a map")
	}
	var counts []int
	var seen [2]bool
	for range n {
		k, ok := r.Key()
		if !ok {
			return nil, bad("a key that is not a string")
		}
		switch string(k) {
		case "op":
			if !r.Skip() {
				return nil, bad("op")
			}
		case "replies":
			na, ok := r.ArrayLen()
			if !ok || na > donesMax || seen[0] {
				return nil, bad(fmt.Sprintf("replies is not one array of at most %d", donesMax))
			}
			seen[0] = true
			out = slices.Grow(out, na) // at most donesMax
			for range na {
				a, err := decodeDonesReply(r, b)
				if err != nil {
					return nil, err
				}
				out = append(out, a)
			}
		case "nframes":
			na, ok := r.ArrayLen()
			if !ok || na > donesMax || seen[1] {
				return nil, bad(fmt.Sprintf("nframes is not one array of at most %d", donesMax))
			}
			seen[1] = true
			var fixed [donesMax]int // (na is at most donesMax: on the stack)
			counts = fixed[:0:na]
			for range na {
				v, ok := r.Int()
				if !ok || v < 0 || v > int64(len(frames)) {
					return nil, bad("a frame count out of range")
				}
				counts = append(counts, int(v))
			}
		default:
			if !r.Skip() {
				return nil, bad("a field that does not decode")
			}
		}
	}
	if !r.Done() {
		return nil, bad("bytes after the map")
	}
	if len(out) == 0 || len(out) != len(counts) {
		return nil, bad(fmt.Sprintf("%d replies with %d frame counts", len(out), len(counts)))
	}
	at := 0
	for i := range out {
		if counts[i] > len(frames)-at {
			return nil, bad("frame counts over the message's frames")
		}
		out[i].frames = frames[at : at+counts[i] : at+counts[i]]
		at += counts[i]
	}
	if at != len(frames) {
		return nil, bad(fmt.Sprintf("frame counts cover %d of %d frames", at, len(frames)))
	}
	return out, nil
}

// decodeDonesReply reads the answer at r (within b, a dones header): a plain done by hand, in
// place, anything else (an error answer) from its bytes with the generic decoder.
func decodeDonesReply(r *wire.Reader, b []byte) (queuedAnswer, error) {
	a := queuedAnswer{m: wire.AcquireMsg()}
	from := r.Pos()
	if !decodeDoneFrom(r, a.m, &a.x) {
		wire.ReleaseMsg(a.m)
		r.Seek(from)
		if !r.Skip() {
			return queuedAnswer{}, fmt.Errorf("%w: executor's dones: a reply that does not decode", wire.ErrProtocol)
		}
		var err error
		if a.m, err = decodeExecHeaderGeneric(b[from:r.Pos()], &a.x); err != nil {
			return queuedAnswer{}, err
		}
	}
	if a.m.Op != wire.OpDone && a.m.Op != wire.OpError || a.x.wantFds() != 0 {
		return queuedAnswer{}, fmt.Errorf("%w: executor's dones: a %q answer, or one passing a descriptor", wire.ErrProtocol, a.m.Op)
	}
	a.x.batched = true
	return a, nil
}

// decodeExecHeader decodes an executor's message header: `done` answers by hand, anything
// else (error, ready, unexpected shapes) with the generic decoder.
func decodeExecHeader(b []byte) (*wire.Msg, error) {
	var x execExt
	return decodeExecHeaderExt(b, &x)
}

// slowDones counts the done headers decodeDoneExt did not take (a test checks that a plain
// run's answer takes it).
var slowDones atomic.Int64

// decodeExecHeaderExt is decodeExecHeader that also fills x with the extension fields.
func decodeExecHeaderExt(b []byte, x *execExt) (*wire.Msg, error) {
	if m, ok := decodeDoneExt(b, x); ok {
		return m, nil
	}
	return decodeExecHeaderGeneric(b, x)
}

// decodeExecHeaderGeneric is decodeExecHeaderExt's generic half, for a header the hand-written
// decoder refused.
func decodeExecHeaderGeneric(b []byte, x *execExt) (*wire.Msg, error) {
	*x = execExt{}
	m, err := wire.DecodeHeader(b)
	if err != nil {
		return nil, err
	}
	if m.Op == wire.OpDone {
		slowDones.Add(1)
	}
	if m.Op == wire.OpDones || m.Op == wire.OpRuns { // a dones is read before (op first), a runs never comes back
		return nil, fmt.Errorf("%w: executor header: a %q message that is not well formed", wire.ErrProtocol, m.Op)
	}
	if bytes.Contains(b, []byte("shm")) || bytes.Contains(b, []byte("seg")) || bytes.Contains(b, []byte("res")) ||
		bytes.Contains(b, []byte("keep")) || bytes.Contains(b, []byte("batch")) {
		if *x, err = decodeExt(b); err != nil {
			return nil, fmt.Errorf("%w: executor header: %v", wire.ErrProtocol, err)
		}
	}
	return m, nil
}

// decodeDone parses {"op": "done", "id": uint, "items": [{"key", "encoding", "nframes",
// "nbytes"}], "start": int, "stop": int}; ok is false for anything else, including unknown
// fields.
func decodeDone(b []byte) (m *wire.Msg, ok bool) {
	var x execExt
	return decodeDoneExt(b, &x)
}

// decodeDoneExt is decodeDone that also accepts the window fields shm_free and shm_drop and
// the segment field seg.
func decodeDoneExt(b []byte, x *execExt) (*wire.Msg, bool) {
	m := wire.AcquireMsg() // the worker releases answers once read (runPyOnce)
	r := wire.NewReader(b)
	if !decodeDoneFrom(r, m, x) || !r.Done() {
		wire.ReleaseMsg(m)
		return nil, false
	}
	return m, true
}

// decodeDoneFrom reads a done header at r into m and x; false (m and x partly filled, r
// anywhere) for anything else.
func decodeDoneFrom(r *wire.Reader, m *wire.Msg, x *execExt) bool {
	n, ok := r.MapLen()
	if !ok {
		return false
	}
	for range n {
		k, ok := r.Key()
		if !ok {
			return false
		}
		switch string(k) {
		case "op":
			op, ok := r.Key()
			if !ok || string(op) != wire.OpDone {
				return false
			}
			m.Op = wire.OpDone
		case "id":
			v, ok := r.Int()
			if !ok || v < 0 {
				return false
			}
			m.ID = uint64(v)
		case "start": // when the run started and stopped, by the executor's clock
			if m.Start, ok = r.Int(); !ok {
				return false
			}
		case "stop":
			if m.Stop, ok = r.Int(); !ok {
				return false
			}
		case "items":
			na, ok := r.ArrayLen()
			if !ok {
				return false
			}
			m.Items = make([]wire.Item, 0, min(na, 256)) // grows with the items really present
			for range na {
				var it wire.Item
				if !r.Item(&it) {
					return false
				}
				m.Items = append(m.Items, it)
			}
		case "shm_free", "shm_drop":
			ids, ok := readUints(r)
			if !ok {
				return false
			}
			if string(k) == "shm_free" {
				x.Free = ids
			} else {
				x.Drop = ids
			}
		case "seg":
			if x.Seg, ok = readSegPlaces(r); !ok {
				return false
			}
		case "res":
			if x.Res, ok = readResPlaces(r); !ok {
				return false
			}
		default:
			return false
		}
	}
	return m.Op == wire.OpDone
}
