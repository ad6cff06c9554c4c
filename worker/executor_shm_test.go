package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// realPyTask returns a task of testdata/make_py_task.py for the real executor, skipping the
// test when the Python side is not available.
func realPyTask(t *testing.T, py, name string) (hash string, fn, payload []byte) {
	out, err := exec.Command(py, "testdata/make_py_task.py", name).Output()
	if err != nil {
		t.Skipf("cannot build a pickled task with %s (needs cloudpickle and clients/python): %v", py, err)
	}
	lines := strings.Fields(string(out))
	require.Len(t, lines, 3)
	fn, err = hex.DecodeString(lines[1])
	require.NoError(t, err)
	payload, err = hex.DecodeString(lines[2])
	require.NoError(t, err)
	return lines[0], fn, payload
}

// windowFds counts the window descriptors (memfds) process pid has open.
func windowFds(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if strings.Contains(l, "memfd:shoal-window") {
			n++
		}
	}
	return n
}

func windowMappings(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	require.NoError(t, err)
	return strings.Count(string(b), "memfd:shoal-window")
}

// TestPythonExecutorSharedMemory sends large values to the real executor through
// shared-memory windows: the results are right, a window is reused rather than made anew,
// and neither process keeps descriptors or mappings once the worker closes. With windows
// off, the same values go through the socket.
func TestPythonExecutorSharedMemory(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("shm=%v", on), func(t *testing.T) {
			old := shmEnabled
			shmEnabled = on
			t.Cleanup(func() { shmEnabled = old })
			if on {
				// the executor inherits the environment: SHOAL_EXECUTOR_SHM=0 there (set to run
				// the other tests without windows) would turn them off on its side
				t.Setenv("SHOAL_EXECUTOR_SHM", "1")
			}
			py := shoalPython(t)
			h, fn, payload := realPyTask(t, py, "digest")
			require.Zero(t, windowFds(t, os.Getpid()))

			w, sc, cancel, done := startPyWorker(t, py, nil)
			var pid int
			for i, size := range []int{3 << 20, 5 << 20, 3<<20 + 1, 2 << 20, 100} {
				key := fmt.Sprint("big-", i)
				sc.send(goTask(key, "bytes", 0, size))
				sc.expect(wire.OpTaskFinished)
				// the payload refers to Ref("big"): store the value under that key
				e, err := w.Store().Get(key, true)
				require.NoError(t, err)
				w.Store().Put("big", e.Encoding, e.Frames, nil)
				m := pyTask(fmt.Sprint("digest-", i), h, fn, payload, "big")
				if i > 0 {
					m.FuncData = nil
				}
				sc.send(m)
				fin := sc.expect(wire.OpTaskFinished)
				require.Equal(t, m.Task.Key, fin.Key)
				c := dialData(t, w.DataAddr(), "", wire.RolePeer)
				_, frames := getData(t, c, uint64(i+1), m.Task.Key)
				var got string
				require.NoError(t, msgpack.Unmarshal(frames[0], &got))
				sum := sha256.Sum256(e.Frames[0])
				require.Equal(t, fmt.Sprintf("%d:%s", size, hex.EncodeToString(sum[:])), got)
				c.Close()
				require.LessOrEqual(t, windowFds(t, os.Getpid()), 2)
				w.py.mu.Lock()
				for ex := range w.py.mu.all {
					pid = ex.pid
					if on {
						require.LessOrEqual(t, len(ex.shm.wins), 2, "windows are reused")
					} else {
						require.Empty(t, ex.shm.wins)
					}
				}
				w.py.mu.Unlock()
			}
			if on {
				require.EqualValues(t, 4, w.py.shmFrames.Load())
				maps := windowMappings(t, pid)
				require.True(t, maps >= 1 && maps <= 2, "executor maps %d windows", maps)
			} else {
				require.Zero(t, w.py.shmFrames.Load())
				require.Zero(t, windowMappings(t, pid))
			}
			// the executor closes the descriptor it received once mapped; Python's mmap keeps a
			// duplicate of its own while the mapping lives
			require.LessOrEqual(t, windowFds(t, pid), windowMappings(t, pid))
			cancel()
			<-done
			w.Close()
			require.Zero(t, windowFds(t, os.Getpid()), "the worker closes its windows with the executor")
		})
	}
}

func TestWindowSizeAndPick(t *testing.T) {
	require.EqualValues(t, 1<<20, windowSize(1))
	require.EqualValues(t, 2<<20, windowSize(1<<20+1))
	require.EqualValues(t, 200<<20, windowSize(200<<20))
	require.EqualValues(t, 208<<20, windowSize(200<<20+1)) // 1/16 of 128 MiB granules
	require.Equal(t, windowSize(200_000_000), windowSize(200_000_400))

	ws := execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	a, created, err := ws.pick(3 << 20)
	require.NoError(t, err)
	require.True(t, created)
	a.busy = true
	b, created, err := ws.pick(3 << 20)
	require.NoError(t, err)
	require.True(t, created, "a busy window is not handed out")
	require.NotEqual(t, a.id, b.id)
	ws.update(execExt{Free: []uint64{a.id}, Drop: []uint64{b.id}})
	require.False(t, a.busy)
	require.Len(t, ws.wins, 1)
	c, created, err := ws.pick(2 << 20)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, a.id, c.id)
	// a frame far smaller than the free window gets its own
	c.busy = false
	d, created, err := ws.pick(1 << 10)
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, a.id, d.id)

	old := shmMaxWindows
	shmMaxWindows = 2
	t.Cleanup(func() { shmMaxWindows = old })
	a.busy, d.busy = true, true
	e, _, err := ws.pick(1 << 20)
	require.NoError(t, err)
	require.Nil(t, e, "over the limits a frame goes through the socket")
}

// TestWindowWrite writes into a window through the worker's mapping: the bytes are the
// memfd's (read back with pread), the mapping is made once and removed with the window, a
// write that does not fit is refused, and a fault while copying (the memfd shrank under the
// mapping: SIGBUS) is an error rather than the worker's end.
func TestWindowWrite(t *testing.T) {
	if !shmEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0")
	}
	mappings := func() int { return windowMappings(t, os.Getpid()) }
	before := mappings()
	ws := execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	w, _, err := ws.pick(3 << 20)
	require.NoError(t, err)
	a, b := payload(1, 1<<20), payload(2, 1<<20)
	require.NoError(t, w.write(a, 0))
	require.NoError(t, w.write(b, 1<<20))
	require.Equal(t, before+1, mappings(), "one mapping, made by the first write")
	got := make([]byte, 2<<20)
	_, err = unix.Pread(w.fd, got, 0)
	require.NoError(t, err)
	require.Equal(t, append(append([]byte(nil), a...), b...), got)

	require.ErrorContains(t, w.write(a, w.size-10), "do not fit")
	require.ErrorContains(t, w.write(a, -1), "do not fit")

	// without a mapping (it could not be made), the same bytes go in with pwrite
	w.busy = true
	v, _, err := ws.pick(2 << 20)
	require.NoError(t, err)
	require.NotSame(t, w, v)
	v.noMap = true
	require.NoError(t, v.write(b, 4096))
	require.True(t, v.mem == nil, "no mapping")
	_, err = unix.Pread(v.fd, got[:len(b)], 4096)
	require.NoError(t, err)
	require.Equal(t, b, got[:len(b)])

	require.NoError(t, unix.Ftruncate(w.fd, 0))
	require.ErrorContains(t, w.write(a, 0), "fault copying into the window")

	ws.closeAll()
	require.Equal(t, before, mappings(), "closing the window removes the mapping")
}

func TestGrowMapAndRunExt(t *testing.T) {
	hdr, err := wire.EncodeHeader(&wire.Msg{Op: wire.OpRun, ID: 7, Key: "k", Payload: []byte("p")})
	require.NoError(t, err)
	b, err := appendRunExt(hdr, []shmPlacement{{Frame: 1, Window: 3, Len: 5}}, []shmNew{{Window: 3, Size: 1 << 20}}, nil)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, msgpack.Unmarshal(b, &m))
	require.Equal(t, "run", m["op"])
	require.EqualValues(t, 7, m["id"])
	require.Equal(t, []any{[]any{int64(1), int64(3), int64(5)}}, normInts(m["shm"]))
	require.Len(t, m["shm_new"], 1)
	// fixmap headers grow too
	small, _ := msgpack.Marshal(map[string]int{"a": 1})
	g, err := growMap(small, 1)
	require.NoError(t, err)
	g = append(g, 0xa1, 'b', 2)
	require.NoError(t, msgpack.Unmarshal(g, &m))
	require.Len(t, m, 2)
	_, err = growMap([]byte{0x91, 1}, 1)
	require.Error(t, err)
	// the done fast path reads the window report
	done, _ := msgpack.Marshal(map[string]any{"op": "done", "id": 1, "shm_free": []int{2, 3}, "shm_drop": []int{4}})
	var x execExt
	dm, ok := decodeDoneExt(done, &x)
	require.True(t, ok)
	require.Equal(t, wire.OpDone, dm.Op)
	require.Equal(t, []uint64{2, 3}, x.Free)
	require.Equal(t, []uint64{4}, x.Drop)
	// and the generic path (error answers, ready)
	errHdr, _ := msgpack.Marshal(map[string]any{"op": "error", "id": 1, "message": "m", "shm_free": []int{9}})
	_, err = decodeExecHeaderExt(errHdr, &x)
	require.NoError(t, err)
	require.Equal(t, []uint64{9}, x.Free)
	ready, _ := msgpack.Marshal(map[string]any{"op": "ready", "pid": 1, "shm": 1})
	_, err = decodeExecHeaderExt(ready, &x)
	require.NoError(t, err)
	require.Equal(t, 1, x.SHM)
	ready, _ = msgpack.Marshal(map[string]any{"op": "ready", "pid": 1, "batch": 1}) // no windows
	_, err = decodeExecHeaderExt(ready, &x)
	require.NoError(t, err)
	require.Equal(t, 1, x.Batch)

	// a run the executor may keep the result of says "keep": 1 after its own fields
	for _, keep := range []bool{false, true} {
		r := &pyRun{msg: wire.Msg{Op: wire.OpRun, ID: 5, Key: "k", FuncHash: "f", Payload: []byte{0, 1}}, keep: keep}
		hdr, err := r.header()
		require.NoError(t, err)
		var got map[string]any
		require.NoError(t, msgpack.Unmarshal(hdr, &got))
		require.Equal(t, "k", got["key"])
		require.EqualValues(t, 5, got["id"])
		if keep {
			require.EqualValues(t, 1, got["keep"])
		} else {
			require.NotContains(t, got, "keep")
		}
	}
}

func normInts(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normInts(e)
		}
		return out
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case uint8:
		return int64(x)
	case uint16:
		return int64(x)
	case uint32:
		return int64(x)
	case uint64:
		return int64(x)
	}
	return v
}

// TestPlaceFallsBack: when a window cannot be written, the frames go through the socket, the
// windows of that run are forgotten and windows stay off for the executor.
func TestPlaceFallsBack(t *testing.T) {
	ws := execWindows{ok: true}
	t.Cleanup(ws.closeAll)
	big := make([]byte, 2<<20)
	out, at, news, fds, err := ws.place([][]byte{[]byte("head"), big, big})
	require.NoError(t, err)
	require.Len(t, at, 2)
	require.Len(t, news, 2)
	require.Len(t, fds, 2)
	closeFds(fds) // duplicates, the caller's
	require.Empty(t, out[1])
	require.Equal(t, []byte("head"), out[0])

	// a window whose memory went away (its memfd shrank under the worker's mapping): writing
	// fails
	ws2 := execWindows{ok: true}
	t.Cleanup(ws2.closeAll)
	_, at, _, _, err = ws2.place([][]byte{big})
	require.NoError(t, err)
	ws2.update(execExt{Free: []uint64{at[0].Window}})
	require.NoError(t, unix.Ftruncate(ws2.wins[0].fd, 0))
	out, at, news, fds, err = ws2.place([][]byte{big, big})
	require.Error(t, err)
	require.Nil(t, at)
	require.Nil(t, news)
	require.Nil(t, fds)
	require.Len(t, out[0], len(big), "the frames go through the socket")
	require.False(t, ws2.ok)
	require.Len(t, ws2.wins, 1, "no window is left over from the failed run")
}
