package shoal

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// A literal for a Python function is encoded the same every time: its maps' keys in order
// (Go's map order is random; the function gets a dict, whose order it may use).
func TestPythonLiteralMapsInOrder(t *testing.T) {
	lit := map[string]any{"value": []int64{1, 2}, "key": []string{"a", "b"}, "m": map[string]int{"z": 1, "a": 2},
		"l": []map[string]int{{"y": 1, "b": 2, "c": 3}}}
	first := encodesTheSame(t, lit)
	require.Equal(t, []string{"key", "l", "m", "value"}, topKeys(t, first))
	var back map[string]any
	require.NoError(t, msgpack.Unmarshal(first, &back))
	require.Equal(t, map[string]any{"value": []any{int64(1), int64(2)}, "key": []any{"a", "b"},
		"m": map[string]any{"z": int8(1), "a": int8(2)}, "l": []any{map[string]any{"y": int8(1), "b": int8(2), "c": int8(3)}}}, back)
}

// Maps inside structs, and maps whose keys are not strings, are in order too.
func TestPythonLiteralMapsInStructsInOrder(t *testing.T) {
	type inner struct {
		Columns map[string]int64
		ByID    map[int64]string
	}
	type outer struct {
		Name  string
		Parts []inner
		Meta  map[string]any
	}
	lit := outer{Name: "t",
		Parts: []inner{{Columns: map[string]int64{"z": 1, "a": 2, "m": 3, "bb": 4}, ByID: map[int64]string{300: "c", 2: "a", -5: "n", 70000: "x"}}},
		Meta:  map[string]any{"k": inner{Columns: map[string]int64{"y": 1, "c": 2}}, "b": true}}
	first := encodesTheSame(t, lit)
	// the Columns map of the first part (its only one), read in the order encoded
	d := msgpack.NewDecoder(bytes.NewReader(first))
	var order []string
	eachKey(t, d, func(field string) bool {
		if field != "Parts" {
			return false
		}
		_, err := d.DecodeArrayLen()
		require.NoError(t, err)
		eachKey(t, d, func(f string) bool {
			if f != "Columns" {
				return false
			}
			eachKey(t, d, func(k string) bool { order = append(order, k); return false })
			return true
		})
		return true
	})
	require.Equal(t, []string{"a", "bb", "m", "z"}, order)
	// a struct's fields stay in their order, as msgpack writes them
	type cols struct {
		Zeta  []int64
		Alpha []int64 `msgpack:"alpha"`
		Extra map[string]int
	}
	b2, err := marshalSorted(cols{Zeta: []int64{1}, Alpha: []int64{2}, Extra: map[string]int{"b": 1, "a": 2}})
	require.NoError(t, err)
	require.Equal(t, []string{"Zeta", "alpha", "Extra"}, topKeys(t, b2))
	// and the value is the same as the plain encoding's
	var back, plain outer
	require.NoError(t, msgpack.Unmarshal(first, &back))
	b, err := msgpack.Marshal(lit)
	require.NoError(t, err)
	require.NoError(t, msgpack.Unmarshal(b, &plain))
	require.Equal(t, plain, back)
	require.Equal(t, lit.Parts, back.Parts)
}

// encodesTheSame encodes lit 50 times, checks that the bytes never change, and returns them.
func encodesTheSame(t *testing.T, lit any) []byte {
	t.Helper()
	first, err := marshalSorted(lit)
	require.NoError(t, err)
	for range 50 {
		b, err := marshalSorted(lit)
		require.NoError(t, err)
		require.Equal(t, first, b)
	}
	return first
}

// eachKey reads the string-keyed map at d, calling fn with each key in the order encoded; fn
// reads the key's value and returns true, or returns false for it to be skipped.
func eachKey(t *testing.T, d *msgpack.Decoder, fn func(key string) bool) {
	t.Helper()
	n, err := d.DecodeMapLen()
	require.NoError(t, err)
	for range n {
		k, err := d.DecodeString()
		require.NoError(t, err)
		if !fn(k) {
			require.NoError(t, d.Skip())
		}
	}
}

// topKeys returns the keys of the map encoded in b, in the order encoded.
func topKeys(t *testing.T, b []byte) []string {
	t.Helper()
	var keys []string
	eachKey(t, msgpack.NewDecoder(bytes.NewReader(b)), func(k string) bool { keys = append(keys, k); return false })
	return keys
}
