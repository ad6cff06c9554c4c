package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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
type execConn struct {
	f   *os.File
	fd  int
	br  *bufio.Reader
	lim wire.Limits

	wmu  sync.Mutex // serialises writers (a shutdown from closeAll against nothing else)
	wbuf []byte
	shut atomic.Bool
}

// execSmallFrame is the size up to which payload frames are copied into the message buffer;
// bigger ones are written from their own memory.
const execSmallFrame = 64 << 10

func newExecConn(f *os.File, lim wire.Limits) *execConn {
	return &execConn{f: f, fd: int(f.Fd()), br: bufio.NewReaderSize(f, 64<<10), lim: lim}
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

// recvExt is recv that also returns the header's fields that wire.Msg does not have.
func (c *execConn) recvExt() (*wire.Msg, execExt, [][]byte, error) {
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
	var x execExt
	m, err := decodeExecHeaderExt(frames[0], &x)
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
}

// readUints reads an array of non-negative integers (window ids).
func readUints(r *wire.Reader) ([]uint64, bool) {
	n, ok := r.ArrayLen()
	if !ok {
		return nil, false
	}
	out := make([]uint64, n)
	for i := range out {
		if out[i], ok = r.Uint(); !ok {
			return nil, false
		}
	}
	return out, true
}

// decodeExecHeader decodes an executor's message header: `done` answers by hand, anything
// else (error, ready, unexpected shapes) with the generic decoder.
func decodeExecHeader(b []byte) (*wire.Msg, error) {
	var x execExt
	return decodeExecHeaderExt(b, &x)
}

// decodeExecHeaderExt is decodeExecHeader that also fills x with the extension fields.
func decodeExecHeaderExt(b []byte, x *execExt) (*wire.Msg, error) {
	if m, ok := decodeDoneExt(b, x); ok {
		return m, nil
	}
	*x = execExt{}
	m, err := wire.DecodeHeader(b)
	if err != nil {
		return nil, err
	}
	if bytes.Contains(b, []byte("shm")) {
		if *x, err = decodeExt(b); err != nil {
			return nil, fmt.Errorf("%w: executor header: %v", wire.ErrProtocol, err)
		}
	}
	return m, nil
}

// decodeDone parses {"op": "done", "id": uint, "items": [{"key", "encoding", "nframes",
// "nbytes"}]}; ok is false for anything else, including unknown fields.
func decodeDone(b []byte) (m *wire.Msg, ok bool) {
	var x execExt
	return decodeDoneExt(b, &x)
}

// decodeDoneExt is decodeDone that also accepts the window fields shm_free and shm_drop.
func decodeDoneExt(b []byte, x *execExt) (m *wire.Msg, ok bool) {
	r := wire.NewReader(b)
	n, ok := r.MapLen()
	if !ok {
		return nil, false
	}
	m = new(wire.Msg)
	for range n {
		k, ok := r.Str()
		if !ok {
			return nil, false
		}
		switch k {
		case "op":
			if m.Op, ok = r.Str(); !ok {
				return nil, false
			}
		case "id":
			v, ok := r.Int()
			if !ok || v < 0 {
				return nil, false
			}
			m.ID = uint64(v)
		case "items":
			na, ok := r.ArrayLen()
			if !ok {
				return nil, false
			}
			m.Items = make([]wire.Item, na)
			for i := range m.Items {
				if !r.Item(&m.Items[i]) {
					return nil, false
				}
			}
		case "shm_free", "shm_drop":
			ids, ok := readUints(r)
			if !ok {
				return nil, false
			}
			if k == "shm_free" {
				x.Free = ids
			} else {
				x.Drop = ids
			}
		default:
			return nil, false
		}
	}
	if !r.Done() || m.Op != wire.OpDone {
		return nil, false
	}
	return m, true
}
