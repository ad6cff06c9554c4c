package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
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

// Windows and prefills: a run takes a prefilled window without writing it (introducing it when
// the executor does not have it yet); a prefill that no run takes frees its window after
// prefillTTL; a window dropped while a fetch writes into it is closed when the writing ends.
func TestWindowPrefill(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	ws := &execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	frame := payload(3, prefillMin)
	w := ws.reserve(len(frame))
	require.NotNil(t, w)
	require.True(t, w.busy)
	require.NoError(t, pwriteAll(w.fd, frame))
	ws.filled(w, frame)
	require.True(t, ws.holds([][]byte{frame}))
	require.False(t, ws.holds([][]byte{append([]byte(nil), frame...)}), "a copy of the bytes elsewhere is another frame")

	out, at, news, fds, err := ws.place([][]byte{[]byte("hdr"), frame})
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("hdr"), {}}, out)
	require.Equal(t, []shmPlacement{{Frame: 1, Window: w.id, Len: len(frame), prefilled: true}}, at)
	require.Equal(t, []shmNew{{Window: w.id, Size: w.size}}, news, "a window the executor never had is introduced")
	require.Equal(t, []int{w.fd}, fds)
	require.Nil(t, w.pre)
	require.False(t, ws.holds([][]byte{frame}), "a prefill is taken once")

	// the executor frees it; a prefill that no run takes counts as free after prefillTTL
	ws.update(execExt{Free: []uint64{w.id}})
	w2 := ws.reserve(len(frame))
	require.Same(t, w, w2, "the free window is reused")
	ws.filled(w2, frame)
	w2.pre.at = time.Now().Add(-prefillTTL - time.Second)
	w3 := ws.reserve(len(frame))
	require.Same(t, w, w3, "a stale prefill's window is reused")

	// dropped while being written: closed when the writing ends, not before
	fd := w3.fd
	ws.closeAll()
	require.NoError(t, pwriteAll(fd, frame[:10]), "the descriptor stays open while written")
	ws.cancel(w3)
	require.Error(t, pwriteAll(fd, frame[:10]))
}
