package worker

import (
	"bytes"
	"encoding/binary"
	"os"
	"runtime"
	"syscall"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
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
