package worker

import (
	"errors"
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/shoal-dev/shoal/arrowio"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Int64 coerces any Go integer, or a float with an integral value, to int64, as Go task
// arguments decoded from msgpack may arrive as any of int8…int64, uint8…uint64 or floats.
func Int64(v any) (int64, error) {
	switch x := v.(type) {
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	case uint:
		return uintToInt(uint64(x))
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		return uintToInt(x)
	case float32:
		return floatToInt(float64(x))
	case float64:
		return floatToInt(x)
	}
	return 0, fmt.Errorf("expected an integer, got %T", v)
}

func uintToInt(u uint64) (int64, error) {
	if u > math.MaxInt64 {
		return 0, fmt.Errorf("integer %d overflows int64", u)
	}
	return int64(u), nil
}

func floatToInt(f float64) (int64, error) {
	if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, fmt.Errorf("expected an integer, got %g", f)
	}
	return int64(f), nil
}

// Float64 coerces any Go integer or float to float64.
func Float64(v any) (float64, error) {
	switch x := v.(type) {
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	}
	i, err := Int64(v)
	if err != nil {
		return 0, fmt.Errorf("expected a number, got %T", v)
	}
	return float64(i), nil
}

// IsInt reports whether v is a Go integer type.
func IsInt(v any) bool {
	switch v.(type) {
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return true
	}
	return false
}

// errPickleToGo is the task-error message for a pickled input to a Go task.
var errPickleToGo = errors.New("a pickled Python value cannot be passed to a Go task")

// decodeValue turns stored frames into the Go value a Go task receives.
func decodeValue(enc string, frames [][]byte) (any, error) {
	if enc == wire.EncPickle {
		return nil, errPickleToGo
	}
	if len(frames) != 1 {
		return nil, fmt.Errorf("a %s value has %d frames, want 1", enc, len(frames))
	}
	switch enc {
	case wire.EncMsgpack:
		v, err := wire.DecodeAny(frames[0])
		if err != nil {
			return nil, fmt.Errorf("decoding msgpack value: %w", err)
		}
		return v, nil
	case wire.EncArrow:
		tbl, err := arrowio.DecodeTable(frames[0])
		if err != nil {
			return nil, fmt.Errorf("decoding Arrow value: %w", err)
		}
		return tbl, nil
	case wire.EncBytes:
		return frames[0], nil
	}
	return nil, fmt.Errorf("unknown encoding %q", enc)
}

// encodeValue turns a Go task's result into an encoding and its frames.
func encodeValue(v any) (string, [][]byte, error) {
	switch x := v.(type) {
	case arrow.Table:
		b, err := arrowio.EncodeTable(x)
		if err != nil {
			return "", nil, fmt.Errorf("encoding Arrow table: %w", err)
		}
		return wire.EncArrow, [][]byte{b}, nil
	case arrow.RecordBatch:
		b, err := arrowio.EncodeRecord(x)
		if err != nil {
			return "", nil, fmt.Errorf("encoding Arrow record: %w", err)
		}
		return wire.EncArrow, [][]byte{b}, nil
	case []byte:
		return wire.EncBytes, [][]byte{x}, nil
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		return "", nil, fmt.Errorf("encoding result %T as msgpack: %w", v, err)
	}
	return wire.EncMsgpack, [][]byte{b}, nil
}

// validEncoding reports whether enc is one of the documented encodings.
func validEncoding(enc string) bool {
	switch enc {
	case wire.EncMsgpack, wire.EncArrow, wire.EncPickle, wire.EncBytes:
		return true
	}
	return false
}

func frameBytes(frames [][]byte) int64 {
	var n int64
	for _, f := range frames {
		n += int64(len(f))
	}
	return n
}
