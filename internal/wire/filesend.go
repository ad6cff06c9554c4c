package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Frame is one payload frame for SendFrames: bytes in memory, or a region of a file (a worker's
// shared-memory segment) that the connection's writer sends straight from the file with
// sendfile(2), without reading it into memory first. On the wire the two are the same.
type Frame struct {
	// Bytes is the frame's content when File is nil.
	Bytes []byte
	// File, when set, holds the frame's Len bytes from offset Off. The connection owns it from
	// SendFrames on and closes it once the frame is written or can no longer be (a failed or
	// closed connection). The file's bytes must not change until then (a sealed memfd).
	File     *os.File
	Off, Len int64
}

// size is the frame's length on the wire.
func (f Frame) size() int64 {
	if f.File != nil {
		return f.Len
	}
	return int64(len(f.Bytes))
}

// queuedFile is a file frame waiting in the output: it goes out after bufs[at-1] and before
// bufs[at+1] (bufs[at] is an empty placeholder).
type queuedFile struct {
	at       int
	f        *os.File
	off, len int64
}

// SendFrames queues a message whose header is already encoded and whose payload frames are in
// memory or in files (see Frame). It takes over the frames' files even when it fails.
func (c *Conn) SendFrames(hdr []byte, frames []Frame) error {
	err := c.enqueueFrames(hdr, frames)
	if err != nil {
		closeFrames(frames)
		return err
	}
	c.Flush()
	return nil
}

func closeFrames(frames []Frame) {
	for _, f := range frames {
		if f.File != nil {
			f.File.Close()
		}
	}
}

func (c *Conn) enqueueFrames(hdr []byte, frames []Frame) error {
	for i, f := range frames {
		if f.File != nil && (f.Off < 0 || f.Len < 0) {
			return fmt.Errorf("wire: file frame %d: bad region [%d, +%d)", i, f.Off, f.Len)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usableLocked(); err != nil {
		return err
	}
	pre := make([]byte, 0, 4+8*(1+len(frames)))
	pre = append(pre, byte((1+len(frames))>>24), byte((1+len(frames))>>16), byte((1+len(frames))>>8), byte(1+len(frames)))
	pre = appendU64(pre, uint64(len(hdr)))
	for _, f := range frames {
		pre = appendU64(pre, uint64(f.size()))
	}
	c.appendSmall(pre)
	c.appendSmall(hdr)
	c.mu.pending += len(pre) + len(hdr)
	for _, f := range frames {
		if f.File == nil {
			c.queuePayloadLocked([][]byte{f.Bytes})
			continue
		}
		c.mu.bufs = append(c.mu.bufs, nil) // the file's place in the output
		c.mu.small = nil
		c.mu.files = append(c.mu.files, queuedFile{at: len(c.mu.bufs) - 1, f: f.File, off: f.Off, len: f.Len})
		c.mu.pending += int(min(f.Len, 1<<30))
	}
	return nil
}

// writeWithFiles writes bufs with the file frames files in their places, through w (which
// gives each chunk its write deadline, when the connection has a stall timeout), and closes
// the files.
func (c *Conn) writeWithFiles(bufs net.Buffers, files []queuedFile, stall time.Duration) error {
	defer func() {
		for _, f := range files {
			f.f.Close()
		}
	}()
	var w io.Writer = c.nc
	if stall > 0 {
		w = stallWriter{c.nc, stall}
	}
	prev := 0
	for _, f := range files {
		if f.at > prev {
			part := bufs[prev:f.at]
			if _, err := part.WriteTo(w); err != nil {
				return err
			}
		}
		if err := sendFileRegion(c.nc, f.f, f.off, f.len, stall); err != nil {
			return err
		}
		prev = f.at + 1
	}
	if prev < len(bufs) {
		rest := bufs[prev:]
		_, err := rest.WriteTo(w)
		return err
	}
	return nil
}

// sendFileRegion writes n bytes of f from offset off to nc: with sendfile(2) when nc is a
// plain socket (the kernel copies from the file's pages to the socket; f's offset is not
// used, so concurrent senders of one file do not disturb each other), else through a buffer.
// Each stallChunk gets stall (when not zero) to leave, as stallWriter gives.
func sendFileRegion(nc net.Conn, f *os.File, off, n int64, stall time.Duration) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return copyFileRegion(nc, f, off, n, stall)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for n > 0 {
		chunk := min(n, stallChunk)
		if stall > 0 {
			nc.SetWriteDeadline(time.Now().Add(stall))
		}
		var serr error
		cerr := fc.Control(func(ffd uintptr) {
			werr := rc.Write(func(sfd uintptr) bool {
				for chunk > 0 {
					k, err := unix.Sendfile(int(sfd), int(ffd), &off, int(chunk))
					if k > 0 {
						chunk -= int64(k)
						n -= int64(k)
					}
					switch {
					case err == unix.EAGAIN:
						return false // wait until the socket can take more
					case err == unix.EINTR:
					case err != nil:
						serr = err
						return true
					case k == 0:
						serr = fmt.Errorf("%w: the file ends before its frame (offset %d)", io.ErrUnexpectedEOF, off)
						return true
					}
				}
				return true
			})
			if serr == nil {
				serr = werr
			}
		})
		if cerr != nil {
			return fmt.Errorf("sending a file frame: %w", cerr)
		}
		if serr != nil {
			if isTimeout(serr) {
				return fmt.Errorf("%w: the peer read nothing for %v", ErrStalled, stall)
			}
			if errors.Is(serr, unix.EINVAL) || errors.Is(serr, unix.ENOSYS) {
				// a file sendfile cannot read: copy the rest instead
				return copyFileRegion(nc, f, off, n, stall)
			}
			return fmt.Errorf("sendfile: %w", serr)
		}
	}
	return nil
}

// copyFileRegion is sendFileRegion through a buffer (TLS, or files sendfile cannot read).
func copyFileRegion(nc net.Conn, f *os.File, off, n int64, stall time.Duration) error {
	var w io.Writer = nc
	if stall > 0 {
		w = stallWriter{nc, stall}
	}
	buf := make([]byte, min(n, stallChunk))
	for n > 0 {
		k, err := f.ReadAt(buf[:min(n, int64(len(buf)))], off)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return werr
			}
			off += int64(k)
			n -= int64(k)
		}
		if err != nil && n > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading a file frame: %w", err)
		}
	}
	return nil
}
