package worker

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
	"weak"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// Shared-memory windows (docs/protocol.md §3.5): large payload frames of a run message do not
// travel through the executor's socket. The worker writes each into a window — a memfd it
// created and passed to the executor once with SCM_RIGHTS — and the run message carries an
// empty frame in its place and says which window holds it. The executor keeps every window
// mapped and builds the task's arguments over that mapping without copying (numpy arrays from
// pickle-5 buffers, Arrow buffers), so a window is busy as long as Python objects refer to it;
// the executor says in a later answer when it is free again, and only then does the worker
// write into it again.
//
// Why windows are reused rather than made per transfer: on the machines we measured, the
// first touch of fresh memory (page faults, and zeroing for shared memory) costs several times
// the copy itself (~0.5–1 ms per MB against ~0.07 ms per MB for memcpy), so a fresh buffer per
// transfer on either side of the socket cost more than the socket. A reused window is written
// into pages that already exist, through the worker's own mapping of it (shmWindow.write), and
// read by the executor through a mapping whose page tables are already filled: one memory copy
// in all. The worker's mapping lives as long as the window's descriptor.
//
// The worker's store never holds mapped memory: its values are borrowed without reference
// counts (peer sends queue them for a writer goroutine, Go tasks decode Arrow over them), so
// memory that can be unmapped or rewritten has no place there. Results that come back in
// shared memory (segments, segment.go) are kept as descriptors, never mapped by the worker.
// The worker maps a window only to copy into it: its store never sees that mapping.
var (
	// shmMinFrame is the size from which a payload frame goes through a window.
	shmMinFrame = 1 << 20
	// shmMaxBytes and shmMaxWindows bound the windows of one executor; beyond them, frames
	// go through the socket.
	shmMaxBytes   int64 = 1 << 30
	shmMaxWindows       = 16
	// shmEnabled turns windows off when false (SHOAL_EXECUTOR_SHM=0, or a test).
	shmEnabled = os.Getenv("SHOAL_EXECUTOR_SHM") != "0"
)

// shmIdleBytes is how many bytes of free windows an executor keeps mapped for reuse
// (SHOAL_EXECUTOR_SHM_IDLE): a sixteenth of the worker's memory limit, at most 256 MiB, so that
// a worker with a small limit does not hold much memory for transfers that may not come.
func shmIdleBytes(limit int64) int64 {
	if limit <= 0 {
		limit = DefaultMemoryLimit
	}
	return min(limit/16, 256<<20)
}

// shmWindow is one window of an executor.
type shmWindow struct {
	id   uint64
	fd   int
	size int64
	busy bool // written for a run and not yet reported free by the executor, or prefilled
	sent bool // the executor has its descriptor (a run's shm_new introduced it)
	// writing is set while a fetch writes into the window (prefill.go); a window that is
	// dropped meanwhile is orphaned, and closed when the writing ends.
	writing, orphan bool
	pre             *prefilled // the frame a prefill copied into it, until a run takes it
	// mem is the worker's mapping of the window, made by its first write and removed when the
	// window is closed; noMap says the mapping failed, and writes use pwrite(2).
	mem    []byte
	noMap  bool
	closed bool // its descriptor is closed: a message not yet sent cannot use it
}

// write copies b into the window at offset off; only the window's writer calls it (writing
// is set, or the window is not yet in the set). The first write maps the window (shared) and
// every write copies into the mapping, whose page tables stay filled for the next: a copy into
// pages already mapped costs about 60 % of pwrite(2), which looks up every page of the memfd
// (200 MB: 29 ms against 50 here, docs/performance.md). The mapping is not populated up front:
// the first copy into a new window faults its pages in as it goes, as pwrite allocated them,
// so a prefill's first chunk does not wait for the whole window. A mapping that cannot be made
// leaves pwrite. A fault while copying (the memory for the window's pages could not be had) is
// an error, not a crash.
func (w *shmWindow) write(b []byte, off int64) (err error) {
	if off < 0 || off+int64(len(b)) > w.size {
		return fmt.Errorf("%d bytes at %d do not fit a window of %d", len(b), off, w.size)
	}
	if w.mem == nil && !w.noMap {
		mem, err := unix.Mmap(w.fd, 0, int(w.size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			w.noMap = true
		} else {
			w.mem = mem
		}
	}
	if w.mem == nil {
		return pwriteAt(w.fd, b, off)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fault copying into the window: %v", r)
		}
	}()
	copy(w.mem[off:], b)
	return nil
}

// closeWindow removes the worker's mapping of a window and closes its descriptor; the window's
// writer, if any, is done.
func closeWindow(w *shmWindow) {
	if w.mem != nil {
		unix.Munmap(w.mem)
		w.mem = nil
	}
	w.closed = true
	closeWindowFd(w.fd)
}

// prefilled is a fetched frame a window holds a copy of (prefill.go), known by a weak pointer
// to its first byte and its length: it does not keep the frame's buffer alive, and once the
// buffer is unreachable (its value deleted or spilled) the pointer is nil for good, even when
// the buffer pool's finalizer recycles the buffer for another value.
type prefilled struct {
	first weak.Pointer[byte]
	n     int
	at    time.Time
}

// of tells whether f is the prefilled frame.
func (p *prefilled) of(f []byte) bool {
	return len(f) == p.n && p.n > 0 && p.first.Value() == &f[0]
}

// prefillTTL is how long a prefilled window waits for a run to take it before it counts as
// free again (its task ran on another executor, or not at all).
const prefillTTL = 30 * time.Second

// execWindows is an executor's set of windows. The goroutine running a task on the executor
// (or discarding it) and the fetches that prefill its windows use it, under mu.
type execWindows struct {
	mu    sync.Mutex
	ok    bool // the executor announced support in ready and memfd_create works
	next  uint64
	total int64
	wins  []*shmWindow
}

// unsent is the bytes of fetched frames copied into windows the executor has not been given
// yet (prefill.go): they are in no process's resident set the memory monitor reads (the
// worker's own mapping of a window is shared memory, which it leaves out of its own count,
// and the executor has not mapped it), so the monitor adds them.
func (ws *execWindows) unsent() int64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.expireLocked() // a prefill whose value is gone (spilled, deleted) or too old is freed
	var n int64
	for _, w := range ws.wins {
		if !w.sent && !w.closed && w.pre != nil {
			n += int64(w.pre.n)
		}
	}
	return n
}

// shmPlacement says where the executor finds payload frame Frame: bytes [0, Len) of window
// Window.
type shmPlacement struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack  struct{} `msgpack:",as_array"`
	Frame     int
	Window    uint64
	Len       int
	prefilled bool // the window held the frame already (prefill.go); not sent
}

// shmNew introduces a window; its descriptor travels with the message (SCM_RIGHTS), in the
// order of these entries.
type shmNew struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack struct{} `msgpack:",as_array"`
	Window   uint64
	Size     int64
}

// windowSize rounds n up to 1/16 of its power of two (at least 1 MiB), so that values of about
// the same size reuse the same window.
func windowSize(n int) int64 {
	g := max(int64(1)<<max(bits.Len64(uint64(n))-5, 0), 1<<20)
	return (int64(n) + g - 1) / g * g
}

// pick returns a free window for an n-byte frame, creating one when none fits well and the
// limits allow; nil means the frame goes through the socket. created tells whether the window
// is new (its descriptor must be sent).
func (ws *execWindows) pick(n int) (w *shmWindow, created bool, err error) {
	var best, loose *shmWindow
	for _, c := range ws.wins {
		if c.busy || c.writing || c.size < int64(n) {
			continue
		}
		if c.size <= 4*int64(n) && (best == nil || c.size < best.size) {
			best = c
		}
		if loose == nil || c.size < loose.size {
			loose = c
		}
	}
	if best != nil {
		return best, false, nil
	}
	size := windowSize(n)
	if len(ws.wins) < shmMaxWindows && ws.total+size <= shmMaxBytes {
		fd, err := newMemfd("shoal-window", 0, size)
		if err != nil {
			return nil, false, err
		}
		ws.next++
		w = &shmWindow{id: ws.next, fd: fd, size: size}
		ws.wins = append(ws.wins, w)
		ws.total += size
		return w, true, nil
	}
	return loose, false, nil
}

// newMemfd creates a memfd named name of size bytes (sparse: pages are allocated when
// written), close-on-exec, with the further memfd_create flags given.
func newMemfd(name string, flags int, size int64) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|flags)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate memfd: %w", err)
	}
	return fd, nil
}

// pwriteAt writes b at offset off of fd.
func pwriteAt(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := syscall.Pwrite(fd, b, off)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("pwrite wrote nothing")
		}
		b = b[n:]
		off += int64(n)
	}
	return nil
}

// place moves the large frames of a run message into windows: it returns the frames to send
// (an empty frame where a window holds one), the placements and new windows for the header,
// and the descriptors to pass (duplicates, the caller's to close once the message is sent).
// A failure to create or write a window turns windows off for this executor; the frames
// concerned go through the socket.
func (ws *execWindows) place(frames [][]byte) (out [][]byte, at []shmPlacement, news []shmNew, fds []int, err error) {
	type write struct {
		w *shmWindow
		f []byte
	}
	var writes []write
	var placed []*shmWindow
	ws.mu.Lock()
	ws.expireLocked()
	if !ws.ok {
		ws.mu.Unlock()
		return frames, nil, nil, nil, nil
	}
	for i, f := range frames {
		if len(f) < shmMinFrame {
			continue
		}
		w := ws.prefilledLocked(f) // a fetch copied it here already
		pre := w != nil
		if pre {
			w.pre = nil
		} else {
			if w, _, err = ws.pick(len(f)); err != nil {
				ws.ok = false
				break
			}
			if w == nil {
				continue
			}
			w.busy, w.writing = true, true
			writes = append(writes, write{w, f})
		}
		if !w.sent {
			w.sent = true
			news = append(news, shmNew{Window: w.id, Size: w.size})
			fds = append(fds, w.fd)
		}
		if out == nil {
			out = append([][]byte(nil), frames...)
		}
		out[i] = []byte{}
		at = append(at, shmPlacement{Frame: i, Window: w.id, Len: len(f), prefilled: pre})
		placed = append(placed, w)
	}
	ws.mu.Unlock()
	// the copies are made without the lock: a fetch prefilling another window of this
	// executor (prefill.go) does not wait for them
	for _, wr := range writes {
		if err == nil {
			if werr := wr.w.write(wr.f, 0); werr != nil {
				err = fmt.Errorf("writing a shared-memory window: %w", werr)
				ws.mu.Lock()
				ws.ok = false
				ws.mu.Unlock()
			}
		}
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, wr := range writes {
		wr.w.writing = false
		if wr.w.orphan { // dropped meanwhile (the executor is going)
			closeWindow(wr.w)
		}
	}
	gone := false
	for _, w := range placed { // a window closed meanwhile, prefilled ones too: the message cannot use it
		gone = gone || w.closed
	}
	if err != nil || gone {
		ws.unplaceLocked(at, news)
		return frames, nil, nil, nil, err
	}
	// the message carries duplicates, which the caller closes once it is sent: a window
	// dropped before then (the executor going) closes its own descriptor, whose number could
	// otherwise be reused and another file passed
	for i, fd := range fds {
		dup, derr := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if derr != nil {
			closeFds(fds[:i])
			ws.unplaceLocked(at, news)
			return frames, nil, nil, nil, fmt.Errorf("duplicating a window's descriptor: %w", derr)
		}
		fds[i] = dup
	}
	if out == nil {
		out = frames
	}
	return out, at, news, fds, nil
}

// unplace undoes place for a message that was not sent: new windows are forgotten (the
// executor never got them) and the others are free again.
func (ws *execWindows) unplace(at []shmPlacement, news []shmNew) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.unplaceLocked(at, news)
}

func (ws *execWindows) unplaceLocked(at []shmPlacement, news []shmNew) {
	for _, n := range news { // the executor never got them
		ws.drop(n.Window)
	}
	for _, p := range at {
		for _, w := range ws.wins {
			if w.id == p.Window {
				w.busy = false
			}
		}
	}
}

// update applies an executor's report: windows now free, windows it unmapped.
func (ws *execWindows) update(x execExt) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	defer ws.expireLocked()
	for _, id := range x.Free {
		for _, w := range ws.wins {
			if w.id == id {
				w.busy = false
			}
		}
	}
	for _, id := range x.Drop {
		ws.drop(id)
	}
}

func (ws *execWindows) drop(id uint64) {
	for i, w := range ws.wins {
		if w.id == id {
			ws.close(w)
			ws.total -= w.size
			ws.wins = append(ws.wins[:i], ws.wins[i+1:]...)
			return
		}
	}
}

// closeAll releases every window (the executor is gone or going).
func (ws *execWindows) closeAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, w := range ws.wins {
		ws.close(w)
	}
	ws.wins, ws.total, ws.ok = nil, 0, false
}

// close closes a window that is being forgotten, or orphans it while a fetch writes into it.
func (ws *execWindows) close(w *shmWindow) {
	if w.writing {
		w.orphan = true
		return
	}
	closeWindow(w)
}

// execExt holds the fields of executor messages that are not part of wire.Msg.
type execExt struct {
	SHM      int        `msgpack:"shm"`        // in ready: the window protocol version the executor speaks (1)
	Segments int        `msgpack:"segments"`   // in ready: 1 when the executor takes segments in run
	Free     []uint64   `msgpack:"shm_free"`   // windows free again
	Drop     []uint64   `msgpack:"shm_drop"`   // windows the executor unmapped
	Seg      []segPlace `msgpack:"seg"`        // in done: the result's frames held in the segment passed with it
	Res      []resPlace `msgpack:"res"`        // in done: the result's frames the executor keeps (resident.go)
	Keep     *keepProbe `msgpack:"keep_probe"` // in ready: the probe of the executor's memory (address, bytes)
	Batch    int        `msgpack:"batch"`      // in ready: 1 when the executor takes runs and answers with dones
	fds      []int      // the descriptors passed with the message (execConn.recvExt)
	batched  bool       // the answer came in a dones message (execConn.recvExt)
}

// wantFds is how many descriptors the message declares: one segment when it has placements.
func (x *execExt) wantFds() int {
	if len(x.Seg) > 0 {
		return 1
	}
	return 0
}

// decodeExt reads the extension fields of an executor's header (the generic path).
func decodeExt(hdr []byte) (execExt, error) {
	var x execExt
	err := wire.UnmarshalExt(hdr, &x)
	return x, err
}

// runSegPlace says where the executor finds payload frame Frame of a run: bytes [Off,
// Off+Len) of the N-th segment passed with the message (after the windows of shm_new).
type runSegPlace struct {
	//lint:ignore U1000 msgpack reads this field's tag (encode as an array)
	_msgpack struct{} `msgpack:",as_array"`
	Frame    int
	N        int
	Off      int64
	Len      int64
}

// appendRunExt adds the window and segment fields to an encoded run header (a msgpack map).
func appendRunExt(hdr []byte, at []shmPlacement, news []shmNew, segs []runSegPlace) ([]byte, error) {
	kv := map[string]any{}
	if len(at) > 0 {
		kv["shm"] = at
	}
	if len(news) > 0 {
		kv["shm_new"] = news
	}
	if len(segs) > 0 {
		kv["seg"] = segs
	}
	if len(kv) == 0 {
		return hdr, nil
	}
	b, err := growMap(hdr, len(kv))
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"shm", "shm_new", "seg"} {
		v, ok := kv[k]
		if !ok {
			continue
		}
		kb, _ := msgpack.Marshal(k)
		vb, err := msgpack.Marshal(v)
		if err != nil {
			return nil, err
		}
		b = append(append(b, kb...), vb...)
	}
	return b, nil
}

// appendExt returns the encoded header map hdr with key: v added.
func appendExt(hdr []byte, key string, v any) ([]byte, error) {
	b, err := growMap(hdr, 1)
	if err != nil {
		return nil, err
	}
	kb, _ := msgpack.Marshal(key)
	vb, err := msgpack.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(append(b, kb...), vb...), nil
}

// growMap returns a copy of the encoded msgpack map b with room for add more entries
// appended at its end (b must hold exactly one map).
func growMap(b []byte, add int) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("empty header")
	}
	var n int
	var body []byte
	switch c := b[0]; {
	case c >= 0x80 && c <= 0x8f:
		n, body = int(c&0x0f), b[1:]
	case c == 0xde && len(b) >= 3:
		n, body = int(b[1])<<8|int(b[2]), b[3:]
	case c == 0xdf && len(b) >= 5:
		n, body = int(b[1])<<24|int(b[2])<<16|int(b[3])<<8|int(b[4]), b[5:]
	default:
		return nil, errors.New("header is not a msgpack map")
	}
	n += add
	out := make([]byte, 0, len(body)+5+256)
	if n <= 0xffff {
		out = append(out, 0xde, byte(n>>8), byte(n))
	} else {
		out = append(out, 0xdf, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(out, body...), nil
}

// setUsable records whether the executor takes windows (its ready message says).
func (ws *execWindows) setUsable(ok bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.ok = ok
}

// usable tells whether large frames may go through windows.
func (ws *execWindows) usable() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.ok
}

// prefilledLocked returns the window holding a prefilled copy of frame f, or nil.
func (ws *execWindows) prefilledLocked(f []byte) *shmWindow {
	for _, w := range ws.wins {
		if w.pre != nil && w.pre.of(f) {
			return w
		}
	}
	return nil
}

// expireLocked frees the windows of prefills no run will take: their frame's buffer is gone,
// or prefillTTL passed. A window the executor never got is dropped: its pages are not kept for
// a transfer that may not come (the executor's own idle limit, shm_drop, only sees windows it
// has).
func (ws *execWindows) expireLocked() {
	var drop []uint64
	for _, w := range ws.wins {
		if w.pre == nil || (w.pre.first.Value() != nil && time.Since(w.pre.at) <= prefillTTL) {
			continue
		}
		w.pre, w.busy = nil, false
		if !w.sent {
			drop = append(drop, w.id)
		}
	}
	for _, id := range drop {
		ws.drop(id)
	}
}

// holds tells whether a window holds a prefilled copy of one of frames.
func (ws *execWindows) holds(frames [][]byte) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.expireLocked()
	for _, f := range frames {
		if len(f) >= shmMinFrame && ws.prefilledLocked(f) != nil {
			return true
		}
	}
	return false
}

// reserve returns a window that a fetch may write an n-byte frame into, busy and marked as
// being written until filled or cancel; nil when there is none to spare.
func (ws *execWindows) reserve(n int) *shmWindow {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.expireLocked()
	if !ws.ok {
		return nil
	}
	w, _, err := ws.pick(n)
	if err != nil || w == nil || w.size > 4*int64(n) {
		return nil // pick's fallback, a window too large to fit well, is not for a guess
	}
	w.busy, w.writing = true, true
	return w
}

// filled records that w holds a copy of frame, for a run to take (place).
func (ws *execWindows) filled(w *shmWindow, frame []byte) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.writing = false
	if w.orphan {
		closeWindow(w)
		return
	}
	w.pre = &prefilled{first: weak.Make(&frame[0]), n: len(frame), at: time.Now()}
}

// cancel gives back a window reserved for a copy that did not complete (or that no run will
// take); a window the executor never got is dropped.
func (ws *execWindows) cancel(w *shmWindow) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.writing, w.busy = false, false
	switch {
	case w.orphan:
		closeWindow(w)
	case !w.sent:
		ws.drop(w.id)
	}
}

// closeWindowFd closes a window's descriptor (a variable for the tests, which count them).
var closeWindowFd = func(fd int) { unix.Close(fd) }
