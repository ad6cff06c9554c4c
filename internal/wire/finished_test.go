package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// finishedOf is what DecodeHeader made of a task_finished, as a TaskFinished.
func finishedOf(m *Msg) TaskFinished {
	return TaskFinished{Key: m.Key, TaskID: m.TaskID, NBytes: m.NBytes, Encoding: m.Encoding,
		Start: m.Start, Stop: m.Stop, Thread: m.Thread, Keys: m.Keys}
}

func TestDecodeTaskFinishedAgreesWithDecodeHeader(t *testing.T) {
	for _, m := range []*Msg{
		{Op: OpTaskFinished, Key: "('x', 3)", TaskID: 1 << 40, NBytes: 12, Encoding: EncMsgpack, Start: 5, Stop: 9, Thread: 1},
		{Op: OpTaskFinished, Key: "k", Encoding: "some-new-encoding", Keys: []string{"f1", "f2"}},
		{Op: OpTaskFinished}, // every field but op left out
	} {
		hdr, err := EncodeHeader(m)
		require.NoError(t, err)
		var f TaskFinished
		require.True(t, DecodeTaskFinished(hdr, &f), "%+v", m)
		want, err := DecodeHeader(hdr)
		require.NoError(t, err)
		require.Equal(t, finishedOf(want), f)
	}
}

// A worker's usual task_finished costs one allocation, its key: the scheduler decodes one per
// task, and at 10,000 workers the collector's cycles are much of its cost.
func TestDecodeTaskFinishedAllocatesTheKeyOnly(t *testing.T) {
	hdr, err := EncodeHeader(&Msg{Op: OpTaskFinished, Key: "('x', 3)", TaskID: 7, NBytes: 12,
		Encoding: EncMsgpack, Start: 5, Stop: 9, Thread: 1})
	require.NoError(t, err)
	var f TaskFinished
	allocs := testing.AllocsPerRun(100, func() {
		if !DecodeTaskFinished(hdr, &f) {
			t.Fatal("not decoded")
		}
	})
	require.Equal(t, 1.0, allocs)
	require.Equal(t, "('x', 3)", f.Key)
}

// Anything but a plain task_finished is left to DecodeHeader: other ops, other fields (a
// newer worker's), a field twice or of the wrong type, bytes after the map, no op at all.
func TestDecodeTaskFinishedDeclines(t *testing.T) {
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		require.NoError(t, err)
		return b
	}
	hdr, err := EncodeHeader(&Msg{Op: OpTaskFinished, Key: "k"})
	require.NoError(t, err)
	for name, b := range map[string][]byte{
		"another op":     enc(map[string]any{"op": OpTaskErred, "key": "k"}),
		"another field":  enc(map[string]any{"op": OpTaskFinished, "key": "k", "error": map[string]any{"code": "x"}}),
		"unknown field":  enc(map[string]any{"op": OpTaskFinished, "key": "k", "metrics": 1}),
		"no op":          enc(map[string]any{"key": "k", "tid": 1}),
		"key not a str":  enc(map[string]any{"op": OpTaskFinished, "key": 7}),
		"negative tid":   enc(map[string]any{"op": OpTaskFinished, "tid": -1}),
		"keys not array": enc(map[string]any{"op": OpTaskFinished, "keys": "k"}),
		"not a map":      enc([]any{"op", OpTaskFinished}),
		"trailing bytes": append(append([]byte{}, hdr...), 0xc0),
		"truncated":      hdr[:len(hdr)-1],
		"key twice":      {0x83, 0xa2, 'o', 'p', 0xad, 't', 'a', 's', 'k', '_', 'f', 'i', 'n', 'i', 's', 'h', 'e', 'd', 0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa3, 'k', 'e', 'y', 0xa1, 'b'},
	} {
		var f TaskFinished
		require.False(t, DecodeTaskFinished(b, &f), name)
	}
}

// FuzzDecodeTaskFinished: whatever DecodeTaskFinished accepts, DecodeHeader accepts as a
// task_finished with the same fields; and neither panics.
func FuzzDecodeTaskFinished(f *testing.F) {
	for _, m := range []*Msg{
		{Op: OpTaskFinished, Key: "k", TaskID: 3, NBytes: 8, Encoding: EncPickle, Start: 1, Stop: 2, Thread: 4, Keys: []string{"a"}},
		{Op: OpTaskErred, Key: "k"},
	} {
		hdr, _ := EncodeHeader(m)
		f.Add(hdr)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var got TaskFinished
		if !DecodeTaskFinished(b, &got) {
			return
		}
		m, err := DecodeHeader(b)
		if err != nil {
			t.Fatalf("DecodeTaskFinished took what DecodeHeader refuses: %v", err)
		}
		if m.Op != OpTaskFinished {
			t.Fatalf("op %q", m.Op)
		}
		require.Equal(t, finishedOf(m), got)
	})
}
