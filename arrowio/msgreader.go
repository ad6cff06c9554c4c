package arrowio

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// continuation marks the start of an IPC message since Arrow 0.15.
const continuation = 0xFFFFFFFF

// bytesMessageReader is an ipc.MessageReader over an in-memory IPC stream
// whose messages reference the input slice instead of copies of it.
type bytesMessageReader struct {
	b    []byte
	pos  int
	mem  memory.Allocator
	refs atomic.Int64
	msg  *ipc.Message
}

var _ ipc.MessageReader = (*bytesMessageReader)(nil)

func newBytesMessageReader(b []byte, mem memory.Allocator) *bytesMessageReader {
	r := &bytesMessageReader{b: b, mem: mem}
	r.refs.Store(1)
	return r
}

func (r *bytesMessageReader) Retain() { r.refs.Add(1) }

func (r *bytesMessageReader) Release() {
	if r.refs.Add(-1) == 0 && r.msg != nil {
		r.msg.Release()
		r.msg = nil
	}
}

// Message returns the next message, valid until the next call, or io.EOF at
// the end-of-stream marker or the end of the input.
func (r *bytesMessageReader) Message() (msg *ipc.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			msg, err = nil, fmt.Errorf("invalid message metadata at offset %d: %v", r.pos, p)
		}
	}()
	if r.msg != nil {
		r.msg.Release()
		r.msg = nil
	}
	metaLen, err := r.readPrefix()
	if err != nil {
		return nil, err
	}
	if metaLen < 4 || metaLen > len(r.b)-r.pos {
		return nil, fmt.Errorf("invalid message metadata length %d at offset %d (%d bytes left)", metaLen, r.pos, len(r.b)-r.pos)
	}
	metaBytes := r.b[r.pos : r.pos+metaLen]
	info, err := verifyMessage(metaBytes)
	if err != nil {
		return nil, fmt.Errorf("message at offset %d: %w", r.pos, err)
	}
	meta := memory.NewBufferBytes(metaBytes)
	r.pos += metaLen

	empty := memory.NewBufferBytes(nil)
	probe := ipc.NewMessage(meta, empty)
	bodyLen := probe.BodyLen()
	probe.Release()
	if bodyLen < 0 || bodyLen > int64(len(r.b)-r.pos) {
		return nil, fmt.Errorf("invalid message body length %d at offset %d (%d bytes left)", bodyLen, r.pos, len(r.b)-r.pos)
	}
	if err := checkCompressed(metaBytes, info, r.b[r.pos:r.pos+int(bodyLen)]); err != nil {
		return nil, fmt.Errorf("message at offset %d: %w", r.pos, err)
	}
	body := r.body(int(bodyLen))
	r.pos += int(bodyLen)
	r.msg = ipc.NewMessage(meta, body)
	body.Release()
	return r.msg, nil
}

// readPrefix reads the continuation marker and metadata length, accepting
// the pre-0.15 form without the marker.
func (r *bytesMessageReader) readPrefix() (int, error) {
	word, err := r.uint32()
	if err != nil {
		return 0, err
	}
	if word == continuation {
		if word, err = r.uint32(); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	if word == 0 {
		return 0, io.EOF
	}
	if word > 1<<31-1 {
		return 0, fmt.Errorf("invalid message metadata length %d", word)
	}
	return int(word), nil
}

func (r *bytesMessageReader) uint32() (uint32, error) {
	switch left := len(r.b) - r.pos; {
	case left == 0:
		return 0, io.EOF
	case left < 4:
		return 0, io.ErrUnexpectedEOF
	}
	v := binary.LittleEndian.Uint32(r.b[r.pos:])
	r.pos += 4
	return v, nil
}

// body wraps the next n bytes, copying them only when they are not 8-byte
// aligned in memory.
func (r *bytesMessageReader) body(n int) *memory.Buffer {
	src := r.b[r.pos : r.pos+n]
	if n == 0 || uintptr(unsafe.Pointer(&src[0]))%8 == 0 {
		return memory.NewBufferBytes(src)
	}
	buf := memory.NewResizableBuffer(r.mem)
	buf.Resize(n)
	copy(buf.Bytes(), src)
	return buf
}
