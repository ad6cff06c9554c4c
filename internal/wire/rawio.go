package wire

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawIO reads and writes a plain socket's descriptor directly, without waiting (TryFill,
// FlushNow), and without an allocation per call: a closure handed to syscall.RawConn escapes,
// and with the variables it captured that was two or three allocations for every read and
// every inline write, per message at 10,000 workers. Its functions are made once per
// connection (two closures, kept with it) and take their arguments and leave their results
// in its fields. The read side is used by the connection's reader alone, the write side by
// whoever holds the writer role (Conn.mu.writer): the two share no field.
type rawIO struct {
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerr   error
	readFd func(fd uintptr) bool

	wbufs   [][]byte
	wn      int
	werr    error
	writeFd func(fd uintptr) bool
}

// init makes r read and write on rc.
func (r *rawIO) init(rc syscall.RawConn) {
	r.rc = rc
	r.readFd = func(fd uintptr) bool {
		r.rn, r.rerr = unix.Read(int(fd), r.rbuf)
		return true // once, whatever it found
	}
	r.writeFd = func(fd uintptr) bool {
		for {
			r.wn, r.werr = unix.Writev(int(fd), r.wbufs)
			if r.werr != unix.EINTR {
				break
			}
		}
		if r.werr == unix.EAGAIN {
			r.wn, r.werr = 0, nil
		}
		return true // never wait for the socket: the writer goroutine does
	}
}

// read reads what the socket holds into p without waiting: errWouldBlock when it holds
// nothing, io.EOF at its end.
func (r *rawIO) read(p []byte) (int, error) {
	r.rbuf = p
	err := r.rc.Read(r.readFd)
	n, rerr := r.rn, r.rerr
	r.rbuf, r.rerr = nil, nil
	switch {
	case err != nil:
		return 0, err // closed
	case rerr == unix.EAGAIN:
		return 0, errWouldBlock
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// writev writes bufs with one writev(2) that does not wait: it returns how much the socket
// took (0 when its buffer is full, or when a write deadline the writer goroutine left has
// passed: the descriptor then refuses writes until the writer sets a new one).
func (r *rawIO) writev(bufs [][]byte) (int, error) {
	r.wbufs = bufs
	err := r.rc.Write(r.writeFd)
	n, werr := r.wn, r.werr
	r.wbufs, r.werr = nil, nil
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	if err == nil && werr != nil {
		err = os.NewSyscallError("writev", werr)
	}
	return max(n, 0), err
}
