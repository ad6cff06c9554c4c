package worker

import (
	"encoding/binary"
	"io"
	"math"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// arangeBytes is numpy.arange(n, dtype="float64")'s buffer.
func arangeBytes(n int) []byte {
	b := make([]byte, 8*n)
	for i := range n {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(i)))
	}
	return b
}

// A real executor keeps a large numpy result: a run on it takes the object (no copy), a
// client's read exports it (the bytes come out of the executor's memory, right), dropping it
// makes the executor forget it, and when the executor dies what it kept is reported lost.
func TestPythonExecutorKeepsResults(t *testing.T) {
	if !shmEnabled || !keepEnabled {
		t.Skip("SHOAL_EXECUTOR_SHM=0 or SHOAL_EXECUTOR_KEEP=0")
	}
	py := shoalPython(t)
	ha, fa, pa := realPyTask(t, py, "arange")
	hs, fs, ps := realPyTask(t, py, "asum")
	hi, fi, pi := realPyTask(t, py, "ainc")
	hk, fk, pk := realPyTask(t, py, "nkept")
	hd, fd, pd := realPyTask(t, py, "die")
	w, sc, _, _ := startPyWorker(t, py, nil)
	c := dialData(t, w.DataAddr(), "", wire.RoleClient)
	const n = 1 << 18
	kept := func(m *wire.Msg) *wire.Msg { m.Keep = true; return m } // the task has dependents
	nkept := func(id uint64) int {
		sc.send(pyTask("nkept", hk, fk, pk))
		sc.expect(wire.OpTaskFinished)
		_, frames := getData(t, c, id, "nkept")
		var k int
		require.NoError(t, msgpack.Unmarshal(frames[0], &k))
		require.Equal(t, 1, w.Store().Delete("nkept"))
		return k
	}

	sc.send(pyTask("a0", ha, fa, pa)) // nothing depends on it: written out
	sc.expect(wire.OpTaskFinished)
	require.Zero(t, w.py.kept.Load())
	require.Positive(t, w.Store().Stats().Segments)
	require.Equal(t, 1, w.Store().Delete("a0"))

	sc.send(kept(pyTask("a", ha, fa, pa)))
	fin := sc.expect(wire.OpTaskFinished)
	require.EqualValues(t, 1, w.py.kept.Load(), "the executor kept the array")
	require.Greater(t, fin.NBytes, int64(8*n))
	e, err := w.Store().GetRun("a")
	require.NoError(t, err)
	require.NotNil(t, e.Res)
	require.Nil(t, e.Seg)
	require.Zero(t, w.Store().Stats().Segments, "nothing was written to shared memory")

	sc.send(pyTask("s", hs, fs, ps, "a"))
	sc.expect(wire.OpTaskFinished)
	require.EqualValues(t, 1, w.py.keptUsed.Load(), "the run took the kept object")
	_, frames := getData(t, c, 1, "s")
	var sum float64
	require.NoError(t, msgpack.Unmarshal(frames[0], &sum))
	require.Equal(t, float64(n)*float64(n-1)/2, sum)

	sc.send(kept(pyTask("b", hi, fi, pi, "a"))) // a + 1, kept too
	sc.expect(wire.OpTaskFinished)
	require.EqualValues(t, 2, w.py.kept.Load())
	require.Equal(t, 2, nkept(2))

	// a client reads "a": it is exported, and the executor forgets its copy
	_, frames = getData(t, c, 3, "a")
	require.Len(t, frames, 2)
	require.Equal(t, arangeBytes(n), frames[1], "the bytes read out of the executor")
	require.EqualValues(t, 1, w.py.keptExported.Load())
	e, err = w.Store().GetRun("a")
	require.NoError(t, err)
	require.Nil(t, e.Res)
	require.NotNil(t, e.Seg, "an exported value is an ordinary segment")
	eventually(t, func() bool { return nkept(4) == 1 })

	// dropping "b" has the (idle) executor forget it
	require.Equal(t, 1, w.Store().Delete("b"))
	eventually(t, func() bool { return nkept(5) == 0 })

	// what a dead executor kept is lost: dropped, and reported to the scheduler as missing here
	sc.send(kept(pyTask("c", ha, fa, pa)))
	sc.expect(wire.OpTaskFinished)
	sc.send(pyTask("die", hd, fd, pd))
	var lost *wire.Msg
	for lost == nil {
		m := sc.next()
		if m.Op == wire.OpMissingData {
			lost = m
		}
	}
	require.Equal(t, "c", lost.Key)
	require.Equal(t, w.DataAddr(), lost.Worker)
	require.Empty(t, lost.Message, "lost, not a failed transfer: the scheduler recomputes it")
	require.False(t, w.Store().Has("c"))
	require.True(t, w.Store().Has("a"), "an exported value outlives its executor")
	_, frames = getData(t, c, 6, "a")
	require.Equal(t, arangeBytes(n), frames[1])
}

// selfResident is a value kept in this test process's own memory (process_vm_readv reads it
// as it would an executor's), and the executor standing for this process.
func selfResident(t *testing.T, p *executorPool, id uint64, data []byte) (*executor, [][]byte, *resident) {
	ex := &executor{pid: os.Getpid()}
	end, err := ex.openForgets()
	require.NoError(t, err)
	// a non-blocking duplicate, so that forgotten's reads can have a deadline
	fd, err := unix.Dup(int(end.Fd()))
	require.NoError(t, err)
	require.NoError(t, end.Close())
	require.NoError(t, unix.SetNonblock(fd, true))
	theirs := os.NewFile(uintptr(fd), "forget-end")
	forgetEnds[ex] = theirs
	t.Cleanup(func() { ex.closeForgets(); theirs.Close(); delete(forgetEnds, ex) })
	frames := [][]byte{[]byte("hdr"), {}}
	res, err := newResident(p, ex, id, []resPlace{{Frame: 1, Addr: uint64(uintptr(unsafe.Pointer(&data[0]))), Len: int64(len(data))}},
		frames, 1<<30)
	require.NoError(t, err)
	return ex, frames, res
}

// forgetEnds are the executor ends of the test executors' forget sockets.
var forgetEnds = map[*executor]*os.File{}

// forgotten runs do and returns the ids ex was told to forget meanwhile.
func forgotten(t *testing.T, ex *executor, do func()) []uint64 {
	do()
	f := forgetEnds[ex]
	var ids []uint64
	for {
		f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		var b [8]byte
		if _, err := io.ReadFull(f, b[:]); err != nil {
			return ids
		}
		ids = append(ids, binary.LittleEndian.Uint64(b[:]))
	}
}

// The store exports a kept value when it is read and before it is spilled; a value dropped
// has its executor told to forget it; a dead executor's values cannot be exported.
func TestStoreResidentValues(t *testing.T) {
	p := &executorPool{slots: make(chan struct{}, 1)}
	data := payload(9, 3<<20)
	s := NewStore(t.TempDir(), 4<<20)
	t.Cleanup(s.Close)
	ex, frames, res := selfResident(t, p, 7, data)
	n, ok := s.PutResident("k", wire.EncPickle, frames, res)
	require.True(t, ok)
	require.EqualValues(t, 3+len(data), n)
	e, err := s.GetRun("k")
	require.NoError(t, err)
	require.Same(t, res, e.Res)

	var got Entry
	require.Equal(t, []uint64{7}, forgotten(t, ex, func() {
		got, err = s.Get("k", false)
	}), "exported: the executor forgets its copy")
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("hdr"), data}, got.Frames)
	require.EqualValues(t, 1, p.keptExported.Load())
	st := s.Stats()
	require.EqualValues(t, len(data), st.Segments)
	require.EqualValues(t, 3+len(data), st.Memory)

	// spilling exports a kept value first
	data2 := payload(10, 3<<20)
	ex2, frames2, res2 := selfResident(t, p, 8, data2)
	s.PutResident("k2", wire.EncPickle, frames2, res2) // over 4 MiB: "k" spills
	require.EqualValues(t, 1, s.Stats().Spills)
	require.Equal(t, []uint64{8}, forgotten(t, ex2, func() {
		require.Positive(t, s.SpillBytes(1)) // and now "k2"
	}))
	st = s.Stats()
	require.EqualValues(t, 2, st.Spills)
	require.Zero(t, st.Segments)
	require.Zero(t, st.Kept)
	require.EqualValues(t, 1, p.keptExported.Load(), "spilled straight out of the executor, not through a segment")
	got, err = s.Get("k2", false)
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("hdr"), data2}, got.Frames)

	// dropped: forgotten, not exported
	data3 := payload(11, 1<<20)
	ex3, frames3, res3 := selfResident(t, p, 9, data3)
	s.PutResident("k3", wire.EncPickle, frames3, res3)
	require.EqualValues(t, 1<<20, s.Stats().Kept)
	require.Equal(t, []uint64{9}, forgotten(t, ex3, func() { require.Equal(t, 1, s.Delete("k3")) }))
	require.Zero(t, s.Stats().Kept)
	require.EqualValues(t, 1, p.keptExported.Load())

	// a dead executor's value: not stored if it died first, not exported if it died after
	ex4, frames4, res4 := selfResident(t, p, 10, data3)
	ex4.mem.dead = true
	_, ok = s.PutResident("k4", wire.EncPickle, frames4, res4)
	require.False(t, ok)
	require.False(t, s.Has("k4"))
	ex4.mem.dead = false
	_, ok = s.PutResident("k4", wire.EncPickle, frames4, res4)
	require.True(t, ok)
	ex4.mem.dead = true
	_, err = s.Get("k4", false)
	require.ErrorIs(t, err, errResidentLost)
	require.Equal(t, []string{"k4"}, s.dropResidents(ex4))
	require.False(t, s.Has("k4"))
	require.Equal(t, "executor-died", depError("k4", err).Code, "a task that needed it runs again")
	runtime.KeepAlive(data)
	runtime.KeepAlive(data2)
	runtime.KeepAlive(data3)
}

// A kept result's placements are checked like a segment's.
func TestNewResidentChecks(t *testing.T) {
	frames := [][]byte{[]byte("hdr"), {}}
	for _, at := range [][]resPlace{
		nil,
		{{Frame: 0, Addr: 4096, Len: 10}},      // not an empty placeholder
		{{Frame: 2, Addr: 4096, Len: 10}},      // no such frame
		{{Frame: 1, Addr: 0, Len: 10}},         // no address
		{{Frame: 1, Addr: 4096, Len: 0}},       // nothing
		{{Frame: 1, Addr: 4096, Len: 1 << 40}}, // beyond the frame limit
		{{Frame: 1, Addr: ^uint64(0) - 4, Len: 10}},
		{{Frame: 1, Addr: 4096, Len: 10}, {Frame: 1, Addr: 8192, Len: 10}},
	} {
		_, err := newResident(nil, nil, 1, at, frames, 1<<30)
		require.Error(t, err, "%v", at)
	}
}

// A dropped value is forgotten at once through the executor's forget socket, unless a run
// that names it is unanswered: then once that run is.
func TestForgetWaitsForRuns(t *testing.T) {
	p := &executorPool{slots: make(chan struct{}, 1)}
	data := payload(3, 1<<20)
	ex, _, r := selfResident(t, p, 11, data)
	require.Equal(t, []uint64{11}, forgotten(t, ex, func() { r.drop() }))

	_, _, r2 := selfResident(t, p, 12, data)
	r2.ex = ex
	require.True(t, r2.use())
	require.True(t, r2.use())
	require.Empty(t, forgotten(t, ex, func() { r2.drop() }), "in use by a run")
	require.False(t, r2.use(), "a dropped value is not named by new runs")
	require.Empty(t, forgotten(t, ex, r2.unuse))
	require.Equal(t, []uint64{12}, forgotten(t, ex, r2.unuse))
	runtime.KeepAlive(data)
}

// A kept view of whole rows is read row by row: any range of its bytes, as one contiguous run.
func TestResPlaceRows(t *testing.T) {
	const rows, stride, row = 700, 4200, 4096 // more rows than one process_vm_readv takes
	mem := payload(4, rows*stride)
	want := make([]byte, 0, rows*row)
	for r := range rows {
		want = append(want, mem[r*stride:r*stride+row]...)
	}
	p := resPlace{Frame: 1, Addr: uint64(uintptr(unsafe.Pointer(&mem[0]))), Len: rows * row, Row: row, Stride: stride}
	n, l := p.rows()
	require.EqualValues(t, rows, n)
	require.EqualValues(t, row, l)
	for _, c := range [][2]int{{0, rows * row}, {0, 1}, {4095, 2}, {4096, 4096}, {123, 40000}, {rows*row - 5, 5}} {
		got := make([]byte, c[1])
		require.NoError(t, p.readAt(os.Getpid(), got, int64(c[0])))
		require.Equal(t, want[c[0]:c[0]+c[1]], got, "bytes [%d, %d)", c[0], c[0]+c[1])
	}
	_, err := newResident(nil, nil, 1, []resPlace{p}, [][]byte{[]byte("h"), {}}, 1<<30)
	require.NoError(t, err)
	for _, bad := range []resPlace{
		{Frame: 1, Addr: p.Addr, Len: rows*row + 1, Row: row, Stride: stride}, // not whole rows
		{Frame: 1, Addr: p.Addr, Len: rows * row, Row: row, Stride: row - 1},  // overlapping rows
		{Frame: 1, Addr: ^uint64(0) - 1000, Len: rows * row, Row: row, Stride: stride},
		{Frame: 1, Addr: ^uint64(0) - 1000, Len: row, Row: row, Stride: stride}, // one row, past the end
		{Frame: 1, Addr: p.Addr, Len: 64 * 100, Row: 64, Stride: 64},            // rows too short
	} {
		_, err := newResident(nil, nil, 1, []resPlace{bad}, [][]byte{[]byte("h"), {}}, 1<<30)
		require.Error(t, err, "%+v", bad)
	}
	runtime.KeepAlive(mem)
}
