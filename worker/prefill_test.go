package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// A large value fetched from a peer for a Python task is copied into the executor's window as
// it arrives, and the run takes that copy instead of writing one; a value fetched for a Go task
// is not copied; the worker's store keeps the fetched bytes either way.
func TestPythonFetchPrefill(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	py := shoalPython(t)
	h, fn, payload := realPyTask(t, py, "digest")
	hn, fnn, pn := realPyTask(t, py, "nap")

	s := newFakeSched(t, "")
	src, ssrc, _, _ := s.startWorker(testConfig(t))
	cfg := testConfig(t)
	cfg.Python = py
	dst, sdst, _, _ := s.startWorker(cfg)
	sdst.send(pyTask("start", hn, fnn, pn)) // the executor a prefill needs
	sdst.expect(wire.OpTaskFinished)

	for i, size := range []int{prefillMin, 9 << 20} {
		key := fmt.Sprint("big-", i)
		ssrc.send(goTask(key, "bytes", 0, size))
		made := ssrc.expect(wire.OpTaskFinished)
		e, err := src.Store().Get(key, true)
		require.NoError(t, err)

		// the payload refers to Ref("big"): the dependency is fetched under that name
		dep := []wire.Dep{{Key: "big", WhoHas: []string{src.DataAddr()}, NBytes: made.NBytes}}
		src.Store().Put("big", e.Encoding, e.Frames, nil)
		m := pyTask(fmt.Sprint("digest-", i), h, fn, payload)
		m.Task.Deps, m.Deps = []string{"big"}, dep
		if i > 0 {
			m.FuncData = nil
		}
		sdst.send(m)
		sdst.expect(wire.OpAddKeys)
		sdst.expect(wire.OpTaskFinished)
		c := dialData(t, dst.DataAddr(), "", wire.RolePeer)
		_, frames := getData(t, c, uint64(i+1), m.Task.Key, "big")
		var got string
		require.NoError(t, msgpack.Unmarshal(frames[0], &got))
		sum := sha256.Sum256(e.Frames[0])
		require.Equal(t, fmt.Sprintf("%d:%s", size, hex.EncodeToString(sum[:])), got)
		require.Equal(t, e.Frames[0], frames[1], "the store keeps the fetched bytes")
		require.EqualValues(t, i+1, dst.py.prefillsTaken.Load(), "the run took the prefilled window")
		require.EqualValues(t, i+1, dst.py.shmFrames.Load())
		require.Equal(t, 1, dst.Store().Delete("big"))
	}

	// a Go task's dependency is not copied into a window
	dep := []wire.Dep{{Key: "big", WhoHas: []string{src.DataAddr()}, NBytes: 9 << 20}}
	sdst.send(goTaskDeps("go-copy", "identity", 0, dep, ref("big")))
	sdst.expect(wire.OpAddKeys)
	sdst.expect(wire.OpTaskFinished)
	dst.py.mu.Lock()
	for ex := range dst.py.mu.all {
		ex.shm.mu.Lock()
		for _, w := range ex.shm.wins {
			require.Nil(t, w.pre)
		}
		ex.shm.mu.Unlock()
	}
	dst.py.mu.Unlock()
	require.EqualValues(t, 2, dst.py.prefillsTaken.Load())
}

// countCloses records the window descriptors closed during the test.
func countCloses(t *testing.T) *[]int {
	var closed []int
	old := closeWindowFd
	closeWindowFd = func(fd int) { closed = append(closed, fd); old(fd) }
	t.Cleanup(func() { closeWindowFd = old })
	return &closed
}

// Windows and prefills: a run takes a prefilled window without writing it (introducing it when
// the executor does not have it yet); a prefill that no run takes frees its window after
// prefillTTL, or once its frame's buffer is gone; a window dropped while a fetch writes into it
// is closed when the writing ends; a window the executor never got is dropped when given back.
func TestWindowPrefill(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	closed := countCloses(t)
	ws := &execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	frame := payload(3, prefillMin)
	w := ws.reserve(len(frame))
	require.NotNil(t, w)
	require.True(t, w.busy)
	require.NoError(t, w.write(frame, 0))
	ws.filled(w, frame)
	require.Equal(t, int64(len(frame)), ws.unsent(), "a prefill the executor has no descriptor of counts for the memory monitor")
	require.True(t, ws.holds([][]byte{frame}))
	require.False(t, ws.holds([][]byte{append([]byte(nil), frame...)}), "a copy of the bytes elsewhere is another frame")
	require.False(t, ws.holds([][]byte{frame[:len(frame)-1]}), "so is a shorter frame at the same address")

	out, at, news, fds, err := ws.place([][]byte{[]byte("hdr"), frame})
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("hdr"), {}}, out)
	require.Equal(t, []shmPlacement{{Frame: 1, Window: w.id, Len: len(frame), prefilled: true}}, at)
	require.Equal(t, []shmNew{{Window: w.id, Size: w.size}}, news, "a window the executor never had is introduced")
	require.Len(t, fds, 1)
	require.NotEqual(t, w.fd, fds[0], "the message passes a duplicate")
	var a, b unix.Stat_t
	require.NoError(t, unix.Fstat(w.fd, &a))
	require.NoError(t, unix.Fstat(fds[0], &b))
	require.Equal(t, a.Ino, b.Ino, "of the window's memfd")
	closeFds(fds)
	require.Nil(t, w.pre)
	require.Zero(t, ws.unsent(), "taken by a run: the executor's resident set counts it")
	require.False(t, ws.holds([][]byte{frame}), "a prefill is taken once")

	// the executor frees it; a prefill that no run takes counts as free after prefillTTL
	ws.update(execExt{Free: []uint64{w.id}})
	w2 := ws.reserve(len(frame))
	require.Same(t, w, w2, "the free window is reused")
	ws.filled(w2, frame)
	w2.pre.at = time.Now().Add(-prefillTTL - time.Second)
	w3 := ws.reserve(len(frame))
	require.Same(t, w, w3, "a stale prefill's window is reused")
	ws.filled(w3, frame)

	// a prefill whose frame's buffer is gone (its value deleted) frees its window at once; one
	// the executor never got is dropped
	gone := payload(4, prefillMin)
	w4 := ws.reserve(len(gone))
	require.NotNil(t, w4)
	require.NotSame(t, w, w4)
	ws.filled(w4, gone)
	gone = nil
	runtime.GC()
	runtime.GC()
	require.True(t, ws.holds([][]byte{frame}))
	require.Len(t, ws.wins, 1, "the window of the collected frame was dropped")
	require.Equal(t, []int{w4.fd}, *closed)

	// given back unwritten: a window the executor never got is dropped
	w5 := ws.reserve(len(frame))
	require.NotNil(t, w5)
	ws.cancel(w5)
	require.Len(t, ws.wins, 1)
	require.Equal(t, []int{w4.fd, w5.fd}, *closed)

	// dropped while being written: closed when the writing ends, not before
	ws.update(execExt{Free: []uint64{w.id}}) // (the executor had freed the first use)
	ws.mu.Lock()
	w.pre, w.busy = nil, false
	ws.mu.Unlock()
	w6 := ws.reserve(len(frame))
	require.Same(t, w, w6)
	ws.closeAll()
	require.Equal(t, []int{w4.fd, w5.fd}, *closed, "the descriptor stays open while written")
	ws.cancel(w6)
	require.Equal(t, []int{w4.fd, w5.fd, w6.fd}, *closed)
}

// The prefills of an answer keep only the frames of the items it was checked to hold: an
// answer that failed (nil) gives every window back.
func TestPrefillsKeepCheckedFrames(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	countCloses(t)
	hdr, err := wire.EncodeHeader(&wire.Msg{Op: wire.OpData, ID: 1,
		Items: []wire.Item{{Key: "a", Encoding: wire.EncBytes, NFrames: 1}}})
	require.NoError(t, err)
	data := payload(5, prefillMin)
	for _, checked := range []bool{false, true} {
		ws := &execWindows{ok: true}
		t.Cleanup(ws.closeAll)
		p := newPrefills(ws, map[string]bool{"a": true}, func(n int) []byte { return make([]byte, n) })
		require.Nil(t, p.Sink(hdr, 1, prefillMin-1), "small frames are not prefilled")
		sink := p.Sink(hdr, 1, int64(len(data)))
		require.NotNil(t, sink)
		for off := 0; off < len(data); {
			b, err := sink.Buf()
			require.NoError(t, err)
			n := copy(b, data[off:])
			require.NoError(t, sink.Filled(n))
			off += n
		}
		frame := sink.Frame()
		require.Equal(t, data, frame)
		var kept []received
		if checked {
			kept = []received{{item: wire.Item{Key: "a"}, frames: [][]byte{frame}}}
		}
		p.finish(kept)
		require.Equal(t, checked, ws.holds([][]byte{frame}))
		if checked {
			got := make([]byte, len(data))
			_, err := unix.Pread(ws.wins[0].fd, got, 0)
			require.NoError(t, err)
			require.Equal(t, data, got, "the window holds the frame")
		} else {
			require.Empty(t, ws.wins, "the window was given back, and dropped (never introduced)")
		}
	}
}

// A worker's first Python task that waits for an input from a peer starts its executor
// meanwhile (warm): here the peer never answers, and the executor is up all the same.
func TestPythonExecutorStartsWhileInputsArrive(t *testing.T) {
	py := shoalPython(t)
	h, fn, payload := realPyTask(t, py, "digest")
	silent, _ := silentPeer(t)
	w, sc, _, _ := startPyWorker(t, py, nil)
	require.Zero(t, w.py.live())
	m := pyTask("digest", h, fn, payload)
	m.Task.Deps, m.Deps = []string{"big"}, []wire.Dep{{Key: "big", WhoHas: []string{silent}, NBytes: 9 << 20}}
	sc.send(m)
	eventually(t, func() bool { return w.py.live() == 1 })
	w.mu.Lock()
	state := w.mu.tasks["digest"].state
	w.mu.Unlock()
	require.Equal(t, stateFetching, state, "the task still waits for its input")
	eventually(t, func() bool { // started and ready: idle in the pool
		w.py.mu.Lock()
		defer w.py.mu.Unlock()
		return len(w.py.mu.idle) == 1
	})
}

// The memory monitor's count of prefills the executor was not given frees the stale ones
// first: a prefill no run took within prefillTTL (or whose value is gone) is memory for
// nothing, and counting it would make the monitor spill, pause or kill for it.
func TestUnsentPrefillsExpire(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	ws := &execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	frame := payload(5, prefillMin)
	w := ws.reserve(len(frame))
	require.NotNil(t, w)
	require.NoError(t, w.write(frame, 0))
	ws.filled(w, frame)
	require.Equal(t, int64(len(frame)), ws.unsent())
	runtime.KeepAlive(frame) // the prefill is known by a weak pointer: alive until here
	ws.mu.Lock()
	w.pre.at = time.Now().Add(-prefillTTL - time.Second)
	ws.mu.Unlock()
	require.Zero(t, ws.unsent(), "a stale prefill still counted")
	ws.mu.Lock()
	defer ws.mu.Unlock()
	require.Empty(t, ws.wins, "a stale prefill the executor never had is dropped")
	require.True(t, w.closed)
}
