package wire

import (
	"testing"

	"github.com/shoal-dev/shoal/graph"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// decodeMsgs are headers of every shape the fast decoder handles, and a few it leaves to the
// reflective decoder.
func decodeMsgs() []*Msg {
	long := string(make([]byte, 70000))
	return []*Msg{
		{Op: OpWelcome, Client: 3, Version: "1", Dashboard: "http://x/"},
		{Op: OpUpdateGraph, ID: 1 << 40, Wanted: []string{"a", long}, Funcs: map[string][]byte{"h1": {1, 2}, "h0": make([]byte, 300)},
			Tasks: []graph.Task{
				{Key: "a", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(-1), graph.Lit(-200), graph.Lit(int64(-1 << 40)),
					graph.Lit(1.5), graph.Lit(float32(2.5)), graph.Lit("s"), graph.Lit([]any{1, "x"}), graph.Lit(map[string]any{"k": true}),
					graph.Lit(nil), graph.Lit(true), graph.Lit(uint64(1 << 63)), graph.Lit(300), graph.Lit(70000), graph.Lit(1 << 40),
					graph.Lit(-100000), graph.Lit([]byte{1, 2}), graph.Lit(""), graph.Ref("b")},
					Priority: -3, Retries: 2, Resources: map[string]float64{"GPU": 1}, Workers: []string{"w"}, Group: "g"},
				{Key: "b", Kind: graph.KindPy, Func: "abc", Payload: make([]byte, 70000), Deps: []string{"c"}},
				{Key: "c", Kind: graph.KindPy, Func: "abc"},
				{Key: "d", Kind: "other", Func: "x"},
			}},
		{Op: OpCompute, Task: &graph.Task{Key: "k", Kind: graph.KindGo, Func: "noop"}, TaskID: 1<<32 | 7, Order: 12345678901,
			Deps: []Dep{{Key: "d", WhoHas: []string{"127.0.0.1:1"}, NBytes: 1 << 33}}, FuncData: []byte("fn")},
		{Op: OpTaskFinished, Key: "inc-0123456789abcdef", TaskID: 99, NBytes: 8, Encoding: EncMsgpack, Start: 1, Stop: 2, Thread: 3},
		{Op: OpTaskErred, Key: "k", TaskID: 1 << 50, Error: &Error{Code: CodeTaskError, Message: "boom"}, Start: -5},
		{Op: OpKeyState, Key: "k", State: "erred", Error: &Error{Code: CodeTaskError, Type: "ValueError", Message: "m", Traceback: "tb", Exc: []byte{0}}},
		{Op: OpData, ID: 7, Items: []Item{{Key: "a", Encoding: EncArrow, NFrames: 1, NBytes: 99}}, Missing: []string{"z"}},
		{Op: OpHeartbeat, Memory: 1, Spilled: 2, MemLimit: 3, Executing: 4, Ready: 5, CPU: 12.5, BytesSent: 6, BytesRecv: 7},
		{Op: OpStealResponse, Key: "k", Accepted: true},
		{Op: OpFreeKeys, Keys: []string{"a", "b", ""}},
		{Op: OpInfoReply, Workers: []WorkerInfo{{Name: "w", Address: "a", NThreads: 2, PID: 9}}, WhoHas: map[string][]string{"k": {"a", "b"}}},
		{Op: OpRegister, Name: "n", DataAddr: "d", NThreads: 1, PID: 2, Functions: []string{"f"}, Resources: map[string]float64{"x": 0.5},
			Python: "/usr/bin/python3", Reason: "r", Scheduler: "s", WorkerID: -4, Code: "c", Message: "m", Worker: "w", Encoding: "e"},
		{Op: OpError, Code: CodeProtocol, Message: "bad", ID: ^uint64(0)},
	}
}

func reflectDecode(b []byte) (*Msg, error) {
	m := new(Msg)
	err := msgpack.Unmarshal(b, m)
	return m, err
}

// The hand-written decoder must give exactly what msgpack.Unmarshal gives, for the Go
// encoder's output and for the reflective encoder's (other widths, as Python may send).
func TestFastDecoderMatchesReflection(t *testing.T) {
	for _, m := range decodeMsgs() {
		fast, err := EncodeHeader(m)
		require.NoError(t, err)
		slow, err := msgpack.Marshal(m)
		require.NoError(t, err)
		for _, b := range [][]byte{fast, slow} {
			want, err := reflectDecode(b)
			require.NoError(t, err, m.Op)
			got, err := DecodeHeader(b)
			require.NoError(t, err, m.Op)
			require.Equal(t, want, got, m.Op)
			if m.Op != OpInfoReply {
				require.True(t, decodeHeaderFast(b, new(Msg)), "%s should not need the reflective decoder", m.Op)
			}
		}
	}
}

// Python's msgpack writes generic maps (an unknown field, nil values, small-width ints); the
// fast decoder must skip or defer them exactly as the reflective decoder treats them.
func TestFastDecoderGenericMaps(t *testing.T) {
	for _, v := range []map[string]any{
		{"op": "task_finished", "key": "k", "nbytes": uint8(200), "extra": map[string]any{"a": []any{1, nil, 2.5, "x", []byte{1}}}},
		{"op": "key_state", "key": "k", "error": nil, "items": nil, "task": nil, "deps": nil, "keys": nil},
		{"op": "x", "nbytes": -1, "start": int16(-300), "stop": int32(-70000), "order": int64(-1 << 40), "id": uint32(5)},
		{"op": "x", "key": nil},
		{"op": "x", "cpu": 3},
		{"op": "x", "cpu": float32(1.5)},
		{"op": "x", "accepted": nil},
		{"op": "x", "tasks": []any{map[string]any{"key": "a", "kind": "go", "func": "f", "zzz": 1, "args": []any{map[string]any{"v": 1}}}}},
		{"op": "x", "id": -1},
		{"op": "x", "payload": "text"},
		{"op": "x", "key": []byte("bin")},
		{"op": ""},
	} {
		b, err := msgpack.Marshal(v)
		require.NoError(t, err)
		checkDecodersAgree(t, b)
	}
	b, err := msgpack.Marshal(map[any]any{"op": "x", 1: 2})
	require.NoError(t, err)
	checkDecodersAgree(t, b)
}

func checkDecodersAgree(t *testing.T, b []byte) {
	t.Helper()
	want, werr := reflectDecode(b)
	fast := new(Msg)
	if decodeHeaderFast(b, fast) {
		require.NoError(t, werr, "fast decoder accepted what msgpack refuses: %x", b)
		require.Equal(t, want, fast, "%x", b)
	}
	got, err := DecodeHeader(b)
	if werr != nil {
		require.Error(t, err)
		return
	}
	if want.Op == "" {
		require.Error(t, err)
		return
	}
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// FuzzDecodeHeader checks that whenever the fast decoder accepts a frame, msgpack.Unmarshal
// accepts it too and decodes the same Msg.
func FuzzDecodeHeader(f *testing.F) {
	for _, m := range decodeMsgs() {
		b, _ := EncodeHeader(m)
		f.Add(b)
		b, _ = msgpack.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{0x81, 0xa2, 'o', 'p', 0xc0})
	f.Add([]byte{0xde, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, werr := reflectDecode(b)
		fast := new(Msg)
		if !decodeHeaderFast(b, fast) {
			return
		}
		if werr != nil {
			t.Fatalf("fast decoder accepted what msgpack refuses (%v): %x", werr, b)
		}
		require.Equal(t, want, fast, "%x", b)
	})
}

func BenchmarkDecodeCompute(b *testing.B) {
	buf, _ := EncodeHeader(&Msg{Op: OpCompute, Task: &graph.Task{Key: "inc-12345", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(5)}},
		TaskID: 1234, Order: 99, Deps: []Dep{{Key: "x-1", WhoHas: []string{"127.0.0.1:40000"}, NBytes: 8}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHeader(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeUpdateGraph(b *testing.B) {
	tasks := make([]graph.Task, 1000)
	for i := range tasks {
		tasks[i] = graph.Task{Key: "noop-" + string(rune('a'+i%26)) + "12345", Kind: graph.KindGo, Func: "noop"}
	}
	buf, _ := EncodeHeader(&Msg{Op: OpUpdateGraph, ID: 1, Tasks: tasks})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHeader(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(tasks)), "ns/task")
}

// MessageBuffered is true exactly when a whole message waits in the read buffer, and the
// reused header buffer does not corrupt what earlier Recv calls returned.
func TestMessageBufferedAndHeaderReuse(t *testing.T) {
	cc, sc, cerr, serr := pipePair(t, "", "", RoleWorker)
	require.NoError(t, cerr)
	require.NoError(t, serr)
	defer cc.Close()
	defer sc.Close()
	require.False(t, sc.MessageBuffered())
	for i := range 3 {
		require.NoError(t, cc.Queue(&Msg{Op: OpTaskFinished, Key: "k-" + string(rune('a'+i)), TaskID: uint64(i + 1)}, []byte("p")))
	}
	cc.Flush()
	first, frames, err := sc.Recv()
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("p")}, frames)
	require.Eventually(t, sc.MessageBuffered, 5e9, 1e6) // the other two arrived with it or soon after
	second, _, err := sc.Recv()
	require.NoError(t, err)
	third, _, err := sc.Recv()
	require.NoError(t, err)
	require.False(t, sc.MessageBuffered())
	require.Equal(t, "k-a", first.Key)
	require.Equal(t, "k-b", second.Key)
	require.Equal(t, "k-c", third.Key)
	require.Equal(t, uint64(3), third.TaskID)
}

func TestReaderReadsWhatEncodeHeaderWrites(t *testing.T) {
	b, err := EncodeHeader(&Msg{Op: OpDone, ID: 7, Items: []Item{{Key: "k", Encoding: EncBytes, NFrames: 2, NBytes: 9}}})
	require.NoError(t, err)
	r := NewReader(b)
	n, ok := r.MapLen()
	require.True(t, ok)
	got := map[string]any{}
	for range n {
		k, ok := r.Str()
		require.True(t, ok)
		switch k {
		case "op":
			got[k], ok = r.Str()
		case "id":
			got[k], ok = r.Uint()
		case "items":
			var na int
			na, ok = r.ArrayLen()
			require.Equal(t, 1, na)
			var it Item
			ok = ok && r.Item(&it)
			got[k] = it
		default:
			t.Fatalf("unexpected field %q", k)
		}
		require.True(t, ok, k)
	}
	require.True(t, r.Done())
	require.Equal(t, map[string]any{"op": OpDone, "id": uint64(7),
		"items": Item{Key: "k", Encoding: EncBytes, NFrames: 2, NBytes: 9}}, got)
	// a truncated buffer is reported, not read past
	r = NewReader(b[:len(b)-3])
	_, ok = r.MapLen()
	require.True(t, ok)
	require.False(t, r.Done())
}
