package wire

import (
	"testing"

	"github.com/shoal-dev/shoal/graph"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// The hand-written encoder must decode to exactly what the reflective encoder gives.
func TestFastEncoderMatchesReflection(t *testing.T) {
	long := string(make([]byte, 70000))
	msgs := []*Msg{
		{Op: OpWelcome, Client: 3, Version: "1", Dashboard: "http://x/"},
		{Op: OpUpdateGraph, ID: 1 << 40, Wanted: []string{"a", long}, Funcs: map[string][]byte{"h1": {1, 2}, "h0": make([]byte, 300)},
			Tasks: []graph.Task{
				{Key: "a", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(-1), graph.Lit(-200), graph.Lit(int64(-1 << 40)), graph.Lit(1.5), graph.Lit("s"), graph.Lit([]any{1, "x"}), graph.Lit(map[string]any{"k": true}), graph.Lit(nil), graph.Ref("b")},
					Priority: -3, Retries: 2, Resources: map[string]float64{"GPU": 1}, Workers: []string{"w"}, Group: "g"},
				{Key: "b", Kind: graph.KindPy, Func: "abc", Payload: make([]byte, 70000), Deps: []string{"c"}},
			}},
		{Op: OpCompute, Task: &graph.Task{Key: "k", Kind: graph.KindGo, Func: "noop"}, Order: 12345678901,
			Deps: []Dep{{Key: "d", WhoHas: []string{"127.0.0.1:1"}, NBytes: 1 << 33}}, FuncData: []byte("fn")},
		{Op: OpKeyState, Key: "k", State: "erred", Error: &Error{Code: CodeTaskError, Type: "ValueError", Message: "m", Traceback: "tb", Exc: []byte{0}}},
		{Op: OpData, ID: 7, Items: []Item{{Key: "a", Encoding: EncArrow, NFrames: 1, NBytes: 99}}, Missing: []string{"z"}},
		{Op: OpHeartbeat, Memory: 1, Spilled: 2, MemLimit: 3, Executing: 4, Ready: 5, CPU: 12.5, BytesSent: 6, BytesRecv: 7},
		{Op: OpStealResponse, Key: "k", Accepted: true},
		{Op: OpInfoReply, Workers: []WorkerInfo{{Name: "w", Address: "a", NThreads: 2, PID: 9}}, WhoHas: map[string][]string{"k": {"a", "b"}}},
		{Op: OpRegister, Name: "n", DataAddr: "d", NThreads: 1, PID: 2, Functions: []string{"f"}, Resources: map[string]float64{"x": 0.5}},
		{Op: OpRegister, Name: "again", DataAddr: "d", NThreads: 1, Items: []Item{{Key: "held", Encoding: EncPickle, NBytes: 5}},
			Running: []string{"r1", "r2"}, Seceded: []string{"r2"}},
	}
	for _, m := range msgs {
		fast, err := EncodeHeader(m)
		require.NoError(t, err)
		slow, err := msgpack.Marshal(m)
		require.NoError(t, err)
		var a, b any
		require.NoError(t, msgpack.Unmarshal(fast, &a), m.Op)
		require.NoError(t, msgpack.Unmarshal(slow, &b), m.Op)
		require.Equal(t, normalize(b), normalize(a), m.Op)
		got, err := DecodeHeader(fast)
		require.NoError(t, err)
		require.Equal(t, m.Op, got.Op)
	}
}

func BenchmarkEncodeCompute(b *testing.B) {
	m := &Msg{Op: OpCompute, Task: &graph.Task{Key: "inc-12345", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(5)}}, Order: 99,
		Deps: []Dep{{Key: "x-1", WhoHas: []string{"127.0.0.1:40000"}, NBytes: 8}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeHeader(m); err != nil {
			b.Fatal(err)
		}
	}
}

// normalize makes integers of every width int64, so values compare by meaning, not encoding.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = normalize(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalize(x)
		}
		return out
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case uint64:
		return int64(v)
	}
	return v
}
