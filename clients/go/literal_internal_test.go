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
	first, err := marshalSorted(lit)
	require.NoError(t, err)
	for range 50 {
		b, err := marshalSorted(lit)
		require.NoError(t, err)
		require.Equal(t, first, b)
	}
	d := msgpack.NewDecoder(bytes.NewReader(first))
	n, err := d.DecodeMapLen()
	require.NoError(t, err)
	var keys []string
	for range n {
		k, err := d.DecodeString()
		require.NoError(t, err)
		keys = append(keys, k)
		require.NoError(t, d.Skip())
	}
	require.Equal(t, []string{"key", "l", "m", "value"}, keys)
	var back map[string]any
	require.NoError(t, msgpack.Unmarshal(first, &back))
	require.Equal(t, map[string]any{"value": []any{int64(1), int64(2)}, "key": []any{"a", "b"},
		"m": map[string]any{"z": int8(1), "a": int8(2)}, "l": []any{map[string]any{"y": int8(1), "b": int8(2), "c": int8(3)}}}, back)
}
