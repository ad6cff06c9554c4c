package arrowio

import (
	"errors"
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// ErrBadArgs is returned, wrapped with the function name, the argument and
// what was expected, when a built-in function gets arguments of the wrong
// number or type.
var ErrBadArgs = errors.New("arrowio: bad arguments")

// args reads a built-in function's positional arguments. Every accessor
// records the first error; the caller checks err once after reading all
// arguments. Values arrive as msgpack decodes them, so integer accessors
// accept every Go integer type and integral floats.
type args struct {
	fn   string
	vals []any
	err  error
	// owned are tables args made (from record batches) and must release.
	owned []arrow.Table
}

func newArgs(fn string, vals []any, min, max int) *args {
	a := &args{fn: fn, vals: vals}
	if len(vals) < min || (max >= 0 && len(vals) > max) {
		want := fmt.Sprintf("%d to %d", min, max)
		switch {
		case max < 0:
			want = fmt.Sprintf("at least %d", min)
		case min == max:
			want = fmt.Sprint(min)
		}
		a.err = fmt.Errorf("%w: %s: want %s arguments, got %d", ErrBadArgs, fn, want, len(vals))
	}
	return a
}

// release drops the tables the accessors created.
func (a *args) release() {
	for _, t := range a.owned {
		t.Release()
	}
	a.owned = nil
}

func (a *args) fail(i int, name, want string, got any) {
	if a.err == nil {
		a.err = fmt.Errorf("%w: %s: argument %d (%s): want %s, got %T", ErrBadArgs, a.fn, i, name, want, got)
	}
}

func (a *args) has(i int) bool { return a.err == nil && i < len(a.vals) }

func (a *args) table(i int, name string) arrow.Table {
	if !a.has(i) {
		return nil
	}
	t, owned, ok := asTable(a.vals[i])
	if !ok {
		a.fail(i, name, "an Arrow table", a.vals[i])
		return nil
	}
	if owned {
		a.owned = append(a.owned, t)
	}
	return t
}

func asTable(v any) (tbl arrow.Table, owned, ok bool) {
	switch v := v.(type) {
	case arrow.Table:
		return v, false, v != nil
	case arrow.RecordBatch:
		if v == nil {
			return nil, false, false
		}
		return array.NewTableFromRecords(v.Schema(), []arrow.RecordBatch{v}), true, true
	}
	return nil, false, false
}

func (a *args) int(i int, name string, def int64) int64 {
	if !a.has(i) {
		return def
	}
	n, ok := asInt(a.vals[i])
	if !ok {
		a.fail(i, name, "an integer", a.vals[i])
	}
	return n
}

func asInt(v any) (int64, bool) {
	switch v := v.(type) {
	case int:
		return int64(v), true
	case int8:
		return int64(v), true
	case int16:
		return int64(v), true
	case int32:
		return int64(v), true
	case int64:
		return v, true
	case uint:
		return int64(v), uint64(v) <= math.MaxInt64
	case uint8:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint32:
		return int64(v), true
	case uint64:
		return int64(v), v <= math.MaxInt64
	case float32:
		return asInt(float64(v))
	case float64:
		if v != math.Trunc(v) || v < math.MinInt64 || v >= math.MaxInt64 {
			return 0, false
		}
		return int64(v), true
	}
	return 0, false
}

func (a *args) str(i int, name string) string {
	if !a.has(i) {
		return ""
	}
	switch v := a.vals[i].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	a.fail(i, name, "a string", a.vals[i])
	return ""
}

func (a *args) bool(i int, name string, def bool) bool {
	if !a.has(i) {
		return def
	}
	v, ok := a.vals[i].(bool)
	if !ok {
		a.fail(i, name, "a boolean", a.vals[i])
	}
	return v
}

func (a *args) strs(i int, name string) []string {
	if !a.has(i) {
		return nil
	}
	switch v := a.vals[i].(type) {
	case []string:
		return v
	case string:
		return []string{v}
	case []any:
		out := make([]string, len(v))
		for j, e := range v {
			s, ok := e.(string)
			if !ok {
				a.fail(i, name, "a list of strings", e)
				return nil
			}
			out[j] = s
		}
		return out
	}
	a.fail(i, name, "a list of strings", a.vals[i])
	return nil
}

// column returns the named column of tbl, failing when it is absent.
func (a *args) column(tbl arrow.Table, i int, name string) int {
	col := a.str(i, name)
	if a.err != nil || tbl == nil {
		return -1
	}
	idx := tbl.Schema().FieldIndices(col)
	if len(idx) == 0 {
		a.err = fmt.Errorf("%w: %s: argument %d (%s): no column %q in schema %s", ErrBadArgs, a.fn, i, name, col, fieldNames(tbl.Schema()))
		return -1
	}
	return idx[0]
}

func fieldNames(s *arrow.Schema) []string {
	names := make([]string, s.NumFields())
	for i, f := range s.Fields() {
		names[i] = f.Name
	}
	return names
}
