package wire

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
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

// The decoder must give exactly what msgpack.Unmarshal gives, for the Go encoder's output and
// for the reflective encoder's (other widths, as Python may send).
func TestDecoderMatchesReflection(t *testing.T) {
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
		}
	}
}

// Python's msgpack writes generic maps (an unknown field, nil values, small-width ints); the
// decoder must read them as msgpack.Unmarshal does.
func TestDecoderGenericMaps(t *testing.T) {
	for _, v := range []map[string]any{
		{"op": "task_finished", "key": "k", "nbytes": uint8(200), "extra": map[string]any{"a": []any{1, nil, 2.5, "x", []byte{1}}}},
		{"op": "key_state", "key": "k", "error": nil, "items": nil, "task": nil, "deps": nil, "keys": nil},
		{"op": "x", "nbytes": -1, "start": int16(-300), "stop": int32(-70000), "order": int64(-1 << 40), "id": uint32(5)},
		{"op": "x", "key": nil},
		{"op": "x", "cpu": 3},
		{"op": "x", "cpu": float32(1.5)},
		{"op": "x", "accepted": nil},
		{"op": "x", "tasks": []any{map[string]any{"key": "a", "kind": "go", "func": "f", "zzz": 1, "args": []any{map[string]any{"v": 1}}}}},
		{"op": "x", "tasks": []any{map[string]any{"key": "a", "args": []any{map[string]any{"v": map[string]any{"n": []any{uint64(1 << 63), float32(1), []byte{}}}}}}}},
		{"op": "x", "payload": "text"},
		{"op": "x", "key": []byte("bin")},
		{"op": "x", "resources": map[string]any{"GPU": 1, "mem": float32(0.5)}},
	} {
		b, err := msgpack.Marshal(v)
		require.NoError(t, err)
		want, err := reflectDecode(b)
		require.NoError(t, err)
		got, err := DecodeHeader(b)
		require.NoError(t, err, "%v", v)
		require.Equal(t, want, got, "%v", v)
	}
}

// What a peer must not send is refused with a protocol error naming the field.
func TestDecoderRefuses(t *testing.T) {
	for _, c := range []struct {
		v     any
		field string
	}{
		{map[string]any{"op": ""}, "op"},
		{map[string]any{"id": 1}, "op"},
		{map[string]any{"op": "x", "id": -1}, "id"},
		{map[string]any{"op": "x", "keys": "k"}, "keys"},
		{map[string]any{"op": "x", "tasks": []any{1}}, "tasks"},
		{map[any]any{"op": "x", 1: 2}, ""},
		{map[string]any{"op": "x", "nbytes": 1.5}, "nbytes"},
		{[]any{"op"}, ""},
	} {
		b, err := msgpack.Marshal(c.v)
		require.NoError(t, err)
		_, err = DecodeHeader(b)
		var de *DecodeError
		require.ErrorAs(t, err, &de, "%v", c.v)
		require.ErrorIs(t, err, ErrProtocol)
		require.Equal(t, c.field, de.Field, "%v: %v", c.v, err)
	}
}

// hostileHeaders are headers that once made a process allocate gigabytes or overflow its
// stack: a declared count far beyond the bytes sent, in every array and map field, at the top
// level and inside tasks, items and deps; deep nesting in known and unknown fields.
func hostileHeaders() map[string][]byte {
	huge32 := func(code byte) []byte { return []byte{code, 0xff, 0xff, 0xff, 0xff} }
	nils := make([]byte, 64)
	for i := range nils {
		nils[i] = 0xc0
	}
	field := func(name string, val []byte) []byte {
		b := []byte{0x82, 0xa2, 'o', 'p', 0xac}
		b = append(b, "update_graph"...)
		b = appendStr(b, name)
		return append(append(b, val...), nils...)
	}
	out := map[string][]byte{}
	for _, f := range msgFields {
		out[f.name+"/array32"] = field(f.name, huge32(0xdd))
		out[f.name+"/map32"] = field(f.name, huge32(0xdf))
		out[f.name+"/str32"] = field(f.name, huge32(0xdb))
		out[f.name+"/bin32"] = field(f.name, huge32(0xc6))
	}
	out["unknown/array32"] = field("zzz", huge32(0xdd))
	for _, inner := range []string{"args", "deps", "workers", "resources", "payload"} {
		task := appendStr(append(appendStr([]byte{0x82}, "key"), 0xa1, 'k'), inner)
		out["tasks."+inner+"/array32"] = field("tasks", append(append([]byte{0x91}, task...), huge32(0xdd)...))
	}
	out["deps.who_has/array32"] = field("deps", append(appendStr([]byte{0x91, 0x81}, "who_has"), huge32(0xdd)...))
	deep := func(open byte, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = open
		}
		return b
	}
	out["unknown/deep-array"] = field("zzz", deep(0x91, 1<<20))
	out["unknown/deep-map"] = field("zzz", append(deep(0x81, 1<<20), 0))
	lit := appendStr(append(appendStr([]byte{0x91, 0x81}, "key"), 0xa1, 'k'), "args")
	lit = append(append(lit, 0x91, 0x81, 0xa1, 'v'), deep(0x91, 1<<20)...)
	out["tasks.args.v/deep"] = field("tasks", lit)
	// a million empty maps: each one byte on the wire, a 184-byte graph.Task decoded
	empties := append([]byte{0xdd, 0x00, 0x0f, 0x42, 0x40}, bytes.Repeat([]byte{0x80}, 1_000_000)...)
	out["tasks/empty-maps"] = field("tasks", empties)
	return out
}

// What a header decodes to is bounded by its size, not only by its counts: a million one-byte
// empty maps would be a million 184-byte tasks.
func TestDecoderBudget(t *testing.T) {
	b := append([]byte{0x82, 0xa2, 'o', 'p', 0xa1, 'x'}, appendStr(nil, "tasks")...)
	b = append(b, 0xdd, 0x00, 0x0f, 0x42, 0x40)
	b = append(b, bytes.Repeat([]byte{0x80}, 1_000_000)...)
	_, err := DecodeHeader(b)
	var de *DecodeError
	require.ErrorAs(t, err, &de)
	require.Equal(t, "tasks", de.Field)
	require.Contains(t, de.Reason, "decodes to more than")
	// a real graph of many small tasks is well within it
	tasks := make([]graph.Task, 50_000)
	for i := range tasks {
		tasks[i] = graph.Task{Key: fmt.Sprint("t-", i), Kind: graph.KindGo, Func: "noop"}
	}
	enc, err := EncodeHeader(&Msg{Op: OpUpdateGraph, Tasks: tasks})
	require.NoError(t, err)
	m, err := DecodeHeader(enc)
	require.NoError(t, err)
	require.Len(t, m.Tasks, 50_000)
}

func TestDecoderHostileHeaders(t *testing.T) {
	for name, b := range hostileHeaders() {
		_, err := DecodeHeader(b)
		require.ErrorIs(t, err, ErrProtocol, name)
	}
}

// Every msgpack tag of Msg has its entry in the decoder's field table, and nothing else does.
func TestFieldTableMatchesMsg(t *testing.T) {
	typ := reflect.TypeOf(Msg{})
	var tags []string
	for i := range typ.NumField() {
		tags = append(tags, strings.Split(typ.Field(i).Tag.Get("msgpack"), ",")[0])
	}
	var names []string
	for i, f := range msgFields {
		names = append(names, f.name)
		require.Equal(t, i, fieldIndex([]byte(f.name)), f.name)
	}
	require.Equal(t, tags, names)
	require.Equal(t, -1, fieldIndex([]byte("nonesuch")))
}

func TestDecodeAny(t *testing.T) {
	for _, v := range []any{nil, true, 1, -1, 300, uint64(1 << 63), 2.5, float32(1.5), "s", []byte{1},
		[]any{1, "x", nil}, map[string]any{"a": map[string]any{"b": []any{int64(-1 << 40)}}}} {
		b, err := msgpack.Marshal(v)
		require.NoError(t, err)
		var want any
		require.NoError(t, msgpack.Unmarshal(b, &want))
		got, err := DecodeAny(b)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := DecodeAny([]byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0})
	require.ErrorIs(t, err, ErrProtocol)
	_, err = DecodeAny([]byte{0x01, 0x02})
	require.ErrorIs(t, err, ErrProtocol)
}

// FuzzDecodeHeader checks that the decoder never panics, and that whatever it accepts
// msgpack.Unmarshal accepts too and decodes to the same Msg. The hostile headers are its seeds.
func FuzzDecodeHeader(f *testing.F) {
	for _, m := range decodeMsgs() {
		b, _ := EncodeHeader(m)
		f.Add(b)
		b, _ = msgpack.Marshal(m)
		f.Add(b)
	}
	for _, b := range hostileHeaders() {
		if len(b) < 4096 {
			f.Add(b)
		}
	}
	f.Add([]byte{0x81, 0xa2, 'o', 'p', 0xc0})
	f.Add([]byte{0xde, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeHeader(b)
		if err != nil {
			require.ErrorIs(t, err, ErrProtocol)
			return
		}
		want, werr := reflectDecode(b)
		if werr != nil {
			t.Fatalf("decoder accepted what msgpack refuses (%v): %x", werr, b)
		}
		require.Equal(t, want, got, "%x", b)
	})
}

func BenchmarkDecodeCompute(b *testing.B) {
	buf, _ := EncodeHeader(&Msg{Op: OpCompute, Task: &graph.Task{Key: "inc-12345", Kind: graph.KindGo, Func: "inc", Group: "inc", Args: []graph.Arg{graph.Lit(5)}},
		TaskID: 1234, Order: 99, Deps: []Dep{{Key: "x-1", WhoHas: []string{"127.0.0.1:40000"}, NBytes: 8}}})
	b.ReportAllocs()
	for b.Loop() { // as a worker does: the header and the task go back once copied
		m, err := DecodeHeader(buf)
		if err != nil {
			b.Fatal(err)
		}
		ReleaseTask(m.Task)
		ReleaseMsg(m)
	}
}

func BenchmarkDecodeUpdateGraph(b *testing.B) {
	tasks := make([]graph.Task, 1000)
	for i := range tasks {
		tasks[i] = graph.Task{Key: "noop-" + string(rune('a'+i%26)) + "12345", Kind: graph.KindGo, Func: "noop", Group: "noop"}
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
	cc, sc := connPair(t, "", RoleWorker)
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

func TestRawField(t *testing.T) {
	b, err := msgpack.Marshal(map[string]any{"op": "data", "keys": []string{"a", "b"}, "seg": []any{[]any{1, 2}}})
	require.NoError(t, err)
	raw, ok, err := RawField(b, "seg")
	require.NoError(t, err)
	require.True(t, ok)
	var seg [][]int
	require.NoError(t, UnmarshalExt(raw, &seg))
	require.Equal(t, [][]int{{1, 2}}, seg)
	_, ok, err = RawField(b, "shm")
	require.NoError(t, err)
	require.False(t, ok)
	_, _, err = RawField(append([]byte{0x81, 0xa3, 's', 'e', 'g'}, bytes.Repeat([]byte{0x91}, 100)...), "seg")
	require.ErrorIs(t, err, ErrProtocol)
}

// A compute's task comes from a pool: one given back is zeroed, so the next compute's task
// has none of its fields, and a copy taken before the release keeps its own.
func TestComputeTaskPooled(t *testing.T) {
	a := &graph.Task{Key: "a", Kind: graph.KindPy, Func: "f", Payload: []byte("pa"), Deps: []string{"x", "y"},
		Resources: map[string]float64{"GPU": 1}, Workers: []string{"w1"}, Group: "ga", Priority: 3}
	b := &graph.Task{Key: "b", Kind: graph.KindGo, Func: "g"}
	dec := func(task *graph.Task) *graph.Task {
		hdr, err := EncodeHeader(&Msg{Op: OpCompute, TaskID: 1, Task: task})
		require.NoError(t, err)
		m, err := DecodeHeader(hdr)
		require.NoError(t, err)
		return m.Task
	}
	for range 50 { // sync.Pool may hand back another object: take the reuse often
		ta := dec(a)
		kept := *ta
		ReleaseTask(ta)
		tb := dec(b)
		require.Equal(t, *b, *tb, "a reused task carries over fields of the last one")
		require.Equal(t, *a, kept, "a copy taken before the release changed")
		ReleaseTask(tb)
	}
	ReleaseTask(nil)
}
