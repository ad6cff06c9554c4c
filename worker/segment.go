package worker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Segments (docs/protocol.md §3.4, §3.5): a Python task's large result does not come back
// through the executor's socket. The executor writes its frames into a fresh memfd, seals it
// (no write, no resize: its bytes can never change again) and passes the descriptor with its
// done answer. The store keeps the memfd as the value, and the value's bytes go on without
// being copied:
//
//   - to a run on this worker: the descriptor is passed to the executor, which maps it
//     copy-on-write (a task that writes into its input gets private pages);
//   - to a peer on the same machine: the peer opens the memfd through /proc/<pid>/fd/<fd> and
//     holds it as its own value, instead of receiving the bytes over TCP.
//
// The worker itself never maps a segment. Its store's values are borrowed without reference
// counts (queued for peers, decoded by Go tasks, see executor_shm.go), so an unmap on Delete
// could pull memory from under a reader. A segment is only an *os.File here: os.File counts
// the references of its descriptor, so a Close racing with a ReadAt (or with the Control that
// duplicates the descriptor for a run) takes effect when that call returns, and later calls
// fail with os.ErrClosed, which readers report as the value being gone. Readers that need the
// bytes in memory (Go tasks, clients, peers over TCP, spilling) read them with pread(2).

// Segment is a value's frames held in a sealed memfd.
type Segment struct {
	f        *os.File
	size     int64
	dev, ino uint64
	at       []segPlace
}

// segPlace says where frame Frame of a value is in its segment: bytes [Off, Off+Len).
type segPlace struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack struct{} `msgpack:",as_array"`
	Frame    int
	Off      int64
	Len      int64
}

// segSeals are the seals a segment must carry: its bytes cannot be written and it cannot
// shrink (what was checked to be inside it stays inside it).
const segSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK

// newSegment checks that f is a sealed memfd holding the placements at, for a value of the
// given frames (the frames a segment holds must be empty placeholders), and returns it. It
// takes f over only when it succeeds.
func newSegment(f *os.File, at []segPlace, frames [][]byte) (*Segment, error) {
	if len(at) == 0 {
		return nil, errors.New("a segment that holds no frame")
	}
	s := &Segment{f: f, at: at}
	var st unix.Stat_t
	var seals int
	var serr, ferr error
	err := control(f, func(fd int) {
		seals, serr = unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
		ferr = unix.Fstat(fd, &st)
	})
	switch {
	case err != nil:
		return nil, err
	case serr != nil:
		return nil, fmt.Errorf("reading the seals of a segment (not a memfd?): %w", serr)
	case seals&segSeals != segSeals:
		return nil, fmt.Errorf("segment is not sealed against writing and shrinking (seals %#x)", seals)
	case ferr != nil:
		return nil, fmt.Errorf("fstat of a segment: %w", ferr)
	}
	s.size, s.dev, s.ino = st.Size, uint64(st.Dev), uint64(st.Ino)
	seen := make(map[int]bool, len(at))
	for _, p := range at {
		if p.Frame < 0 || p.Frame >= len(frames) || seen[p.Frame] || len(frames[p.Frame]) != 0 ||
			p.Off < 0 || p.Len < 0 || p.Off > s.size-p.Len {
			return nil, fmt.Errorf("bad segment placement [%d, %d, %d] for %d frames in %d bytes",
				p.Frame, p.Off, p.Len, len(frames), s.size)
		}
		seen[p.Frame] = true
	}
	return s, nil
}

// control runs fn with f's descriptor, which cannot be closed meanwhile. It fails only when f
// is closed, with os.ErrClosed (RawConn.Control says "use of closed file", not os.ErrClosed).
func control(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if rc.Control(func(fd uintptr) { fn(int(fd)) }) != nil {
		return os.ErrClosed
	}
	return nil
}

// bytes is how many bytes of the value's frames the segment holds.
func (s *Segment) bytes() int64 {
	var n int64
	for _, p := range s.at {
		n += p.Len
	}
	return n
}

// placement is where one frame of a value lives outside its frame list (the frame itself is
// empty there): in a segment (segPlace) or in an executor's memory (resPlace).
type placement interface{ frameLen() (frame int, n int64) }

func (p segPlace) frameLen() (int, int64) { return p.Frame, p.Len }
func (p resPlace) frameLen() (int, int64) { return p.Frame, p.Len }

// placed returns the length of every frame of a value whose frames at places fill in, and the
// places by frame.
func placed[P placement](frames [][]byte, at []P) ([]int64, map[int]P) {
	lens := make([]int64, len(frames))
	for i, f := range frames {
		lens[i] = int64(len(f))
	}
	by := make(map[int]P, len(at))
	for _, p := range at {
		i, n := p.frameLen()
		lens[i] = n
		by[i] = p
	}
	return lens, by
}

// errSegmentGone is what reading a segment the store closed meanwhile gives.
var errSegmentGone = fmt.Errorf("%w (dropped while being read)", ErrNotFound)

// read returns the value's frames with the segment's frames read into memory from alloc.
func (s *Segment) read(frames [][]byte, alloc func(int) []byte) ([][]byte, error) {
	out := append([][]byte(nil), frames...)
	if err := s.fill(out, 0, alloc); err != nil {
		return nil, err
	}
	return out, nil
}

// fill reads the segment's frames into out, where the value's frames start at out[base].
func (s *Segment) fill(out [][]byte, base int, alloc func(int) []byte) error {
	for _, p := range s.at {
		b := alloc(int(p.Len))
		if _, err := s.f.ReadAt(b, p.Off); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return errSegmentGone
			}
			return fmt.Errorf("reading a shared-memory segment: %w", err)
		}
		out[base+p.Frame] = b
	}
	return nil
}

// copyFrame writes the bytes of placement p to w (spilling), a chunk at a time.
func (s *Segment) copyFrame(w io.Writer, p segPlace, buf []byte) error {
	_, err := io.CopyBuffer(onlyWriter{w}, io.NewSectionReader(s.f, p.Off, p.Len), buf)
	if errors.Is(err, os.ErrClosed) {
		return errSegmentGone
	}
	return err
}

// onlyWriter hides the destination's ReadFrom, so that io.CopyBuffer uses the buffer given
// (os.File's ReadFrom would fall back to 32 KiB copies from a SectionReader).
type onlyWriter struct{ io.Writer }

// dup returns a new descriptor of the segment (close-on-exec), for passing to an executor.
func (s *Segment) dup() (int, error) {
	nfd := -1
	var derr error
	err := control(s.f, func(fd int) { nfd, derr = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) })
	if errors.Is(err, os.ErrClosed) {
		return -1, errSegmentGone
	}
	if err == nil {
		err = derr
	}
	return nfd, err
}

// fd returns the number of the segment's descriptor in this process, for a peer that opens it
// through /proc; the store may close it at any time after (the peer checks what it opened).
func (s *Segment) fd() (int, error) {
	n := -1
	err := control(s.f, func(fd int) { n = fd })
	if errors.Is(err, os.ErrClosed) {
		return -1, errSegmentGone
	}
	return n, err
}

func (s *Segment) close() { s.f.Close() }

// peerSeg is how a peer on the same machine describes a segment-backed value in a data answer
// (docs/protocol.md §3.4): where to open it and what it must be.
type peerSeg struct {
	Key    string     `msgpack:"key"`
	PID    int        `msgpack:"pid"`
	FD     int        `msgpack:"fd"`
	Dev    uint64     `msgpack:"dev"`
	Ino    uint64     `msgpack:"ino"`
	Frames []segPlace `msgpack:"frames"`
}

// procRoot is where other processes' descriptors are found (a variable for tests).
var procRoot = "/proc"

// openPeerSegment opens a peer's segment through /proc/<pid>/fd/<fd>, read-only, and checks
// that it is the memfd the peer described: the descriptor number may have been closed and
// reused since the peer answered, or name another process's file (another pid namespace), so
// the device and inode must match, and the seals must be there.
func openPeerSegment(ps peerSeg, frames [][]byte) (*Segment, error) {
	if ps.PID <= 0 || ps.FD < 0 {
		return nil, fmt.Errorf("bad segment location pid %d fd %d", ps.PID, ps.FD)
	}
	path := procRoot + "/" + strconv.Itoa(ps.PID) + "/fd/" + strconv.Itoa(ps.FD)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	s, err := newSegment(f, ps.Frames, frames)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.dev != ps.Dev || s.ino != ps.Ino {
		f.Close()
		return nil, fmt.Errorf("%s is not the peer's segment (device/inode %d/%d, want %d/%d): it was closed meanwhile",
			path, s.dev, s.ino, ps.Dev, ps.Ino)
	}
	return s, nil
}

// hostID names this machine's running kernel (its boot id) and this process's pid namespace:
// workers with the same one see each other's process ids in /proc, so a peer's pid and
// descriptor number can be opened there; "" when unknown (then segments are never offered or
// asked for by peers).
var hostID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b)) + " " + ns
})

// segmentsBlocked tells whether a failure to open a peer's segment means this worker cannot
// open that peer's segments at all (no permission, or no such process here), rather than that
// the segment was closed since the peer answered (its descriptor gone or reused: the value
// was spilled or dropped meanwhile).
func segmentsBlocked(err error, pid int) bool {
	if errors.Is(err, os.ErrPermission) {
		return true
	}
	_, serr := os.Stat(procRoot + "/" + strconv.Itoa(pid))
	return serr != nil
}

// closeFds closes descriptors this process owns.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
