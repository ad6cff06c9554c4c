package worker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

func mustPack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	require.NoError(t, err)
	return b
}

// The hand-written done decoder agrees with the generic one on every done header shape the
// Python executor produces (small and large ints, several items, long strings).
func TestDecodeDoneMatchesGeneric(t *testing.T) {
	long := string(bytes.Repeat([]byte("k"), 70000))
	cases := []map[string]any{
		{"op": "done", "id": 1, "items": []map[string]any{{"key": "a", "encoding": "msgpack", "nframes": 1, "nbytes": 3}}},
		{"op": "done", "id": uint64(1) << 40, "items": []map[string]any{
			{"key": "x-" + long, "encoding": "pickle", "nframes": 2, "nbytes": int64(1) << 33},
			{"key": "y", "encoding": "bytes", "nframes": 1, "nbytes": 300}}},
		{"id": 200, "items": []map[string]any{{"nbytes": 65536, "nframes": 1, "encoding": "arrow", "key": "z"}}, "op": "done"},
		{"op": "done", "id": 7, "items": []map[string]any{}},
		// as the executor answers every run: when it started and stopped
		{"op": "done", "id": 8, "items": []map[string]any{{"key": "a", "encoding": "msgpack", "nframes": 1, "nbytes": 3}},
			"start": int64(1764980000123456789), "stop": int64(1764980000123459999)},
		{"op": "done", "id": 9, "start": -5, "stop": 0, "items": []map[string]any{}},
	}
	for i, c := range cases {
		b := mustPack(t, c)
		fast, ok := decodeDone(b)
		require.True(t, ok, "case %d", i)
		slow, err := wire.DecodeHeader(b)
		require.NoError(t, err)
		require.Equal(t, slow, fast, "case %d", i)
	}
}

// Anything but a plain done header goes to the generic decoder, and truncated or corrupt
// input never panics.
func TestDecodeExecHeaderFallbacks(t *testing.T) {
	errHdr := mustPack(t, map[string]any{"op": "error", "id": 3,
		"error": map[string]any{"code": "task-error", "type": "builtins.ValueError", "message": "no", "traceback": "tb"}})
	_, ok := decodeDone(errHdr)
	require.False(t, ok)
	m, err := decodeExecHeader(errHdr)
	require.NoError(t, err)
	require.Equal(t, wire.OpError, m.Op)
	require.Equal(t, "builtins.ValueError", m.Error.Type)

	extra := mustPack(t, map[string]any{"op": "done", "id": 3, "future_field": true,
		"items": []map[string]any{{"key": "a", "encoding": "msgpack", "nframes": 1, "nbytes": 1}}})
	_, ok = decodeDone(extra)
	require.False(t, ok)
	m, err = decodeExecHeader(extra)
	require.NoError(t, err)
	require.Equal(t, "a", m.Items[0].Key)

	ready := mustPack(t, map[string]any{"op": "ready", "pid": 12, "python": "3.11.7"})
	m, err = decodeExecHeader(ready)
	require.NoError(t, err)
	require.Equal(t, 12, m.PID)

	full := mustPack(t, map[string]any{"op": "done", "id": 9,
		"items": []map[string]any{{"key": "abc", "encoding": "pickle", "nframes": 2, "nbytes": 1000}}})
	for n := 0; n < len(full); n++ {
		_, ok := decodeDone(full[:n])
		require.False(t, ok, "truncated at %d", n)
		decodeExecHeader(full[:n]) // must not panic
		corrupt := append([]byte(nil), full...)
		corrupt[n] ^= 0xff
		decodeExecHeader(corrupt)
	}
}

func socketpair(t *testing.T) (*execConn, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	c := newExecConn(os.NewFile(uintptr(fds[0]), "a"), wire.DefaultLimits())
	other := os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { c.close(); other.Close() })
	return c, other
}

// Messages written by execConn (small frames copied, big ones written on their own) are read
// back intact by the standard frame reader, and the reverse.
func TestExecConnRoundTrip(t *testing.T) {
	c, other := socketpair(t)
	big := bytes.Repeat([]byte{7}, 3*execSmallFrame+5)
	errc := make(chan error, 1)
	go func() {
		errc <- c.send(&wire.Msg{Op: wire.OpRun, ID: 4, Key: "k", Payload: []byte("p")}, []byte("small"), big, []byte("tail"), nil)
	}()
	frames, err := wire.ReadFrames(other, wire.DefaultLimits())
	require.NoError(t, err)
	require.NoError(t, <-errc)
	m, err := wire.DecodeHeader(frames[0])
	require.NoError(t, err)
	require.Equal(t, "k", m.Key)
	require.Equal(t, uint64(4), m.ID)
	require.Equal(t, [][]byte{[]byte("small"), big, []byte("tail"), {}}, frames[1:])

	// the other way: a done answer with a frame, then an error answer
	hdr := mustPack(t, map[string]any{"op": "done", "id": 4,
		"items": []map[string]any{{"key": "k", "encoding": "bytes", "nframes": 1, "nbytes": 3}}})
	require.NoError(t, wire.WriteFrames(other, [][]byte{hdr, []byte("abc")}))
	require.NoError(t, wire.WriteFrames(other, [][]byte{mustPack(t, map[string]any{"op": "error", "id": 5, "message": "m"})}))
	r, rf, err := c.recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpDone, r.Op)
	require.Equal(t, [][]byte{[]byte("abc")}, rf)
	r, _, err = c.recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpError, r.Op)
	require.Equal(t, "m", r.Message)
}

// close wakes a goroutine blocked reading the socket, and later sends fail.
func TestExecConnCloseWakesReader(t *testing.T) {
	c, _ := socketpair(t)
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.recv()
		errc <- err
	}()
	c.close()
	require.ErrorIs(t, <-errc, wire.ErrClosed)
	require.ErrorIs(t, c.send(&wire.Msg{Op: wire.OpShutdown}), wire.ErrClosed)
}

// The executor port of the crash matrix: whatever an executor writes (user code shares its
// process), the worker's reader refuses it with a protocol error or an end of stream, and a
// declared-but-unsent frame costs nothing before its bytes arrive.
func TestExecConnHostileExecutor(t *testing.T) {
	huge := []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	pad := bytes.Repeat([]byte{0xc0}, 64)
	field := func(name string, val []byte) []byte {
		b := append([]byte{0x82, 0xa2, 'o', 'p', 0xa4, 'd', 'o', 'n', 'e'}, mustPack(t, name)...)
		return append(append(b, val...), pad...)
	}
	cases := map[string][]byte{}
	for _, f := range []string{"items", "seg", "shm_free", "shm_drop", "keys", "tasks", "zzz"} {
		cases[f+"/array32"] = field(f, huge)
		cases[f+"/deep"] = field(f, bytes.Repeat([]byte{0x91}, 1<<16))
	}
	for name, hdr := range cases {
		c, other := socketpair(t)
		go wire.WriteFrames(other, [][]byte{hdr})
		_, _, err := c.recv()
		require.ErrorIs(t, err, wire.ErrProtocol, name)
	}
	c, other := socketpair(t)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b := binary.BigEndian.AppendUint32(nil, 2)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, 1<<30)
	other.Write(append(b, 0x80, 1))
	other.Close()
	_, _, err := c.recv()
	runtime.ReadMemStats(&after)
	require.Error(t, err)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(8<<20), "a declared GiB was allocated")
}

// donesMsg packs a dones header with op first, as the executor writes it.
func donesMsg(t *testing.T, replies []any, nframes []int) []byte {
	return mustPack(t, struct {
		Op      string `msgpack:"op"`
		Replies []any  `msgpack:"replies"`
		NFrames []int  `msgpack:"nframes"`
	}{wire.OpDones, replies, nframes})
}

// A batch of runs goes as one runs message that reads back as each run's header and frames,
// in order (the executor's split_runs); a dones message comes back as its answers, one per
// recv, each with its own frames.
func TestRunsAndDones(t *testing.T) {
	c, other := socketpair(t)
	var batch []*pyRun
	var msgs []outMsg
	run := func(id uint64, key string, frames ...[]byte) *pyRun {
		r := &pyRun{msg: wire.Msg{Op: wire.OpRun, ID: id, Key: key, FuncHash: "h", Payload: []byte{0, byte(id)}}}
		for i := range frames {
			r.msg.Items = append(r.msg.Items, wire.Item{Key: fmt.Sprint(key, i), Encoding: wire.EncBytes, NFrames: 1, NBytes: int64(len(frames[i]))})
		}
		batch, msgs = append(batch, r), append(msgs, outMsg{m: &r.msg, payload: frames})
		return r
	}
	run(1, "a", []byte("a0"), []byte("a1")).msg.FuncData = []byte("pickled")
	run(2, "b").msg.Timeout = 0.01 // the profiler is on
	run(3, "c", []byte("c0")).keep = true
	for i := range 17 { // over 15 runs: the array's longer header
		run(uint64(10+i), fmt.Sprint("r", i), bytes.Repeat([]byte{byte(i)}, 200))
	}
	// an executor's scratch, used by an earlier batch (runs of other sizes, other frames)
	var sc runsScratch
	_, err := runsMsg(batch[3:], msgs[3:], &sc)
	require.NoError(t, err)
	sc.sent()
	for _, e := range sc.entries {
		require.Nil(t, e.Msg, "a sent batch's scratch keeps its runs")
	}
	for _, f := range sc.payload {
		require.Nil(t, f, "a sent batch's scratch keeps its frames")
	}
	om, err := runsMsg(batch, msgs, &sc)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { errc <- c.sendMany(om) }()
	frames, err := wire.ReadFrames(other, wire.DefaultLimits())
	require.NoError(t, err)
	require.NoError(t, <-errc)
	var got struct {
		Op      string  `msgpack:"op"`
		Runs    [][]any `msgpack:"runs"`
		NFrames []int   `msgpack:"nframes"`
	}
	require.NoError(t, msgpack.Unmarshal(frames[0], &got))
	require.Equal(t, wire.OpRuns, got.Op)
	require.Len(t, got.Runs, len(batch))
	at := 1
	for i, r := range batch {
		e := got.Runs[i] // [id, key, func, payload, items, extra]
		require.Len(t, e, 6)
		require.EqualValues(t, r.msg.ID, e[0])
		require.Equal(t, r.msg.Key, e[1])
		require.Equal(t, "h", e[2])
		require.Equal(t, r.msg.Payload, e[3])
		items := e[4].([]any)
		require.Len(t, items, len(r.msg.Items))
		for j, it := range r.msg.Items {
			e := items[j].([]any)
			require.Equal(t, []any{it.Key, it.Encoding, int64(1), it.NBytes}, normInts(e), "run %d item %d", i, j)
		}
		require.Equal(t, len(msgs[i].payload), got.NFrames[i])
		for j, f := range msgs[i].payload {
			require.Equal(t, f, frames[at+j], "run %d frame %d", i, j)
		}
		at += got.NFrames[i]
		switch i {
		case 0:
			require.Equal(t, map[string]any{"func_data": []byte("pickled")}, e[5])
		case 1:
			require.Equal(t, map[string]any{"timeout": 0.01}, e[5])
		case 2:
			require.Len(t, e[5], 1)
			require.Equal(t, int64(1), normInts(e[5].(map[string]any)["keep"]))
		default:
			require.Nil(t, e[5])
		}
	}
	require.Equal(t, len(frames), at)

	done := func(id int, key string) map[string]any {
		return map[string]any{"op": "done", "id": id, "items": []map[string]any{{"key": key, "encoding": "bytes", "nframes": 1, "nbytes": 2}}}
	}
	dones := donesMsg(t, []any{done(1, "a"), map[string]any{"op": "error", "id": 2, "message": "no"}, done(3, "c")}, []int{1, 0, 1})
	require.NoError(t, wire.WriteFrames(other, [][]byte{dones, []byte("a!"), []byte("c!")}))
	require.NoError(t, wire.WriteFrames(other, [][]byte{mustPack(t, done(4, "d")), []byte("d!")}))
	// a second dones message, shorter: its answers go where the first one's were
	dones = donesMsg(t, []any{done(5, "e"), done(6, "f")}, []int{1, 1})
	require.NoError(t, wire.WriteFrames(other, [][]byte{dones, []byte("e!"), []byte("f!")}))
	for _, want := range []struct {
		id     uint64
		op     string
		frames [][]byte
		in     bool
	}{{1, wire.OpDone, [][]byte{[]byte("a!")}, true}, {2, wire.OpError, [][]byte{}, true},
		{3, wire.OpDone, [][]byte{[]byte("c!")}, true}, {4, wire.OpDone, [][]byte{[]byte("d!")}, false},
		{5, wire.OpDone, [][]byte{[]byte("e!")}, true}, {6, wire.OpDone, [][]byte{[]byte("f!")}, true}} {
		m, x, rf, err := c.recvExt()
		require.NoError(t, err)
		require.Equal(t, want.id, m.ID)
		require.Equal(t, want.op, m.Op)
		require.Equal(t, want.in, x.batched)
		require.Equal(t, len(want.frames), len(rf))
		for i := range rf {
			require.Equal(t, want.frames[i], rf[i])
		}
	}
	require.Zero(t, c.queuedAnswers())
	for _, a := range c.answers[:cap(c.answers)] {
		require.Nil(t, a.m, "answers returned are still held")
	}
}

// A dones message that lies about its frames, nests, holds something other than done and
// error answers, or declares huge arrays it does not send, is a protocol error.
func TestDonesRefused(t *testing.T) {
	done := map[string]any{"op": "done", "id": 1, "items": []map[string]any{{"key": "a", "encoding": "bytes", "nframes": 1, "nbytes": 1}}}
	seg := map[string]any{"op": "done", "id": 1, "items": []map[string]any{}, "seg": [][]int{{0, 0, 1}}}
	huge := []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	prefix := []byte{0x83, 0xa2, 'o', 'p', 0xa5, 'd', 'o', 'n', 'e', 's'}
	cases := map[string]struct {
		hdr    []byte
		frames int
	}{
		"too few counts": {donesMsg(t, []any{done, done}, []int{1}), 2},
		"counts over":    {donesMsg(t, []any{done, done}, []int{1, 2}), 2},
		"counts under":   {donesMsg(t, []any{done, done}, []int{1, 0}), 2},
		"negative count": {donesMsg(t, []any{done, done}, []int{3, -1}), 2},
		"nested":         {donesMsg(t, []any{map[string]any{"op": "dones", "replies": []any{done}, "nframes": []int{1}}}, []int{1}), 1},
		"op not first": {mustPack(t, struct {
			Replies []any  `msgpack:"replies"`
			NFrames []int  `msgpack:"nframes"`
			Op      string `msgpack:"op"`
		}{[]any{done}, []int{1}, wire.OpDones}), 1},
		"secede inside":  {donesMsg(t, []any{map[string]any{"op": "secede", "id": 1}}, []int{0}), 0},
		"segment inside": {donesMsg(t, []any{seg}, []int{1}), 1},
		"no replies":     {donesMsg(t, []any{}, []int{}), 0},
		"65 replies":     {donesMsg(t, slices.Repeat([]any{map[string]any{"op": "error", "id": 1}}, 65), make([]int, 65)), 0},
		"replies twice": {slices.Concat([]byte{0x84}, mustPack(t, "op"), mustPack(t, "dones"), mustPack(t, "replies"),
			mustPack(t, []any{done}), mustPack(t, "nframes"), mustPack(t, []int{1}), mustPack(t, "replies"), mustPack(t, []any{done})), 1},
		"replies array32": {append(append(append(prefix, 0xa7), "replies"...), append(huge, bytes.Repeat([]byte{0xc0}, 64)...)...), 0},
		"nframes array32": {append(append(append(prefix, 0xa7), "nframes"...), append(huge, bytes.Repeat([]byte{0x00}, 64)...)...), 0},
		"deep reply":      {append(append(append(prefix, 0xa7), "replies"...), append([]byte{0x91}, bytes.Repeat([]byte{0x91}, 1<<16)...)...), 0},
	}
	for name, tc := range cases {
		c, other := socketpair(t)
		frames := [][]byte{tc.hdr}
		for range tc.frames {
			frames = append(frames, []byte("x"))
		}
		go wire.WriteFrames(other, frames)
		_, _, err := c.recv()
		require.ErrorIs(t, err, wire.ErrProtocol, name)
	}
}

// A done header whose seg declares a million placements, with a million bytes that are not
// placements after it, costs the decoder what it reads, not 24 bytes per declared entry.
func TestDoneDeclaredCountsCostNothing(t *testing.T) {
	hdr := append([]byte{0x82, 0xa2, 'o', 'p', 0xa4, 'd', 'o', 'n', 'e'}, mustPack(t, "seg")...)
	hdr = append(append(hdr, 0xdd, 0, 0x10, 0, 0), make([]byte, 1<<20)...) // 1<<20 declared, each a 0
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := decodeExecHeader(hdr)
	runtime.ReadMemStats(&after)
	require.Error(t, err)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(8<<20), "a declared count was allocated")
}

// A pyRun from the pool builds its run from its own task only: what a recycled run held (its
// items and frames, which point into the store) is gone, and its lists' arrays are reused.
func TestPyRunRecycled(t *testing.T) {
	w := newTestWorker(t, testConfig(t))
	w.store.Put("a", wire.EncBytes, [][]byte{[]byte("a0"), []byte("a1")}, nil)
	w.store.Put("b", wire.EncBytes, [][]byte{[]byte("b0")}, nil)
	task2 := &task{t: graph.Task{Key: "two", Kind: graph.KindPy, Func: "f", Payload: []byte{1}, Deps: []string{"a", "b"}}}
	task1 := &task{t: graph.Task{Key: "one", Kind: graph.KindPy, Func: "g", Deps: []string{"b"}}}

	r, taskErr := w.pyRunFor(task2, nil)
	require.Nil(t, taskErr)
	require.Len(t, r.msg.Items, 2)
	require.Len(t, r.frames, 3)
	items, frames := r.msg.Items, r.frames
	r.reset()
	require.Equal(t, wire.Msg{Items: r.msg.Items}, r.msg, "a reset run keeps its message")
	require.Nil(t, r.ts)
	require.Empty(t, r.msg.Items)
	require.Empty(t, r.frames)
	require.Equal(t, wire.Item{}, items[0], "a reset run keeps an item")
	require.Equal(t, wire.Item{}, items[1], "a reset run keeps an item")
	require.Equal(t, [][]byte{nil, nil, nil}, frames, "a reset run keeps the store's frames")

	pyRuns.Put(r)
	for range 3 { // the pool gives back r, or a new run: the message is the same either way
		r, taskErr = w.pyRunFor(task1, nil)
		require.Nil(t, taskErr)
		require.Equal(t, "one", r.msg.Key)
		require.Equal(t, "g", r.msg.FuncHash)
		require.Nil(t, r.msg.Payload)
		require.Equal(t, []wire.Item{{Key: "b", Encoding: wire.EncBytes, NFrames: 1, NBytes: 2}}, r.msg.Items)
		require.Equal(t, [][]byte{[]byte("b0")}, r.frames)
		r.recycle()
	}
}

// threadCount is the number of OS threads of this process.
func threadCount(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("Threads:")); ok {
			var n int
			_, err := fmt.Sscan(string(v), &n)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// A seceded task's socket is non-blocking, and newExecConn leaves it so: goroutines waiting on
// many of them park in the poller instead of each holding an OS thread in recvmsg (Go aborts
// past 10,000 threads).
func TestNonBlockingExecConnWaitsInPoller(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/self/status")
	}
	const n = 300
	conns := make([]*execConn, n)
	others := make([]*os.File, n)
	for i := range n {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		require.NoError(t, syscall.SetNonblock(fds[0], true))
		conns[i] = newExecConn(os.NewFile(uintptr(fds[0]), "seceded"), wire.DefaultLimits())
		others[i] = os.NewFile(uintptr(fds[1]), "executor")
		t.Cleanup(func() { conns[i].close(); others[i].Close() })
		flags, err := unix.FcntlInt(uintptr(conns[i].fd), unix.F_GETFL, 0)
		require.NoError(t, err)
		require.NotZero(t, flags&syscall.O_NONBLOCK, "newExecConn made the socket blocking")
	}
	before := threadCount(t)
	errs := make(chan error, n)
	for _, c := range conns {
		go func() {
			_, _, err := c.recv()
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // every reader is waiting by now
	require.Less(t, threadCount(t), before+n/4, "readers of non-blocking executor sockets hold threads")

	// one of them is answered and reads its message; the rest end when closed
	hdr := mustPack(t, map[string]any{"op": "error", "id": 5, "message": "m"})
	require.NoError(t, wire.WriteFrames(others[0], [][]byte{hdr}))
	require.NoError(t, <-errs)
	for _, c := range conns {
		c.close()
	}
	for range n - 1 {
		require.ErrorIs(t, <-errs, wire.ErrClosed)
	}

}
