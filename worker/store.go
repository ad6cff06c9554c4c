package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Entry is a stored value as handed out by the Store. Frames and Obj are shared and must
// not be modified.
type Entry struct {
	Encoding string
	Frames   [][]byte
	NBytes   int64
	Obj      any // cached decoded object (e.g. an arrow.Table), or nil
	// Seg is the shared-memory segment holding some of the frames (segment.go), only from
	// GetRef: those frames are then empty in Frames. The store may close it at any time.
	Seg *Segment
	// Res is the executor keeping some of the frames (resident.go), only from GetRun: those
	// frames are then empty in Frames.
	Res *resident
	v   *value
}

type value struct {
	key    string
	enc    string
	frames [][]byte  // nil while spilled; with seg, the frames it holds are empty
	seg    *Segment  // the memfd holding the large frames, or nil
	res    *resident // the executor keeping the large frames, or nil (resident.go)
	nbytes int64
	obj    any
	path   string // spill file, "" while in memory

	prev, next *value // in the LRU (lruList), or both nil
}

// lruList is a doubly linked list of in-memory values, most recently used first, linked
// through the values themselves: no list element is allocated per stored value (one was 8 %
// of a worker's allocations running the million-task graph of benchmarks/million.py).
type lruList struct {
	root value // root.next is the front, root.prev the back
	n    int
}

func (l *lruList) init() { l.root.next, l.root.prev = &l.root, &l.root }

func (l *lruList) Len() int { return l.n }

// PushFront puts v at the front; v must not be in the list.
func (l *lruList) PushFront(v *value) {
	v.prev, v.next = &l.root, l.root.next
	l.root.next.prev = v
	l.root.next = v
	l.n++
}

// Remove takes v out of the list; nothing when it is not in it.
func (l *lruList) Remove(v *value) {
	if v.next == nil {
		return
	}
	v.prev.next, v.next.prev = v.next, v.prev
	v.prev, v.next = nil, nil
	l.n--
}

// MoveToFront moves v to the front; nothing when it is not in the list.
func (l *lruList) MoveToFront(v *value) {
	if v.next == nil || l.root.next == v {
		return
	}
	l.Remove(v)
	l.PushFront(v)
}

// Back is the least recently used value, or nil.
func (l *lruList) Back() *value {
	if l.n == 0 {
		return nil
	}
	return l.root.prev
}

// Store holds task results by key with byte accounting. When more than spillAbove bytes are
// held in memory, least recently used values are written to dir (one file per value) and read
// back on demand. It is safe for concurrent use.
//
// A value may be segment-backed (PutSegment): its large frames are in a sealed memfd the store
// owns and closes when the value goes (Delete, replacement, spilling, Close). Its bytes count as
// memory. Get hands them out read into memory; GetRef hands out the segment itself.
type Store struct {
	dir        string
	spillAbove int64            // 0: never spill
	alloc      func(int) []byte // buffers segment bytes are read into (nil: make)

	// OnSpillError, when set, is told of a spill file that could not be written (set before use).
	OnSpillError func(path string, err error)

	spillMu sync.Mutex // one spiller at a time
	mu      struct {
		sync.Mutex
		m        map[string]*value
		lru      lruList // front: most recently used, in-memory values only
		memory   int64
		segments int64 // bytes of the memfds of segment-backed values (part of memory)
		kept     int64 // bytes of values kept in executors (part of memory; resident.go)
		spilled  int64
		nspills  int64
		nunspill int64
		seq      uint64
		closed   bool
		spillErr error     // the last failed spill write, while spilling is suspended
		spillAt  time.Time // when it failed
	}
}

// spillRetry is how long spilling stays suspended after a failed write (a full or broken
// disk is not written to again at every check; a freed one is used again).
const spillRetry = 30 * time.Second

// SpillError is why spilling is suspended (a write to the spill directory failed less than
// spillRetry ago), or nil.
func (s *Store) SpillError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spillErrLocked()
}

func (s *Store) spillErrLocked() error {
	if s.mu.spillErr != nil && time.Since(s.mu.spillAt) < spillRetry {
		return s.mu.spillErr
	}
	return nil
}

// ErrNotFound is returned for a key the store does not hold.
var ErrNotFound = errors.New("worker: key not in store")

// NewStore returns a store spilling into dir (which must exist) above spillAbove bytes held
// in memory; spillAbove 0 disables spilling.
func NewStore(dir string, spillAbove int64) *Store {
	s := &Store{dir: dir, spillAbove: spillAbove}
	s.mu.m = make(map[string]*value)
	s.mu.lru.init()
	return s
}

// Put stores (or replaces) key and returns its size. obj, when not nil, is kept as the
// decoded form of frames while the value is in memory. Put may spill other values.
func (s *Store) Put(key, enc string, frames [][]byte, obj any) int64 {
	return s.put(&value{key: key, enc: enc, frames: frames, nbytes: frameBytes(frames), obj: obj})
}

// PutSegment stores (or replaces) key with the frames seg holds (empty in frames) in seg, and
// returns its size. The store owns seg from now on, even if the store is closed.
func (s *Store) PutSegment(key, enc string, frames [][]byte, seg *Segment) int64 {
	return s.put(&value{key: key, enc: enc, frames: frames, seg: seg, nbytes: frameBytes(frames) + seg.bytes()})
}

// PutResident stores (or replaces) key with the frames res holds (empty in frames) kept in
// their executor's memory, and returns its size. The store drops res when the value goes.
// It stores nothing, and reports false, when that executor is dead (the value went with it).
func (s *Store) PutResident(key, enc string, frames [][]byte, res *resident) (int64, bool) {
	v := &value{key: key, enc: enc, frames: frames, res: res, nbytes: frameBytes(frames) + res.bytes()}
	return v.nbytes, s.put(v) >= 0
}

// put stores v and returns its size, or -1 when v is kept by an executor that is dead.
func (s *Store) put(v *value) int64 {
	s.mu.Lock()
	if v.res != nil && v.res.ex.isDead() {
		// checked under s.mu: the reaper marks the executor dead before it drops the values
		// it kept (dropResidents takes s.mu), so either it finds v or v is refused here
		s.mu.Unlock()
		return -1
	}
	if s.mu.closed {
		s.mu.Unlock()
		if v.seg != nil {
			v.seg.close()
		}
		if v.res != nil {
			v.res.drop()
		}
		return v.nbytes
	}
	if old := s.mu.m[v.key]; old != nil {
		s.removeLocked(old)
	}
	s.mu.m[v.key] = v
	s.mu.lru.PushFront(v)
	s.mu.memory += v.nbytes
	if v.seg != nil {
		s.mu.segments += v.seg.size
	}
	if v.res != nil {
		s.mu.kept += v.res.bytes()
	}
	s.mu.Unlock()
	s.maybeSpill()
	return v.nbytes
}

// Has reports whether key is held, in memory or spilled.
func (s *Store) Has(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.m[key] != nil
}

// Info returns a held value's encoding and size without loading it.
func (s *Store) Info(key string) (enc string, nbytes int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.mu.m[key]
	if v == nil {
		return "", 0, false
	}
	return v.enc, v.nbytes, true
}

// Get returns key's value, reading it back from disk when spilled. With restore, a spilled
// value moves back into memory (and may spill others); without it, it is read and left on
// disk (serving a peer should not evict what local tasks use). The frames of a segment-backed
// value are read into memory (a copy the caller owns).
func (s *Store) Get(key string, restore bool) (Entry, error) {
	alloc := s.alloc
	if alloc == nil {
		alloc = func(n int) []byte { return make([]byte, n) }
	}
	for {
		e, err := s.GetRef(key, restore)
		if err != nil || e.Seg == nil {
			return e, err
		}
		frames, err := e.Seg.read(e.Frames, alloc)
		if errors.Is(err, errSegmentGone) {
			continue // spilled, replaced or deleted meanwhile: look again
		}
		if err != nil {
			return Entry{}, fmt.Errorf("worker: reading %q: %w", key, err)
		}
		e.Frames, e.Seg = frames, nil
		return e, nil
	}
}

// GetRef is Get without reading a segment-backed value's frames: Entry.Seg holds them. The
// caller uses the segment only through its file (segment.go) and only while it needs it. A
// value kept in an executor (resident.go) is exported to a segment first.
func (s *Store) GetRef(key string, restore bool) (Entry, error) {
	return s.getRef(key, restore, false)
}

// GetRun is GetRef for a run: a value kept in an executor is not exported, Entry.Res says
// which executor holds it.
func (s *Store) GetRun(key string) (Entry, error) {
	return s.getRef(key, true, true)
}

func (s *Store) getRef(key string, restore, resOK bool) (Entry, error) {
	s.mu.Lock()
	v := s.mu.m[key]
	if v == nil {
		s.mu.Unlock()
		return Entry{}, ErrNotFound
	}
	for v.res != nil && !resOK {
		res, frames := v.res, v.frames
		s.mu.Unlock()
		if err := s.export(v, res, frames); err != nil {
			if errors.Is(err, errSegmentGone) {
				return s.getRef(key, restore, resOK) // dropped or replaced meanwhile: look again
			}
			return Entry{}, fmt.Errorf("worker: %q: %w", key, err)
		}
		s.mu.Lock()
		if s.mu.m[key] != v {
			s.mu.Unlock()
			return s.getRef(key, restore, resOK)
		}
	}
	if v.path == "" {
		s.mu.lru.MoveToFront(v)
		e := Entry{Encoding: v.enc, Frames: v.frames, NBytes: v.nbytes, Obj: v.obj, Seg: v.seg, Res: v.res, v: v}
		s.mu.Unlock()
		return e, nil
	}
	path := v.path
	s.mu.Unlock()

	enc, frames, err := readSpill(path)
	if err != nil {
		return Entry{}, fmt.Errorf("worker: reading spilled %q: %w", key, err)
	}
	e := Entry{Encoding: enc, Frames: frames, NBytes: frameBytes(frames), v: v}
	if !restore {
		return e, nil
	}
	s.mu.Lock()
	if s.mu.m[key] == v && v.path == path {
		v.frames, v.path = frames, ""
		s.mu.lru.PushFront(v)
		s.mu.spilled -= v.nbytes
		s.mu.memory += v.nbytes
		s.mu.nunspill++
		os.Remove(path)
	}
	s.mu.Unlock()
	s.maybeSpill()
	return e, nil
}

// export turns v, kept in an executor as res, into a segment-backed value (resident.go), and
// has the executor forget its copy.
func (s *Store) export(v *value, res *resident, frames [][]byte) error {
	seg, err := res.export(frames)
	if err != nil {
		return err
	}
	s.mu.Lock()
	installed := false
	if s.mu.m[v.key] == v && v.res == res {
		v.res, v.seg = nil, seg
		s.mu.segments += seg.size
		s.mu.kept -= res.bytes()
		installed = true
	}
	orphan := !installed && v.seg != seg // dropped before it was installed: nobody owns it
	s.mu.Unlock()
	if installed {
		res.drop()
	}
	if orphan {
		seg.close()
	}
	return nil
}

// dropResidents removes the values kept in ex (it died: they are gone) and returns their keys.
func (s *Store) dropResidents(ex *executor) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k, v := range s.mu.m {
		if v.res != nil && v.res.ex == ex {
			s.detachLocked(v)
			keys = append(keys, k)
		}
	}
	return keys
}

// SetObj caches obj as the decoded form of e's value, if that value is still held in memory.
func (s *Store) SetObj(e Entry, obj any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// a segment-backed value's decoded form would be a second, unaccounted copy of its bytes
	if e.v != nil && s.mu.m[e.v.key] == e.v && e.v.path == "" && e.v.seg == nil && e.v.res == nil {
		e.v.obj = obj
	}
}

// Delete drops keys; unknown keys are ignored. It returns how many were held.
func (s *Store) Delete(keys ...string) int {
	n, segs, res := s.detach(keys)
	for _, seg := range segs {
		seg.close()
	}
	for _, r := range res {
		r.drop()
	}
	return n
}

// DeleteAsync is Delete with the values' shared memory freed in the background: the keys are
// gone when it returns, but closing a segment's memfd, the last reference to its pages, has
// the kernel free them there and then (0.8 s of a worker's 1 s of CPU over four TPC-H
// queries at SF 1, docs/performance.md "TPC-H"), which the worker's receive loop, and the
// store's lock, must not wait for.
func (s *Store) DeleteAsync(keys ...string) int {
	n, segs, res := s.detach(keys)
	if len(segs) > 0 || len(res) > 0 {
		go func() {
			for _, seg := range segs {
				seg.close()
			}
			for _, r := range res {
				r.drop()
			}
		}()
	}
	return n
}

// detach removes keys from the store and returns how many were there, the segments that
// held them, for the caller to close, and the values kept in executors, for the caller to drop.
func (s *Store) detach(keys []string) (int, []*Segment, []*resident) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	var segs []*Segment
	var res []*resident
	for _, k := range keys {
		if v := s.mu.m[k]; v != nil {
			if seg := s.detachLocked(v); seg != nil {
				segs = append(segs, seg)
			}
			if v.res != nil {
				res = append(res, v.res)
			}
			n++
		}
	}
	return n, segs, res
}

// removeLocked removes v, closing its segment; an executor keeping it is told to forget it
// in the background (that may write to the executor's socket, which the store's lock must
// not wait for).
func (s *Store) removeLocked(v *value) {
	if seg := s.detachLocked(v); seg != nil {
		seg.close()
	}
	if v.res != nil {
		go v.res.drop()
	}
}

// detachLocked removes v and returns its segment, not closed yet, if it has one. A value kept
// in an executor keeps its v.res, for the caller to drop.
func (s *Store) detachLocked(v *value) *Segment {
	delete(s.mu.m, v.key)
	if v.path != "" {
		os.Remove(v.path)
		s.mu.spilled -= v.nbytes
		return nil
	}
	s.mu.lru.Remove(v)
	s.mu.memory -= v.nbytes
	if v.res != nil {
		s.mu.kept -= v.res.bytes()
	}
	if v.seg != nil {
		s.mu.segments -= v.seg.size
		return v.seg
	}
	return nil
}

// StoreStats is a snapshot of the store's accounting.
type StoreStats struct {
	Keys        int
	Memory      int64 // bytes held in memory, segments included
	Segments    int64 // bytes of the shared-memory segments held (not in any process's RSS)
	Kept        int64 // bytes of values kept in executors (in their resident sets, not the worker's)
	Spilled     int64 // bytes held on disk
	Spills      int64 // values written to disk so far
	Unspills    int64 // values read back into memory so far
	SpilledKeys int
}

// Stats returns the current accounting.
func (s *Store) Stats() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return StoreStats{Keys: len(s.mu.m), Memory: s.mu.memory, Segments: s.mu.segments, Kept: s.mu.kept, Spilled: s.mu.spilled,
		Spills: s.mu.nspills, Unspills: s.mu.nunspill, SpilledKeys: len(s.mu.m) - s.mu.lru.Len()}
}

// Keys returns the held keys, in no particular order.
func (s *Store) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.mu.m))
	for k := range s.mu.m {
		keys = append(keys, k)
	}
	return keys
}

// Items describes every held value (key, encoding, size), in no particular order: what a
// worker reports when it registers again.
func (s *Store) Items() []wire.Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]wire.Item, 0, len(s.mu.m))
	for k, v := range s.mu.m {
		out = append(out, wire.Item{Key: k, Encoding: v.enc, NBytes: v.nbytes})
	}
	return out
}

// Close drops everything, closes the segments and removes the spill files.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.mu.m {
		s.removeLocked(v)
	}
	s.mu.closed = true
}

// maybeSpill writes least recently used values to disk while memory exceeds spillAbove.
func (s *Store) maybeSpill() {
	if s.spillAbove <= 0 {
		return
	}
	s.spillMu.Lock()
	defer s.spillMu.Unlock()
	s.spillLocked(func() bool { return s.mu.memory > s.spillAbove })
}

// SpillBytes writes least recently used values to disk until at least n bytes have left
// memory or none is left in memory, and returns the bytes it moved. The worker's memory
// monitor calls it when the whole worker (its process and its executors) uses too much
// memory, whatever the store holds.
func (s *Store) SpillBytes(n int64) int64 {
	if n <= 0 {
		return 0
	}
	s.spillMu.Lock()
	defer s.spillMu.Unlock()
	s.mu.Lock()
	goal := s.mu.memory - n
	s.mu.Unlock()
	return s.spillLocked(func() bool { return s.mu.memory > max(goal, 0) })
}

// spillLocked writes least recently used values to disk while more (called with s.mu held)
// says so. The disk write happens outside the lock; a value deleted or replaced meanwhile is
// left alone. The caller holds spillMu. It returns the bytes written.
func (s *Store) spillLocked(more func() bool) (moved int64) {
	for {
		s.mu.Lock()
		if s.mu.closed || !more() || s.mu.lru.Len() == 0 || s.spillErrLocked() != nil {
			s.mu.Unlock()
			return moved
		}
		v := s.mu.lru.Back()
		s.mu.seq++
		path := filepath.Join(s.dir, strconv.FormatUint(s.mu.seq, 10)+".spill")
		enc, frames, seg, res := v.enc, v.frames, v.seg, v.res
		s.mu.lru.Remove(v) // out of the LRU while being written
		s.mu.Unlock()

		var err error
		if res != nil {
			// kept in an executor: its bytes go from there to the file (not through a segment,
			// which would hold them in memory a second time)
			err = res.spill(path, enc, frames)
		} else {
			err = writeSpill(path, enc, frames, seg)
		}

		var drop *resident
		s.mu.Lock()
		switch {
		case s.mu.m[v.key] != v:
			os.Remove(path) // deleted meanwhile; removeLocked did not touch the LRU
		case err != nil && (errors.Is(err, errResidentLost) || errors.Is(err, errSegmentGone)):
			// its executor died (the worker drops the value), or it was dropped meanwhile
			os.Remove(path)
			s.mu.lru.PushFront(v)
			s.mu.Unlock()
			return moved
		case err != nil:
			os.Remove(path)
			s.mu.lru.PushFront(v) // keep it in memory
			s.mu.spillErr, s.mu.spillAt = err, time.Now()
			s.mu.Unlock()
			if s.OnSpillError != nil {
				s.OnSpillError(path, err)
			}
			return moved
		default:
			s.mu.spillErr = nil
			if v.seg != nil { // its bytes are on disk now: free the shared memory
				s.mu.segments -= v.seg.size
				v.seg.close()
			}
			if v.res != nil { // and the executor's
				s.mu.kept -= v.res.bytes()
				drop = v.res
			}
			v.frames, v.seg, v.res, v.obj, v.path = nil, nil, nil, nil, path
			moved += v.nbytes
			s.mu.memory -= v.nbytes
			s.mu.spilled += v.nbytes
			s.mu.nspills++
		}
		s.mu.Unlock()
		if drop != nil {
			drop.drop()
		}
	}
}

// Spill file layout: "SHSP", u8 encoding length, encoding, u32 frame count, u64 length of each
// frame, then the frames.
const spillMagic = "SHSP"

// writeSpill writes a value's spill file; the frames seg holds (if any) are copied from it.
func writeSpill(path, enc string, frames [][]byte, seg *Segment) error {
	var lens []int64
	var in map[int]segPlace
	if seg != nil {
		lens, in = placed(frames, seg.at)
	}
	return writeSpillWith(path, enc, frames, lens, func(f *os.File, hdr []byte) error {
		if seg == nil {
			bufs := append(net.Buffers{hdr}, frames...)
			_, err := bufs.WriteTo(f)
			return err
		}
		return writeFramesFrom(f, hdr, frames, in, func(p segPlace, buf []byte) error { return seg.copyFrame(f, p, buf) })
	})
}

// writeSpillWith creates a spill file and has write put the header hdr and the frames in it;
// lens are the frames' lengths (nil: those of frames).
func writeSpillWith(path, enc string, frames [][]byte, lens []int64, write func(f *os.File, hdr []byte) error) error {
	hdr := make([]byte, 0, 9+len(enc)+8*len(frames))
	hdr = append(hdr, spillMagic...)
	hdr = append(hdr, byte(len(enc)))
	hdr = append(hdr, enc...)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(frames)))
	for i, fr := range frames {
		n := int64(len(fr))
		if lens != nil {
			n = lens[i]
		}
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := write(f, hdr); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeFramesFrom writes hdr, then the frames; a frame placed elsewhere (a segment, an
// executor's memory: at, by frame) is written by copyFrame, a 1 MiB buffer at a time.
func writeFramesFrom[P placement](f *os.File, hdr []byte, frames [][]byte, at map[int]P, copyFrame func(p P, buf []byte) error) error {
	if _, err := f.Write(hdr); err != nil {
		return err
	}
	var buf []byte
	for i, fr := range frames {
		p, ok := at[i]
		if !ok {
			if _, err := f.Write(fr); err != nil {
				return err
			}
			continue
		}
		if buf == nil {
			buf = make([]byte, 1<<20)
		}
		if err := copyFrame(p, buf); err != nil {
			return err
		}
	}
	return nil
}

func readSpill(path string) (string, [][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	bad := errors.New("corrupt spill file")
	if len(b) < 5 || string(b[:4]) != spillMagic {
		return "", nil, bad
	}
	n := int(b[4])
	p := 5 + n
	if len(b) < p+4 {
		return "", nil, bad
	}
	enc := string(b[5:p])
	nf := int(binary.BigEndian.Uint32(b[p:]))
	p += 4
	if nf > (len(b)-p)/8 {
		return "", nil, bad
	}
	lens := b[p : p+8*nf]
	p += 8 * nf
	frames := make([][]byte, nf)
	for i := range frames {
		l := binary.BigEndian.Uint64(lens[8*i:])
		if l > uint64(len(b)-p) {
			return "", nil, bad
		}
		frames[i] = b[p : p+int(l) : p+int(l)]
		p += int(l)
	}
	if p != len(b) {
		return "", nil, bad
	}
	return enc, frames, nil
}
