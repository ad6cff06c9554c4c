package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Kept results (docs/protocol.md §3.5, "Kept results"). A Python task's large numpy array
// result is not written anywhere when it is made: the executor keeps the array object and
// answers with where its bytes are in its memory (`res`). The store holds such a value as a
// resident: its frames are the pickle and empty placeholders, and the bytes stay in the
// executor. Then:
//
//   - a run on the same executor names the value (`res` in the run) and gets the object
//     itself, as a task in dask's worker gets the objects its process holds: no copy, no
//     mapping, no unpickling;
//   - anything else that needs the bytes (a run on another executor, a peer, a client, a Go
//     task, spilling) exports the value first: the worker copies the bytes out of the
//     executor's memory with process_vm_readv(2) into a sealed memfd of its own, and from
//     then on the value is an ordinary segment (segment.go); the executor is told to forget
//     its copy;
//   - when the value is dropped, the executor is told to forget it, at once, through a socket
//     a thread of its own reads (so memory is freed while a task runs there) — but not while
//     a run that names it is unanswered (resident.uses);
//   - when the executor dies, its residents are lost: the worker drops them and tells the
//     scheduler (missing_data about itself), which recomputes them from their lineage.
//
// Exporting reads memory the executor must not free meanwhile: a resident is forgotten only
// by drop, which waits for an export in progress (resident.mu). Reading the memory of a dead
// executor whose pid was reused would read another process: the reaper marks the executor
// dead (executor.mem) after it has exited and before it is waited for, which is what frees
// its pid, and an export holds executor.mem for reading.

// resPlace says where frame Frame of a kept result is in its executor's memory: Len bytes at
// Addr, or, with Row > 0, Len/Row rows of Row bytes, Stride bytes apart from Addr on (a view
// of whole rows of a larger array, as dask's slices are: kept without making it contiguous).
type resPlace struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack    struct{} `msgpack:",as_array"`
	Frame       int
	Addr        uint64
	Len         int64
	Row, Stride int64
}

// resRowMin is the shortest row a kept view may have (the executor's KEEP_ROW_MIN): shorter
// rows would be read a few bytes per piece.
const resRowMin = 4096

// rows returns how many rows p has and how long each is.
func (p resPlace) rows() (n, row int64) {
	if p.Row <= 0 {
		return 1, p.Len
	}
	return p.Len / p.Row, p.Row
}

// readAt fills b with bytes [off, off+len(b)) of p's frame from process pid.
func (p resPlace) readAt(pid int, b []byte, off int64) error {
	if p.Row <= 0 {
		return vmRead(pid, b, p.Addr+uint64(off))
	}
	// Pieces of rows, at most 512 (below IOV_MAX) and 1 GiB (the kernel moves at most ~2 GiB
	// per call) per call, made as they are read.
	const maxPieces, maxBytes = 512, 1 << 30
	remote := make([]unix.RemoteIovec, 0, min(maxPieces, len(b)/int(p.Row)+2))
	for len(b) > 0 {
		remote = remote[:0]
		n := 0
		for n < len(b) && len(remote) < maxPieces && n < maxBytes {
			r, in := off/p.Row, off%p.Row
			k := int(min(p.Row-in, int64(len(b)-n), int64(maxBytes-n)))
			remote = append(remote, unix.RemoteIovec{Base: uintptr(p.Addr + uint64(r*p.Stride+in)), Len: k})
			off, n = off+int64(k), n+k
		}
		if err := vmReadv(pid, b[:n], remote); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// resident is a value whose large frames are kept in the memory of the executor that made it.
type resident struct {
	p  *executorPool
	ex *executor
	id uint64 // the run that made it: the executor keeps it under this id
	at []resPlace

	mu      sync.Mutex
	seg     *Segment // the export, once made
	dropped bool     // dropped from the store: forgotten once no run uses it
	uses    int      // runs sent to the executor naming it, not answered yet
}

// keepEnabled: executors keep large results (SHOAL_EXECUTOR_KEEP=0 turns it off).
var keepEnabled = os.Getenv("SHOAL_EXECUTOR_KEEP") != "0"

// errResidentLost is what exporting a value whose executor died (or whose memory cannot be
// read) gives.
var errResidentLost = errors.New("the Python executor holding the value died")

// depError is a run's error for a dependency that could not be had: a value lost with the
// executor that kept it fails the task as an executor death (the scheduler runs it again, and
// recomputes the value from the worker's missing_data), anything else as a bad argument.
func depError(dep string, err error) *wire.Error {
	if errors.Is(err, errResidentLost) {
		return &wire.Error{Code: wire.CodeExecutorDied, Type: "ExecutorDied",
			Message: fmt.Sprintf("dependency %q: %v", dep, err)}
	}
	return &wire.Error{Code: wire.CodeTaskError, Type: "ArgumentError", Message: fmt.Sprintf("dependency %q: %v", dep, err)}
}

// newResident checks the placements of a kept result for a value of the given frames (the
// frames kept must be empty placeholders, and no longer than the frame limit).
func newResident(p *executorPool, ex *executor, id uint64, at []resPlace, frames [][]byte, maxFrame int64) (*resident, error) {
	if len(at) == 0 {
		return nil, errors.New("a kept result that names no frame")
	}
	seen := make(map[int]bool, len(at))
	for _, p := range at {
		n, row := p.rows()
		bad := p.Frame < 0 || p.Frame >= len(frames) || seen[p.Frame] || len(frames[p.Frame]) != 0 ||
			p.Len <= 0 || p.Len > maxFrame || p.Addr == 0 || p.Row < 0
		if !bad && p.Row > 0 { // whole rows of at least resRowMin, not overlapping, all inside the address space
			bad = p.Row < resRowMin || p.Len%p.Row != 0 || p.Stride < p.Row || p.Stride > maxFrame ||
				p.Addr > ^uint64(0)-uint64(row) || uint64(n-1) > (^uint64(0)-p.Addr-uint64(row))/uint64(p.Stride)
		} else if !bad {
			bad = p.Addr > ^uint64(0)-uint64(p.Len)
		}
		if bad {
			return nil, fmt.Errorf("bad kept-result placement [%d, %#x, %d, %d, %d] for %d frames",
				p.Frame, p.Addr, p.Len, p.Row, p.Stride, len(frames))
		}
		seen[p.Frame] = true
	}
	return &resident{p: p, ex: ex, id: id, at: at}, nil
}

// bytes is how many bytes of the value's frames the executor holds.
func (r *resident) bytes() int64 {
	var n int64
	for _, p := range r.at {
		n += p.Len
	}
	return n
}

// export copies the value's bytes out of the executor into a segment (once: later calls
// return the same segment, which the store owns once it has taken it).
func (r *resident) export(frames [][]byte) (*Segment, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seg != nil {
		return r.seg, nil
	}
	if r.dropped {
		return nil, errSegmentGone
	}
	seg, err := r.ex.readOut(r.at, frames)
	if err != nil {
		return nil, err
	}
	r.p.keptExported.Add(1)
	r.seg = seg
	return seg, nil
}

// drop has the executor forget the value (once), after any export in progress, and once no
// run that names it is unanswered.
func (r *resident) drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.dropped {
		r.dropped = true
		if r.uses == 0 {
			r.ex.forget(r.id)
		}
	}
}

// use marks the value in use by a run for its executor: it is not forgotten before unuse. It
// reports false, marking nothing, when the value was dropped.
func (r *resident) use() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dropped {
		return false
	}
	r.uses++
	return true
}

// unuse ends a use (the run was answered, or never sent).
func (r *resident) unuse() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.uses--; r.uses == 0 && r.dropped {
		r.ex.forget(r.id)
	}
}

// spill writes the value's spill file (store.go) with the kept bytes read straight out of
// the executor, a chunk at a time.
func (r *resident) spill(path, enc string, frames [][]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dropped {
		return errSegmentGone
	}
	lens, kept := placed(frames, r.at)
	r.ex.mem.RLock()
	defer r.ex.mem.RUnlock()
	if r.ex.mem.dead {
		return errResidentLost
	}
	return writeSpillWith(path, enc, frames, lens, func(f *os.File, hdr []byte) error {
		return writeFramesFrom(f, hdr, frames, kept, func(p resPlace, buf []byte) error {
			for off := int64(0); off < p.Len; {
				b := buf[:min(int64(len(buf)), p.Len-off)]
				if err := p.readAt(r.ex.pid, b, off); err != nil {
					return fmt.Errorf("%w: reading a kept result out of it (pid %d): %v", errResidentLost, r.ex.pid, err)
				}
				if _, err := f.Write(b); err != nil {
					return err
				}
				off += int64(len(b))
			}
			return nil
		})
	})
}

// resAlign is the alignment of frames in an exported segment (the executor's SEG_ALIGN):
// arrays unpickled over the mapping are aligned for any dtype.
const resAlign = 64

// readOut copies the frames at placements at out of the executor's memory into a new sealed
// memfd, and returns it as the segment of a value of the given frames.
func (ex *executor) readOut(at []resPlace, frames [][]byte) (*Segment, error) {
	ex.mem.RLock()
	defer ex.mem.RUnlock()
	if ex.mem.dead {
		return nil, errResidentLost
	}
	places := make([]segPlace, len(at))
	var size int64
	for i, p := range at {
		size = (size + resAlign - 1) &^ (resAlign - 1)
		places[i] = segPlace{Frame: p.Frame, Off: size, Len: p.Len}
		size += p.Len
	}
	fd, err := newMemfd("shoal-kept", unix.MFD_ALLOW_SEALING, size)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "shoal-kept")
	fail := func(err error) (*Segment, error) {
		f.Close()
		return nil, err
	}
	// The mapping exists only while the bytes are copied, before anyone else has the memfd:
	// the worker never maps a segment it hands out (segment.go).
	m, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("mapping a memfd of %d bytes: %w", size, err))
	}
	for i, p := range at {
		if err := p.readAt(ex.pid, m[places[i].Off:places[i].Off+p.Len], 0); err != nil {
			unix.Munmap(m)
			return fail(fmt.Errorf("%w: reading a kept result out of it (pid %d): %v", errResidentLost, ex.pid, err))
		}
	}
	if err := unix.Munmap(m); err != nil {
		return fail(fmt.Errorf("munmap: %w", err))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS,
		unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		return fail(fmt.Errorf("sealing a memfd: %w", err))
	}
	seg, err := newSegment(f, places, frames)
	if err != nil {
		return fail(err)
	}
	return seg, nil
}

// vmRead fills b from address addr of process pid.
func vmRead(pid int, b []byte, addr uint64) error {
	for len(b) > 0 {
		n := min(len(b), 1<<30) // the kernel moves at most ~2 GiB per call
		if err := vmReadv(pid, b[:n], []unix.RemoteIovec{{Base: uintptr(addr), Len: n}}); err != nil {
			return err
		}
		b, addr = b[n:], addr+uint64(n)
	}
	return nil
}

// vmReadv fills b from the pieces of pid's memory in remote (as many bytes as b holds): one
// process_vm_readv, again if a signal interrupts it. Reading less is an error: part of the
// memory is not there (unmapped, or the process is gone).
func vmReadv(pid int, b []byte, remote []unix.RemoteIovec) error {
	local := []unix.Iovec{{Base: unsafe.SliceData(b)}}
	local[0].SetLen(len(b))
	for {
		got, err := unix.ProcessVMReadv(pid, local, remote, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case got != len(b):
			return fmt.Errorf("process_vm_readv read %d of %d bytes", got, len(b))
		}
		return nil
	}
}

// keepProbe is an executor's ready field keep_probe: bytes at an address of its memory.
type keepProbe struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack struct{} `msgpack:",as_array"`
	Addr     uint64
	Bytes    []byte
}

// probeKeep checks that the worker can read the executor's memory, from the probe its ready
// message gave.
func (ex *executor) probeKeep(probe *keepProbe) bool {
	if probe == nil || len(probe.Bytes) == 0 || len(probe.Bytes) > 64 || probe.Addr == 0 {
		return false
	}
	got := make([]byte, len(probe.Bytes))
	if vmRead(ex.pid, got, probe.Addr) != nil {
		return false
	}
	return string(got) == string(probe.Bytes)
}

// forgetWait bounds a write of ids to forget: an executor that reads none for that long (its
// forgetting thread starved of the GIL by a task that never releases it) keeps those values
// until it exits, which is logged.
const forgetWait = time.Second

// forget has ex drop kept result id at once, through its forget socket (fd 4 in the executor,
// read by a thread of its own): the value's memory is freed while a task runs there.
func (ex *executor) forget(id uint64) {
	ex.forgets.Lock()
	defer ex.forgets.Unlock()
	if ex.forgets.f == nil {
		return
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], id)
	ex.forgets.f.SetWriteDeadline(time.Now().Add(forgetWait))
	if _, err := ex.forgets.f.Write(b[:]); err != nil && !ex.isDead() && ex.log != nil {
		ex.log.Warn("a Python executor did not take a kept result to forget; it holds it until it exits",
			"pid", ex.pid, "err", err)
	}
}

// keptBy returns the bytes of values each executor keeps (not exported yet).
func (s *Store) keptBy() map[*executor]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[*executor]int64)
	for _, v := range s.mu.m {
		if v.res != nil {
			out[v.res.ex] += v.res.bytes()
		}
	}
	return out
}

// residentsLost handles the kept results of an executor that died: they are dropped from the
// store, the tasks here that needed them are dropped, and the scheduler is told this worker
// no longer holds them (it recomputes them from their lineage and sends those tasks again).
func (w *Worker) residentsLost(ex *executor) {
	keys := w.store.dropResidents(ex)
	if len(keys) == 0 || w.closed.Load() {
		return
	}
	w.log.Warn("results kept in a dead Python executor are lost; the scheduler recomputes them",
		"pid", ex.pid, "keys", len(keys))
	lost := make(map[string]bool, len(keys))
	for _, k := range keys {
		lost[k] = true
	}
	w.mu.Lock()
	var drop []*task
	for _, ts := range w.mu.tasks {
		if ts.state != stateReady && ts.state != stateFetching {
			continue
		}
		for _, d := range ts.t.Deps {
			if lost[d] {
				drop = append(drop, ts)
				break
			}
		}
	}
	for _, ts := range drop {
		w.dropTaskLocked(ts)
	}
	w.mu.cond.Broadcast()
	w.mu.Unlock()
	for _, k := range keys {
		w.send(&wire.Msg{Op: wire.OpMissingData, Key: k, Worker: w.dataAddr})
	}
}

// openForgets makes the socket pair ex's kept results are forgotten through: the worker's end
// (non-blocking, so that its writes have a deadline) and the end to pass to the executor.
func (ex *executor) openForgets() (theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, err
	}
	ex.forgets.f = os.NewFile(uintptr(fds[0]), "executor-forget")
	return os.NewFile(uintptr(fds[1]), "executor-forget-end"), nil
}

// closeForgets closes the worker's end of the forget socket (the executor has exited).
func (ex *executor) closeForgets() {
	ex.forgets.Lock()
	defer ex.forgets.Unlock()
	if ex.forgets.f != nil {
		ex.forgets.f.Close()
		ex.forgets.f = nil
	}
}

// isDead reports whether the executor has exited.
func (ex *executor) isDead() bool {
	ex.mem.RLock()
	defer ex.mem.RUnlock()
	return ex.mem.dead
}

// roomToKeep reports whether executors may keep results: while the worker and its executors use
// less than half of the memory at which the monitor spills. Under memory pressure results are
// written out as they are made, as shared memory the worker spills or hands over by itself:
// a kept result's memory is freed only once its executor has been told to forget it, and
// the memory-pressure workload (benchmarks/run.py, 7) peaked at 1,378 MiB with keeping against
// 1,091 MiB without.
func (w *Worker) roomToKeep() bool {
	if w.memLimit <= 0 || w.cfg.ProcessSpillFraction <= 0 {
		return true
	}
	used := w.mem.process.Load()
	return used >= 0 && float64(used) < 0.5*w.cfg.ProcessSpillFraction*float64(w.memLimit)
}
