package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// HandshakeTimeout bounds the whole handshake.
const HandshakeTimeout = 10 * time.Second

// bigFrame is the size from which a payload frame is written from its own buffer (writev)
// instead of being copied into the batch buffer.
const bigFrame = 64 << 10

// ErrClosed is returned by Send after Close or after the connection failed.
var ErrClosed = errors.New("wire: connection closed")

// Conn is one framed, batched, handshaken connection. Send is safe for concurrent use; Recv
// must be called from a single goroutine.
type Conn struct {
	nc       net.Conn
	tr       timedReader
	br       connReader
	scratch  recvScratch // Recv's reusable buffers (Recv has a single caller at a time)
	lim      Limits
	PeerRole Role // the role the connecting side declared (on accepted connections)

	mu struct {
		sync.Mutex
		bufs    net.Buffers  // pending output: small messages share one slice, big frames stand alone
		small   []byte       // the slice small messages are appended to (the tail of bufs)
		smalls  []*[]byte    // every small-message slice in bufs (this side's memory), as pooled
		fits    int          // the bytes of small messages the last write took
		grown   int          // times a message outgrew its slice (append copied it): for tests
		files   []queuedFile // file frames (SendFrames) in bufs, in order
		pending int
		err     error
		closed  bool
		writer  bool // a writer goroutine runs (writeLoop), or FlushNow writes
		aborted bool // Abort dropped the output
		ended   bool // done is closed: nothing more is written
	}
	done    chan struct{}
	writing atomic.Bool     // the writer goroutine (or FlushNow) is in a write
	wdl     lazyDeadline    // the write deadline, kept by the writer goroutine (one at a time)
	raw     syscall.RawConn // nc's descriptor for FlushNow's writes, when it is a plain socket
	rio     rawIO           // reads and writes on raw, when there is one
	// stall, when set, bounds how long one stallChunk of output may take to be written: a
	// peer that stops reading is dropped (a server's connections: Server sets it).
	stall atomic.Int64
	poll  atomic.Pointer[pollReg] // where the reader parks c (Park), once it has
	// release gives back the Server's hold on c (its slot among MaxConns), once; nil for a
	// connection no Server holds
	release func()
	kept    atomic.Bool // the handler returned before c's end (Keep): End releases
}

// stallChunk is the most written under one write deadline.
const stallChunk = 4 << 20

// stallWriter writes to nc giving each stallChunk bytes timeout to leave: a peer that stops
// reading is dropped, one that reads slowly (but reads) is not.
type stallWriter struct {
	nc      net.Conn
	timeout time.Duration
}

func (s stallWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		k := min(len(p), stallChunk)
		s.nc.SetWriteDeadline(time.Now().Add(s.timeout))
		m, err := s.nc.Write(p[:k])
		n += m
		if err != nil {
			if isTimeout(err) {
				err = fmt.Errorf("%w: the peer read nothing for %v", ErrStalled, s.timeout)
			}
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

func newConn(nc net.Conn, lim Limits, role Role) *Conn {
	c := &Conn{nc: nc, lim: lim, PeerRole: role, done: make(chan struct{})}
	c.wdl.write = true
	if sc, ok := nc.(*net.TCPConn); ok {
		if c.raw, _ = sc.SyscallConn(); c.raw != nil {
			c.rio.init(c.raw)
		}
	}
	c.tr = timedReader{nc: nc}
	c.br.init(&c.tr)
	return c
}

// timedReader gives each read of the connection a deadline: the idle timeout while Recv waits
// for a message to start, the message timeout once it has (a peer that stalls mid-message is
// dropped, whatever the message's size: the deadline moves with every read that brings bytes).
type timedReader struct {
	nc          net.Conn
	idle, inMsg time.Duration
	waiting     bool // Recv is waiting for the first byte of a message
	dl          lazyDeadline
}

func (t *timedReader) Read(p []byte) (int, error) {
	d := t.inMsg
	if t.waiting {
		d = t.idle
	}
	start := t.dl.arm(t.nc, d)
	for {
		n, err := t.nc.Read(p)
		if n == 0 && err != nil && isTimeout(err) && !t.dl.expired(t.nc, start, d) {
			continue // the kept deadline came before this read's whole span
		}
		return n, err
	}
}

// setTimeouts sets the idle and in-message read timeouts and the write-stall timeout (0: none).
// Call before the first Recv.
func (c *Conn) setTimeouts(idle, inMsg time.Duration) {
	c.tr.idle, c.tr.inMsg = idle, inMsg
	c.stall.Store(int64(inMsg))
}

// ErrIdle is returned by Recv when the peer sent nothing for the connection's idle timeout.
var ErrIdle = errors.New("wire: connection idle for too long")

// ErrStalled is returned when the peer stopped in the middle of a message it sent, or stopped
// reading one sent to it.
var ErrStalled = errors.New("wire: peer stalled in the middle of a message")

// awaitMessage waits for the first byte of the next message under the idle timeout.
func (c *Conn) awaitMessage() error {
	if c.tr.idle <= 0 && c.tr.inMsg <= 0 {
		return nil
	}
	for c.br.Buffered() == 0 {
		c.tr.waiting = true
		_, err := c.br.Peek(1)
		c.tr.waiting = false
		switch {
		case err == nil:
			return nil
		case isTimeout(err) && c.outputPending():
			continue // still sending its answer (a large value, a slow link): not idle
		case isTimeout(err):
			return fmt.Errorf("%w (%v)", ErrIdle, c.tr.idle)
		default:
			return err
		}
	}
	return nil
}

// outputPending tells whether messages are queued or being written.
func (c *Conn) outputPending() bool {
	if c.writing.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.mu.bufs) > 0
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readMessage reads one frame list under the connection's timeouts.
func (c *Conn) readMessage() ([][]byte, error) {
	c.scratch.release(true) // the last header RecvHeader returned is no longer valid
	if err := c.awaitMessage(); err != nil {
		return nil, err
	}
	frames, err := readFrames(&c.br, c.lim, &c.scratch, Dest{})
	if err != nil && isTimeout(err) && c.tr.inMsg > 0 {
		return nil, fmt.Errorf("%w: nothing for %v", ErrStalled, c.tr.inMsg)
	}
	return frames, err
}

// DialOptions configure Dial.
type DialOptions struct {
	Role   Role
	Token  string
	TLS    *tls.Config // nil: plain TCP
	Limits Limits      // zero: DefaultLimits
}

// Dial connects to addr and performs the handshake as the connecting side.
func Dial(ctx context.Context, addr string, o DialOptions) (*Conn, error) {
	nc, err := DialRaw(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	return newConn(nc, o.limits(), o.Role), nil
}

// DialRaw connects to addr (with TLS when o.TLS is set) and performs the handshake, returning
// the bare connection for a caller that frames messages itself (ReadFramesTo, WriteFrames)
// instead of using a Conn and its writer goroutine.
func DialRaw(ctx context.Context, addr string, o DialOptions) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if o.TLS != nil {
		cfg := o.TLS
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("wire: TLS handshake with %s: %w", addr, err)
		}
		nc = tc
	}
	if err := handshake(ctx, nc, o); err != nil {
		return nil, err
	}
	return nc, nil
}

// ClientHandshake performs the connecting side's handshake over an established connection.
func ClientHandshake(ctx context.Context, nc net.Conn, o DialOptions) (*Conn, error) {
	if err := handshake(ctx, nc, o); err != nil {
		return nil, err
	}
	return newConn(nc, o.limits(), o.Role), nil
}

// handshake says hello as o.Role and reads the answer; it closes nc on failure.
func handshake(ctx context.Context, nc net.Conn, o DialOptions) error {
	deadline := time.Now().Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc.SetDeadline(deadline)
	if err := WriteHello(nc, ClientHello{Version: Version, Role: o.Role, Token: o.Token}); err != nil {
		nc.Close()
		return err
	}
	if err := ReadAnswer(nc); err != nil {
		nc.Close()
		return err
	}
	nc.SetDeadline(time.Time{})
	return nil
}

func (o DialOptions) limits() Limits {
	if o.Limits.MaxFrames == 0 {
		return DefaultLimits()
	}
	return o.Limits
}

// Accept performs the accepting side's handshake on nc, checking the token (when not empty)
// and that the peer's role is one of roles. On refusal the answer is written, nc is closed and
// a *HandshakeError is returned. A listening port uses Server, which also bounds connections.
func Accept(nc net.Conn, token string, lim Limits, roles ...Role) (*Conn, error) {
	return acceptAs(nc, token, lim, roles, nil, nil)
}

// acceptAs is Accept that also asks admit (when set) whether a connection of the peer's role
// may be added; release gives the slot back when the handshake fails after admit took it.
func acceptAs(nc net.Conn, token string, lim Limits, roles []Role, admit func(Role) *HandshakeError,
	release func(Role)) (*Conn, error) {
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	refuse := func(herr *HandshakeError) (*Conn, error) {
		WriteAnswer(nc, herr.Status, herr.Message)
		nc.Close()
		return nil, herr
	}
	h, err := ReadHello(nc)
	var herr *HandshakeError
	if errors.As(err, &herr) {
		return refuse(herr)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	if herr := CheckHello(h, token, roles...); herr != nil {
		return refuse(herr)
	}
	if admit != nil {
		if herr := admit(h.Role); herr != nil {
			return refuse(herr)
		}
	}
	if err := WriteAnswer(nc, StatusOK, ""); err != nil {
		nc.Close()
		if admit != nil {
			release(h.Role)
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	if lim.MaxFrames == 0 {
		lim = DefaultLimits()
	}
	return newConn(nc, lim, h.Role), nil
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Recv reads the next message: its decoded header and its payload frames.
func (c *Conn) Recv() (*Msg, [][]byte, error) {
	frames, err := c.readMessage()
	if err != nil {
		return nil, nil, err
	}
	m, err := DecodeHeader(frames[0]) // copies what it keeps out of the header
	c.scratch.release(err == nil)
	if err != nil {
		return nil, nil, err
	}
	return m, frames[1:], nil
}

// RecvFinished is Recv for a reader that takes task_finished without a Msg: when the next
// message is a task_finished header of only TaskFinished's fields, with no payload, it fills
// f and returns a nil Msg (DecodeTaskFinished); otherwise it returns what Recv would.
func (c *Conn) RecvFinished(f *TaskFinished) (*Msg, [][]byte, error) {
	frames, err := c.readMessage()
	if err != nil {
		return nil, nil, err
	}
	if len(frames) == 1 && DecodeTaskFinished(frames[0], f) {
		c.scratch.release(true)
		return nil, nil, nil
	}
	m, err := DecodeHeader(frames[0])
	c.scratch.release(err == nil)
	if err != nil {
		return nil, nil, err
	}
	return m, frames[1:], nil
}

// RecvHeader is Recv that also returns the encoded header, for fields Msg does not have (a
// worker's extensions of its own ops). The header is valid only until the next Recv.
func (c *Conn) RecvHeader() (*Msg, []byte, [][]byte, error) {
	frames, err := c.readMessage()
	if err != nil {
		return nil, nil, nil, err
	}
	m, err := DecodeHeader(frames[0])
	if err != nil {
		return nil, nil, nil, err
	}
	return m, frames[0], frames[1:], nil
}

// ShrinkBuffer lets the connection's read buffer go back to its small size when what it holds
// fits: a reader calls it before it waits for something other than the network.
func (c *Conn) ShrinkBuffer() { c.br.shrink() }

// MessageBuffered reports whether a whole message is already buffered, so that the next Recv
// returns without waiting for the network. A reader uses it to hand on messages that arrived
// together as one batch.
func (c *Conn) MessageBuffered() bool {
	b := c.br.Buffered()
	if b < 4 {
		return false
	}
	p, _ := c.br.Peek(4)
	n := int(binary.BigEndian.Uint32(p))
	if n <= 0 || n > c.lim.MaxFrames || 4+8*n > b {
		return false
	}
	p, _ = c.br.Peek(4 + 8*n)
	need := uint64(4 + 8*n)
	for i := range n {
		need += binary.BigEndian.Uint64(p[4+8*i:])
		if need > uint64(b) {
			return false
		}
	}
	return true
}

// Send queues one message. It returns once the message is buffered; the writer goroutine
// sends it promptly, batching with whatever else is queued by then.
func (c *Conn) Send(m *Msg, payload ...[]byte) error {
	if _, err := c.enqueueMsg(m, payload); err != nil {
		return err
	}
	c.Flush()
	return nil
}

// SendRaw queues a message whose header is already encoded.
func (c *Conn) SendRaw(hdr []byte, payload ...[]byte) error {
	if err := c.enqueue(hdr, payload); err != nil {
		return err
	}
	c.Flush()
	return nil
}

// Queue buffers a message without waking the writer: a caller sending many messages in one
// pass (the scheduler's driver) queues them all and calls Flush once, so they leave in one
// write instead of one system call each.
func (c *Conn) Queue(m *Msg, payload ...[]byte) error {
	_, err := c.enqueueMsg(m, payload)
	return err
}

// QueueFirst is Queue that also reports whether m is the first message queued since the
// output was last taken by a write. A caller that queues to many connections in a pass and
// flushes them at its end (the scheduler's driver) need only note the connections it was
// first for: output already pending has a flush or a running writer due for it. At 10,000
// workers, a map of the connections written to in a pass was a lookup per message, each a
// likely cache miss (docs/performance.md, "10,000 workers: buffers for the connections that
// read").
func (c *Conn) QueueFirst(m *Msg) (bool, error) { return c.enqueueMsg(m, nil) }

// enqueueMsg encodes m's header straight into the pending output, after a frame prefix whose
// header length is filled in once the header is encoded: no intermediate header buffer.
func (c *Conn) enqueueMsg(m *Msg, payload [][]byte) (first bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usableLocked(); err != nil {
		return false, err
	}
	first = c.mu.pending == 0
	fresh := !c.roomLocked(minRoom) // (the message's size is known only once it is encoded)
	if fresh {
		c.newSmallLocked(0)
	}
	start := len(c.mu.small)
	b := binary.BigEndian.AppendUint32(c.mu.small, uint32(1+len(payload)))
	lenAt := len(b)
	b = appendU64(b, 0) // the header's length, patched below
	for _, p := range payload {
		b = appendU64(b, uint64(len(p)))
	}
	hdrAt := len(b)
	b, err = appendHeader(b, m)
	if err != nil {
		c.mu.small = c.mu.small[:start] // nothing of m was queued
		if fresh {
			// nor a slice for it: an empty one left would look like output pending
			putSmall(c.mu.smalls[len(c.mu.smalls)-1])
			c.mu.bufs, c.mu.smalls = c.mu.bufs[:len(c.mu.bufs)-1], c.mu.smalls[:len(c.mu.smalls)-1]
			c.mu.small = nil
		}
		return false, err
	}
	binary.BigEndian.PutUint64(b[lenAt:], uint64(len(b)-hdrAt))
	if cap(b) != cap(c.mu.small) {
		c.mu.grown++
	}
	c.mu.small = b
	c.mu.bufs[len(c.mu.bufs)-1] = b
	*c.mu.smalls[len(c.mu.smalls)-1] = b
	c.mu.pending += len(b) - start
	c.queuePayloadLocked(payload)
	return first, nil
}

// Flush has whatever is queued written. It does not wait for the write.
func (c *Conn) Flush() {
	c.mu.Lock()
	c.startWriterLocked()
	c.mu.Unlock()
}

// FlushNow writes what is queued from the calling goroutine when the socket takes it at once,
// and leaves the rest, if any, to a writer goroutine as Flush does. For a caller that queued a
// pass's messages to many connections (the scheduler's driver): at 10,000 workers each pass
// flushed a thousand connections holding a message or two each, and each flush started a
// goroutine only to make one write(2) and exit. The write here never blocks: a full socket
// buffer, TLS, file frames or more than inlineMax bytes go to the writer goroutine.
func (c *Conn) FlushNow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw == nil || c.mu.writer || c.mu.ended || c.mu.closed || len(c.mu.bufs) == 0 ||
		len(c.mu.files) > 0 || c.mu.pending > inlineMax {
		c.startWriterLocked()
		return
	}
	bufs, smalls := c.mu.bufs, c.mu.smalls
	c.mu.bufs, c.mu.small, c.mu.smalls, c.mu.pending = nil, nil, nil, 0
	total := lenOf(bufs)
	c.mu.writer = true // no writer starts while this one writes without the lock
	c.writing.Store(true)
	c.mu.Unlock()
	n, err := c.rio.writev(bufs)
	c.mu.Lock()
	// writing ends under the lock, once the rest is back in the queue below: outputPending
	// must never see the output in neither place
	defer c.writing.Store(false)
	c.mu.writer = false
	switch {
	case c.mu.aborted:
		// Abort dropped what was queued, and so goes the rest of this
	case err != nil:
		c.mu.err = fmt.Errorf("wire: write: %w", err)
		c.endLocked()
		c.closeNC()
		return
	case n == total:
		c.reuseLocked(bufs, smalls)
	default:
		c.requeueFrontLocked(dropFront(bufs, n), smalls, total-n)
	}
	c.startWriterLocked()
}

// requeueFrontLocked puts back the bytes a write left (rest, in the small slices smalls),
// before what was queued meanwhile: the file frames queued meanwhile move with their places.
func (c *Conn) requeueFrontLocked(rest [][]byte, smalls []*[]byte, nbytes int) {
	for i := range c.mu.files {
		c.mu.files[i].at += len(rest)
	}
	c.mu.bufs = append(rest, c.mu.bufs...)       // c.mu.small, if any, stays the tail
	c.mu.smalls = append(smalls, c.mu.smalls...) // reused once the writer wrote them
	c.mu.pending += nbytes
}

// lenOf is the number of bytes in bufs.
func lenOf(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// dropFront drops the first n bytes of bufs.
func dropFront(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		k := min(n, len(bufs[0]))
		bufs[0] = bufs[0][k:]
		n -= k
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return bufs
}

// inlineMax is the most FlushNow writes from its caller's goroutine.
const inlineMax = 64 << 10

// startWriterLocked starts a writer goroutine unless one runs or there is nothing for one to
// do (no output, not closing). The writer exits once the output is written: a connection
// has a goroutine for writing only while it writes. (With one each for good, 10,000 idle
// worker connections were 10,000 parked goroutines whose stacks every garbage collection
// scanned: 5 % of the scheduler's CPU under load.)
func (c *Conn) startWriterLocked() {
	if c.mu.writer || c.mu.ended || len(c.mu.bufs) == 0 && !c.mu.closed {
		return
	}
	c.mu.writer = true
	go c.writeLoop()
}

func (c *Conn) enqueue(hdr []byte, payload [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usableLocked(); err != nil {
		return err
	}
	n := 1 + len(payload)
	var prefix [4 + 8*8]byte
	pre := prefix[:0]
	if n <= 8 {
		pre = appendPrefix(pre, hdr, payload)
	} else {
		pre = appendPrefix(nil, hdr, payload)
	}
	c.appendSmall(pre)
	c.appendSmall(hdr)
	c.queuePayloadLocked(payload)
	c.mu.pending += len(hdr) + len(pre)
	return nil
}

// usableLocked returns why nothing more may be queued: the connection's error, or ErrClosed.
func (c *Conn) usableLocked() error {
	if c.mu.err != nil {
		return c.mu.err
	}
	if c.mu.closed {
		return ErrClosed
	}
	return nil
}

// queuePayloadLocked queues payload frames after a header: big frames are written from the
// caller's memory, small ones copied into the pending buffer.
func (c *Conn) queuePayloadLocked(payload [][]byte) {
	for _, p := range payload {
		if len(p) >= bigFrame {
			c.mu.bufs = append(c.mu.bufs, p)
			c.mu.small = nil
		} else {
			c.appendSmall(p)
		}
		c.mu.pending += len(p)
	}
}

func appendPrefix(b []byte, hdr []byte, payload [][]byte) []byte {
	n := 1 + len(payload)
	b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = appendU64(b, uint64(len(hdr)))
	for _, p := range payload {
		b = appendU64(b, uint64(len(p)))
	}
	return b
}

func appendU64(b []byte, v uint64) []byte {
	return append(b, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// appendSmall copies p into the current small-message slice (c.mu held).
func (c *Conn) appendSmall(p []byte) {
	if c.mu.small == nil || len(c.mu.small) > 0 && !c.roomLocked(len(p)) {
		c.newSmallLocked(len(p)) // (an empty slice too small for p is grown instead)
	}
	c.mu.small = append(c.mu.small, p...)
	c.mu.bufs[len(c.mu.bufs)-1] = c.mu.small
	*c.mu.smalls[len(c.mu.smalls)-1] = c.mu.small
}

// Small messages are appended to slices of at most about smallChunk bytes: once one is that
// full, or has less than minRoom left, the next message starts a new one (the writer sends
// them all in one writev), twice as large as the one before while the output grows; a slice
// is not grown by append, a copy into fresh memory, unless one message outgrows it. Written
// slices go back to pools that every connection shares, one per size class (4 KiB to 128
// KiB), and the next slice comes from one. A connection that queued megabytes before its
// writer caught up (the scheduler's key_state messages to a busy client) used to grow one
// slice by copying and let it go after the write: each time fresh memory, which the kernel
// zeroes (at 10,000 workers, 4 % of the scheduler's CPU was that, under the copy). Later each
// connection kept its written slices as its own spares: at 10,000 workers, 10,000 sets of
// them, each written once every few hundred milliseconds and cold by then, 5 KB a connection
// on average (docs/performance.md, "10,000 workers: buffers for the connections that read").
const (
	smallChunk   = 64 << 10
	minSmall     = 4 << 10
	smallClasses = 6   // minSmall << 5 == 2*smallChunk
	minRoom      = 512 // room left below which a slice takes no more messages (most are smaller)
)

// roomLocked reports whether the current small-message slice takes n more bytes without
// being grown by append (a copy, into fresh memory) and without passing smallChunk.
func (c *Conn) roomLocked(n int) bool {
	return c.mu.small != nil && len(c.mu.small)+n <= min(cap(c.mu.small), smallChunk)
}

// smallPools holds written small-message slices: smallPools[k] those of a capacity of at
// least minSmall<<k (and less than twice that).
var smallPools [smallClasses]sync.Pool

// getSmall returns an empty slice with room for want bytes, from a pool when one has it. The
// pointer goes back to the pool with the slice (putSmall): a new one per write would be an
// allocation per write.
func getSmall(want int) *[]byte {
	k := bits.Len(uint(max(want, 1)-1) / minSmall) // the smallest class whose slices hold want
	if k < smallClasses {
		if b, _ := smallPools[k].Get().(*[]byte); b != nil {
			*b = (*b)[:0]
			return b
		}
		want = minSmall << k
	}
	b := make([]byte, 0, want)
	return &b
}

// putSmall gives a written slice to its class's pool (a slice over 2*smallChunk, grown for
// one large header, is left to the collector).
func putSmall(b *[]byte) {
	if c := cap(*b); c >= minSmall && c <= 2*smallChunk {
		smallPools[bits.Len(uint(c/minSmall))-1].Put(b) // the largest class whose size b reaches
	}
}

// newSmallLocked starts a small-message slice at the tail of the pending output, from a pool:
// a busy connection (the scheduler's to a worker, thousands of compute messages a second)
// would otherwise allocate and grow a fresh one per write.
func (c *Conn) newSmallLocked(n int) {
	// as large as what the last write took (a fake worker's block of compute messages is
	// more than 4 KiB each time), by its contents, not its slices' capacities (one burst must
	// not make every later slice large); twice the slice before it when the pending output
	// outgrew that one
	want := max(minSmall, n, min(c.mu.fits, smallChunk))
	if c.mu.small != nil {
		want = max(want, min(2*cap(c.mu.small), smallChunk))
	}
	b := getSmall(want)
	c.mu.small = *b
	c.mu.bufs = append(c.mu.bufs, nil)
	c.mu.smalls = append(c.mu.smalls, b)
}

// reuseLocked gives written small-message slices back to the pools, and keeps the emptied
// lists of the written output (bufs, as it was before the write consumed it, and smalls) for
// the next output when none has started meanwhile: new ones were two allocations per write.
func (c *Conn) reuseLocked(bufs net.Buffers, smalls []*[]byte) {
	c.mu.fits = 0
	for _, b := range smalls {
		c.mu.fits += len(*b)
		putSmall(b)
	}
	if cap(bufs) > maxSpare || cap(smalls) > maxSpare {
		return // one large burst: not kept for good
	}
	if c.mu.bufs == nil {
		clear(bufs[:cap(bufs)])
		c.mu.bufs = bufs[:0]
	}
	if c.mu.smalls == nil {
		clear(smalls[:cap(smalls)])
		c.mu.smalls = smalls[:0]
	}
}

// maxSpare is the most entries of a written output's lists kept for the next (reuseLocked).
const maxSpare = 64

// writeLoop writes the queued output until none is left, then exits (Flush starts another
// when more is queued); once the connection is closed and its output written, or a write
// failed, it ends the connection's output for good (done).
func (c *Conn) writeLoop() {
	for {
		c.mu.Lock()
		bufs, smalls, files := c.mu.bufs, c.mu.smalls, c.mu.files
		c.mu.bufs, c.mu.small, c.mu.smalls, c.mu.files, c.mu.pending = nil, nil, nil, nil, 0
		all := bufs // the writes below consume bufs
		if len(bufs) == 0 {
			c.mu.bufs, c.mu.smalls = bufs, smalls // the emptied lists kept (reuseLocked), if any
			c.mu.writer = false
			if c.mu.closed {
				c.endLocked()
			}
			c.mu.Unlock()
			return
		}
		c.writing.Store(true) // before the lock is let go: output is never unseen
		c.mu.Unlock()
		var err error
		if t := time.Duration(c.stall.Load()); len(files) > 0 {
			err = c.writeWithFiles(bufs, files, t)
		} else if t > 0 {
			err = c.writeStalling(bufs, t)
		} else {
			_, err = bufs.WriteTo(c.nc)
		}
		c.writing.Store(false)
		c.mu.Lock()
		if err != nil {
			c.mu.err = fmt.Errorf("wire: write: %w", err)
			c.mu.writer = false
			c.endLocked()
			c.mu.Unlock()
			c.closeNC()
			return
		}
		c.reuseLocked(all, smalls) // written: the kernel has the bytes, the slices are free again
		c.mu.Unlock()
	}
}

// writeStalling writes bufs giving them stall to leave: on a plain socket, in one writev under
// a deadline kept lazily (c.wdl) when they total at most a stallChunk, as the writer's batches
// of small messages do; else each stallChunk under its own deadline (stallWriter). Before,
// every buffer was its own write(2) with its own deadline.
func (c *Conn) writeStalling(bufs net.Buffers, stall time.Duration) error {
	total := lenOf(bufs)
	if total > stallChunk || c.raw == nil {
		// (over TLS a write that timed out cannot be retried, so an early deadline must not
		// happen there: each write gets its own exact one)
		_, err := bufs.WriteTo(stallWriter{c.nc, stall})
		return err
	}
	start := c.wdl.arm(c.nc, stall)
	for {
		_, err := bufs.WriteTo(c.nc) // consumes what it wrote
		switch {
		case err == nil:
			return nil
		case !isTimeout(err):
			return err
		case !c.wdl.expired(c.nc, start, stall):
			continue // the kept deadline came before this write's whole span
		}
		return fmt.Errorf("%w: the peer did not read %d bytes in %v", ErrStalled, total, stall)
	}
}

// endLocked ends the output: file frames that will never be written now are closed, and
// done is closed.
func (c *Conn) endLocked() {
	if c.mu.ended {
		return
	}
	c.mu.ended = true
	c.closeFilesLocked()
	close(c.done)
}

// closeFilesLocked closes the files of the queued file frames, which will not be written.
func (c *Conn) closeFilesLocked() {
	for _, f := range c.mu.files {
		f.f.Close()
	}
	c.mu.files = nil
}

// SendError sends an error message with a stable code.
func (c *Conn) SendError(id uint64, code, msg string) error {
	return c.Send(&Msg{Op: OpError, ID: id, Code: code, Message: msg})
}

// Close flushes what is queued (for at most a second) and closes the connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return nil
	}
	c.mu.closed = true
	c.startWriterLocked() // writes what is queued, then ends
	c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	return c.closeNC()
}

// Abort closes the connection at once, dropping whatever is queued. (A write under way when
// it is called fails as the connection closes.)
func (c *Conn) Abort() error {
	c.mu.Lock()
	c.mu.closed, c.mu.aborted = true, true
	// dropped here, so that the writer started only to end the output does not race the
	// Close below to write them; the files of queued file frames are closed here, as no
	// writer will see them (one that runs keeps its own)
	c.mu.bufs, c.mu.small, c.mu.smalls, c.mu.pending = nil, nil, nil, 0
	c.closeFilesLocked()
	c.startWriterLocked()
	c.mu.Unlock()
	return c.closeNC()
}

// closeNC closes the socket, and resumes a reader parked in a Poller so that it sees the end.
func (c *Conn) closeNC() error {
	err := c.nc.Close()
	c.wakePoll()
	return err
}

// Keep tells the Server that handed c to its handler that the handler returns before c's
// end (its reader parked it): the Server's hold on c is then given back by End, not when the
// handler returns.
func (c *Conn) Keep() { c.kept.Store(true) }

// End gives back the Server's hold on a connection kept past its handler (Keep).
func (c *Conn) End() {
	if c.release != nil {
		c.release()
	}
}
