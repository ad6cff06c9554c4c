package shoal

import (
	"fmt"
	"reflect"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/shoal-dev/shoal/worker"
	"github.com/vmihailenco/msgpack/v5"
)

// Values reach a typed function, and Get, as the wire decoded them: msgpack as nil, bool,
// int8…uint64, float32/64, string, []byte, []any and map[string]any; Arrow as arrow.Table;
// raw bytes as []byte. as converts such a value to the declared type.

// defaultAlloc allocates the Arrow arrays this package builds.
var defaultAlloc = memory.DefaultAllocator

// argAs converts argument i of a call to name.
func argAs[T any](name string, i int, v any) (T, error) {
	x, err := as[T](v)
	if err != nil {
		return x, fmt.Errorf("%s: argument %d: %w", name, i, err)
	}
	return x, nil
}

// as converts a decoded value to T: directly when it already is one, by the common cases
// without reflection, and otherwise reflectively or through msgpack.
func as[T any](v any) (T, error) {
	if x, ok := v.(T); ok {
		return x, nil
	}
	var zero T
	if v == nil {
		return zero, nil
	}
	switch p := any(&zero).(type) {
	case *int64:
		x, err := worker.Int64(v)
		*p = x
		return zero, err
	case *int:
		x, err := worker.Int64(v)
		*p = int(x)
		return zero, err
	case *float64:
		x, err := worker.Float64(v)
		*p = x
		return zero, err
	case *string:
		if b, ok := v.([]byte); ok {
			*p = string(b)
			return zero, nil
		}
	case *[]byte:
		if s, ok := v.(string); ok {
			*p = []byte(s)
			return zero, nil
		}
	case *arrow.RecordBatch:
		if t, ok := v.(arrow.Table); ok {
			r, err := tableRecord(t)
			*p = r
			return zero, err
		}
	case *arrow.Table:
		if r, ok := v.(arrow.RecordBatch); ok {
			*p = array.NewTableFromRecords(r.Schema(), []arrow.RecordBatch{r})
			return zero, nil
		}
	}
	rv, err := convertTo(v, reflect.TypeFor[T]())
	if err != nil {
		return zero, err
	}
	return rv.Interface().(T), nil
}

var (
	recordType = reflect.TypeFor[arrow.RecordBatch]()
	tableType  = reflect.TypeFor[arrow.Table]()
)

// convertTo converts v (a decoded wire value, not nil) to type t.
func convertTo(v any, t reflect.Type) (reflect.Value, error) {
	if v == nil {
		return reflect.Zero(t), nil
	}
	vt := reflect.TypeOf(v)
	if vt.AssignableTo(t) {
		rv := reflect.New(t).Elem()
		rv.Set(reflect.ValueOf(v))
		return rv, nil
	}
	switch tv := v.(type) {
	case arrow.Table:
		if t == recordType {
			r, err := tableRecord(tv)
			if err != nil {
				return reflect.Value{}, err
			}
			return reflect.ValueOf(&r).Elem(), nil
		}
	case arrow.RecordBatch:
		if t == tableType {
			tbl := array.NewTableFromRecords(tv.Schema(), []arrow.RecordBatch{tv})
			return reflect.ValueOf(&tbl).Elem(), nil
		}
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		x, err := worker.Int64(v)
		if err != nil {
			return reflect.Value{}, err
		}
		rv := reflect.New(t).Elem()
		if rv.OverflowInt(x) {
			return reflect.Value{}, fmt.Errorf("%d overflows %s", x, t)
		}
		rv.SetInt(x)
		return rv, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return toUint(v, t)
	case reflect.Float32, reflect.Float64:
		x, err := worker.Float64(v)
		if err != nil {
			return reflect.Value{}, err
		}
		rv := reflect.New(t).Elem()
		rv.SetFloat(x)
		return rv, nil
	case reflect.Slice:
		if s, ok := v.([]any); ok {
			out := reflect.MakeSlice(t, len(s), len(s))
			for i, e := range s {
				ev, err := convertTo(e, t.Elem())
				if err != nil {
					return reflect.Value{}, fmt.Errorf("element %d: %w", i, err)
				}
				out.Index(i).Set(ev)
			}
			return out, nil
		}
	case reflect.Map:
		if m, ok := v.(map[string]any); ok && t.Key().Kind() == reflect.String {
			out := reflect.MakeMapWithSize(t, len(m))
			for k, e := range m {
				ev, err := convertTo(e, t.Elem())
				if err != nil {
					return reflect.Value{}, fmt.Errorf("key %q: %w", k, err)
				}
				out.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), ev)
			}
			return out, nil
		}
	case reflect.Interface:
		if t.NumMethod() == 0 {
			rv := reflect.New(t).Elem()
			rv.Set(reflect.ValueOf(v))
			return rv, nil
		}
	}
	if _, ok := v.(arrow.Table); ok {
		return reflect.Value{}, fmt.Errorf("got an Arrow table, want %s", t)
	}
	return viaMsgpack(v, t)
}

func toUint(v any, t reflect.Type) (reflect.Value, error) {
	rv := reflect.New(t).Elem()
	if u, ok := v.(uint64); ok {
		if rv.OverflowUint(u) {
			return reflect.Value{}, fmt.Errorf("%d overflows %s", u, t)
		}
		rv.SetUint(u)
		return rv, nil
	}
	x, err := worker.Int64(v)
	if err != nil {
		return reflect.Value{}, err
	}
	if x < 0 || rv.OverflowUint(uint64(x)) {
		return reflect.Value{}, fmt.Errorf("%d overflows %s", x, t)
	}
	rv.SetUint(uint64(x))
	return rv, nil
}

// viaMsgpack converts by encoding v and decoding into t: structs (by msgpack field names),
// pointers, named types.
func viaMsgpack(v any, t reflect.Type) (reflect.Value, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return reflect.Value{}, fmt.Errorf("cannot convert %T to %s: %w", v, t, err)
	}
	p := reflect.New(t)
	if err := msgpack.Unmarshal(b, p.Interface()); err != nil {
		return reflect.Value{}, fmt.Errorf("cannot convert %T to %s: %w", v, t, err)
	}
	return p.Elem(), nil
}

// tableRecord returns t's rows as one record batch: its chunks as they are when there is one
// per column, concatenated otherwise.
func tableRecord(t arrow.Table) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, t.NumCols())
	for i := range cols {
		chunks := t.Column(i).Data().Chunks()
		switch len(chunks) {
		case 1:
			chunks[0].Retain()
			cols[i] = chunks[0]
		default:
			if len(chunks) == 0 {
				cols[i] = array.MakeArrayOfNull(defaultAlloc, t.Schema().Field(i).Type, 0)
				continue
			}
			a, err := array.Concatenate(chunks, defaultAlloc)
			if err != nil {
				for _, c := range cols[:i] {
					c.Release()
				}
				return nil, fmt.Errorf("combining column %d: %w", i, err)
			}
			cols[i] = a
		}
	}
	r := array.NewRecordBatch(t.Schema(), cols, t.NumRows())
	for _, c := range cols {
		c.Release()
	}
	return r, nil
}
